"""Dispatch through the real Azure Functions Python worker library, `azure-functions-runtime` (Python 3.13+).

On Azure, a thin proxy worker holds the host's gRPC stream and hands each message to this library, which
indexes `function_app.py`, converts `RpcHttp` into `azure.functions.HttpRequest`, runs sync functions on its
thread pool (`PYTHON_THREADPOOL_THREAD_COUNT`, else min(32, CPUs + 4)) and `async def` ones on the worker's
event loop, and converts the answer back. Here the proxy's part is played in-process: the same messages
(`WorkerInitRequest`, `FunctionsMetadataRequest`, `FunctionLoadRequest`, `InvocationRequest` with `RpcHttp`)
go through their wire encoding and straight into the library; the gRPC socket is the only thing left out.

Needs the venv `bench/runtime_env.py` builds (the library, the app's requirements, and the host's protos
compiled from $FUNCTIONS_HOST_PROTOS).
"""

from __future__ import annotations

import json
import types
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure_functions_runtime as library
import FunctionRpc_pb2 as rpc  # compiled by runtime_env.py from $FUNCTIONS_HOST_PROTOS
from aiohttp import web
from azure_functions_runtime.handle_event import _functions as indexed  # the library's registry: sync or async
from routing import literal_path
from shared import NullableTypes_pb2

PROTOS = types.SimpleNamespace(
    **{n: getattr(m, n) for m in (NullableTypes_pb2, rpc) for n in dir(m) if not n.startswith("_")}
)


@dataclass
class Envelope:
    """What the proxy worker passes the library: the host's message, plus the protos and the host address."""

    request: Any
    properties: dict[str, Any]


@dataclass(frozen=True)
class Function:
    function_id: str
    binding: str
    is_async: bool


def _over_the_wire(message: Any) -> Any:
    """The message as the other side of the gRPC stream would get it."""
    return rpc.StreamingMessage.FromString(message.SerializeToString())


async def _send(handler: Any, **message: Any) -> Any:
    envelope = Envelope(_over_the_wire(rpc.StreamingMessage(**message)), {"host": "127.0.0.1", "protos": PROTOS})
    return await handler(envelope)


class RuntimeDispatch:
    def __init__(self, routes: dict[tuple[str, str], Function]) -> None:
        self.routes = routes

    @classmethod
    async def load(cls, app_root: Path) -> RuntimeDispatch:
        """The host's start-up sequence: init (which indexes the app), metadata, one load per function."""
        from localdev.host import route_prefix

        library.start_threadpool_executor()
        init = await _send(
            library.worker_init_request,
            worker_init_request=rpc.WorkerInitRequest(
                host_version="4.1040.0", function_app_directory=str(app_root), worker_directory=str(app_root)
            ),
        )
        if init.result.status != rpc.StatusResult.Success:
            raise RuntimeError(f"worker init failed: {init.result.exception.message}")
        metadata = await _send(
            library.functions_metadata_request,
            functions_metadata_request=rpc.FunctionsMetadataRequest(function_app_directory=str(app_root)),
        )
        prefix = route_prefix(app_root / "host.json")
        routes: dict[tuple[str, str], Function] = {}
        for meta in metadata.function_metadata_results:
            await _send(
                library.function_load_request,
                function_load_request=rpc.FunctionLoadRequest(function_id=meta.function_id, metadata=meta),
            )
            trigger = next((b for b in map(json.loads, meta.raw_bindings) if b["type"] == "httpTrigger"), None)
            path = literal_path(prefix, trigger.get("route") or meta.name) if trigger else None
            if trigger is None or path is None:  # timers, and routes with parameters: not benchmarked
                continue
            for method in trigger.get("methods") or ["GET", "POST"]:
                routes[(method.upper(), path)] = Function(
                    meta.function_id, trigger["name"], indexed.get_function(meta.function_id).is_async
                )
        return cls(routes)

    def modes(self) -> dict[str, str]:
        return {f"{method} {path}": "async" if f.is_async else "sync" for (method, path), f in self.routes.items()}

    async def invoke(self, request: web.BaseRequest) -> web.StreamResponse:
        function = self.routes.get((request.method, request.path))
        if function is None:
            return web.Response(status=404)
        http = rpc.RpcHttp(
            method=request.method,
            url=str(request.url),
            headers=dict(request.headers),
            query=dict(request.query),
            body=rpc.TypedData(bytes=await request.read()),
        )
        answer = await _send(
            library.invocation_request,
            invocation_request=rpc.InvocationRequest(
                invocation_id=str(uuid.uuid4()),
                function_id=function.function_id,
                input_data=[rpc.ParameterBinding(name=function.binding, data=rpc.TypedData(http=http))],
            ),
        )
        answer = _over_the_wire(rpc.StreamingMessage(invocation_response=answer)).invocation_response
        if answer.result.status != rpc.StatusResult.Success:
            return web.Response(status=500, text=answer.result.exception.message)
        out = answer.return_value.http
        kind = out.body.WhichOneof("data")
        body = getattr(out.body, kind) if kind else b""
        return web.Response(
            status=int(out.status_code or 200),
            headers=dict(out.headers),
            body=body.encode() if isinstance(body, str) else body,
        )
