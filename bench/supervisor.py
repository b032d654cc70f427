"""What supervision costs (issue 17): calls one supervisor process holds, attach latency, and the connect's cost.

In one run, against the strict fake Azure OpenAI in a process of its own (`bench/fake_calls.py`, so its CPU is not
billed to the supervisor) and a local Azurite for the ledger and the queue:

1. **Calls one process holds.** This process is one supervisor: a RealtimeProxy (storage = Azurite) whose calls are
   admitted through `proxy.connect` and supervised by `proxy.supervise(message)` on this one event loop, ramped to
   each N of `--calls`. Every call streams a conversation's events at `--rate` a second (speech started/stopped,
   transcripts, deltas, a `response.done` with usage every turn). Over a `--window` (default one heartbeat period,
   so every call renews its lease once in it): this process's CPU (process time / wall time, in cores), its RSS
   growth per call since a warmed-up start, the event lag (from the fake emitting a `session.updated` that breaks
   the policy to the restoring `session.update` arriving there, for up to `--probes` calls per window) and the
   ledger's heartbeat writes a second. Goal: >= 500 calls with < 1 core and < 150 KB each.
2. **Attach latency after a 201**, through the real queue path: `python -m localdev` (the local Functions host) over
   the same Azurite, `LOCAL_QUEUE_POLL_SECONDS` unset so host.json's `maxPollingInterval` applies. From `/connect`
   answering to the fake seeing the sideband attach, `--connects` times for each of: the same host took the connect
   (its output binding wakes its own queue listener at once) and another instance took it (this process connects
   and enqueues the message as that instance's output binding would: the host's listener finds it by polling).
   Connects arrive `--gap` seconds apart at random, so the listener's back-off grows as on a quiet app. Goal: p95
   <= 1 s.
3. **The cost added to `/connect`**: interleaved rounds of connects with supervision on and off (same storage, the
   fake answering each upstream request after `--latency` s, as a region away would), the queue write the host
   does before answering counted in. Prints the ratio, upstream and storage round trips per connect, queue writes
   per connect and the size of the call's ledger row. Goal: no extra upstream round trip; one queue write.

The machine is usually shared: the load average is printed with each figure.

    ./dev bench supervisor [--calls 50,100,250,500,1000] [--rate 3] [--window 30] [--probes 100]
                           [--connects 30] [--gap 3] [-n 200] [--rounds 10] [--latency 0.05] [--parts 1,2,3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import azure.functions as func
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue.aio import QueueClient
from load import offer_sdp
from shared_limits import counting

from localdev.azurite import Azurite
from localdev.queues import Output, QueueOptions
from realtime_proxy.service import RealtimeProxy
from realtime_proxy.sideband import Line
from realtime_proxy.supervisor import HEARTBEAT_SECONDS
from realtime_proxy.tables import StorageTable
from tests.child_process import ChildProcess

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
KEY = "bench-key"
OFFER = offer_sdp()
MEMORY_GOAL_KB, CPU_GOAL, CALLS_GOAL, ATTACH_GOAL_MS = 150.0, 1.0, 500, 1000.0
ATTACH_WAIT = 60.0  # seconds for a step's new calls to get their sidebands
CONNECT_BATCH = 20  # connects in flight at once while a step adds its calls
QUEUE_OPTIONS = QueueOptions.from_host_json(json.loads((ROOT / "host.json").read_text()))


class FakeProcess:
    """`bench/fake_calls.py` as a child: one JSON command line in, one JSON answer line out."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "fake_calls.py"), "--key", KEY],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.url = str(self._read()["url"])
        self._lock = threading.Lock()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench/fake_calls.py exited with {self.proc.wait()}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"bench/fake_calls.py: {answer['error']}")
        return answer

    def _ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        with self._lock:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
            return self._read()

    async def ask(self, op: str, **args: Any) -> dict[str, Any]:
        """Off the event loop, which keeps supervising while the fake works."""
        return await asyncio.to_thread(self._ask, {"op": op, **args})

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Setup:
    fake: FakeProcess
    azurite: Azurite

    def env(self, **more: str) -> dict[str, str]:
        """An app's settings: this fake and Azurite, tables and queue of its own, no rate limit, an hour per call,
        strikes enough that the probes never hang a call up."""
        tag = secrets.token_hex(4)
        return {
            "AZURE_OPENAI_BASE_URL": self.fake.url,
            "AZURE_OPENAI_API_KEY": KEY,
            "AzureWebJobsStorage": self.azurite.connection_string,
            "LIMITS_TABLE": f"bench{tag}",
            "REALTIME_SUPERVISOR_QUEUE": f"bench-calls-{tag}",
            "RATE_LIMIT_PER_MINUTE": "0",
            "REALTIME_MAX_SESSION_SECONDS": "3600",
            "REALTIME_POLICY_STRIKES": "100",
            "REALTIME_INSTRUCTIONS": "Be brief.",
            **more,
        }


def sdp_request() -> func.HttpRequest:
    return func.HttpRequest(
        "POST", "http://localhost/connect", headers={"content-type": "application/sdp"}, body=OFFER.encode()
    )


async def admit(proxy: RealtimeProxy) -> Output:
    """One connect; the queue message the host would write is in the returned output."""
    out = Output()
    response = await proxy.connect(sdp_request(), out)
    assert response.status_code == 201, response.get_body()
    return out


async def calls_queue(setup: Setup, env: dict[str, str]) -> QueueClient:
    """The app's supervisor queue, created if missing, as the host's output binding would."""
    queue = QueueClient.from_connection_string(setup.azurite.connection_string, env["REALTIME_SUPERVISOR_QUEUE"])
    with contextlib.suppress(ResourceExistsError):
        await queue.create_queue()
    return queue


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def load() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


# -- 1. calls one process holds ----------------------------------------------------------------------------------


def counting_events() -> list[int]:
    """Counts the events every sideband of this process reads (what the calls really sent, however busy the fake)."""
    seen = [0]
    events = Line.events

    async def counted(self: Line) -> AsyncIterator[dict[str, Any]]:
        async for event in events(self):
            seen[0] += 1
            yield event

    Line.events = counted  # type: ignore[method-assign]  # one more generator hop per event, a microsecond
    return seen


@dataclass
class Step:
    calls: int
    events_per_s: float
    cores: float
    kb_per_call: float
    lags_ms: list[float]
    missed: int
    heartbeats_per_s: float
    trips_per_s: float
    fake_cores: float
    lost: int  # supervisions that ended while their call still ran
    load: str

    def cells(self) -> list[str]:
        return [
            str(self.calls),
            f"{self.events_per_s:.0f}",
            f"{self.cores:.2f}",
            f"{self.kb_per_call:.0f}",
            f"{percentile(self.lags_ms, 0.5):.0f} / {percentile(self.lags_ms, 0.95):.0f} ({len(self.lags_ms)})",
            str(self.missed),
            f"{self.heartbeats_per_s:.1f} ({self.trips_per_s:.1f})",
            f"{self.fake_cores:.2f}",
            str(self.lost),
            self.load,
        ]


@dataclass
class Held:
    """The calls this process supervises, and the supervisions running for them."""

    call_ids: list[str] = field(default_factory=list)
    tasks: list[asyncio.Future[None]] = field(default_factory=list)


async def add_calls(proxy: RealtimeProxy, held: Held, count: int) -> list[str]:
    new: list[str] = []
    while len(new) < count:
        outs = await asyncio.gather(*(admit(proxy) for _ in range(min(CONNECT_BATCH, count - len(new)))))
        for out in outs:
            message = str(out.get())
            new.append(json.loads(message)["call"])
            held.tasks.append(asyncio.ensure_future(proxy.supervise(message.encode())))
    held.call_ids += new
    return new


async def hold_calls(setup: Setup, args: argparse.Namespace) -> list[Step]:
    fake = setup.fake
    proxy = RealtimeProxy.from_environ(setup.env())
    assert isinstance(proxy.table, StorageTable) and proxy.supervisor is not None
    trips, events = counting(proxy.table), counting_events()
    beats = [0]
    heartbeat = proxy.ledger.heartbeat

    async def counted_heartbeat(ledger_id: str, holder: str, facts: dict[str, object]) -> Any:
        beats[0] += 1
        return await heartbeat(ledger_id, holder, facts)

    proxy.ledger.heartbeat = counted_heartbeat  # type: ignore[method-assign]  # counts this one ledger's heartbeats
    warm = Held()
    await fake.ask("attached", calls=await add_calls(proxy, warm, 2), timeout=30)  # table, pools, imports
    await fake.ask("end", calls=warm.call_ids)
    await asyncio.wait(warm.tasks, timeout=10)
    base_rss = rss_bytes()
    held, steps = Held(), []
    try:
        for target in args.calls:
            new = await add_calls(proxy, held, target - len(held.call_ids))
            missing = (await fake.ask("attached", calls=new, timeout=ATTACH_WAIT))["missing"]
            if missing:
                print(
                    f"{len(held.call_ids)} calls: {missing} of the {len(new)} new ones had no sideband after "
                    f"{ATTACH_WAIT:g} s (the supervisor's log says why: --log FILE); the ramp stops here",
                    flush=True,
                )
                break
            await fake.ask("stream", calls=new, rate=args.rate)
            await asyncio.sleep(2)  # the new calls' first events, out of the window
            sample = random.sample(held.call_ids, min(args.probes, len(held.call_ids)))
            fake_before = await fake.ask("counts")
            wall, cpu, trips_before, beats_before = time.perf_counter(), time.process_time(), trips[0], beats[0]
            events_before = events[0]
            probed = await fake.ask("probe", calls=sample, spread=args.window)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            fake_after = await fake.ask("counts")
            steps.append(
                Step(
                    calls=len(held.call_ids),
                    events_per_s=(events[0] - events_before) / wall,
                    cores=cpu / wall,
                    kb_per_call=(rss_bytes() - base_rss) / len(held.call_ids) / 1024,
                    lags_ms=probed["lags_ms"],
                    missed=probed["missed"],
                    heartbeats_per_s=(beats[0] - beats_before) / wall,
                    trips_per_s=(trips[0] - trips_before) / wall,
                    fake_cores=(fake_after["cpu_seconds"] - fake_before["cpu_seconds"]) / wall,
                    lost=sum(task.done() for task in held.tasks),
                    load=load(),
                )
            )
            print_step(steps[-1], args, first=len(steps) == 1)
    finally:
        await fake.ask("end", calls=held.call_ids)
        if held.tasks:
            await asyncio.wait(held.tasks, timeout=30)
        await proxy.aclose()
    return steps


HOLD_HEAD = [
    "calls",
    "events/s read",
    "CPU (cores)",
    "RSS/call (KB)",
    "lag p50 / p95 ms (probes)",
    "missed",
    "heartbeats/s (storage trips/s)",
    "fake CPU",
    "lost",
    "load avg",
]


def print_step(step: Step, args: argparse.Namespace, first: bool) -> None:
    if first:
        print(
            f"\n1. Calls one supervisor process holds: {args.rate:g} events/s per call, {args.window:g} s window, "
            f"heartbeat every {HEARTBEAT_SECONDS:g} s"
        )
        print(row(HOLD_HEAD))
        print(row(["---"] * len(HOLD_HEAD)))
    print(row(step.cells()), flush=True)


def hold_verdict(steps: list[Step]) -> str:
    fits = [s for s in steps if s.cores < CPU_GOAL and s.kb_per_call < MEMORY_GOAL_KB and not s.lost and not s.missed]
    most = max((s.calls for s in fits), default=0)
    met = "met" if most >= CALLS_GOAL else "NOT met"
    return (
        f"goal: >= {CALLS_GOAL} calls with < {CPU_GOAL:g} core and < {MEMORY_GOAL_KB:g} KB each, none lost: {met} "
        f"(most calls within the goal: {most})"
    )


# -- 2. attach latency -------------------------------------------------------------------------------------------


def host_env(env: dict[str, str]) -> dict[str, str]:
    """The local host's environment: this shell's less any Azure or app setting, plus the app's."""
    drop = ("AZURE_", "REALTIME_", "IDENTITY_", "MSI_", "LOCAL_QUEUE_")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(drop)}, **env}


async def attach_after(fake: FakeProcess, call_id: str, answered: float) -> tuple[float, bool]:
    seen = await fake.ask("attach_time", call=call_id, timeout=30)
    await fake.ask("end", calls=[call_id])
    return (seen["at"] - answered) * 1000, bool(seen["early"])


async def attach_latency(setup: Setup, args: argparse.Namespace) -> dict[str, tuple[list[float], int]]:
    env = setup.env()
    host = await asyncio.to_thread(
        ChildProcess,
        [sys.executable, "-m", "localdev", "--port", "0"],
        ready="Serving on ",
        timeout=60,
        cwd=ROOT,
        env=host_env(env),
    )
    url = host.ready_line.split()[-1].rstrip("/")
    other = RealtimeProxy.from_environ(env)  # "another instance": same storage, same queue
    queue = await calls_queue(setup, env)
    results: dict[str, tuple[list[float], int]] = {}
    rng = random.Random(17)
    try:
        async with aiohttp.ClientSession() as http:

            async def same_host() -> tuple[str, float]:
                headers = {"content-type": "application/sdp"}
                async with http.post(f"{url}/connect", data=OFFER.encode(), headers=headers) as response:
                    answered = time.monotonic()
                    assert response.status == 201, await response.text()
                    return response.headers["Location"].rstrip("/").rsplit("/", 1)[-1], answered

            async def another_instance() -> tuple[str, float]:
                message = str((await admit(other)).get())
                await queue.send_message(QUEUE_OPTIONS.encode(message))  # the host writes it before answering
                return json.loads(message)["call"], time.monotonic()

            paths: dict[str, Callable[[], Any]] = {
                "same host (output wakes its listener)": same_host,
                f"another instance (polling, max {QUEUE_OPTIONS.max_polling_interval:g} s)": another_instance,
            }
            for label, connect in paths.items():
                lags, early = [], 0
                for _ in range(args.connects):
                    await asyncio.sleep(rng.uniform(0, args.gap))
                    call_id, answered = await connect()
                    lag, was_early = await attach_after(setup.fake, call_id, answered)
                    lags.append(lag)
                    early += was_early
                results[label] = (lags, early)
    except Exception:
        print(host.output()[-4000:], file=sys.stderr)
        raise
    finally:
        await queue.close()
        await other.aclose()
        await asyncio.to_thread(host.stop)
    return results


def print_attach(results: dict[str, tuple[list[float], int]], args: argparse.Namespace) -> None:
    head = ["path", "connects", "p50 ms", "p95 ms", "max ms", "goal p95 <= 1000 ms"]
    print(
        f"\n2. Attach latency after the 201, through the local host's queue trigger over Azurite "
        f"(connects {args.gap:g} s apart at most, at random; load {load()})"
    )
    print(row(head))
    print(row(["---"] * len(head)))
    for label, (lags, early) in results.items():
        p95 = percentile(lags, 0.95)
        cells = [label, str(len(lags)), f"{percentile(lags, 0.5):.0f}", f"{p95:.0f}", f"{max(lags):.0f}"]
        verdict = "met" if p95 <= ATTACH_GOAL_MS else "NOT met"
        print(row([*cells, verdict + (f" ({early} attached before asked: upper bounds)" if early else "")]))


# -- 3. the connect's cost ---------------------------------------------------------------------------------------


@dataclass
class Side:
    proxy: RealtimeProxy
    trips: list[int]
    times: list[float] = field(default_factory=list)  # seconds per connect, one per round
    queue_times: list[float] = field(default_factory=list)
    upstream: int = 0
    queue_writes: int = 0
    connects: int = 0


async def connect_round(side: Side, queue: QueueClient, count: int, fake: FakeProcess) -> None:
    before = (await fake.ask("counts"))["requests"]
    queued = 0.0
    started = time.perf_counter()
    for _ in range(count):
        out = await admit(side.proxy)
        if out.get() is not None:  # what the host then writes, before it answers
            enqueue = time.perf_counter()
            await queue.send_message(QUEUE_OPTIONS.encode(str(out.get())))
            queued += time.perf_counter() - enqueue
            side.queue_writes += 1
    side.times.append((time.perf_counter() - started) / count)
    side.queue_times.append(queued / count)
    after = (await fake.ask("counts"))["requests"]
    side.upstream += sum(after.get(k, 0) - before.get(k, 0) for k in ("client_secrets", "calls"))
    side.connects += count


async def mean_row_bytes(proxy: RealtimeProxy) -> float:
    rows = await proxy.table.rows("call-")
    return statistics.mean(len(json.dumps(row.props)) for row in rows)


async def connect_cost(setup: Setup, args: argparse.Namespace) -> dict[str, Any]:
    env = setup.env()
    sides = {
        mode: Side(proxy, counting(proxy.table))  # type: ignore[arg-type]  # a StorageTable: storage is set
        for mode in ("enforce", "off")
        for proxy in [RealtimeProxy.from_environ({**env, "REALTIME_SUPERVISOR": mode, "LIMITS_TABLE": f"t{mode}"})]
    }
    queue = await calls_queue(setup, env)
    try:
        for side in sides.values():  # tables and pools, not measured
            await connect_round(Side(side.proxy, side.trips), queue, 3, setup.fake)
            side.trips[0] = 0
        per_round = max(1, args.n // args.rounds)
        await setup.fake.ask("latency", seconds=args.latency, times=2 * per_round * args.rounds)
        for _ in range(args.rounds):
            for side in sides.values():
                await connect_round(side, queue, per_round, setup.fake)
        on, off = sides["enforce"], sides["off"]
        return {
            "connects": on.connects,
            "on_ms": statistics.median(on.times) * 1000,
            "off_ms": statistics.median(off.times) * 1000,
            "queue_ms": statistics.median(on.queue_times) * 1000,
            "upstream": (on.upstream / on.connects, off.upstream / off.connects),
            "storage": (on.trips[0] / on.connects, off.trips[0] / off.connects),
            "queue_writes": (on.queue_writes / on.connects, off.queue_writes / off.connects),
            "row_bytes": (await mean_row_bytes(on.proxy), await mean_row_bytes(off.proxy)),
        }
    finally:
        await queue.close()
        for side in sides.values():
            await side.proxy.aclose()


def print_cost(cost: dict[str, Any], args: argparse.Namespace) -> None:
    head = ["supervision", "connect ms (median of rounds)", "ratio", "upstream trips", "storage trips", "queue writes"]
    print(
        f"\n3. Cost added to /connect: {cost['connects']} connects per side in {args.rounds} interleaved rounds, "
        f"the fake answering each upstream request after {args.latency * 1000:g} ms (load {load()})"
    )
    print(row([*head, "ledger row bytes"]))
    print(row(["---"] * (len(head) + 1)))
    for index, label in enumerate(("on (enforce)", "off (baseline)")):
        ms = cost["on_ms"] if index == 0 else cost["off_ms"]
        cells = [
            label + (f", of which queue write {cost['queue_ms']:.1f} ms" if index == 0 else ""),
            f"{ms:.1f}",
            f"{ms / cost['off_ms']:.3f}x",
            *(f"{cost[key][index]:.2f}" for key in ("upstream", "storage", "queue_writes")),
            f"{cost['row_bytes'][index]:.0f}",
        ]
        print(row(cells))
    same = cost["upstream"][0] == cost["upstream"][1]
    print(
        f"goal: no extra upstream round trip ({'met' if same else 'NOT met'}), one queue write "
        f"({'met' if cost['queue_writes'] == (1.0, 0.0) else 'NOT met'})"
    )


# -- the run -----------------------------------------------------------------------------------------------------


def row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


async def run(setup: Setup, args: argparse.Namespace) -> None:
    print(
        f"Supervisor bench {time.strftime('%Y-%m-%d %H:%M')}: {os.cpu_count()} cores, Python "
        f"{sys.version.split()[0]}, load average {load()} at the start",
        flush=True,
    )
    if 1 in args.parts:
        print(hold_verdict(await hold_calls(setup, args)), flush=True)
    if 2 in args.parts:
        print_attach(await attach_latency(setup, args), args)
    if 3 in args.parts:
        print_cost(await connect_cost(setup, args), args)


def integers(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=integers, default=[50, 100, 250, 500, 1000], help="the ramp's steps")
    parser.add_argument("--rate", type=float, default=3.0, help="events a second per call (default 3)")
    parser.add_argument(
        "--window", type=float, default=HEARTBEAT_SECONDS, help="seconds measured per step (default: a heartbeat)"
    )
    parser.add_argument("--probes", type=int, default=100, help="policy violations timed per step (default 100)")
    parser.add_argument("--connects", type=int, default=30, help="connects timed per attach path (default 30)")
    parser.add_argument("--gap", type=float, default=3.0, help="most seconds between those connects (default 3)")
    parser.add_argument("-n", type=int, default=200, help="connects per side for the connect's cost (default 200)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--latency", type=float, default=0.05, help="seconds the fake takes per upstream request in part 3"
    )
    parser.add_argument("--parts", type=integers, default=[1, 2, 3], help="which measurements (default 1,2,3)")
    parser.add_argument("--log", default=os.devnull, help="the app's log lines, at INFO (default: formatted, dropped)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, filename=args.log, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="bench-azurite-") as folder:
        fake = FakeProcess()
        try:
            with Azurite(Path(folder)) as azurite:
                asyncio.run(run(Setup(fake, azurite), args))
        finally:
            fake.close()


if __name__ == "__main__":
    main()
