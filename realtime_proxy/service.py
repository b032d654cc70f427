"""Builds everything a process needs once (settings, credential, pooled upstream) and hands out the handlers.

Every handler runs inside one guard: it names the request (an id in the `X-Request-Id` header, in every
error body and in every log line) and turns anything unexpected into `500 internal_error` carrying that id,
never a stack trace.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from functools import wraps
from pathlib import Path

import azure.functions as func

from .admission import Admission
from .calls import CallControl
from .connect import ConnectHandler
from .cors import OriginPolicy
from .credentials import credentials_for
from .errors import ApiError, error_response, json_response
from .logs import REQUEST_ID, logger, new_request_id
from .policy import public_config
from .ratelimit import RateLimiter
from .settings import Settings, load_settings
from .static_files import StaticFiles
from .tables import table_for
from .telemetry import NO_TELEMETRY, NoTelemetry, Telemetry, telemetry_from_environ

STATIC_ROOT = Path(__file__).resolve().parent.parent / "static"
RESERVED = {"connect": "POST, OPTIONS", "config": "GET", "operator/pause": "POST", "operator/resume": "POST"}
Handler = Callable[[func.HttpRequest], Awaitable[func.HttpResponse]]
log = logger(__name__)


def guarded(handler: Handler) -> Handler:
    @wraps(handler)
    async def run(req: func.HttpRequest) -> func.HttpResponse:
        request_id = new_request_id(req.headers.get("traceparent"))
        token = REQUEST_ID.set(request_id)
        try:
            response = await handler(req)
        except Exception:
            name = getattr(handler, "__name__", type(handler).__name__)  # ConnectHandler is an object, not a function
            log.exception("unexpected failure in %s %s", req.method, name)
            response = error_response(ApiError(500, "internal_error", f"Something went wrong; quote {request_id}."))
        finally:
            REQUEST_ID.reset(token)
        response.headers["X-Request-Id"] = request_id
        return response

    return run


class RealtimeProxy:
    def __init__(
        self, settings: Settings, static_root: Path = STATIC_ROOT, telemetry: Telemetry | NoTelemetry = NO_TELEMETRY
    ) -> None:
        self.settings = settings
        upstream = None
        if settings.configured:
            credentials = credentials_for(
                settings.api_key, settings.managed_identity_client_id, settings.limits.deadline_seconds
            )
            credentials.warm()
            upstream = telemetry.upstream(settings, credentials)
        self.origins = OriginPolicy(settings.allowed_origins)
        self.limiter = RateLimiter(settings.limits.rate_limit_per_minute, settings.limits.rate_limit_burst)
        self.table = table_for(settings.shared, settings.managed_identity_client_id)
        self.admission = Admission(self.table, settings.shared, settings.limits.rate_limit_per_minute)
        self._connect = ConnectHandler(settings, upstream, self.origins, self.limiter, self.admission, telemetry)
        self.calls = CallControl(self.admission, upstream, self.origins)
        self.files = StaticFiles(static_root)
        self.connect = guarded(self._connect)
        self.preflight = guarded(self._preflight)
        self.config = guarded(self._config)
        self.static = guarded(self._static)
        self.hang_up = guarded(self.calls.hang_up)
        self.hang_up_preflight = guarded(self._hang_up_preflight)
        self.pause = guarded(self.calls.pause)
        self.resume = guarded(self.calls.resume)
        self.sweep = self.calls.sweep
        log.info(
            "limits: %s",
            "shared, in the app's storage account"
            if self.table.shared
            else "per instance (no AzureWebJobsStorage): each instance enforces its own",
        )

    async def aclose(self) -> None:
        if self._connect.upstream:
            await self._connect.upstream.aclose()
        await self.table.aclose()

    @classmethod
    def from_environ(cls, env: Mapping[str, str] | None = None) -> RealtimeProxy:
        return cls(load_settings(env), telemetry=telemetry_from_environ(os.environ if env is None else env))

    async def _preflight(self, req: func.HttpRequest) -> func.HttpResponse:
        return self.origins.preflight(req)

    async def _hang_up_preflight(self, req: func.HttpRequest) -> func.HttpResponse:
        return self.origins.preflight(req)

    async def _config(self, req: func.HttpRequest) -> func.HttpResponse:
        try:
            cors = self.origins.check(req)
        except ApiError:
            cors = {"Vary": "Origin"}
        config = public_config(self.settings.policy, self.settings.emulator)
        config["session"] = {"maxSeconds": self.settings.shared.max_session_seconds or None}
        config["limits"] = "shared" if self.table.shared else "instance"
        return json_response(config, headers=cors)

    async def _static(self, req: func.HttpRequest) -> func.HttpResponse:
        path = req.route_params.get("path", "") or ""
        allow = RESERVED.get(path.strip("/").lower())
        if allow:
            return error_response(ApiError(405, "method_not_allowed", f"Use {allow} here.", {"Allow": allow}))
        return self.files.serve(req, path)
