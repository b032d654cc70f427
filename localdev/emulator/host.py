"""PeerHost: runs every emulated call on one asyncio loop thread and is what fake_openai and tests talk to."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import aioice.ice

from ..fake_call import FakeSession
from ..service_rules import new_id
from .peer import EmulatedPeer

T = TypeVar("T")


def _loopback_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """Stand-in for aioice's gatherer, which skips 127.0.0.1 and would otherwise offer this machine's LAN addresses.

    Sockets bound to 127.0.0.1 cannot send to another host (the kernel refuses), which is the hard guarantee.
    """
    return ["127.0.0.1"] if use_ipv4 else []


class PeerHost:
    """Runs emulated realtime peers on one dedicated asyncio loop thread.

    The HTTP side is synchronous and short-lived per request, while a call must outlive the request that created it,
    so every peer lives on one daemon loop thread and the public methods hop onto it.
    """

    def __init__(self) -> None:
        # Process-wide, and deliberately so: aioice offers no per-connection setting, and any aiortc peer in this
        # process (e.g. a test's client) must stay on loopback too.
        aioice.ice.get_host_addresses = _loopback_host_addresses
        self._peers: list[EmulatedPeer] = []
        self._loop: asyncio.AbstractEventLoop  # both set by the loop thread before __init__ returns
        self._stopping: asyncio.Event
        ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(ready),), name="peer-host", daemon=True)
        self._thread.start()
        ready.wait()

    async def _serve(self, ready: threading.Event) -> None:
        """The loop thread's body; asyncio.run then cancels anything left and closes the loop cleanly."""
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        ready.set()
        await self._stopping.wait()
        await asyncio.gather(*(peer.close() for peer in self._peers))

    def _on_loop(self, coro_fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, timeout: float) -> T:
        if not self._thread.is_alive():
            raise RuntimeError("PeerHost is closed")
        future = asyncio.run_coroutine_threadsafe(coro_fn(*args), self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def answer(
        self,
        offer_sdp: str,
        session: dict,
        call_id: str | None = None,
        webrtc_filter: bool = False,
        timeout: float = 10.0,
    ) -> str:
        """Create a call for this offer and return the complete answer SDP; ValueError if the offer is unusable.

        `call_id` is the id the HTTP side announces in `Location`, so tests can find this call's peer;
        `webrtc_filter`: the call was made with `?webrtcfilter=on` (see `EmulatedPeer`)."""
        call_id = call_id or new_id("rtc")
        return self._on_loop(self._answer, offer_sdp, session, call_id, False, webrtc_filter, timeout=timeout)

    def answer_live(self, offer_sdp: str, session: dict, session_id: str | None = None, timeout: float = 10.0) -> str:
        """As `answer`, for a GPT-Live session (`FakeAzureOpenAI(live_answerer=...)`): its peer speaks GPT-Live."""
        return self._on_loop(self._answer, offer_sdp, session, session_id or new_id("sess"), True, timeout=timeout)

    async def _answer(
        self, offer_sdp: str, session: dict, call_id: str, live: bool = False, webrtc_filter: bool = False
    ) -> str:
        peer = EmulatedPeer(session, call_id, live, webrtc_filter)
        try:
            answer_sdp = await peer.negotiate(offer_sdp)
        except BaseException:  # also on cancellation by a timed-out caller: release the sockets
            await peer.close()
            raise
        self._peers.append(peer)
        return answer_sdp

    def bind(self, call: FakeSession) -> None:
        """Join the fake's call to its peer: the peer's server events go to the call's sidebands too, and what a
        sideband sends is handled by the peer's conversation (realtime-api.md §5)."""
        peer = next(peer for peer in self._peers if peer.call_id == call.call_id)
        self._on_loop(self._bind, peer, call, timeout=5.0)

    async def _bind(self, peer: EmulatedPeer, call: FakeSession) -> None:
        peer.bind(call, self._loop)

    def inject_error(self, code: str, message: str) -> None:
        """Send an `error` server event on every open data channel, e.g. to show how a UI displays service errors."""
        self._on_loop(self._inject_error, code, message, timeout=5.0)

    async def _inject_error(self, code: str, message: str) -> None:
        for peer in self._peers:
            peer.conversation.error(code, message, error_type="server_error")

    def hangup(self, call_id: str) -> bool:
        """End a call as the service's call control does (`FakeAzureOpenAI(hangup=...)`); False if it was not live."""
        return self._end(call_id, EmulatedPeer.close)

    def expire(self, call_id: str) -> bool:
        """End a call as the service does at its own session limit: `session_expired`, then the hang-up."""
        return self._end(call_id, EmulatedPeer.expire)

    def close_live(self, session_id: str) -> bool:
        """End a GPT-Live session as `session.close` does (the sideband's graceful end); False if it was not live."""
        return self._end(session_id, EmulatedPeer.close_live)

    def drop(self, call_id: str) -> bool:
        """Lose a call as a broken network would: no more packets either way, no goodbye."""
        return self._end(call_id, EmulatedPeer.drop)

    def _end(self, call_id: str, how: Callable[[EmulatedPeer], Coroutine[Any, Any, None]]) -> bool:
        live = [peer for peer in self._peers if peer.call_id == call_id and not peer.closed]
        for peer in live:
            self._on_loop(how, peer, timeout=10.0)
        return bool(live)

    @property
    def peers(self) -> list[EmulatedPeer]:
        """Every peer created so far, newest last."""
        return list(self._peers)

    def close(self) -> None:
        """Close every call and stop the loop thread; idempotent."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout=10)
