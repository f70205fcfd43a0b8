"""The synthetic registry of ``bench/cycle.py`` and the world scenario that goes with it:
``generate`` writes a JSON Lines registry (most addresses at free providers, the rest on
custom domains shared Zipf-like) and a TOML scenario listing the few lapsed, re-registered
and failing domains, cached in the work directory by their parameters. ``log``, the
bench's progress line on stderr, lives here as the lowest module that needs it.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

GENERATOR_VERSION = 5
"""Bump when the generated files change, so cached ones are not reused."""

# Free providers as most registries see them: a few giants and a long tail.
FREE_PROVIDERS = (
    ("gmail.com", 50),
    ("yahoo.com", 8),
    ("hotmail.com", 7),
    ("outlook.com", 7),
    ("icloud.com", 5),
    ("qq.com", 4),
    ("163.com", 3),
    ("proton.me", 3),
    ("protonmail.com", 2),
    ("gmx.de", 2),
    ("web.de", 2),
    ("mail.ru", 2),
    ("yandex.ru", 2),
    ("aol.com", 1),
    ("live.com", 1),
    ("me.com", 1),
)
CUSTOM_TLDS: tuple[tuple[str, float], ...] = (
    ("com", 57),
    ("org", 12),
    ("net", 10),
    ("io", 8),
    ("dev", 5),
    ("de", 5),
    ("jp", 3),
)
"""The uniform world's TLDs (one RDAP server for all but :data:`WHOIS_TLDS`); the
patchwork world's are those of ``lapsewatch.world.pacing.PATCHWORK``."""
WHOIS_TLDS: tuple[str, ...] = ("jp",)
"""The uniform world's TLDs without RDAP: its WHOIS server answers for them."""
# Listed (non-default) domains, as fractions of the custom domains.
LAPSED_STATES = (
    ("expiring", 0.006),
    ("redemption", 0.005),
    ("pending_delete", 0.003),
    ("available", 0.006),
    ("reregistered", 0.005),
    ("for_sale", 0.003),
)
FAILING = (
    ({"rdap": "500"}, 0.004),
    ({"dns": "servfail"}, 0.004),
    ({"rdap": "timeout"}, 0.0005),
)
VERIFIED_FRACTION = 0.92


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Generated:
    registry: Path
    scenario: Path
    addresses: int
    accounts: int
    custom_domains: int
    listed_domains: int
    free_addresses: int


def _zipf_cum_weights(n: int, s: float) -> list[float]:
    total = 0.0
    cumulative: list[float] = []
    for rank in range(1, n + 1):
        total += 1.0 / rank**s
        cumulative.append(total)
    return cumulative


def generate(
    workdir: Path,
    *,
    addresses: int,
    domains: int,
    free_fraction: float,
    seed: int,
    custom_tlds: tuple[tuple[str, float], ...] = CUSTOM_TLDS,
    whois_tlds: tuple[str, ...] = WHOIS_TLDS,
) -> Generated:
    """The registry (JSONL) and the world scenario (TOML); cached in ``workdir`` by parameters."""
    key = hashlib.sha256(
        json.dumps(
            [
                GENERATOR_VERSION,
                addresses,
                domains,
                free_fraction,
                seed,
                list(custom_tlds),
                list(whois_tlds),
            ]
        ).encode()
    ).hexdigest()[:12]
    registry = workdir / f"registry-{key}.jsonl"
    scenario = workdir / f"scenario-{key}.toml"
    meta = workdir / f"meta-{key}.json"
    if registry.exists() and scenario.exists() and meta.exists():
        log(f"reusing the generated registry {registry.name}")
        return Generated(registry, scenario, **json.loads(meta.read_text()))
    rng = random.Random(seed)
    custom_addresses = addresses - round(addresses * free_fraction)
    if custom_addresses < domains:
        raise SystemExit(
            f"--domains {domains} needs at least that many custom addresses; "
            f"{addresses} addresses with --free-fraction {free_fraction} give {custom_addresses}"
        )
    log(f"generating {addresses:,} addresses on {domains:,} custom domains")
    tlds = [t for t, _ in custom_tlds]
    tld_weights = [w for _, w in custom_tlds]
    names = [f"{_word(rng)}{index}.{rng.choices(tlds, tld_weights)[0]}" for index in range(domains)]
    # Every custom domain once, then the rest Zipf-like: a few shared by many addresses.
    custom = list(range(domains))
    custom += rng.choices(
        range(domains), cum_weights=_zipf_cum_weights(domains, 1.07), k=custom_addresses - domains
    )
    is_custom = [True] * custom_addresses + [False] * (addresses - custom_addresses)
    rng.shuffle(custom)
    rng.shuffle(is_custom)
    providers = [p for p, _ in FREE_PROVIDERS]
    provider_weights = [w for _, w in FREE_PROVIDERS]

    now = datetime.now(UTC).replace(microsecond=0)
    listed: dict[str, dict[str, str]] = {}
    order = list(range(domains))
    rng.shuffle(order)
    position = 0
    for state, fraction in LAPSED_STATES:
        for index in order[position : position + max(1, round(domains * fraction))]:
            listed[names[index]] = {"state": state}
        position += max(1, round(domains * fraction))
    for fault, fraction in FAILING:
        for index in order[position : position + max(1, round(domains * fraction))]:
            listed[names[index]] = {"state": "registered", **fault}
        position += max(1, round(domains * fraction))

    accounts = 0
    custom_iter = iter(custom)
    written = 0
    free_count = 0
    with registry.open("w", encoding="utf-8") as out:
        while written < addresses:
            size = min(addresses - written, 1 if rng.random() < 0.8 else 2)
            emails = []
            for slot in range(size):
                if is_custom[written]:
                    domain = names[next(custom_iter)]
                else:
                    domain = rng.choices(providers, provider_weights)[0]
                    free_count += 1
                verified = rng.random() < VERIFIED_FRACTION
                email: dict[str, Any] = {
                    "address": f"u{written}@{domain}",
                    "primary": slot == 0,
                    "verified": verified,
                }
                if verified:
                    ago = timedelta(days=rng.uniform(30, 8 * 365))
                    email["verified_at"] = (now - ago).isoformat().replace("+00:00", "Z")
                emails.append(email)
                written += 1
            line: dict[str, Any] = {
                "username": f"user{accounts}",
                "totp": rng.random() < 0.3,
                "emails": emails,
            }
            if rng.random() < 0.3:
                line["projects"] = [f"pkg-{accounts}"]
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
            accounts += 1

    served = sorted({*tlds, *(p.rsplit(".", 1)[1] for p in providers)})
    lines = [
        "# Generated by bench/cycle.py: every unlisted name is registered.",
        "[world]",
        'default_state = "registered"',
        # Mail at a well-known provider (not checked as a mail host), as most custom
        # domains have; with no MX the DNS source would ask the A record too.
        'default_mx = ["aspmx.l.google.com"]',
        f"tlds = {json.dumps(served)}",
        f"rdap_missing_tlds = {json.dumps(list(whois_tlds))}",
        "",
    ]
    for name, options in sorted(listed.items()):
        lines.append("[[domains]]")
        lines.append(f'name = "{name}"')
        lines.extend(f'{k} = "{v}"' for k, v in options.items())
        lines.append("")
    scenario.write_text("\n".join(lines), encoding="utf-8")
    info = {
        "addresses": addresses,
        "accounts": accounts,
        "custom_domains": domains,
        "listed_domains": len(listed),
        "free_addresses": free_count,
    }
    meta.write_text(json.dumps(info))
    log(f"generated {accounts:,} accounts, {len(listed):,} listed domains in the world")
    return Generated(registry, scenario, **info)


_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "sa", "do", "li")


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))


def _patchwork_tlds() -> tuple[tuple[str, float], ...]:
    from lapsewatch.world.pacing import tld_weights

    return tld_weights()
