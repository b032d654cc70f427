"""A small stand-in for the Functions host: serves a `FunctionApp`'s registered HTTP routes over Werkzeug, and runs
its timer and Storage queue triggers (queues: localdev/queues.py).

Functions Core Tools cannot be installed everywhere; this gives the same URLs and the same responses
as `func start` (routePrefix from host.json, route templates, methods), and is what the browser tests use.
Like the Python worker, it runs `async def` handlers on one long-lived event loop and sync handlers on
the serving threads, and turns responses into HTTP with azure-functions' own converter.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.functions.http import HttpResponseConverter
from azure.functions.timer import TimerRequest
from werkzeug.datastructures import Headers
from werkzeug.exceptions import ClientDisconnected, HTTPException, MethodNotAllowed
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from .queues import QueueOptions, Queues

log = logging.getLogger(__name__)
HOST_JSON = Path(__file__).resolve().parent.parent / "host.json"


@dataclass(frozen=True)
class _Function:
    name: str
    handler: Callable[..., Any]
    binding: str  # the trigger's name: the worker passes the request as this keyword argument
    auth_level: str
    methods: frozenset[str]
    path: str  # in Werkzeug's syntax, prefix included


def route_prefix(host_json: Path) -> str:
    config = json.loads(host_json.read_text())
    return config.get("extensions", {}).get("http", {}).get("routePrefix", "api").strip("/")


def _rule_path(prefix: str, template: str) -> str:
    """Azure route templates (`{name}`, `{*rest}`) in Werkzeug's syntax (`<name>`, `<path:rest>`)."""
    path = re.sub(r"\{\*(\w+)\}", r"<path:\1>", template)
    path = re.sub(r"\{(\w+)(:[^}]*)?\}", r"<\1>", path)
    return "/" + "/".join(part for part in (prefix, path) if part)


@dataclass(frozen=True)
class _Timer:
    name: str
    handler: Callable[..., Any]
    binding: str
    every: float  # seconds between runs
    offset: float  # seconds into each period


def _trigger(function: Any) -> dict[str, Any]:
    return next(b.get_dict_repr() for b in function.get_bindings() if b.get_dict_repr()["type"].endswith("Trigger"))


def every(schedule: str) -> tuple[float, float]:
    """(period, offset) of the NCRONTAB schedules this host runs: `S * * * * *` (each minute at second S) and
    `S */N * * * *` (every N minutes). Anything else is refused at start, not silently misread."""
    fields = schedule.split()
    minutes = re.fullmatch(r"\*(?:/(\d+))?", fields[1]) if len(fields) == 6 else None
    if not minutes or not fields[0].isdigit() or any(field != "*" for field in fields[2:]):
        raise ValueError(f"the local host runs 'S * * * * *' or 'S */N * * * *' schedules, not {schedule!r}")
    return 60.0 * int(minutes.group(1) or 1), float(fields[0])


def _timers(functions: list[Any]) -> list[_Timer]:
    """Timer-triggered functions; LOCAL_TIMER_INTERVAL_SECONDS (local only) runs them more often for tests."""
    timers = []
    for function in functions:
        trigger = _trigger(function)
        if trigger["type"] == "timerTrigger":
            period, offset = every(trigger["schedule"])
            override = float(os.environ.get("LOCAL_TIMER_INTERVAL_SECONDS") or 0)
            timers.append(
                _Timer(
                    function.get_function_name(),
                    function.get_user_function(),
                    trigger["name"],
                    override or period,
                    0.0 if override else offset,
                )
            )
    return timers


def _functions(functions: list[Any], prefix: str) -> Iterable[_Function]:
    for function in functions:
        trigger = _trigger(function)
        if trigger["type"] != "httpTrigger":
            continue
        name = function.get_function_name()
        yield _Function(
            name=name,
            handler=function.get_user_function(),
            binding=trigger["name"],
            auth_level=str(getattr(trigger["authLevel"], "value", "")),
            methods=frozenset(str(getattr(m, "value", m)).upper() for m in trigger.get("methods") or ["GET", "POST"]),
            path=_rule_path(prefix, trigger.get("route") or name),
        )


def _rules(path: str, endpoint: str, methods: frozenset[str] | None) -> list[Rule]:
    """Rules for one route path; Azure's `{*rest}` also matches the empty rest."""
    rules = [Rule(path, endpoint=endpoint, methods=methods)]
    catch_all = re.fullmatch(r"(.*)<path:(\w+)>", path)
    if catch_all:
        rules.append(
            Rule(catch_all.group(1) or "/", endpoint=endpoint, methods=methods, defaults={catch_all.group(2): ""})
        )
    if methods is not None:
        for rule in rules:
            rule.methods = set(methods)  # Werkzeug adds HEAD to every GET rule; the Functions host does not
    return rules


def _error(status: int, code: str, message: str, request_id: str, headers: Mapping[str, str] | None = None) -> Response:
    """The host's own refusals, in the app's error shape and media type (no charset, as the worker sends JSON)."""
    return Response(
        json.dumps({"error": {"code": code, "message": message, "requestId": request_id}}, separators=(",", ":")),
        status=status,
        headers={"Cache-Control": "no-store", "X-Request-Id": request_id, **(headers or {})},
        content_type="application/json",
    )


class FunctionsHost:
    def __init__(
        self,
        app: func.FunctionApp,
        prefix: str,
        function_key: str | None = None,
        admin_key: str | None = None,
        queue_options: QueueOptions = QueueOptions(),  # noqa: B008 (frozen)
        environ: Mapping[str, str] = os.environ,  # the app settings, for %NAME% and connections
    ) -> None:
        self.function_key = function_key
        self.admin_key = admin_key
        registered = app.get_functions()  # may be called once per app
        self.functions = {function.name: function for function in _functions(registered, prefix)}
        self.allowed: dict[str, set[str]] = {}  # per route path, every method some function takes there
        for function in self.functions.values():
            self.allowed.setdefault(function.path, set()).update(function.methods)
        self.routes = Map(
            [r for f in self.functions.values() for r in _rules(f.path, f.name, f.methods)], strict_slashes=False
        )
        # Which route path a URL belongs to whatever the method, for the Allow header of a 405.
        self.paths = Map([r for path in self.allowed for r in _rules(path, path, None)], strict_slashes=False)
        # The worker's single event loop, for `async def` handlers.
        self.loop = asyncio.new_event_loop()
        self.queues = Queues(registered, queue_options, self.loop, environ)
        self._loop_thread = threading.Thread(target=self.loop.run_forever, name="functions-host-loop", daemon=True)
        self._loop_thread.start()
        for timer in _timers(registered):
            asyncio.run_coroutine_threadsafe(self._run_timer(timer), self.loop)
        self.queues.start()

    async def _run_timer(self, timer: _Timer) -> None:
        """Runs a timer function on its schedule, like the host (one run at a time; a failure is logged)."""
        while True:
            now = time.time()
            await asyncio.sleep(timer.every - (now - timer.offset) % timer.every)
            try:
                result = timer.handler(**{timer.binding: TimerRequest(past_due=False)})
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("timer function %s failed", timer.name)

    def run(self, work: Awaitable[Any], timeout: float | None = None) -> Any:
        """Runs `work` on the worker's event loop and returns its result."""

        async def awaited() -> Any:
            return await work

        return asyncio.run_coroutine_threadsafe(awaited(), self.loop).result(timeout)

    def close(self, *cleanup: Awaitable[Any]) -> None:
        """Stops the queue listeners (running queue functions are cancelled, their messages go back to the queue),
        awaits `cleanup` on the loop, then stops the loop; the server must not be serving any more."""
        for work in (self.queues.aclose(), *cleanup):
            self.run(work, timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join()
        self.loop.close()

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        return self._answer(Request(environ))(environ, start_response)

    def _answer(self, request: Request) -> Response:
        request_id = uuid.uuid4().hex
        try:
            name, route_params = self.routes.bind_to_environ(request.environ).match()
        except MethodNotAllowed:
            path, _ = self.paths.bind_to_environ(request.environ).match()
            allow = ", ".join(sorted(self.allowed[path]))
            return _error(405, "method_not_allowed", f"Use {allow} here.", request_id, {"Allow": allow})
        except HTTPException:
            return Response(status=404)
        function = self.functions[name]
        if not self._authorised(
            function.auth_level, request.args.get("code") or request.headers.get("x-functions-key")
        ):
            return Response(status=401)
        try:
            body = request.get_data()
        except ClientDisconnected:
            return _error(400, "bad_request", "The request body is shorter than its Content-Length.", request_id)
        try:
            return self._respond(self._invoke(function, self._request(request, route_params, body)))
        except Exception:
            # The path only: a query string may hold a Functions key, and the body is the caller's.
            log.exception("%s %s: function %s failed (request id %s)", request.method, request.path, name, request_id)
            return _error(500, "internal_error", f"The function failed; quote request id {request_id}.", request_id)

    def _invoke(self, function: _Function, request: func.HttpRequest) -> func.HttpResponse:
        outputs = self.queues.new_outputs(function.name)
        result = function.handler(**{function.binding: request}, **outputs)
        if inspect.iscoroutine(result):
            result = self.run(result)
        if not isinstance(result, func.HttpResponse):
            raise TypeError(f"function {function.name} returned {type(result).__name__}, not func.HttpResponse")
        self.run(self.queues.send(function.name, outputs))  # after it succeeded, as the host writes outputs
        return result

    def _authorised(self, level: str, key: str | None) -> bool:
        """As on Azure: an admin route takes only the admin (master) key; a function route takes a function key or
        the admin key. Like `func start`, nothing is demanded while neither local key is set."""
        if level == "anonymous" or not (self.function_key or self.admin_key):
            return True
        accepted = {self.admin_key} if level == "admin" else {self.function_key, self.admin_key}
        return key is not None and key in accepted - {None}

    @staticmethod
    def _request(request: Request, route_params: Mapping[str, str], body: bytes) -> func.HttpRequest:
        headers = dict(request.headers)
        # The platform front end appends the caller's address; do the same so client_ip() works alike.
        forwarded = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{forwarded}, {request.remote_addr}" if forwarded else str(request.remote_addr)
        return func.HttpRequest(
            method=request.method,
            url=request.url,
            headers=headers,
            params=dict(request.args),
            route_params=dict(route_params),
            body=body,
        )

    @staticmethod
    def _respond(response: func.HttpResponse) -> Response:
        """What the worker sends the host: the response's own headers, plus a Content-Type only when it has
        none (with a charset only for text/*), as azure-functions' converter writes it."""
        wire = HttpResponseConverter.encode(response, expected_type=func.HttpResponse).value
        headers = Headers([(name, datum.value) for name, datum in wire["headers"].items()])
        for cookie in wire["cookies"] or ():
            for morsel in cookie.values():
                headers.add("Set-Cookie", morsel.OutputString())
        length = headers.get("Content-Length")  # a HEAD answer states the length of the body it omits
        result = Response(wire["body"].value, status=int(wire["status_code"].value), headers=headers)
        if length is not None:
            result.headers["Content-Length"] = length
        return result


class _AccessLog(WSGIRequestHandler):
    """Access log lines without query strings: `?code=` carries a Functions key."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.path = self.path.split("?", 1)[0]  # after the request was handled: only the log line sees this
        super().log_request(code, size)


def serve(
    app: func.FunctionApp,
    host: str = "127.0.0.1",
    port: int = 7071,
    function_key: str | None = None,
    admin_key: str | None = None,
    host_json: Path = HOST_JSON,
    environ: Mapping[str, str] = os.environ,
) -> BaseWSGIServer:
    """Starts serving in a daemon thread and returns the server (its port, shutdown(), and `.app.close()`)."""
    server = make_server(
        host,
        port,
        FunctionsHost(
            app,
            route_prefix(host_json),
            function_key,
            admin_key,
            QueueOptions.from_host_json(json.loads(host_json.read_text())),
            environ,
        ),
        threaded=True,
        request_handler=_AccessLog,
    )
    threading.Thread(target=server.serve_forever, name="functions-host", daemon=True).start()
    return server
