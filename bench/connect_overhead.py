"""How much the function adds to the two upstream calls a `/connect` needs.

Runs N connects through the function (in-process on one event loop, as the worker runs async handlers; real
sockets to a local fake Azure OpenAI) and, in the same run, the same two upstream calls made with a bare
aiohttp session configured as the app's is (no cookie jar, no redirects, no environment scan); rounds are
interleaved so machine noise hits both alike. Prints the ratio and how many upstream connections the
function opened. Target: ratio <= 1.1 and 1 connection for N >= 100.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import azure.functions as func
from load import offer_sdp
from requests_toolbelt import MultipartEncoder

from localdev.fake_openai import FakeAzureOpenAI
from realtime_proxy.service import RealtimeProxy

KEY = "bench-key"
OFFER = offer_sdp()  # a browser-shaped offer, ICE credentials included


async def through_function(proxy: RealtimeProxy, count: int) -> float:
    encoder = MultipartEncoder(fields={"sdp": OFFER, "voice": "marin", "instructions": "Be brief."})
    body, content_type = encoder.to_string(), encoder.content_type
    started = time.perf_counter()
    for _ in range(count):
        req = func.HttpRequest("POST", "http://localhost/connect", headers={"content-type": content_type}, body=body)
        assert (await proxy.connect(req)).status_code == 201
    return time.perf_counter() - started


async def bare(session: aiohttp.ClientSession, base: str, count: int) -> float:
    payload = {
        "expires_after": {"anchor": "created_at", "seconds": 600},
        "session": {
            "type": "realtime",
            "model": "gpt-realtime",
            "instructions": "Be brief.",
            "audio": {"output": {"voice": "marin"}},
        },
    }
    started = time.perf_counter()
    for _ in range(count):
        async with session.post(
            f"{base}/openai/v1/realtime/client_secrets", json=payload, headers={"api-key": KEY}, allow_redirects=False
        ) as secret:
            value = (await secret.json())["value"]
        async with session.post(
            f"{base}/openai/v1/realtime/calls",
            data=OFFER.encode(),
            allow_redirects=False,
            headers={"Authorization": f"Bearer {value}", "Content-Type": "application/sdp"},
        ) as call:
            assert call.status == 201 and (await call.read()).startswith(b"v=0")
    return time.perf_counter() - started


async def measure(count: int, rounds: int) -> None:
    fake = FakeAzureOpenAI(api_key=KEY)
    proxy = RealtimeProxy.from_environ(
        {"AZURE_OPENAI_BASE_URL": fake.url, "AZURE_OPENAI_API_KEY": KEY, "RATE_LIMIT_PER_MINUTE": "0"}
    )
    session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(sock_read=10))
    await bare(session, fake.url, 5)  # warm the baseline's pool; the function's first round opens its own connection
    fake.connections = 0
    per_round = max(1, count // rounds)
    function_times, bare_times = [], []
    for _ in range(rounds):
        function_times.append(await through_function(proxy, per_round) / per_round)
        bare_times.append(await bare(session, fake.url, per_round) / per_round)
    function_ms, bare_ms = statistics.median(function_times) * 1000, statistics.median(bare_times) * 1000
    result = {
        "connects": per_round * rounds,
        "function_ms": round(function_ms, 3),
        "bare_ms": round(bare_ms, 3),
        "ratio": round(function_ms / bare_ms, 3),
        "upstream_connections_opened": fake.connections,
    }
    print(json.dumps(result))
    await session.close()
    await proxy.aclose()
    fake.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=200, help="connects per side (default 200)")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(measure(args.n, args.rounds))


if __name__ == "__main__":
    main()
