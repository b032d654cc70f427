"""One Azure Functions Python worker process for load runs: `function_app.py` dispatched as Azure's worker does.

Two dispatches, chosen by `--runtime`:
- the real worker library, `azure-functions-runtime` (Python 3.13; see runtime_dispatch.py);
- an emulation on azure-functions alone, for the project's own Python, which copies what decides throughput
  and CPU: sync handlers on one ThreadPoolExecutor of `PYTHON_THREADPOOL_THREAD_COUNT` threads (unset:
  min(32, CPUs + 4)), `async def` handlers as tasks on the worker's one event loop, the request as an
  `azure.functions.HttpRequest` with the body as bytes. It matches literal routes only (enough for /connect).
Both: the root logger is at INFO with a handler that formats every record and queues it on the event loop, as
the worker's gRPC log handler does, so per-connect logging costs what it costs in Azure. The host's HTTP front
(Kestrel, in the .NET host) and the gRPC socket are replaced by aiohttp's server inside this process.

`FUNCTIONS_WORKER_PROCESS_COUNT` is several of these on one port (SO_REUSEPORT). Prints one JSON line once it
serves (with how long loading the app took), then serves until stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import inspect
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from routing import literal_path

if TYPE_CHECKING:
    from runtime_dispatch import RuntimeDispatch

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Route:
    handler: Callable[..., Any]
    binding: str  # the trigger's parameter name: the worker passes the request by this keyword
    is_async: bool


class RpcLogHandler(logging.Handler):
    """Formats each record and queues it on the worker's loop, as the worker's AsyncLoggingHandler does."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.loop_thread = threading.get_ident()  # created on the loop's thread
        self.sent: collections.deque[tuple[str, str]] = collections.deque(maxlen=1000)

    def emit(self, record: logging.LogRecord) -> None:
        message = (record.levelname, self.format(record))
        if threading.get_ident() == self.loop_thread:
            self.sent.append(message)
        else:
            self.loop.call_soon_threadsafe(self.sent.append, message)


def thread_count() -> int:
    """The worker's sync pool size: the setting, else ThreadPoolExecutor's own default."""
    return int(os.environ.get("PYTHON_THREADPOOL_THREAD_COUNT") or min(32, (os.cpu_count() or 1) + 4))


def index(app: Any, prefix: str) -> dict[tuple[str, str], Route]:
    """(method, path) -> handler for the app's HTTP functions with literal routes (`get_functions()` once)."""
    routes: dict[tuple[str, str], Route] = {}
    for function in app.get_functions():
        trigger = function.get_trigger().get_dict_repr()
        path = literal_path(prefix, trigger.get("route") or function.get_function_name())
        if trigger["type"] != "httpTrigger" or path is None:  # timers, and routes with parameters: not benchmarked
            continue
        handler = function.get_user_function()
        for method in trigger.get("methods") or ["GET", "POST"]:
            routes[(str(getattr(method, "value", method)).upper(), path)] = Route(
                handler, trigger["name"], inspect.iscoroutinefunction(handler)
            )
    return routes


class EmulatedDispatch:
    """The worker's dispatch rebuilt on azure-functions alone: runs under the project's own Python."""

    def __init__(self, app_root: Path) -> None:
        from function_app import app  # the user's code, imported as the worker does at load
        from localdev.host import route_prefix

        self.routes = index(app, route_prefix(app_root / "host.json"))
        self.pool = ThreadPoolExecutor(thread_count())

    def modes(self) -> dict[str, str]:
        return {f"{method} {path}": "async" if r.is_async else "sync" for (method, path), r in self.routes.items()}

    async def invoke(self, request: web.BaseRequest) -> web.StreamResponse:
        import azure.functions as func

        route = self.routes.get((request.method, request.path))
        if route is None:
            return web.Response(status=404)
        req = func.HttpRequest(
            request.method,
            str(request.url),
            headers=dict(request.headers),
            params=dict(request.query),
            route_params={},
            body=await request.read(),
        )
        call = functools.partial(route.handler, **{route.binding: req})
        if route.is_async:
            response = await call()
        else:
            response = await asyncio.get_running_loop().run_in_executor(self.pool, call)
        headers = dict(response.headers)
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = f"{response.mimetype}; charset={response.charset}"
        return web.Response(status=response.status_code, headers=headers, body=response.get_body())


async def serve(port: int, app_root: Path, runtime: bool) -> None:
    sys.path[:0] = [str(app_root), str(REPO)]  # the app first; this repository for localdev's host.json reader
    os.chdir(app_root)
    loop = asyncio.get_running_loop()
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(RpcLogHandler(loop))
    booted = time.time()  # interpreter and worker imports done; the app is next
    started = time.perf_counter()
    dispatch: RuntimeDispatch | EmulatedDispatch
    if runtime:
        from runtime_dispatch import RuntimeDispatch

        dispatch = await RuntimeDispatch.load(app_root)
    else:
        dispatch = EmulatedDispatch(app_root)
    load_ms = (time.perf_counter() - started) * 1000
    invocations = 0

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal invocations
        invocations += 1
        return await dispatch.invoke(request)

    listener = await loop.create_server(
        web.Server(handle, access_log=None), "127.0.0.1", port, reuse_port=True, backlog=4096
    )
    spawned = float(os.environ.get("BENCH_SPAWNED_AT") or booted)
    print(
        json.dumps(
            {
                "pid": os.getpid(),
                "boot_ms": round((booted - spawned) * 1000, 1),
                "load_ms": round(load_ms, 1),
                "threads": thread_count(),
                "dispatch": "azure-functions-runtime" if runtime else "emulated",
                "python": sys.version.split()[0],
                "handlers": dispatch.modes(),
            }
        ),
        flush=True,
    )
    await loop.run_in_executor(None, sys.stdin.read)  # stop when the parent closes our stdin
    listener.close()
    print(json.dumps({"pid": os.getpid(), "invocations": invocations}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--app-root",
        type=Path,
        default=REPO,
        help="the folder holding function_app.py and host.json (default: this repository)",
    )
    parser.add_argument(
        "--runtime",
        action="store_true",
        help="dispatch through the real worker library, azure-functions-runtime (Python 3.13)",
    )
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.app_root.resolve(), args.runtime))


if __name__ == "__main__":
    main()
