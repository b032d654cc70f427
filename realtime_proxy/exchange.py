"""How `/connect` turns an admitted offer into a call, and how the server ends it: one strategy per deployment kind.

`realtime` and `reasoning` deployments mint an ephemeral secret with the server's session, then exchange the offer
at `/realtime/calls`, and hang up with `/realtime/calls/{id}/hangup` (realtime-api.md §1, §2, §4). GPT-Live is one
request of its own (realtime_proxy/live.py). Every strategy names its stages as it goes, so telemetry and
Server-Timing see them alike, and runs on the shared Upstream (credentials, deadline, redirects, error mapping).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from .offer import Offer
from .policy import session_config
from .settings import SessionPolicy
from .upstream import Call, Upstream

Stage = Callable[[str], None]  # starts the named stage (ending the one before)


class Exchange(Protocol):
    async def __call__(self, offer: Offer, auth: dict[str, str], deadline: float, stage: Stage) -> Call:
        """Create the call for this offer with the resource's credentials `auth`, by the loop time `deadline`."""
        ...

    async def end(self, call_id: str) -> None:
        """End the call from the server (the caller's End, the session limit, the kill switch)."""
        ...


class RealtimeCalls:
    def __init__(self, upstream: Upstream, policy: SessionPolicy, tools: Sequence[Mapping[str, Any]] = ()) -> None:
        """`tools`: the server-run tools' declarations, only when a supervisor will be in every call to answer them."""
        self.upstream = upstream
        self.policy = policy
        self.tools = tools

    async def __call__(self, offer: Offer, auth: dict[str, str], deadline: float, stage: Stage) -> Call:
        stage("client_secrets")
        session = session_config(self.policy, offer, self.tools)
        secret = await self.upstream.mint_secret(session, auth, deadline)
        stage("calls")
        return replace(await self.upstream.create_call(offer.sdp, secret), session=session)

    async def end(self, call_id: str) -> None:
        await self.upstream.hangup(call_id)
