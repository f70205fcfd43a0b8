"""The unverifications-over-time chart, drawn on the server as inline SVG.

No JavaScript and no chart library: the page works with scripts off and under a
strict Content-Security-Policy. Colours come from classes in ``style.css``
(``style=`` attributes would need ``'unsafe-inline'``); each bar has a
``<title>``, which browsers show as a tooltip and screen readers read.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from markupsafe import Markup, escape

__all__ = ["bar_chart"]


def _nice_ceiling(value: int) -> int:
    """The axis top: the smallest of 1, 2, 5 times a power of ten that is at least ``value``."""
    if value <= 1:
        return 1
    scale = 1
    while True:
        for step in (1, 2, 5):
            if step * scale >= value:
                return step * scale
        scale *= 10


def bar_chart(
    points: Sequence[tuple[date, int]],
    *,
    label: str,
    width: int = 760,
    height: int = 220,
) -> Markup:
    """One bar per day; the y axis from 0 to a round number, a date label every few bars."""
    left, right, top, bottom = 44, 12, 12, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    total = sum(n for _, n in points)
    peak = _nice_ceiling(max((n for _, n in points), default=0))
    slot = plot_w / max(len(points), 1)
    bar_w = max(slot * 0.8, 1.0)
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="{escape(label)}">',
        f"<title>{escape(label)}: {total} in all</title>",
    ]
    for fraction in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - fraction)
        parts.append(
            f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}"/>'
        )
        value = peak * fraction
        text = f"{value:g}"
        parts.append(
            f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{text}</text>'
        )
    every = max(1, round(len(points) / 6))
    for index, (day, count) in enumerate(points):
        x = left + index * slot + (slot - bar_w) / 2
        h = plot_h * count / peak
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{top + plot_h - h:.1f}" '
            f'width="{bar_w:.1f}" height="{h:.1f}">'
            f"<title>{day.isoformat()}: {count}</title></rect>"
        )
        last = index == len(points) - 1
        if last or (index % every == 0 and len(points) - index > every / 2):
            # The first and last labels are anchored inwards so they are never cut off.
            anchor = "start" if index == 0 else "end" if last else "middle"
            x_label = left if index == 0 else width - right if last else x + bar_w / 2
            parts.append(
                f'<text class="axis" x="{x_label:.1f}" y="{height - 10}" '
                f'text-anchor="{anchor}">{day.strftime("%b %d")}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))
