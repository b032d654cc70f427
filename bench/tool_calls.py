"""What a server-run tool call costs: from the event that finishes a function call to the events that answer it.

The loop (realtime_proxy/toolcalls.py) is fed a `response.done` carrying one function call (the sideband's event
for "the arguments are done"; the loop answers there, docs/tools.md) and timed until it returns the
`function_call_output` and `response.create` to send: for a no-op tool (the loop's own cost, the baseline), for
`get_current_time` (goal p95 <= 20 ms) and for `search_knowledge` over 1,000 generated Markdown documents in the
embedded SQLite FTS5 index (goal p95 <= 50 ms), interleaved in one run. The index is built by the first search and
timed apart. The socket to the service is not included: it adds one send on an open WebSocket.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tools  # noqa: F401  registers the shipped tools
from realtime_proxy.knowledge import LocalKnowledge
from realtime_proxy.settings import ToolSettings
from realtime_proxy.toolcalls import Toolbox, ToolCalls
from realtime_proxy.toolkit import REGISTRY, Registry

GOALS_MS = {"get_current_time": 20.0, "search_knowledge": 50.0}
ZONES = ("Asia/Tokyo", "Europe/Paris", "America/New_York", "Australia/Sydney", "UTC")
TOPICS = ("deploy", "identity", "storage", "quota", "voice", "session", "limit", "timeout", "region", "origin")


def write_documents(folder: Path, count: int, rng: random.Random) -> list[str]:
    """`count` Markdown files of about 200 words: a synthetic vocabulary plus the app's topics."""
    vocabulary = [f"w{n:04d}" for n in range(5000)] + list(TOPICS)
    for n in range(count):
        body = " ".join(rng.choice(vocabulary) for _ in range(200))
        (folder / f"doc{n:04d}.md").write_text(f"# Page {n}\n\n{body}\n", encoding="utf-8")
    return vocabulary


def bench_registry(index: LocalKnowledge) -> Registry:
    """The shipped get_current_time, a search_knowledge on the generated index, and a no-op for the baseline."""
    registry = Registry()
    registry.add(REGISTRY.select(["get_current_time"])[0])

    @registry.tool
    async def search_knowledge(query: str) -> dict[str, object]:
        """Search the generated documents."""
        return {"hits": await index.search(query)}

    @registry.tool
    async def noop() -> str:
        """Does nothing: the loop's own cost."""
        return "ok"

    return registry


def event(n: int, name: str, arguments: dict[str, object]) -> dict[str, object]:
    call = {"type": "function_call", "call_id": f"fc_{n}", "name": name, "arguments": json.dumps(arguments)}
    return {"type": "response.done", "response": {"status": "completed", "output": [call]}}


async def timed(calls: ToolCalls, done: dict[str, object]) -> float:
    started = time.perf_counter()
    events = await calls.answer(done)
    elapsed = (time.perf_counter() - started) * 1000
    assert events[-1]["type"] == "response.create" and '"error"' not in events[0]["item"]["output"], events
    return elapsed


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[-1]


async def measure(count: int, documents: int) -> dict[str, object]:
    rng = random.Random(18)
    with tempfile.TemporaryDirectory() as folder:
        vocabulary = write_documents(Path(folder), documents, rng)
        index = LocalKnowledge(Path(folder))
        box = Toolbox(bench_registry(index).select(None), ToolSettings(max_calls=10 * count))
        calls = box.for_call("bench")
        build = await timed(calls, event(0, "search_knowledge", {"query": "deploy"}))
        samples: dict[str, list[float]] = {"noop": [], "get_current_time": [], "search_knowledge": []}
        ids = itertools.count(1)
        for _ in range(count):
            query = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 4)))
            rounds: tuple[tuple[str, dict[str, object]], ...] = (
                ("noop", {}),
                ("get_current_time", {"timezone": rng.choice(ZONES)}),
                ("search_knowledge", {"query": f"how do I {query}?"}),
            )
            for name, arguments in rounds:
                samples[name].append(await timed(calls, event(next(ids), name, arguments)))
    return {
        "calls_each": count,
        "documents": documents,
        "index_build_and_first_search_ms": round(build, 2),
        **{
            name: {
                "p50_ms": round(statistics.median(values), 3),
                "p95_ms": round(p95(values), 3),
                **({"goal_p95_ms": GOALS_MS[name], "met": p95(values) <= GOALS_MS[name]} if name in GOALS_MS else {}),
            }
            for name, values in samples.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=500, help="calls of each tool (default 500)")
    parser.add_argument("--documents", type=int, default=1000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.n, args.documents))))


if __name__ == "__main__":
    main()
