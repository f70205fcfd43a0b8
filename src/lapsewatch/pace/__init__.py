"""Every server at its own pace: per-server rate limits, learned from 429s, shared
between processes through Redis, remembered in the store (see docs/cycle.md, "Pace")."""

from lapsewatch.pace.pacer import NotSent, ServerPacer, open_pacer, shared_pace
from lapsewatch.pace.pins import Pin, Pins, load_pins
from lapsewatch.pace.policy import Learned, Policy

__all__ = [
    "Learned",
    "NotSent",
    "Pin",
    "Pins",
    "Policy",
    "ServerPacer",
    "load_pins",
    "open_pacer",
    "shared_pace",
]
