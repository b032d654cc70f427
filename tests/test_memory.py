"""Memory stays flat under a loop of refused requests: what any visitor can send must not grow the process.

Each kind of request the app refuses cheaply is sent 20,000 times straight into its handler on the worker's
event loop, and the memory Python holds (tracemalloc) may not grow by more than 3 MiB over the run.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Callable

import azure.functions as func
import pytest

from tests.conftest import OFFER, WORKER_LOOP, make_proxy, multipart, request

ROUNDS = 20_000
LIMIT_BYTES = 3 * 1024 * 1024


def refused_requests() -> dict[str, tuple[str, Callable[[], func.HttpRequest], int]]:
    """(handler, request, the status it must get) for every cheap refusal."""
    body, content_type = multipart({"sdp": OFFER, "voice": "nova"})

    def static(path: str) -> Callable[[], func.HttpRequest]:
        return lambda: request(method="GET", url=f"http://localhost:7071/{path}", route_params={"path": path})

    def hang_up(token: str, call_id: str = "rtc_0123") -> Callable[[], func.HttpRequest]:
        return lambda: request(
            method="POST",
            url=f"http://localhost:7071/calls/{call_id}/hangup",
            headers={"x-call-token": token},
            route_params={"call_id": call_id},
        )

    return {
        "missing page": ("static", static("nope"), 404),
        "traversal": ("static", static("..%2f..%2fhost.json"), 404),
        "over-long path": ("static", static("a" * 600), 404),
        "reserved route": ("static", static("connect"), 405),
        "unknown media type": ("connect", lambda: request(b"x", "text/plain"), 415),
        "voice not allowed": ("connect", lambda: request(body, content_type), 400),
        "refused origin": (
            "connect",
            lambda: request(b"x", "text/plain", headers={"origin": "https://evil.example"}),
            403,
        ),
        "no call token": ("hang_up", hang_up(""), 400),
        "malformed call token": ("hang_up", hang_up("a" * 4096), 404),
        "unknown call token": ("hang_up", hang_up("0123456789abcdef." + "A" * 32), 404),
        "refused preflight": (
            "preflight",
            lambda: request(method="OPTIONS", headers={"origin": "https://evil.example"}),
            403,
        ),
    }


@pytest.mark.parametrize("kind", list(refused_requests()))
def test_memory_stays_flat_over_twenty_thousand_refused_requests(fake, kind: str) -> None:
    proxy = make_proxy(fake, RATE_LIMIT_PER_MINUTE="0")
    handler_name, make, status = refused_requests()[kind]
    handler = getattr(proxy.proxy, handler_name)

    async def send(times: int) -> None:
        for _ in range(times):
            response = await handler(make())
            assert response.status_code == status, response.get_body()

    asyncio.run_coroutine_threadsafe(send(200), WORKER_LOOP).result()  # caches and lazy imports settle first
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        asyncio.run_coroutine_threadsafe(send(ROUNDS), WORKER_LOOP).result()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < LIMIT_BYTES, f"{kind}: {grown / 1024:.0f} KiB more after {ROUNDS} refused requests"
