"""A token bucket per client address on each instance (RATE_LIMIT_BURST, refilled at RATE_LIMIT_PER_MINUTE): a cheap
first guard against one client's burst, checked before storage is asked.

The limits that count are admission's (realtime_proxy/admission.py): a window per minute per client and for the app,
and the session caps, shared by every instance through the app's storage account (per instance only without one).
This bucket only stops one caller from spending an instance's time. Its key is the address the platform vouches for,
in one spelling per client, nothing the client picks: an `Origin`, a host or an address spelling would hand one
caller a fresh bucket per spelling.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections.abc import Callable

import azure.functions as func

from .errors import ApiError

_MAX_KEYS = 10_000


class RateLimiter:
    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
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
    """The address the platform front end appended last to X-Forwarded-For; earlier entries are the client's own
    claims and cannot be trusted. One spelling per client: IPv4-mapped IPv6 is its IPv4 address, and an IPv6
    client is its /64 (one subscriber line gets a whole /64, so single addresses would be free to rotate).
    (Under `func start` there is no front end: see docs/embedding.md.)"""
    forwarded = req.headers.get("x-forwarded-for", "")
    last = forwarded.rsplit(",", 1)[-1].strip()
    if last.startswith("["):
        last = last[1:].split("]", 1)[0]
    elif last.count(":") == 1:
        last = last.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(last.split("%", 1)[0])
    except ValueError:
        return last[:64] or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return str(address)
