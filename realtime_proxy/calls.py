"""Ending live calls from the server: the caller's End, the operator's kill switch, and the session-length timer.

The browser cannot be trusted to hang up, so the server does it with the resource's own credentials
(`POST {resource}/openai/v1/realtime/calls/{id}/hangup`, realtime-api.md §4).
"""

from __future__ import annotations

import azure.functions as func

from .admission import Admission
from .cors import OriginPolicy
from .errors import ApiError, error_response, json_response
from .logs import logger
from .tables import Unavailable
from .upstream import CALL_ID, Upstream

log = logger(__name__)
CALL_TOKEN = "X-Call-Token"


class CallControl:
    def __init__(self, admission: Admission, upstream: Upstream | None, origins: OriginPolicy) -> None:
        self.admission = admission
        self.upstream = upstream
        self.origins = origins

    async def hang_up(self, req: func.HttpRequest) -> func.HttpResponse:
        """`POST /calls/{id}/hangup` with the `X-Call-Token` issued with the answer: the caller ends its own
        call and frees its session slot at once. Any other call or token is the same 404, so nothing can be
        learned by guessing."""
        cors: dict[str, str] = {}
        try:
            cors = self.origins.check(req)
            call_id, token = req.route_params.get("call_id", ""), req.headers.get(CALL_TOKEN, "")
            if not token or not CALL_ID.fullmatch(call_id):
                raise ApiError(
                    400,
                    "bad_request",
                    f"Send the {CALL_TOKEN} that came with the call's answer, for a call id from its Location.",
                )
            upstream = self._upstream()
            if not await self.admission.hang_up_for_caller(call_id, token, upstream.hangup):
                raise ApiError(404, "call_not_found", "No live call with that id for this token.")
            log.info("call %s ended by its caller", call_id)
            return json_response({"ended": True}, headers=cors)
        except ApiError as error:
            return error_response(error, cors)

    async def pause(self, req: func.HttpRequest) -> func.HttpResponse:
        """The kill switch (function key): hang up every live call and refuse new connects until resumed."""
        try:
            ended = await self.admission.pause(True, self._upstream().hangup)
        except ApiError as error:
            return error_response(error)
        log.warning("operator paused the app; %d live calls ended", ended)
        return json_response({"paused": True, "callsEnded": ended})

    async def resume(self, req: func.HttpRequest) -> func.HttpResponse:
        await self.admission.pause(False, self._upstream().hangup)
        log.warning("operator resumed the app")
        return json_response({"paused": False})

    async def sweep(self) -> dict[str, int]:
        """Every minute (timer trigger): end calls past REALTIME_MAX_SESSION_SECONDS and tidy the table."""
        if self.upstream is None:
            return {}
        try:
            done = await self.admission.sweep(self.upstream.hangup)
        except Unavailable as error:
            log.warning("sweep skipped: limits storage unavailable (%s); the next run catches up", error)
            return {}
        if any(done.values()):
            log.info("sweep: %s", done)
        return done

    def _upstream(self) -> Upstream:
        if self.upstream is None:
            raise ApiError(
                503, "not_configured", "The function app is not configured; see /connect for what is missing."
            )
        return self.upstream
