"""Plots for ``bench/window.py``, with the standard library only: exposure over time and
the distribution of windows, per policy and per set of durations, as text (for
``bench/RESULTS.md``) and as SVG (``--plot FILE.svg``)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["BUCKETS", "Panel", "histogram", "svg", "text_plot"]

BUCKETS = (
    (1.0, "< 1 h"),
    (24.0, "1 h-1 d"),
    (168.0, "1-7 d"),
    (720.0, "7-30 d"),
    (2160.0, "30-90 d"),
    (math.inf, "≥ 90 d"),
)
_BARS = " ▏▎▍▌▋▊▉█"
_SPARKS = " ▁▂▃▄▅▆▇█"
_COLOURS = ("#c0392b", "#e67e22", "#2471a3", "#27ae60", "#8e44ad")


@dataclass
class Panel:
    """One set of durations: per policy, exposure hours per day, and each window."""

    title: str
    by_day: Mapping[str, Sequence[float]]
    windows: Mapping[str, Sequence[float]]


def _bucket(hours: float) -> str:
    return next(label for top, label in BUCKETS if hours < top)


def _bar(value: float, widest: float, width: int = 30) -> str:
    if widest <= 0 or value <= 0:
        return ""
    eighths = max(1, round(value / widest * width * 8))
    return "█" * (eighths // 8) + (_BARS[eighths % 8] if eighths % 8 else "")


def histogram(windows: Mapping[str, Sequence[float]]) -> str:
    """Per policy, how many exposed addresses had a window of each length."""
    lines = []
    counts = {name: Counter(_bucket(w) for w in ws) for name, ws in windows.items()}
    widest = max((c for cs in counts.values() for c in cs.values()), default=0)
    for name, c in counts.items():
        lines.append(f"{name} ({sum(c.values())} addresses exposed)")
        if c:
            for _, label in BUCKETS:
                lines.append(f"  {label:>8} {c[label]:6d} {_bar(c[label], widest)}")
    return "\n".join(lines)


def _weekly(by_day: Sequence[float]) -> list[float]:
    """Mean addresses exposed per week (exposure hours / hours in the week)."""
    return [sum(by_day[i : i + 7]) / (24.0 * 7) for i in range(0, len(by_day), 7)]


def text_plot(panels: Sequence[Panel]) -> str:
    """Exposure over time (one character a week, scaled to the busiest week of all
    panels) and the windows' distribution, per policy and panel."""
    weekly = {(p.title, n): _weekly(d) for p in panels for n, d in p.by_day.items()}
    top = max((v for vs in weekly.values() for v in vs), default=0.0)
    width = max((len(n) for p in panels for n in p.by_day), default=0)
    out = [
        "addresses exposed, week by week (█ = "
        + (f"{top:.1f}" if top else "0")
        + " addresses; blank = none)",
    ]
    for p in panels:
        out.append(f"{p.title}:")
        for name in p.by_day:
            values = weekly[(p.title, name)]
            line = "".join(
                _SPARKS[0 if v <= 0 else max(1, min(8, math.ceil(v / top * 8)))] for v in values
            )
            hours = sum(p.by_day[name])
            out.append(f"  {name:<{width}} |{line}| {hours:,.0f} h")
    out.append("")
    out.append("windows (exposure hours of each exposed address), addresses per bucket:")
    labels = [label for _, label in BUCKETS]
    out.append(f"  {'':<{width + 7}} " + " ".join(f"{label:>8}" for label in labels))
    for p in panels:
        for name, ws in p.windows.items():
            c = Counter(_bucket(w) for w in ws)
            cells = " ".join(f"{c[label]:>8}" for label in labels)
            out.append(f"  {p.title.split()[-1]:>6} {name:<{width}} {cells}")
    return "\n".join(out)


def svg(panels: Sequence[Panel]) -> str:
    """Per panel (row): exposure over time (addresses exposed each day) on the left, the
    distribution of windows on the right."""
    row_h, left_w, right_w, pad = 220, 560, 360, 50
    width = pad + left_w + pad + right_w + pad
    height = pad + len(panels) * (row_h + pad) + 30
    names = list(dict.fromkeys(n for p in panels for n in p.by_day))
    colour = {n: _COLOURS[i % len(_COLOURS)] for i, n in enumerate(names)}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    top = max((v / 24.0 for p in panels for d in p.by_day.values() for v in d), default=0.0)
    top = top or 1.0
    most = max(
        (
            c
            for p in panels
            for ws in p.windows.values()
            for c in Counter(_bucket(w) for w in ws).values()
        ),
        default=0,
    )
    most = most or 1
    for row, p in enumerate(panels):
        y0 = pad + row * (row_h + pad)
        x0 = pad
        parts.append(
            f'<text x="{x0}" y="{y0 - 8}" font-weight="bold">{escape(p.title)}: '
            "addresses exposed, by day of the run</text>"
        )
        parts.append(
            f'<rect x="{x0}" y="{y0}" width="{left_w}" height="{row_h}" fill="none" stroke="#999"/>'
        )
        days = max((len(d) for d in p.by_day.values()), default=1)
        for tick in range(0, days + 1, 60):
            x = x0 + tick / days * left_w
            parts.append(
                f'<text x="{x:.1f}" y="{y0 + row_h + 13}" text-anchor="middle">{tick}</text>'
            )
        parts.append(f'<text x="{x0 - 4}" y="{y0 + 10}" text-anchor="end">{top:.0f}</text>')
        parts.append(f'<text x="{x0 - 4}" y="{y0 + row_h}" text-anchor="end">0</text>')
        for name, by_day in p.by_day.items():
            points = " ".join(
                f"{x0 + (i + s) / days * left_w:.1f},{y0 + row_h - v / 24.0 / top * row_h:.1f}"
                for i, v in enumerate(by_day)
                for s in (0, 1)
            )
            parts.append(
                f'<polyline fill="none" stroke="{colour[name]}" stroke-width="1.5" '
                f'points="{points}"/>'
            )
        # The windows' distribution: grouped bars per bucket.
        xr = x0 + left_w + pad
        parts.append(
            f'<text x="{xr}" y="{y0 - 8}" font-weight="bold">'
            "exposed addresses by window length</text>"
        )
        parts.append(
            f'<rect x="{xr}" y="{y0}" width="{right_w}" height="{row_h}" '
            'fill="none" stroke="#999"/>'
        )
        group = right_w / len(BUCKETS)
        bar = (group - 8) / max(len(p.windows), 1)
        for b, (_, label) in enumerate(BUCKETS):
            gx = xr + b * group + 4
            parts.append(
                f'<text x="{gx + (group - 8) / 2:.1f}" y="{y0 + row_h + 13}" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
            for k, (name, ws) in enumerate(p.windows.items()):
                count = sum(_bucket(w) == label for w in ws)
                h = count / most * (row_h - 14)
                bx = gx + k * bar
                parts.append(
                    f'<rect x="{bx:.1f}" y="{y0 + row_h - h:.1f}" width="{bar - 1:.1f}" '
                    f'height="{h:.1f}" fill="{colour[name]}"/>'
                )
                if count:
                    parts.append(
                        f'<text x="{bx + bar / 2:.1f}" y="{y0 + row_h - h - 2:.1f}" '
                        f'text-anchor="middle" font-size="9">{count}</text>'
                    )
    legend_y = height - 14
    for i, name in enumerate(names):
        lx = pad + i * 170
        parts.append(
            f'<rect x="{lx}" y="{legend_y - 9}" width="12" height="10" fill="{colour[name]}"/>'
        )
        parts.append(f'<text x="{lx + 16}" y="{legend_y}">{escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
