"""`POST /connect`: check the caller, read the offer, admit it, create the call the way its deployment's kind does
(realtime_proxy/exchange.py), record the call, answer SDP. One deadline (CONNECT_DEADLINE_SECONDS) bounds all of it,
storage included."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import azure.functions as func

from .admission import Admission
from .calls import CALL_TOKEN
from .cors import OriginPolicy
from .errors import ApiError, error_response
from .exchange import Exchange
from .ledger import Ledger
from .logs import logger
from .offer import Offer, read_offer
from .ratelimit import RateLimiter, client_ip
from .settings import Settings
from .supervisor import HandOff, Queue
from .telemetry import NoTelemetry, Record, Telemetry
from .upstream import Call, Upstream

log = logger(__name__)
RESERVE_SECONDS = 2.0  # at most this much of the deadline is kept for recording the call
TIMING_NAMES = {"client_secrets": "secret", "calls": "call", "live_sessions": "session"}  # Server-Timing's names


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
        exchanges: Mapping[str, Exchange],
        hand_off: HandOff,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.origins = origins
        self.limiter = limiter
        self.admission = admission
        self.ledger = ledger
        self.telemetry = telemetry
        self.exchanges = exchanges  # by deployment kind
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
                offer = read_offer(req, self.settings)
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
            response, call = await self._exchange(upstream, offer, cors, record, upstream_by)
        except BaseException:
            release = asyncio.ensure_future(self.ledger.release(ticket))  # finishes behind the answer if it must
            await asyncio.wait({release}, timeout=max(0.0, deadline - loop.time()))
            raise
        self.hand_off.prepare(ticket, call)
        await self.ledger.confirm(ticket, call.call_id, deadline, call.kind)
        self.hand_off.send(ticket, call, queue)
        response.headers[CALL_TOKEN] = ticket.token
        return response

    async def _exchange(
        self,
        upstream: Upstream,
        offer: Offer,
        cors: dict[str, str],
        record: Record,
        deadline: float,
    ) -> tuple[func.HttpResponse, Call]:
        """Everything upstream, token included, runs under the deadline: whatever the resource or the identity
        endpoint does (stall, drip one byte at a time), the caller has an answer by then."""
        stages: list[tuple[str, float]] = []

        def begin(name: str) -> None:
            stages.append((name, time.perf_counter()))
            record.stage(name)

        try:
            async with asyncio.timeout_at(deadline):
                begin("credential")
                auth = await upstream.credentials.headers()
                call = await self.exchanges[offer.model.kind](offer, auth, deadline, begin)
                record.call(call)
        except TimeoutError:
            stage = stages[-1][0]
            log.warning("connect deadline passed during %s", stage)
            if stage == "credential":
                raise ApiError(
                    503, "credential_unavailable", "The managed identity endpoint did not answer in time."
                ) from None
            raise ApiError(504, "upstream_timeout", "Azure OpenAI did not answer in time.") from None
        done = time.perf_counter()
        log.info("connect ok: call %s (%s) in %.0f ms", call.call_id, offer.model.kind, (done - stages[0][1]) * 1000)
        ends = [at for _, at in stages[1:]] + [done]
        timing = ", ".join(
            f"{TIMING_NAMES.get(name, name)};dur={(end - at) * 1000:.1f}"
            for (name, at), end in zip(stages, ends, strict=True)
        )
        headers = {**cors, "Content-Type": "application/sdp", "Cache-Control": "no-store", "Server-Timing": timing}
        if call.location:
            headers["Location"] = call.location
        return func.HttpResponse(call.answer_sdp, status_code=201, headers=headers), call
