"""Make the world behave like a real service under load: a fixed added latency per
request and an enforced rate limit (what the benchmark measures against)."""

from __future__ import annotations

import threading
import time

__all__ = ["Pacing"]


class Pacing:
    """A token bucket of ``rate`` requests per second (burst: one second's worth)
    and ``latency`` seconds added to every answer. Thread-safe; counts refusals."""

    def __init__(self, *, latency: float = 0.0, rate: float | None = None) -> None:
        self.latency = latency
        self.rate = rate
        self.refused = 0
        self.admitted = 0
        self._tokens = rate or 0.0
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def admit(self) -> bool:
        """Whether one more request fits under the rate limit now."""
        with self._lock:
            if self.rate is None:
                self.admitted += 1
                return True
            now = time.monotonic()
            self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                self.admitted += 1
                return True
            self.refused += 1
            return False

    def delay(self) -> None:
        if self.latency > 0:
            time.sleep(self.latency)
