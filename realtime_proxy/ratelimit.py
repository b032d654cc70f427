"""A token bucket per client address, so one caller cannot mint sessions without bound.

The key is the address the platform vouches for, nothing the client picks: an `Origin` or host spelling
would hand one address a fresh bucket per spelling.

State lives in this process only: with several instances each enforces its own limit (see README for
what to put in front when scaled out).
"""

from __future__ import annotations

import math
import threading
import time

import azure.functions as func

from .errors import ApiError

_MAX_KEYS = 10_000


class RateLimiter:
    def __init__(self, per_minute: float, burst: int, clock=time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, req: func.HttpRequest) -> None:
        """Spend one token from the caller's bucket or refuse with 429."""
        if self.rate <= 0:
            return
        key = client_ip(req)
        with self._lock:
            now = self.clock()
            level = self._level(key, now)
            if level < 1.0:
                wait = max(1, math.ceil((1.0 - level) / self.rate))
                raise ApiError(
                    429,
                    "rate_limited",
                    f"Too many connects from this client; retry in {wait} s.",
                    {"Retry-After": str(wait)},
                )
            if len(self._buckets) >= _MAX_KEYS:
                self._forget_full(now)
            self._buckets[key] = (level - 1.0, now)

    def _level(self, key: str, now: float) -> float:
        level, since = self._buckets.get(key, (self.burst, now))
        return min(self.burst, level + (now - since) * self.rate)

    def _forget_full(self, now: float) -> None:
        """Bounds memory: a full bucket holds nothing worth keeping; failing that, drop the oldest half."""
        full = [key for key in self._buckets if self._level(key, now) >= self.burst]
        for key in full or list(self._buckets)[: _MAX_KEYS // 2]:
            del self._buckets[key]


def client_ip(req: func.HttpRequest) -> str:
    """The address the platform front end appended last to X-Forwarded-For; earlier entries are the
    client's own claims and cannot be trusted. (Under `func start` there is no front end: see README.)"""
    forwarded = req.headers.get("x-forwarded-for", "")
    last = forwarded.rsplit(",", 1)[-1].strip()
    if last.startswith("["):
        return last[1:].split("]", 1)[0]
    return last.split(":", 1)[0] if last.count(":") == 1 else last or "unknown"
