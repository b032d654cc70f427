"""Builds everything a process needs once (settings, credential, pooled session) and hands out the handlers."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import azure.functions as func

from .connect import ConnectHandler
from .cors import OriginPolicy
from .credentials import credentials_for
from .errors import ApiError, error_response, json_response
from .policy import public_config
from .ratelimit import RateLimiter
from .settings import Settings, load_settings
from .static_files import StaticFiles
from .upstream import Upstream, pooled_session

STATIC_ROOT = Path(__file__).resolve().parent.parent / "static"
RESERVED = {"connect": "POST, OPTIONS", "config": "GET"}


class RealtimeProxy:
    def __init__(self, settings: Settings, static_root: Path = STATIC_ROOT) -> None:
        self.settings = settings
        upstream = None
        if settings.configured:
            upstream = Upstream(settings, credentials_for(settings.api_key), pooled_session())
        self.origins = OriginPolicy(settings.allowed_origins)
        limiter = RateLimiter(settings.limits.rate_limit_per_minute, settings.limits.rate_limit_burst)
        self.connect = ConnectHandler(settings, upstream, self.origins, limiter)
        self.files = StaticFiles(static_root)

    @classmethod
    def from_environ(cls, env: Mapping[str, str] | None = None) -> RealtimeProxy:
        return cls(load_settings(env))

    def config(self, req: func.HttpRequest) -> func.HttpResponse:
        try:
            cors = self.origins.check(req)
        except ApiError:
            cors = {"Vary": "Origin"}
        return json_response(public_config(self.settings.policy, self.settings.emulator), headers=cors)

    def static(self, req: func.HttpRequest) -> func.HttpResponse:
        path = req.route_params.get("path", "") or ""
        allow = RESERVED.get(path.strip("/").lower())
        if allow:
            return error_response(ApiError(405, "method_not_allowed", f"Use {allow} here.", {"Allow": allow}))
        return self.files.serve(req, path)
