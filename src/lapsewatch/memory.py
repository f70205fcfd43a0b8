"""Giving the allocator's free pages back to the operating system, now and then.

A cycle allocates and frees answers, evidence and compiled statements on several
threads for hours. glibc keeps what is freed inside its heap, and the holes left between
longer-lived blocks are reused only by allocations that fit them, so a checker's RSS
climbed by about 250-300 bytes for every domain it checked while its live data stayed
flat (bench/RESULTS.md, "The checker's memory"). ``malloc_trim(0)`` hands every whole
free page inside the heap back to the kernel. It exists on glibc only; elsewhere (musl,
macOS, Windows) :func:`trim` does nothing and returns False.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable

__all__ = ["TRIM_EVERY", "Trimmer", "trim"]

TRIM_EVERY = 10.0
"""Seconds between two trims of a long run: one takes 1-20 ms (measured on a 150 MB
checker), and it holds glibc's arena locks, so other threads' allocations wait for it."""


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):  # no C library to ask (Windows: TypeError)
        return None
    function = getattr(libc, "malloc_trim", None)
    if function is None:
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_malloc_trim = _find_malloc_trim()


def trim() -> bool:
    """Return the heap's free pages to the kernel; False where the C library cannot."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


class Trimmer:
    """Calls :func:`trim` at most once every ``every`` seconds, from whichever thread asks
    (the cycle's writer asks after each batch it commits)."""

    def __init__(
        self, every: float = TRIM_EVERY, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.every = every
        self.trims = 0
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()

    def maybe(self) -> bool:
        """Trim if ``every`` seconds have passed since the last trim (or the start)."""
        now = self._clock()
        with self._lock:
            if now - self._last < self.every:
                return False
            self._last = now
        if trim():
            self.trims += 1
            return True
        return False
