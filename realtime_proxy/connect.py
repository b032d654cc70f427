"""`POST /connect`: check the caller, read the offer, admit it, mint an ephemeral secret, exchange the offer, record
the call, answer SDP. One deadline (CONNECT_DEADLINE_SECONDS) bounds all of it, storage included."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import azure.functions as func

from .admission import Admission
from .calls import CALL_TOKEN
from .cors import OriginPolicy
from .errors import ApiError, error_response
from .ledger import Ledger
from .logs import logger
from .offer import Offer, read_offer
from .policy import session_config
from .ratelimit import RateLimiter, client_ip
from .settings import Settings
from .supervisor import HandOff, Queue
from .telemetry import NoTelemetry, Record, Telemetry
from .upstream import Call, Upstream

log = logger(__name__)
RESERVE_SECONDS = 2.0  # at most this much of the deadline is kept for recording the call


class ConnectHandler:
    def __init__(
        self,
        settings: Settings,
        upstream: Upstream | None,
        origins: OriginPolicy,
        limiter: RateLimiter,
        admission: Admission,
        ledger: Ledger,
        telemetry: Telemetry | NoTelemetry,
        hand_off: HandOff,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.origins = origins
        self.limiter = limiter
        self.admission = admission
        self.ledger = ledger
        self.telemetry = telemetry
        self.hand_off = hand_off

    async def __call__(self, req: func.HttpRequest, queue: Queue | None = None) -> func.HttpResponse:
        """`queue`: the function's queue output binding, where an admitted call goes to its supervisor."""
        cors: dict[str, str] = {}
        deadline = asyncio.get_running_loop().time() + self.settings.limits.deadline_seconds
        with self.telemetry.connect(req, self.settings.deployment) as record:
            try:
                cors = self.origins.check(req)
                if self.upstream is None:
                    raise ApiError(
                        503,
                        "not_configured",
                        "The function app is not configured: " + "; ".join(self.settings.problems) + ".",
                    )
                self.limiter.check(req)
                offer = read_offer(req, self.settings.policy, self.settings.limits)
                record.offer(offer)
                answer = await self._admitted(req, self.upstream, offer, cors, record, deadline, queue)
                return record.done(answer, "ok")
            except ApiError as error:
                log.info("connect refused: %s %s", error.status, error.code)
                return record.done(error_response(error, cors), error.code)

    async def _admitted(
        self,
        req: func.HttpRequest,
        upstream: Upstream,
        offer: Offer,
        cors: dict[str, str],
        record: Record,
        deadline: float,
        queue: Queue | None,
    ) -> func.HttpResponse:
        """The shared limits admit the connect before anything goes upstream; the ledger then learns the call
        (or frees the session slot it held), and the caller gets its capability to end the call early. Admission
        and the upstream leave a reserve of the deadline for recording the call (and, failing that, ending it)."""
        loop = asyncio.get_running_loop()
        upstream_by = deadline - min(RESERVE_SECONDS, self.settings.limits.deadline_seconds / 5)
        try:
            async with asyncio.timeout_at(upstream_by):
                ticket = await self.admission.admit(client_ip(req), req.headers.get("origin", "")[:200], offer.voice)
        except TimeoutError:
            log.warning("connect deadline passed while the limits storage was asked")
            raise ApiError(
                503,
                "limits_unavailable",
                "The app's limits storage did not answer in time; try again shortly.",
                {"Retry-After": "5"},
            ) from None
        try:
            response, call, config = await self._exchange(upstream, offer, cors, record, upstream_by)
        except BaseException:
            release = asyncio.ensure_future(self.ledger.release(ticket))  # finishes behind the answer if it must
            await asyncio.wait({release}, timeout=max(0.0, deadline - loop.time()))
            raise
        self.hand_off.prepare(ticket, config)
        await self.ledger.confirm(ticket, call.call_id, deadline)
        self.hand_off.send(ticket, call.call_id, queue)
        response.headers[CALL_TOKEN] = ticket.token
        return response

    async def _exchange(
        self,
        upstream: Upstream,
        offer: Offer,
        cors: dict[str, str],
        record: Record,
        deadline: float,
    ) -> tuple[func.HttpResponse, Call, dict[str, Any]]:
        """Everything upstream, token included, runs under the deadline: whatever the resource or the identity
        endpoint does (stall, drip one byte at a time), the caller has an answer by then."""
        stage = "credential"
        started = time.perf_counter()
        try:
            async with asyncio.timeout_at(deadline):
                record.stage("credential")
                auth = await upstream.credentials.headers()
                stage, authorised = "client_secrets", time.perf_counter()
                record.stage(stage)
                config = session_config(self.settings.policy, self.settings.deployment, offer)
                secret = await upstream.mint_secret(config, auth, deadline)
                stage, minted = "calls", time.perf_counter()
                record.stage(stage)
                call = await upstream.create_call(offer.sdp, secret)
                record.call(call)
        except TimeoutError:
            log.warning("connect deadline passed during %s", stage)
            if stage == "credential":
                raise ApiError(
                    503, "credential_unavailable", "The managed identity endpoint did not answer in time."
                ) from None
            raise ApiError(504, "upstream_timeout", "Azure OpenAI did not answer in time.") from None
        done = time.perf_counter()
        log.info("connect ok: call %s in %.0f ms", call.call_id, (done - started) * 1000)
        headers = {
            **cors,
            "Content-Type": "application/sdp",
            "Cache-Control": "no-store",
            "Server-Timing": f"credential;dur={(authorised - started) * 1000:.1f}, "
            f"secret;dur={(minted - authorised) * 1000:.1f}, call;dur={(done - minted) * 1000:.1f}",
        }
        if call.location:
            headers["Location"] = call.location
        return func.HttpResponse(call.answer_sdp, status_code=201, headers=headers), call, config
