"""GPT-Live through `/connect` (realtime-api.md §6): the server creates the session; there is no ephemeral key.

`POST {resource}/openai/v1/live/sessions` with the server's session and the browser's offer, on the shared Upstream
(the same credentials, deadline, refused redirects, bounded body and error mapping as `/calls`). The service answers
200 or 201 with JSON `{"session": {"id"}, "transport": {"sdp"}}`; any other shape is a 502 the caller can read,
never relayed, and `/connect` frees the session slot as for a failed `/calls`.

Ending a session from the server: GPT-Live documents no HTTP hang-up. Its graceful end is `session.close` on the
session's attach socket (`…/live/sessions/{id}/attach`), answered by `session.closed` with the final usage, which is
the supervisor's to send. `LiveSessions.closer` is that seam: until something sets it, `end` can only note that the
session is left to end when the browser leaves it (the caller's End closes the browser's connection first) or at
the service's own limit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .errors import ApiError
from .exchange import Stage
from .logs import logger
from .offer import Offer
from .policy import live_session_config
from .settings import SessionPolicy
from .upstream import CALL_ID, Answer, Call, Upstream, said

log = logger(__name__)
Closer = Callable[[str], Awaitable[None]]  # sends `session.close` to the session with this id and awaits its end


class LiveSessions:
    def __init__(self, upstream: Upstream, policy: SessionPolicy, closer: Closer | None = None) -> None:
        self.upstream = upstream
        self.policy = policy
        self.closer = closer

    async def __call__(self, offer: Offer, auth: dict[str, str], deadline: float, stage: Stage) -> Call:
        """Never retried: the service may have consumed the offer."""
        stage("live_sessions")
        body = {
            "session": live_session_config(self.policy, offer),
            "transport": {"type": "webrtc", "sdp": offer.sdp},
        }
        answer = await self.upstream.post("sessions", api="live", json=body, headers=auth)
        secrets = tuple(auth.values())
        if not 200 <= answer.status < 300:
            raise self.upstream.failure(answer, "live_sessions", secrets, offer.model.name)
        session_id, sdp = _session(answer, secrets)
        return Call(sdp, session_id, kind="live")

    async def end(self, call_id: str) -> None:
        if self.closer is None:
            log.warning(
                "live session %s: GPT-Live has no HTTP hang-up and nothing attached to close it; it ends when the "
                "browser leaves or at the service's limit",
                call_id,
            )
            return
        await self.closer(call_id)


def _session(answer: Answer, secrets: tuple[str, ...]) -> tuple[str, str]:
    """The session id and answer SDP of a created session; a 502 for anything else, in words the caller can use."""

    def unexpected(what: str) -> ApiError:
        log.warning("live_sessions: Azure OpenAI answered %s %s", answer.status, what)
        return ApiError(502, "upstream_error", f"Azure OpenAI answered the GPT-Live session request {what}.")

    if answer.status not in (200, 201):
        raise unexpected("with a status that creates no session")
    payload = answer.json()
    if not isinstance(payload, dict):
        raise unexpected("without a JSON object")
    if payload.get("error"):
        reason = said(answer, secrets)
        raise unexpected(f"with an error{': ' + reason if reason else ''}")
    session, transport = payload.get("session"), payload.get("transport")
    sdp = transport.get("sdp") if isinstance(transport, dict) else None
    if not isinstance(sdp, str) or not sdp.lstrip().startswith("v=0"):
        raise unexpected("without an SDP answer (transport.sdp)")
    session_id = session.get("id") if isinstance(session, dict) else None
    if not isinstance(session_id, str) or not CALL_ID.fullmatch(session_id):
        raise unexpected("without a usable session id (session.id)")
    return session_id, sdp
