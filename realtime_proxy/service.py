"""The composition root: builds everything a process needs once and hands out the handlers.

Only this module reads the environment (through settings and telemetry) and constructs collaborators: one
credential shared by Azure OpenAI and storage, the pooled upstream with its telemetry hook, the tables, the
admission and the ledger. Everything below takes what it needs as arguments.

Every handler runs inside one guard: it names the request (an id in the `X-Request-Id` header, in every
error body and in every log line), answers an ApiError as its JSON refusal, storage trouble as
`503 limits_unavailable`, and anything unexpected as `500 internal_error` carrying that id, never a trace.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from functools import wraps
from pathlib import Path

import azure.functions as func

import tools  # noqa: F401  the owner's tools register themselves on import (tools/__init__.py)

from .admission import Admission
from .calls import CallControl
from .connect import ConnectHandler
from .cors import OriginPolicy
from .credentials import ApiKeyCredentials, Credentials, EntraCredentials, Identity
from .errors import ApiError, error_response, json_response
from .exchange import Exchange, RealtimeCalls
from .ledger import Ledger
from .live import LiveCloser, LiveSessions
from .logs import REQUEST_ID, logger, new_request_id, remember_secret
from .policy import live_delegation, public_config, public_models
from .ratelimit import RateLimiter
from .reports import CallReport
from .settings import Settings, SharedLimits, load_settings
from .sideband import Sideband
from .static_files import StaticFiles
from .supervisor import HandOff, Supervisor
from .tables import MemoryTable, StorageTable, Table, Unavailable
from .telemetry import NO_TELEMETRY, NoTelemetry, Telemetry, telemetry_from_environ
from .tool_telemetry import NO_TOOL_TELEMETRY, ToolTelemetry
from .toolcalls import Toolbox
from .toolkit import REGISTRY, Tool
from .transcripts import open_transcripts
from .upstream import Upstream

STATIC_ROOT = Path(__file__).resolve().parent.parent / "static"
RESERVED = {
    "connect": "POST, OPTIONS",
    "config": "GET",
    "operator/pause": "POST",
    "operator/resume": "POST",
    "operator/calls": "GET",
}
Handler = Callable[..., Awaitable[func.HttpResponse]]  # the request, then whatever bindings the function has
log = logger(__name__)


def guarded(handler: Handler) -> Handler:
    @wraps(handler)
    async def run(req: func.HttpRequest, *bindings: object) -> func.HttpResponse:
        request_id = new_request_id(req.headers.get("traceparent"))
        token = REQUEST_ID.set(request_id)
        try:
            response = await handler(req, *bindings)
        except ApiError as error:
            response = error_response(error)
        except Unavailable as error:
            log.warning("%s %s: limits storage unavailable (%s)", req.method, _name(handler), error)
            response = error_response(
                ApiError(
                    503,
                    "limits_unavailable",
                    "The app cannot reach its storage; try again shortly.",
                    {"Retry-After": "5"},
                )
            )
        except Exception:
            log.exception("unexpected failure in %s %s", req.method, _name(handler))
            response = error_response(ApiError(500, "internal_error", f"Something went wrong; quote {request_id}."))
        finally:
            REQUEST_ID.reset(token)
        response.headers["X-Request-Id"] = request_id
        return response

    return run


def _name(handler: Handler) -> str:
    return getattr(handler, "__name__", type(handler).__name__)  # ConnectHandler is an object, not a function


class RealtimeProxy:
    def __init__(
        self, settings: Settings, static_root: Path = STATIC_ROOT, telemetry: Telemetry | NoTelemetry = NO_TELEMETRY
    ) -> None:
        settings, enabled = _enabled_tools(settings)
        self.settings = settings
        self.identity = Identity(settings.managed_identity_client_id)
        # The tool loop's process-wide half; a call's half is toolbox.for_call(call_id), run by the supervisor,
        # which is also when session_config gets toolbox.declarations() (docs/tools.md).
        self.toolbox = Toolbox(
            enabled,
            settings.tools,
            self.identity,
            ToolTelemetry() if isinstance(telemetry, Telemetry) else NO_TOOL_TELEMETRY,
        )
        self.table = _table(settings.shared, self.identity)
        self.upstream: Upstream | None = None
        self.sideband: Sideband | None = None
        self.supervisor: Supervisor | None = None
        self.exchanges: dict[str, Exchange] = {}  # by deployment kind
        self.live: LiveSessions | None = None
        # Tools go into a session only when a supervisor will be in the call to answer them.
        declared = self.toolbox.declarations() if settings.supervision.mode != "off" else []
        if settings.configured:
            credentials: Credentials = (
                ApiKeyCredentials(settings.api_key)
                if settings.api_key
                else EntraCredentials(self.identity, settings.limits.deadline_seconds)
            )
            credentials.warm()
            self.upstream = Upstream(settings, credentials, on_answer=telemetry.upstream_answered)
            self.sideband = Sideband(self.upstream)
            realtime = RealtimeCalls(self.upstream, settings.policy, declared)
            self.exchanges = {"realtime": realtime, "reasoning": realtime}
        local = MemoryTable()
        self.origins = OriginPolicy(settings.allowed_origins)
        self.limiter = RateLimiter(settings.limits.rate_limit_per_minute, settings.limits.rate_limit_burst)
        self.ledger = Ledger(
            self.table, local, self._hangup, slots_freed=lambda slots: self.admission.slots_freed(slots)
        )
        self.admission = Admission(
            self.table, local, self.ledger, settings.shared, settings.limits.rate_limit_per_minute
        )
        if self.upstream and self.sideband:
            if settings.supervision.mode != "off":
                self.supervisor = Supervisor(
                    self.ledger,
                    self.sideband,
                    settings.supervision,
                    telemetry,
                    settings.policy.turn_detection_choosable,
                    self.toolbox,
                    open_transcripts(settings.transcripts, self.identity),
                )
            # GPT-Live ends with `session.close`: on the socket of the supervisor holding the session here, else
            # on a short-lived attach, so the caller's End, the kill switch and the sweep work from any instance.
            closer = LiveCloser(self.sideband, settings.limits.deadline_seconds, self.supervisor)
            delegation = live_delegation(settings.tools.live_delegate, declared)
            self.live = LiveSessions(self.upstream, settings.policy, closer, delegation)
            self.exchanges["live"] = self.live
        self._connect = ConnectHandler(
            settings,
            self.upstream,
            self.origins,
            self.limiter,
            self.admission,
            self.ledger,
            telemetry,
            self.exchanges,
            HandOff(self.supervisor is not None),
        )
        self.calls = CallControl(self.ledger, self.origins, settings.configured)
        self.files = StaticFiles(static_root)
        self.connect = guarded(self._connect)
        self.preflight = guarded(self._preflight)
        self.config = guarded(self._config)
        self.static = guarded(self._static)
        self.hang_up = guarded(self.calls.hang_up)
        self.hang_up_preflight = guarded(self._preflight)
        self.pause = guarded(self.calls.pause)
        self.resume = guarded(self.calls.resume)
        self.sweep = self.calls.sweep
        self.operator_calls = guarded(CallReport(self.ledger, settings.supervision.prices).calls)
        log.info(
            "limits: %s",
            "shared, in the app's storage account"
            if self.table.shared
            else "per instance (no AzureWebJobsStorage): each instance enforces its own",
        )

    async def _hangup(self, call_id: str, kind: str) -> None:
        exchange = self.exchanges.get(kind)
        if exchange is None:
            raise ApiError(
                503, "not_configured", "The function app is not configured; see /connect for what is missing."
            )
        await exchange.end(call_id)

    async def supervise(self, message: bytes) -> None:
        """The queue trigger: stays in one call until it ends (realtime_proxy/supervisor.py)."""
        if self.supervisor is None:
            log.warning("a call reached the supervisor queue while supervision is off or unconfigured; dropped")
            return
        await self.supervisor.run(message)

    async def aclose(self) -> None:
        """What a worker does as it shuts down: leave supervised calls, end local work, close sockets, close the
        one credential."""
        if self.supervisor:
            await self.supervisor.aclose()
        if self.sideband:
            await self.sideband.aclose()
        await self.ledger.aclose()
        if self.upstream:
            await self.upstream.aclose()
        await self.table.aclose()
        await self.identity.close()

    @classmethod
    def from_environ(cls, env: Mapping[str, str] | None = None) -> RealtimeProxy:
        return cls(load_settings(env), telemetry=telemetry_from_environ(os.environ if env is None else env))

    async def _preflight(self, req: func.HttpRequest) -> func.HttpResponse:
        return self.origins.preflight(req)

    async def _config(self, req: func.HttpRequest) -> func.HttpResponse:
        try:
            cors = self.origins.check(req)
        except ApiError:
            cors = {"Vary": "Origin"}
        config = public_config(self.settings.policy, self.settings.emulator)
        config["session"] = {"maxSeconds": self.settings.shared.max_session_seconds or None}
        config["limits"] = "shared" if self.table.shared else "instance"
        config.update(public_models(self.settings))
        return json_response(config, headers=cors)

    async def _static(self, req: func.HttpRequest) -> func.HttpResponse:
        path = req.route_params.get("path", "") or ""
        allow = RESERVED.get(path.strip("/").lower())
        if allow:
            raise ApiError(405, "method_not_allowed", f"Use {allow} here.", {"Allow": allow})
        return self.files.serve(req, path)


def _enabled_tools(settings: Settings) -> tuple[Settings, tuple[Tool, ...]]:
    """The tools REALTIME_TOOLS enables; naming one that is not registered is a problem like any bad setting."""
    try:
        return settings, REGISTRY.select(settings.tools.enabled)
    except ValueError as problem:
        return replace(settings, problems=(*settings.problems, str(problem))), ()


def _table(shared: SharedLimits, identity: Identity) -> Table:
    """The shared table when the app has a storage account (AzureWebJobsStorage, by connection string or by
    identity, as the Functions host reads it), else one in this process."""
    if shared.storage:
        key = re.search(r"AccountKey=([^;]+)", shared.storage)
        if key:
            remember_secret(key.group(1))
        return StorageTable(shared.table, connection=shared.storage)
    if shared.storage_endpoint:
        identity.load()
        return StorageTable(shared.table, endpoint=shared.storage_endpoint, credential=identity)
    return MemoryTable()
