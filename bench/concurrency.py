"""A burst of users on one instance: the app beside the original Worker, under closed-loop load (issue 8).

In one run, against one fake upstream (`bench/fake_upstream.py`, 150 ms per request by default, so a connect
spends ~300 ms upstream):
- cold start of one app worker process, process start -> first 201, for a bare app (the baseline), the app with
  an API key, and the app with managed identity (token endpoint on loopback with a realistic delay), with how
  long the first connect itself took (the upstream answers at once here, so that is the app's own time);
- for 50 and 200 clients, N connects through the app (`bench/function_host.py`, dispatching as Azure's Python
  worker does: the real `azure-functions-runtime` library when Python 3.13 is around, else an emulation; with
  `FUNCTIONS_WORKER_PROCESS_COUNT` processes) and through the original Worker under workerd
  (`../shared/seed/run-seed-worker.sh`): throughput, p50, p99, errors, upstream TCP connections opened during the
  run, CPU ms per connect of the serving processes, and the app/Worker ratios against issue 8's goals.
Worker settings come from the environment, else from local.settings.json.example (what the project ships).
Other load on the machine skews every figure (the load average is printed); the ratios, measured in the same
run, skew least. Take the real figures from a quiet machine.

    ./dev bench concurrency [-n 600] [--clients 50,200] [--latency 0.15] [--dispatch auto|runtime|emulated]
                            [--targets app,worker] [--app-root DIR] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import runtime_env
from load import LoadResult, closed_loop, connect_once

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SEED_WORKER = ROOT.parent / "shared" / "seed" / "run-seed-worker.sh"
KEY = "bench-key"
WORKER_SETTINGS = ("PYTHON_THREADPOOL_THREAD_COUNT", "FUNCTIONS_WORKER_PROCESS_COUNT")
TICKS = os.sysconf("SC_CLK_TCK")
TODAY_COLD_START_MS = 320  # issue 8's reference; goal: within 1.3x of it


BARE_APP = """import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="connect", methods=["POST"])
def connect(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("v=0\\r\\n", status_code=201, mimetype="application/sdp")
"""


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes (all their threads) so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shipped_settings(app_root: Path) -> dict[str, str]:
    """The worker settings the project ships (local.settings.json.example), overridden by the environment."""
    values = json.loads((app_root / "local.settings.json.example").read_text()).get("Values", {})
    settings = {name: str(values[name]) for name in WORKER_SETTINGS if values.get(name)}
    settings.update({name: os.environ[name] for name in WORKER_SETTINGS if os.environ.get(name)})
    return settings


@dataclass(frozen=True)
class AppHost:
    """How app worker processes are started: which Python, which dispatch, which app."""

    python: str
    runtime: bool  # the real worker library (azure-functions-runtime) rather than the emulation
    app_root: Path

    @classmethod
    def choose(cls, dispatch: str, app_root: Path) -> AppHost:
        runtime = dispatch == "runtime" or (dispatch == "auto" and runtime_env.available())
        return cls(str(runtime_env.ensure(app_root)) if runtime else sys.executable, runtime, app_root)

    def argv(self, port: int) -> list[str]:
        return [
            self.python,
            str(BENCH / "function_host.py"),
            "--port",
            str(port),
            "--app-root",
            str(self.app_root),
            *(["--runtime"] if self.runtime else []),
        ]


class Child:
    """A process we started, stopped by closing its stdin (our servers) or by signal to its own group."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.started = time.perf_counter()
        self.argv = argv
        env = {**(env or os.environ), "BENCH_SPAWNED_AT": repr(time.time())}  # lets the child time its own start-up
        self.proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
        )

    async def ready(self, timeout: float = 60) -> dict:
        """The JSON line the child prints once it serves."""
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout)
        if not line:
            raise RuntimeError(f"{self.argv[:2]} exited with {self.proc.wait()}")
        return json.loads(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(5)


@dataclass
class Target:
    name: str
    url: str
    pids: list[int]
    children: list[Child]
    info: dict  # what the first serving process said about itself


async def start_app(host: AppHost, env: dict[str, str], processes: int) -> Target:
    port = free_port()
    children = [Child(host.argv(port), env) for _ in range(processes)]
    infos = [await child.ready() for child in children]
    return Target("app", f"http://127.0.0.1:{port}/connect", [i["pid"] for i in infos], children, infos[0])


async def start_seed_worker(upstream_url: str) -> Target:
    """workerd serving worker.ts; the script ends by exec'ing workerd, so its pid is the serving process."""
    port = free_port()
    child = Child(["bash", str(SEED_WORKER), str(port), upstream_url, KEY])
    deadline = time.monotonic() + 240  # the first run installs wrangler from npm
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"run-seed-worker.sh exited with {child.proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            await asyncio.sleep(0.2)
    else:
        raise RuntimeError("the seed Worker did not start serving")
    return Target("worker", f"http://127.0.0.1:{port}/connect", [child.proc.pid], [child], {})


async def cold_start(host: AppHost, env: dict[str, str]) -> dict[str, float]:
    """Milliseconds from starting one worker process to: serving, the first 201; and what the first connect itself
    took. The connect is sent as soon as the worker serves, as the host forwards the request that woke it."""
    port = free_port()
    child = Child(host.argv(port), env)
    try:
        info = await child.ready()
        ready = time.perf_counter()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            error = await connect_once(http, f"http://127.0.0.1:{port}/connect")
        done = time.perf_counter()
        if error:
            raise RuntimeError(f"cold start connect failed: {error}")
        return {
            "first_201": (done - child.started) * 1000,
            "serving": (ready - child.started) * 1000,
            "boot": info["boot_ms"],
            "load_app": info["load_ms"],
            "first_connect": (done - ready) * 1000,
        }
    finally:
        child.stop()


def write_bare_app(folder: Path, app_root: Path) -> None:
    """A function app that answers 201 at once: the worker's own floor."""
    (folder / "function_app.py").write_text(BARE_APP)
    (folder / "host.json").write_text((app_root / "host.json").read_text())


async def cold_starts(
    host: AppHost, with_key: dict[str, str], with_identity: dict[str, str], args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """Median cold starts of: a bare app answering 201 at once (the worker's own floor, the baseline), the app
    with an API key, the app with managed identity. Rounds interleave the kinds so machine noise hits all alike;
    the first round is untimed, so bytecode compiling and a cold page cache land on none of them."""
    with tempfile.TemporaryDirectory(prefix="bare-app-") as bare:
        write_bare_app(Path(bare), host.app_root)
        kinds = {
            "bare app (baseline)": (replace(host, app_root=Path(bare)), with_key),
            "app, api key": (host, with_key),
            f"app, managed identity ({args.identity_delay * 1000:.0f} ms token)": (host, with_identity),
        }
        runs: dict[str, list[dict[str, float]]] = {label: [] for label in kinds}
        for round_ in range(args.cold_runs + 1):
            for label, (kind, env) in kinds.items():
                timing = await cold_start(kind, env)
                if round_:
                    runs[label].append(timing)
    return {
        label: {key: statistics.median(r[key] for r in timings) for key in timings[0]}
        for label, timings in runs.items()
    }


async def upstream_stats(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(f"{url}/_stats") as response:
        return await response.json()


async def upstream_reset(url: str, latency: float | None = None) -> None:
    """Clears the fake's counters (and sets its service time)."""
    params = {} if latency is None else {"latency": str(latency)}
    async with aiohttp.ClientSession() as http, http.post(f"{url}/_reset", params=params) as response:
        response.raise_for_status()


@dataclass
class Row:
    clients: int
    target: str
    load: LoadResult
    cpu_ms_per_connect: float
    upstream_connections: int
    upstream_cpu_pct: float

    def as_dict(self) -> dict:
        return {
            "clients": self.clients,
            "target": self.target,
            "connects": self.load.completed,
            "seconds": round(self.load.seconds, 2),
            "throughput": round(self.load.throughput, 1),
            "p50_ms": round(self.load.median_ms, 1),
            "p99_ms": round(self.load.percentile(0.99), 1),
            "errors": dict(self.load.errors),
            "upstream_connections": self.upstream_connections,
            "cpu_ms_per_connect": round(self.cpu_ms_per_connect, 2),
            "upstream_cpu_pct": round(self.upstream_cpu_pct),
        }


async def measure(
    target: Target, clients: int, count: int, max_seconds: float, upstream: str, upstream_pid: int
) -> Row:
    async with aiohttp.ClientSession() as http:
        for _ in range(3):  # lazy imports and first connections are the cold start's business, not this
            await connect_once(http, target.url)
        await upstream_reset(upstream)
        cpu, fake_cpu = cpu_seconds(target.pids), cpu_seconds([upstream_pid])
        result = await closed_loop(target.url, clients, count, max_seconds)
        cpu, fake_cpu = cpu_seconds(target.pids) - cpu, cpu_seconds([upstream_pid]) - fake_cpu
        stats = await upstream_stats(http, upstream)
    return Row(
        clients,
        target.name,
        result,
        cpu * 1000 / max(1, result.completed),
        stats["connections"],
        100 * fake_cpu / result.seconds if result.seconds else 0.0,
    )


def report(args: argparse.Namespace, settings: dict[str, str], app_info: dict, cold: dict, rows: list[Row]) -> None:
    upstream_floor = 2 * args.latency * 1000
    print(
        f"concurrency benchmark: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end, "
        f"upstream {args.latency * 1000:.0f} ms per request, {args.n} connects per run"
    )
    if "dispatch" in app_info:
        print(
            f"app: {app_info['dispatch']} dispatch (Python {app_info['python']}), "
            f"{app_info['processes']} process(es) x {app_info['threads']} sync threads, POST /connect is "
            f"{app_info['handlers'].get('POST /connect', 'missing')}; "
            f"settings {settings or 'none (worker defaults)'}"
        )
    print(
        f"cold start of one worker, upstream answering in {args.cold_latency * 1000:.0f} ms, "
        f"median of {args.cold_runs}:"
    )
    floor = next(iter(cold.values()))["first_201"]
    for label, ms in cold.items():
        print(
            f"  {label:<40} process start -> first 201 {ms['first_201']:5.0f} ms ({ms['first_201'] / floor:.2f}x "
            f"baseline; serving at {ms['serving']:.0f}: worker start {ms['boot']:.0f}, "
            f"app load {ms['load_app']:.0f}; "
            f"first connect {ms['first_connect']:.0f})"
        )
    print(
        f"  issue 8: ~{TODAY_COLD_START_MS} ms locally before, keep within 1.3x; with managed identity the first "
        f"connect should not wait for the token endpoint"
    )
    print(
        f"{'clients':>7} {'target':<7} {'conn/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'upstream TCP':>12} "
        f"{'CPU ms/connect':>14} {'fake CPU %':>10}"
    )
    for row in rows:
        d = row.as_dict()
        print(
            f"{row.clients:>7} {row.target:<7} {d['throughput']:>7.1f} {d['p50_ms']:>7.0f} {d['p99_ms']:>7.0f} "
            f"{sum(row.load.errors.values()):>6} {row.upstream_connections:>12} {d['cpu_ms_per_connect']:>14.2f} "
            f"{d['upstream_cpu_pct']:>10.0f}"
        )
    for clients in args.clients:
        by = {r.target: r for r in rows if r.clients == clients}
        app, worker = by.get("app"), by.get("worker")
        if app is None:
            continue
        goals = []
        if worker is not None and worker.load.throughput:
            ratio, want = app.load.throughput / worker.load.throughput, {50: 0.8, 200: 0.6}.get(clients)
            goals.append(f"throughput {ratio:.2f}x" + (f" ({'>=' if ratio >= want else '<'} {want})" if want else ""))
            goals.append(f"p50 {app.load.median_ms / worker.load.median_ms:.2f}x")
            goals.append(f"CPU/connect {app.cpu_ms_per_connect / max(worker.cpu_ms_per_connect, 1e-9):.2f}x")
        if clients == 50:
            limit = 1.25 * upstream_floor
            verdict = "<=" if app.load.median_ms <= limit else ">"
            goals.append(f"app p50 {app.load.median_ms:.0f} ms ({verdict} {limit:.0f})")
        errors = sum(app.load.errors.values())
        goals.append(f"errors {errors}" + (f" {dict(app.load.errors)}" if errors else ""))
        goals.append(
            f"upstream TCP {app.upstream_connections} ({'<=' if app.upstream_connections <= clients else '>'} "
            f"{clients})"
        )
        print(f"{clients:>7} app/worker: " + "; ".join(goals))


async def run(args: argparse.Namespace) -> None:
    settings = shipped_settings(args.app_root)
    host = AppHost.choose(args.dispatch, args.app_root)
    processes = int(settings.get("FUNCTIONS_WORKER_PROCESS_COUNT", "1"))
    fake = Child(
        [
            sys.executable,
            str(BENCH / "fake_upstream.py"),
            "--latency",
            str(args.latency),
            "--key",
            KEY,
            "--identity-delay",
            str(args.identity_delay),
        ]
    )
    started: list[Target] = []
    try:
        upstream = await fake.ready()
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "IDENTITY_", "MSI_"))}
        base.update(settings, AZURE_OPENAI_BASE_URL=upstream["url"], RATE_LIMIT_PER_MINUTE="0")
        with_key = {**base, "AZURE_OPENAI_API_KEY": KEY}
        with_identity = {
            **base,
            "IDENTITY_ENDPOINT": upstream["identity_endpoint"],
            "IDENTITY_HEADER": upstream["identity_header"],
        }
        await upstream_reset(upstream["url"], args.cold_latency)
        cold = await cold_starts(host, with_key, with_identity, args)
        await upstream_reset(upstream["url"], args.latency)
        targets = args.targets.split(",")
        app = await start_app(host, with_key, processes) if "app" in targets else None
        worker = await start_seed_worker(upstream["url"]) if "worker" in targets else None
        started = [t for t in (app, worker) if t]
        rows = [
            await measure(t, clients, args.n, args.max_seconds, upstream["url"], fake.proc.pid)
            for clients in args.clients
            for t in started
        ]
        app_info = {"processes": processes, **(app.info if app else {})}
        if args.json:
            print(
                json.dumps(
                    {"settings": settings, "app": app_info, "cold_start_ms": cold, "runs": [r.as_dict() for r in rows]}
                )
            )
        else:
            report(args, settings, app_info, cold, rows)
    finally:
        for target in started:
            for child in target.children:
                child.stop()
        fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=600, help="connects per run (default 600)")
    parser.add_argument(
        "--clients",
        type=lambda s: [int(c) for c in s.split(",")],
        default=[50, 200],
        help="concurrent clients per run, comma-separated (default 50,200)",
    )
    parser.add_argument("--latency", type=float, default=0.15, help="fake upstream seconds per request (default 0.15)")
    parser.add_argument(
        "--identity-delay",
        type=float,
        default=0.3,
        help="seconds the managed-identity endpoint takes per token (default 0.3)",
    )
    parser.add_argument(
        "--cold-latency",
        type=float,
        default=0.0,
        help="fake upstream seconds per request during the cold starts (default 0: the app's own time)",
    )
    parser.add_argument(
        "--cold-runs",
        type=int,
        default=5,
        help="cold starts of each kind after an untimed round; the median is shown (default 5)",
    )
    parser.add_argument("--targets", default="app,worker", help="app, worker or both (default app,worker)")
    parser.add_argument("--max-seconds", type=float, default=120, help="no connect starts later than this in a run")
    parser.add_argument(
        "--dispatch",
        choices=("auto", "runtime", "emulated"),
        default="auto",
        help="runtime: the real worker library (azure-functions-runtime, Python 3.13, venv built on "
        "first use); emulated: function_host.py's copy of its dispatch; auto: runtime if Python "
        "3.13 and FUNCTIONS_HOST_PROTOS are there",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    parser.add_argument(
        "--app-root",
        type=lambda p: Path(p).resolve(),
        default=ROOT,
        help="folder with function_app.py to measure, e.g. a `git archive` of one commit while the "
        "tree is being edited (default: this repository)",
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
