"""GPT-Live through `/connect` (realtime-api.md §6): the server creates the session; there is no ephemeral key.

`POST {resource}/openai/v1/live/sessions` with the server's session and the browser's offer, on the shared Upstream
(the same credentials, deadline, refused redirects, bounded body and error mapping as `/calls`). The service answers
200 or 201 with JSON `{"session": {"id"}, "transport": {"sdp"}}`; any other shape is a 502 the caller can read,
never relayed, and `/connect` frees the session slot as for a failed `/calls`.

Ending a session from the server (the caller's End, the session length, the kill switch, the sweep): GPT-Live
documents no HTTP hang-up. Its graceful end is `session.close` on the session's attach socket
(`…/live/sessions/{id}/attach`), answered by `session.closed` with the final usage. `LiveCloser` sends it on the
socket of the supervisor holding the session on this instance, or else on one it opens just for that, so any
instance can end any session; a session the service no longer knows (404 on attach) is already over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from .errors import ApiError
from .exchange import Stage
from .logs import logger
from .offer import Offer
from .policy import CLIENT_DELEGATION, live_session_config
from .settings import SessionPolicy
from .sideband import NORMAL_CLOSE, Refused, Sideband
from .upstream import CALL_ID, Answer, Call, Upstream, said

log = logger(__name__)
Closer = Callable[[str], Awaitable[None]]  # sends `session.close` to the session with this id and awaits its end


class Holder(Protocol):
    """Whoever may hold a session's socket on this instance (the supervisor)."""

    async def close_live(self, session_id: str) -> bool: ...


class LiveCloser:
    """Ends a GPT-Live session: through the supervisor holding it here, else on a short-lived attach of its own,
    within `deadline` seconds (the connect deadline, as for a realtime hang-up). Raises ApiError when the session
    could not be told to close, so the ledger keeps the call claimed and the sweep tries again."""

    def __init__(self, sideband: Sideband, deadline: float, holder: Holder | None = None) -> None:
        self.sideband = sideband
        self.deadline = deadline
        self.holder = holder

    async def __call__(self, session_id: str) -> None:
        if self.holder is not None and await self.holder.close_live(session_id):
            return
        try:
            async with asyncio.timeout(self.deadline):
                await self._close(session_id)
        except Refused as refused:
            if not refused.gone:
                log.warning("live session %s: attach to close it refused (%s)", session_id, refused)
                message = f"Azure OpenAI refused the attach to end the session ({refused})."
                if refused.forbidden:
                    raise ApiError(502, "upstream_auth", message) from None
                raise ApiError(502, "upstream_error", message) from None
            log.info("live session %s: already over (the attach found no session)", session_id)
        except TimeoutError:
            raise ApiError(
                504, "upstream_timeout", "Azure OpenAI did not confirm the GPT-Live session's end in time."
            ) from None

    async def _close(self, session_id: str) -> None:
        line = await self.sideband.attach(session_id, "live")
        try:
            await line.send({"type": "session.close"})
            async for event in line.events():
                if event["type"] == "session.closed":
                    log.info("live session %s: closed (%s)", session_id, str(event.get("reason"))[:64])
                    return
            if line.close_code != NORMAL_CLOSE:
                raise ApiError(502, "upstream_error", "The attach socket dropped before the session closed.")
        except (ConnectionError, RuntimeError) as error:
            raise ApiError(502, "upstream_error", f"The attach socket failed ({type(error).__name__}).") from None
        finally:
            await line.close()


class LiveSessions:
    def __init__(
        self,
        upstream: Upstream,
        policy: SessionPolicy,
        closer: Closer,
        delegation: Mapping[str, Any] = CLIENT_DELEGATION,
    ) -> None:
        """`delegation`: policy.live_delegation, `responses` only when a supervisor will answer its tool calls."""
        self.upstream = upstream
        self.policy = policy
        self.closer = closer
        self.delegation = delegation

    async def __call__(self, offer: Offer, auth: dict[str, str], deadline: float, stage: Stage) -> Call:
        """Never retried: the service may have consumed the offer."""
        stage("live_sessions")
        session = live_session_config(self.policy, offer, self.delegation)
        body = {"session": session, "transport": {"type": "webrtc", "sdp": offer.sdp}}
        answer = await self.upstream.post("sessions", api="live", json=body, headers=auth)
        secrets = tuple(auth.values())
        if not 200 <= answer.status < 300:
            raise self.upstream.failure(answer, "live_sessions", secrets, offer.model.name)
        session_id, sdp = _session(answer, secrets)
        return Call(sdp, session_id, kind="live", session=session)

    async def end(self, call_id: str) -> None:
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
