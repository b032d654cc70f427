"""What the shared limits cost a connect: storage round trips and latency, limits in Azurite vs in-process.

Runs N sequential connects in-process (one event loop, as the worker runs async handlers) against the local
fake Azure OpenAI, interleaving rounds of two apps that differ only in where their limits live: Table Storage
on a local Azurite (every limit on: per-client and app-wide rates, session caps) and the in-process table
(what an app without AzureWebJobsStorage uses). Prints storage round trips per connect (goal: at most two)
and the latency ratio. Azurite on loopback answers in about a millisecond; Azure Table Storage in the same
region takes a few, so the ratio here is a floor, the round-trip count is what carries over.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import azure.functions as func
from load import offer_sdp

from localdev.azurite import Azurite
from localdev.fake_openai import FakeAzureOpenAI
from realtime_proxy.service import RealtimeProxy
from realtime_proxy.tables import StorageTable

KEY = "bench-key"
OFFER = offer_sdp()  # a browser-shaped offer, ICE credentials included
LIMITS = {
    "RATE_LIMIT_PER_MINUTE": "100000",
    "RATE_LIMIT_BURST": "100000",
    "APP_RATE_LIMIT_PER_MINUTE": "1000000",
    "MAX_ACTIVE_SESSIONS": "100000",
    "MAX_ACTIVE_SESSIONS_PER_CLIENT": "1000",
}


def counting(table: StorageTable) -> list[int]:
    """Counts the storage calls the app makes (each is one HTTP round trip to the table service)."""
    calls = [0]
    original = table._call

    async def call(operation):
        calls[0] += 1
        return await original(operation)

    table._call = call  # type: ignore[method-assign]  # wraps this one table's method to count its calls
    return calls


async def run(proxy: RealtimeProxy, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        req = func.HttpRequest(
            "POST", "http://localhost/connect", headers={"content-type": "application/sdp"}, body=OFFER.encode()
        )
        assert (await proxy.connect(req)).status_code == 201
    return (time.perf_counter() - started) / count


async def measure(count: int, rounds: int, azurite: Azurite) -> dict[str, float]:
    fake = FakeAzureOpenAI(api_key=KEY)
    base = {"AZURE_OPENAI_BASE_URL": fake.url, "AZURE_OPENAI_API_KEY": KEY, **LIMITS}
    shared = RealtimeProxy.from_environ({**base, "AzureWebJobsStorage": azurite.connection_string})
    local = RealtimeProxy.from_environ(base)
    assert isinstance(shared.table, StorageTable), "AzureWebJobsStorage is set: the limits live in Table Storage"
    calls = counting(shared.table)
    await run(shared, 5), await run(local, 5)  # create the table, warm both pools
    calls[0] = 0
    per_round = max(1, count // rounds)
    shared_times, local_times = [], []
    for _ in range(rounds):
        shared_times.append(await run(shared, per_round))
        local_times.append(await run(local, per_round))
    shared_ms, local_ms = statistics.median(shared_times) * 1000, statistics.median(local_times) * 1000
    await shared.aclose()
    await local.aclose()
    fake.close()
    return {
        "connects": per_round * rounds,
        "storage_round_trips_per_connect": round(calls[0] / (per_round * rounds), 2),
        "shared_ms": round(shared_ms, 3),
        "in_process_ms": round(local_ms, 3),
        "ratio": round(shared_ms / local_ms, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=200, help="connects per side (default 200)")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        azurite = Azurite(Path(folder)).start()
        try:
            print(json.dumps(asyncio.run(measure(args.n, args.rounds, azurite))))
        finally:
            azurite.stop()


if __name__ == "__main__":
    main()
