"""HTTP routes that end live calls from the server: the caller's End, the operator's kill switch, and the timer.

The browser cannot be trusted to hang up, so the server does it with the resource's own credentials
(`POST {resource}/openai/v1/realtime/calls/{id}/hangup`, realtime-api.md §4); the ledger decides which calls.
Storage trouble on any of these routes is the route guard's `503 limits_unavailable` (realtime_proxy/service.py).
"""

from __future__ import annotations

import azure.functions as func

from .cors import OriginPolicy
from .errors import ApiError, error_response, json_response
from .ledger import Ledger
from .logs import logger
from .tables import Unavailable
from .upstream import CALL_ID

log = logger(__name__)
CALL_TOKEN = "X-Call-Token"


class CallControl:
    def __init__(self, ledger: Ledger, origins: OriginPolicy, configured: bool) -> None:
        self.ledger = ledger
        self.origins = origins
        self.configured = configured

    async def hang_up(self, req: func.HttpRequest) -> func.HttpResponse:
        """`POST /calls/{id}/hangup` with the `X-Call-Token` issued with the answer: the caller ends its own
        call and frees its session slot before the answer. Any other call or token is the same 404, so nothing
        can be learned by guessing."""
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
            self._require_configured()
            if not await self.ledger.hang_up_for_caller(call_id, token):
                raise ApiError(404, "call_not_found", "No live call with that id for this token.")
            return json_response({"ended": True}, headers=cors)
        except ApiError as error:
            return error_response(error, cors)

    async def pause(self, req: func.HttpRequest) -> func.HttpResponse:
        """The kill switch (admin key): hang up every live call and refuse new connects until resumed."""
        self._require_configured()
        ended, failed = await self.ledger.pause(True)
        log.warning("operator paused the app; %d live calls ended, %d hang-ups failing (retried)", ended, failed)
        return json_response({"paused": True, "callsEnded": ended, "callsFailing": failed})

    async def resume(self, req: func.HttpRequest) -> func.HttpResponse:
        self._require_configured()
        await self.ledger.pause(False)
        log.warning("operator resumed the app")
        return json_response({"paused": False})

    async def sweep(self) -> dict[str, int]:
        """Every minute (timer trigger): end calls past REALTIME_MAX_SESSION_SECONDS and tidy the table."""
        if not self.configured:
            return {}
        try:
            done = await self.ledger.sweep()
        except Unavailable as error:
            log.warning("sweep skipped: limits storage unavailable (%s); the next run catches up", error)
            return {}
        if any(done.values()):
            log.info("sweep: %s", done)
        return done

    def _require_configured(self) -> None:
        if not self.configured:
            raise ApiError(
                503, "not_configured", "The function app is not configured; see /connect for what is missing."
            )
