"""A small stand-in for the Functions host: serves a `FunctionApp`'s registered HTTP routes over Werkzeug.

Functions Core Tools cannot be installed everywhere; this gives the same URLs and the same responses
as `func start` (routePrefix from host.json, route templates, methods), and is what the browser tests use.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import azure.functions as func
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

log = logging.getLogger(__name__)
Handler = Callable[[func.HttpRequest], func.HttpResponse]


def route_prefix(host_json: Path) -> str:
    config = json.loads(host_json.read_text())
    return config.get("extensions", {}).get("http", {}).get("routePrefix", "api").strip("/")


def _rule_path(prefix: str, template: str) -> str:
    """Azure route templates (`{name}`, `{*rest}`) in Werkzeug's syntax (`<name>`, `<path:rest>`)."""
    path = re.sub(r"\{\*(\w+)\}", r"<path:\1>", template)
    path = re.sub(r"\{(\w+)(:[^}]*)?\}", r"<\1>", path)
    return "/" + "/".join(part for part in (prefix, path) if part)


class FunctionsHost:
    def __init__(self, app: func.FunctionApp, prefix: str, function_key: str | None = None) -> None:
        self.function_key = function_key
        self.handlers: dict[str, tuple[Handler, str]] = {}
        rules: list[Rule] = []
        for function in app.get_functions():
            trigger = next(b.get_dict_repr() for b in function.get_bindings() if b.get_dict_repr()["type"] == "httpTrigger")
            name = function.get_function_name()
            methods = [str(getattr(m, "value", m)) for m in trigger.get("methods") or ["GET", "POST"]]
            self.handlers[name] = (function.get_user_function(), str(getattr(trigger["authLevel"], "value", "")))
            path = _rule_path(prefix, trigger.get("route") or name)
            rules.append(Rule(path, endpoint=name, methods=methods))
            catch_all = re.fullmatch(r"(.*)<path:(\w+)>", path)
            if catch_all:  # Azure's {*rest} also matches the empty rest
                rules.append(Rule(catch_all.group(1) or "/", endpoint=name, methods=methods, defaults={catch_all.group(2): ""}))
        self.routes = Map(rules, strict_slashes=False)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        request = Request(environ)
        try:
            name, route_params = self.routes.bind_to_environ(environ).match()
        except NotFound:
            return Response(status=404)(environ, start_response)
        except HTTPException as exc:
            return Response(status=exc.code or 404)(environ, start_response)
        handler, auth_level = self.handlers[name]
        if auth_level == "function" and self.function_key and self.function_key not in (
            request.args.get("code"),
            request.headers.get("x-functions-key"),
        ):
            return Response(status=401)(environ, start_response)
        return self._respond(handler(self._request(request, route_params)))(environ, start_response)

    @staticmethod
    def _request(request: Request, route_params: dict[str, str]) -> func.HttpRequest:
        headers = dict(request.headers)
        # The platform front end appends the caller's address; do the same so client_ip() works alike.
        forwarded = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{forwarded}, {request.remote_addr}" if forwarded else str(request.remote_addr)
        return func.HttpRequest(
            method=request.method,
            url=request.url,
            headers=headers,
            params=dict(request.args),
            route_params=route_params,
            body=request.get_data(),
        )

    @staticmethod
    def _respond(response: func.HttpResponse) -> Response:
        headers = dict(response.headers)
        if "content-type" not in {key.lower() for key in headers} and response.mimetype:
            charset = f"; charset={response.charset}" if response.charset else ""
            headers["Content-Type"] = f"{response.mimetype}{charset}"
        result = Response(response.get_body(), status=response.status_code, headers=headers)
        if "Content-Length" in headers:  # a HEAD answer states the length of the body it omits
            result.headers["Content-Length"] = headers["Content-Length"]
        return result


class _AccessLog(WSGIRequestHandler):
    """Access log lines without query strings: `?code=` carries a Functions key."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.path = self.path.split("?", 1)[0]  # after the request was handled: only the log line sees this
        super().log_request(code, size)


def serve(app: func.FunctionApp, host: str = "127.0.0.1", port: int = 7071, function_key: str | None = None) -> BaseWSGIServer:
    """Starts serving in a daemon thread and returns the server (its port, and shutdown())."""
    top = Path(__file__).resolve().parent.parent
    server = make_server(
        host, port, FunctionsHost(app, route_prefix(top / "host.json"), function_key), threaded=True, request_handler=_AccessLog
    )
    threading.Thread(target=server.serve_forever, name="functions-host", daemon=True).start()
    return server
