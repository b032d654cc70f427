"""One emulated call's WebRTC side: the browser's peer connection, its event channel, and how the call ends."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Coroutine
from typing import Any

from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from ..fake_call import FakeSession
from ..service_rules import WEBRTC_FILTER_PASSES
from .conversation import Conversation
from .live import LiveConversation
from .media import ToneTrack, audio_frames, peak_level

CONNECT_DEADLINE_S = 30.0  # aiortc waits for the browser's ICE checks forever; give up on calls never connected


def loopback_only(sdp: str) -> str:
    """Drop every ICE candidate not on 127.0.0.1 (LAN, IPv6, mDNS `.local`), so no check or lookup leaves loopback."""
    # a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> ...
    kept = [
        line for line in sdp.splitlines() if not line.startswith("a=candidate:") or line.split()[4:5] == ["127.0.0.1"]
    ]
    return "\r\n".join(kept) + "\r\n"


class EmulatedPeer:
    """One emulated realtime call: the peer connection and event channel around its `Conversation`.

    Lives on the PeerHost loop; the public attributes are plain values so tests may read them from any thread.
    """

    def __init__(self, session: dict, call_id: str, live: bool = False, webrtc_filter: bool = False) -> None:
        """`webrtc_filter`: the call was created with `?webrtcfilter=on`, so the browser's data channel carries only
        `WEBRTC_FILTER_PASSES`; sidebands still get every event."""
        self.call_id = call_id
        self.webrtc_filter = webrtc_filter
        self.mic_frames = 0
        self.mic_peak = 0.0
        self.channel_open = False
        self.closed = False
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._tone = ToneTrack()
        self._channel: RTCDataChannel | None = None
        self._tasks: set[asyncio.Task] = set()
        self._closing: asyncio.Task | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._recent_peaks: deque[float] = deque(maxlen=25)  # 0.5 s of 20 ms frames
        self._call: FakeSession | None = None  # the fake's view of this call, which sidebands join
        self._end_reason = "gone"  # why the call ended, unless a hang-up or the session limit ends it
        self.conversation: Conversation | LiveConversation = (
            LiveConversation(session, self._deliver, self._tone, self._spawn, call_id, self._close_soon)
            if live
            else Conversation(session, self._deliver, self._tone, self._spawn)
        )
        self._pc.on("datachannel", self._on_datachannel)
        self._pc.on("track", self._on_track)
        self._pc.on("connectionstatechange", self._on_connection_state)

    @property
    def events_received(self) -> list[dict]:
        """Every well-formed client event this call received, in order."""
        return self.conversation.events_received

    async def negotiate(self, offer_sdp: str) -> str:
        """Apply the browser's offer and return the complete answer (aiortc gathers inside setLocalDescription)."""
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=loopback_only(offer_sdp), type="offer"))
            transceivers = self._pc.getTransceivers()
            if not transceivers and self._pc.sctp is None:
                raise ValueError("it has no media sections")  # aiortc would happily answer an empty offer
            if any(t.kind == "audio" for t in transceivers):
                self._pc.addTrack(self._tone)
            answer = await self._pc.createAnswer()
        except Exception as exc:  # aiortc raises assorted types for unusable SDP
            raise ValueError(f"cannot apply the SDP offer: {exc}") from exc
        await self._pc.setLocalDescription(answer)
        self._deadline = asyncio.get_running_loop().call_later(CONNECT_DEADLINE_S, self._give_up_if_unconnected)
        return self._pc.localDescription.sdp

    def bind(self, call: FakeSession, loop: asyncio.AbstractEventLoop) -> None:
        """Mirror this call's server events to the fake call's sidebands and take theirs into the conversation;
        on the loop, which sidebands' events hop onto."""
        if isinstance(self.conversation, Conversation):  # a GPT-Live session's is the one the fake created
            call.session = self.conversation.session
        call.peer = lambda text: loop.call_soon_threadsafe(self._from_sideband, text)
        self._call = call
        if self.closed:
            call.end(self._end_reason)

    def _from_sideband(self, text: str) -> None:
        if not self.closed:
            self.conversation.receive(text)

    async def close(self) -> None:
        """Hang up cleanly (the browser sees its data channel close at once); idempotent, also while a close runs."""
        if self._closing is None and not self.closed:
            self._end_reason = "hangup"
        self._close_soon()
        assert self._closing is not None
        await self._closing

    async def expire(self) -> None:
        """End the call as the service does at its session limit: a `session_expired` error (GPT-Live: `session.closed`
        with reason `expired`), then the hang-up."""
        self.conversation.expire()
        self._end_reason = "session_expired"
        self._close_soon()
        await self.close()

    async def close_live(self, reason: str = "close_requested") -> None:
        """End a GPT-Live session as `session.close` on its attach socket does: `session.closed`, then the hang-up."""
        if isinstance(self.conversation, LiveConversation):
            self.conversation.close(reason)
        await self.close()

    async def drop(self) -> None:
        """Vanish as a lost network does: every socket of the call closes without a word to the browser.

        Nothing more reaches the browser (no SCTP abort, no DTLS close), so all it can notice is ICE going
        disconnected, then failed."""
        for protocol in self._ice_protocols():
            protocol.transport.close()
        self._close_soon()  # the call is gone, not hung up
        await self.close()

    def _ice_protocols(self) -> list[Any]:
        """aioice's sockets under this call's transports (one with BUNDLE); aiortc offers no public way to them."""
        dtls = [t.receiver.transport for t in self._pc.getTransceivers()]
        if self._pc.sctp is not None:
            dtls.append(self._pc.sctp.transport)
        connections = {id(d.transport._connection): d.transport._connection for d in dtls if d is not None}
        return [protocol for connection in connections.values() for protocol in connection._protocols]

    async def _shutdown(self) -> None:
        self.closed = True
        self.channel_open = False
        if self._call is not None:  # its sidebands close: the call is over
            self._call.end(self._end_reason)
        if self._deadline is not None:
            self._deadline.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tone.stop()
        await self._pc.close()

    def _close_soon(self) -> None:
        """Start closing from a synchronous event handler; one shutdown however many triggers fire."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._shutdown())

    def _give_up_if_unconnected(self) -> None:
        if self._pc.connectionState != "connected":
            self._close_soon()

    def _on_connection_state(self) -> None:
        if self._pc.connectionState in ("failed", "closed"):
            self._close_soon()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task:
        """Start a task that close() will cancel (and that is kept referenced until it ends)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        """Adopt the browser's event channel (any label, as Azure does) and greet it as the service does.

        aiortc announces a remote channel only once it is open.
        """
        self._channel = channel
        channel.on("message", self.conversation.receive)
        channel.on("close", self._close_soon)
        self.channel_open = True
        self.conversation.greet()

    def _deliver(self, text: str) -> None:
        if self._channel is not None and self._channel.readyState == "open" and self._browser_sees(text):
            self._channel.send(text)
        if self._call is not None:
            self._call.mirror(text)

    def _browser_sees(self, text: str) -> bool:
        return not self.webrtc_filter or json.loads(text)["type"] in WEBRTC_FILTER_PASSES

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(self._listen(track))

    async def _listen(self, track: MediaStreamTrack) -> None:
        """Measure every microphone frame; feeds mic_peak and the conversation's turn detection until the track ends."""
        async for frame in audio_frames(track):
            level = peak_level(frame)
            self.mic_frames += 1
            self._recent_peaks.append(level)
            self.mic_peak = max(self._recent_peaks)
            self.conversation.hear(level, 1000 * frame.samples / frame.sample_rate)
