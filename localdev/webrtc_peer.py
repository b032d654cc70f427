"""A real WebRTC peer that stands in for Azure OpenAI `gpt-realtime` on loopback.

`fake_openai` answers `POST /openai/v1/realtime/calls` with `PeerHost.answer(...)`; the browser then talks to an
`EmulatedPeer` as it would to Azure: audio both ways as media tracks, GA realtime events on the data channel
(shared/docs/realtime-api.md §3). Replies are canned text plus a sine tone, so a UI can be exercised end to end
without Azure. Nothing leaves 127.0.0.1.

Faithful enough for real clients (OpenAI's Agents SDK included): every client event it accepts gets the server
events the service sends, in the service's order, and what the service refuses (unknown `session` fields, a voice
change once the assistant has spoken, unknown items or events) gets an `error` event in the service's shape,
with nothing applied. Which session fields Azure is known to accept: `fake_openai.AZURE_SESSION_KEYS`.
"""

from __future__ import annotations

import array
import asyncio
import copy
import fractions
import json
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import aioice.ice
import av
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .fake_openai import ServiceError, check_session_fields

T = TypeVar("T")

SAMPLE_RATE = 48_000
FRAME_SAMPLES = 960  # 20 ms, what browsers and aiortc packetise Opus at
SPEECH_LEVEL = 0.05  # peak level (0..1) a mic frame must reach to count as speech
SPEECH_ONSET_MS = 200  # speech must last this long before speech_started, so clicks do not open a turn
WORD_INTERVAL_S = 0.12
MIN_REPLY_AUDIO_S = 3.0  # the tone plays at least this long, like a short spoken answer
TONE_AMPLITUDE = 0.3
CONNECT_DEADLINE_S = 30.0  # aiortc waits for the browser's ICE checks forever; give up on calls never connected
# A distinct pitch per voice, so a listener can tell that the session's voice reached the peer.
VOICE_PITCH_HZ = {
    "alloy": 220, "ash": 196, "ballad": 247, "coral": 294, "echo": 175,
    "sage": 262, "shimmer": 330, "verse": 208, "marin": 277, "cedar": 185,
}  # fmt: skip
DEFAULT_PITCH_HZ = 240


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def _loopback_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """Stand-in for aioice's gatherer, which skips 127.0.0.1 and would otherwise offer this machine's LAN addresses.

    Sockets bound to 127.0.0.1 cannot send to another host (the kernel refuses), which is the hard guarantee.
    """
    return ["127.0.0.1"] if use_ipv4 else []


def _loopback_only(sdp: str) -> str:
    """Drop every ICE candidate not on 127.0.0.1 (LAN, IPv6, mDNS `.local`), so no check or lookup leaves loopback."""
    # a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> ...
    kept = [
        line for line in sdp.splitlines() if not line.startswith("a=candidate:") or line.split()[4:5] == ["127.0.0.1"]
    ]
    return "\r\n".join(kept) + "\r\n"


def _merged(base: dict, update: dict) -> dict:
    """Merge as session.update does: nested objects merge, anything else (null included) replaces."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _session_object(config: dict) -> dict:
    """The effective session as Azure reports it: the minted config over the service defaults."""
    pcm = {"type": "audio/pcm", "rate": 24000}
    defaults = {
        "type": "realtime",
        "model": "gpt-realtime",
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "audio": {
            "input": {
                "format": pcm,
                "transcription": {"model": "whisper-1"},
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 500,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": pcm, "voice": "alloy", "speed": 1.0},
        },
    }
    session = _merged(defaults, config)
    session.update(id=_new_id("sess"), object="realtime.session", type="realtime", expires_at=int(time.time()) + 3600)
    return session


def _setting(session: dict, *path: str) -> Any:
    """A nested session field, or None when a level is missing or not an object (clients may send anything)."""
    node: Any = session
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _item_status(response_status: str) -> str:
    return "completed" if response_status == "completed" else "incomplete"


def _peak_level(frame: av.AudioFrame) -> float:
    """Peak of an s16 frame (what aiortc's Opus decoder yields), normalised to 0..1; no numpy needed."""
    samples = array.array("h", bytes(frame.planes[0]))[: frame.samples * len(frame.layout.channels)]
    return max(max(samples), -min(samples)) / 32768 if samples else 0.0


async def audio_frames(track: MediaStreamTrack) -> AsyncIterator[av.AudioFrame]:
    """Frames from a remote audio track until it ends."""
    while True:
        try:
            yield await track.recv()
        except MediaStreamError:
            return


class _ToneTrack(MediaStreamTrack):
    """Outgoing audio: a sine while the emulated assistant speaks, silence otherwise.

    Frames flow at real time even when silent, as from the real service, so the browser's inbound-rtp byte counters
    keep growing and an analyser sees a level only while the assistant speaks.
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.pitch_hz: float | None = None  # None = silence
        self._start: float | None = None
        self._sent = 0  # samples sent so far; also the next frame's pts

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            await asyncio.sleep(self._start + self._sent / SAMPLE_RATE - time.monotonic())
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        if self.pitch_hz is None:
            frame.planes[0].update(bytes(2 * FRAME_SAMPLES))
        else:
            step = 2 * math.pi * self.pitch_hz / SAMPLE_RATE
            scale = 32767 * TONE_AMPLITUDE
            samples = range(self._sent, self._sent + FRAME_SAMPLES)
            pcm = array.array("h", (int(scale * math.sin(step * n)) for n in samples))
            frame.planes[0].update(pcm.tobytes())
        frame.pts = self._sent
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._sent += FRAME_SAMPLES
        return frame


@dataclass
class _Response:
    id: str
    item_id: str
    transcript: str  # the whole canned reply
    task: asyncio.Task | None = None
    delivered: str = ""  # transcript deltas sent so far
    audio_playing: bool = False
    previous_item_id: str | None = None  # the conversation item the reply follows


class EmulatedPeer:
    """One emulated realtime call: the browser's peer connection, its event channel and the conversation state.

    Lives on the PeerHost loop; the public attributes are plain values so tests may read them from any thread.
    """

    def __init__(self, session: dict, call_id: str) -> None:
        self.call_id = call_id
        self.mic_frames = 0
        self.mic_peak = 0.0
        self.events_received: list[dict] = []
        self.channel_open = False
        self.closed = False
        self._session = _session_object(session)
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._tone = _ToneTrack()
        self._channel: RTCDataChannel | None = None
        self._tasks: set[asyncio.Task] = set()
        self._closing: asyncio.Task | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._response: _Response | None = None
        self._items: dict[str, dict] = {}  # the conversation, in order, as conversation.item.retrieve reports it
        self._last_item_id: str | None = None
        self._spoke = False  # assistant audio is present: the voice is locked, as on the service
        self._last_user_text: str | None = None
        self._recent_peaks: deque[float] = deque(maxlen=25)  # 0.5 s of 20 ms frames
        # Input buffer and VAD state, in milliseconds of microphone audio received (not wall time: deterministic).
        self._audio_ms = 0.0
        self._buffer_start_ms = 0.0
        self._loud_ms = 0.0
        self._quiet_ms = 0.0
        self._speech_item: str | None = None  # set while the user is speaking
        self._speech_start_ms = 0.0
        self._last_loud_ms = 0.0
        self._pc.on("datachannel", self._on_datachannel)
        self._pc.on("track", self._on_track)
        self._pc.on("connectionstatechange", self._on_connection_state)

    async def negotiate(self, offer_sdp: str) -> str:
        """Apply the browser's offer and return the complete answer (aiortc gathers inside setLocalDescription)."""
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=_loopback_only(offer_sdp), type="offer"))
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

    async def close(self) -> None:
        """Idempotent; safe to call while a close started by the browser is still running."""
        self._close_soon()
        assert self._closing is not None
        await self._closing

    async def _shutdown(self) -> None:
        self.closed = True
        self.channel_open = False
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

    # --- data channel ---

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        """Adopt the browser's event channel (any label, as Azure does) and greet it as the service does.

        aiortc announces a remote channel only once it is open.
        """
        self._channel = channel
        channel.on("message", self._on_message)
        channel.on("close", self._close_soon)
        self.channel_open = True
        self._send("session.created", session=self._session)

    def _send(self, event_type: str, **fields: Any) -> None:
        if self._channel is not None and self._channel.readyState == "open":
            self._channel.send(json.dumps({"type": event_type, "event_id": _new_id("event"), **fields}))

    def _error(
        self, code: str, message: str, event: dict | None = None, param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:  # fmt: skip
        client_event_id = event.get("event_id") if event else None
        self._send(
            "error",
            error={"type": error_type, "code": code, "message": message, "param": param, "event_id": client_event_id},
        )

    def _on_message(self, message: str | bytes) -> None:
        try:
            event = json.loads(message)
        except ValueError:
            self._error("invalid_json", "The event could not be parsed as JSON.")
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            self._error("invalid_event", "The event must be a JSON object with a string 'type'.", param="type")
            return
        self.events_received.append(event)
        handlers: dict[str, Callable[[dict], None]] = {
            "session.update": self._on_session_update,
            "conversation.item.create": self._on_item_create,
            "response.create": self._on_response_create,
            "response.cancel": self._on_response_cancel,
            "output_audio_buffer.clear": self._on_output_clear,
            "input_audio_buffer.clear": self._on_input_clear,
            "input_audio_buffer.commit": self._on_input_commit,
            "conversation.item.retrieve": self._on_item_retrieve,
            "conversation.item.delete": self._on_item_delete,
        }
        handler = handlers.get(event["type"])
        if handler is None:
            self._error("unknown_event", f"Unsupported event type '{event['type']}'.", event, param="type")
        else:
            handler(event)

    def _on_session_update(self, event: dict) -> None:
        update = event.get("session")
        if not isinstance(update, dict):
            self._error("missing_required_parameter", "Missing required parameter: 'session'.", event, "session")
            return
        try:
            check_session_fields(update)
            voice = _setting(update, "audio", "output", "voice")
            if self._spoke and voice is not None and voice != _setting(self._session, "audio", "output", "voice"):
                message = "Cannot update a conversation's voice if assistant audio is present."
                raise ServiceError(400, "cannot_update_voice", message)
        except ServiceError as problem:  # the service applies nothing of a refused update
            self._error(problem.code, problem.message, event, problem.param)
            return
        # A call's model is its deployment, fixed when the secret was minted; what Azure does with another name
        # here is not something the emulator can vouch for, so it keeps the call's.
        self._session = _merged(self._session, {k: v for k, v in update.items() if k != "model"})
        self._send("session.updated", session=self._session)

    def _on_item_create(self, event: dict) -> None:
        item = event.get("item")
        if not isinstance(item, dict):
            self._error("missing_required_parameter", "Missing required parameter: 'item'.", event, "item")
            return
        item = {"object": "realtime.item", "status": "completed", **item, "id": item.get("id") or _new_id("item")}
        content = item.get("content")
        texts = [
            part["text"]
            for part in (content if isinstance(content, list) else [])
            if isinstance(part, dict) and part.get("type") == "input_text" and isinstance(part.get("text"), str)
        ]
        if item.get("role") == "user" and texts:
            self._last_user_text = " ".join(texts)
        self._add_item(item)

    def _add_item(self, item: dict) -> None:
        previous, self._last_item_id = self._last_item_id, item["id"]
        self._items[item["id"]] = item
        self._send("conversation.item.added", previous_item_id=previous, item=item)
        self._send("conversation.item.done", previous_item_id=previous, item=item)

    def _on_item_retrieve(self, event: dict) -> None:
        """The item as the service holds it now, e.g. a user turn with its transcript (the Agents SDK asks after each).

        The service also returns the turn's audio; the emulator keeps none, so `audio` is absent."""
        item = self._items.get(event.get("item_id"))  # type: ignore[arg-type]
        if item is None:
            message = f"Error retrieving item: the item with id '{event.get('item_id')}' does not exist."
            self._error("item_retrieve_invalid_item_id", message, event)
            return
        self._send("conversation.item.retrieved", item=item)

    def _on_item_delete(self, event: dict) -> None:
        item_id = event.get("item_id")
        if self._items.pop(item_id, None) is None:  # type: ignore[arg-type]
            self._error("item_delete_invalid_item_id", f"Error deleting item: the item with id '{item_id}' does not exist.", event)
            return
        if self._last_item_id == item_id:
            self._last_item_id = next(reversed(self._items), None)
        self._send("conversation.item.deleted", item_id=item_id)

    # --- microphone and turn detection ---

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(self._listen(track))

    async def _listen(self, track: MediaStreamTrack) -> None:
        """Measure every microphone frame; feeds mic_peak and the VAD until the track ends."""
        async for frame in audio_frames(track):
            level = _peak_level(frame)
            self.mic_frames += 1
            self._recent_peaks.append(level)
            self.mic_peak = max(self._recent_peaks)
            self._detect_turn(level, 1000 * frame.samples / frame.sample_rate)

    def _detect_turn(self, level: float, frame_ms: float) -> None:
        """Energy VAD: 200 ms loud opens a turn, `silence_duration_ms` quiet ends it; off if turn_detection is null."""
        frame_start_ms = self._audio_ms
        self._audio_ms += frame_ms
        vad = _setting(self._session, "audio", "input", "turn_detection")
        if not isinstance(vad, dict):
            return
        loud = level >= SPEECH_LEVEL
        if self._speech_item is None:
            if not loud:
                self._loud_ms = 0.0
                return
            if self._loud_ms == 0.0:
                self._speech_start_ms = frame_start_ms
            self._loud_ms += frame_ms
            if self._loud_ms >= SPEECH_ONSET_MS:
                self._start_speech(vad)
        elif loud:
            self._quiet_ms = 0.0
            self._last_loud_ms = self._audio_ms
        else:
            self._quiet_ms += frame_ms
            if self._quiet_ms >= (vad.get("silence_duration_ms") or 500):
                self._stop_speech(vad)

    def _start_speech(self, vad: dict) -> None:
        self._speech_item = _new_id("item")
        self._quiet_ms = 0.0
        self._last_loud_ms = self._audio_ms
        self._send(
            "input_audio_buffer.speech_started", item_id=self._speech_item, audio_start_ms=int(self._speech_start_ms)
        )
        if self._response is not None and vad.get("interrupt_response", True):
            if self._response.audio_playing:  # in WebRTC the service cuts the playing audio itself
                self._clear_output_audio()
            self._cancel_response("turn_detected")

    def _stop_speech(self, vad: dict) -> None:
        item_id, self._speech_item = self._speech_item, None
        self._loud_ms = 0.0
        self._send("input_audio_buffer.speech_stopped", item_id=item_id, audio_end_ms=int(self._last_loud_ms))
        self._commit(item_id, (self._last_loud_ms - self._speech_start_ms) / 1000)
        if vad.get("create_response", True) and self._response is None:
            self._start_response()

    def _commit(self, item_id: str, seconds: float) -> None:
        """Turn buffered audio into a user item with a placeholder transcript (there is no speech recognition)."""
        self._buffer_start_ms = self._audio_ms
        self._last_user_text = None
        self._send("input_audio_buffer.committed", item_id=item_id, previous_item_id=self._last_item_id)
        part: dict[str, Any] = {"type": "input_audio", "transcript": None}
        self._add_item({
            "id": item_id, "object": "realtime.item", "type": "message", "status": "completed", "role": "user",
            "content": [part],
        })  # fmt: skip
        if _setting(self._session, "audio", "input", "transcription"):
            part["transcript"] = f"(emulator heard {seconds:.1f} s of speech)"
            where = {"item_id": item_id, "content_index": 0}
            self._send("conversation.item.input_audio_transcription.delta", **where, delta=part["transcript"])
            self._send("conversation.item.input_audio_transcription.completed", **where, transcript=part["transcript"])

    def _on_input_commit(self, event: dict) -> None:
        """Manual turns (turn_detection null): commit what arrived since the last commit or clear."""
        seconds = (self._audio_ms - self._buffer_start_ms) / 1000
        if seconds < 0.1:
            self._error(
                "input_audio_buffer_commit_empty",
                f"Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                f"but buffer only has {seconds * 1000:.2f}ms of audio.",
                event,
            )
            return
        self._speech_item = None
        self._loud_ms = 0.0
        self._commit(_new_id("item"), seconds)

    def _on_input_clear(self, event: dict) -> None:
        self._buffer_start_ms = self._audio_ms
        self._speech_item = None
        self._loud_ms = 0.0
        self._send("input_audio_buffer.cleared")

    # --- responses ---

    def _on_response_create(self, event: dict) -> None:
        if self._response is not None:
            self._error(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self._response.id}. "
                "Wait until the response is finished before creating a new one.",
                event,
            )
            return
        self._start_response()

    def _start_response(self) -> None:
        heard = f"You said: {self._last_user_text.rstrip('.!? ')}." if self._last_user_text else "I heard you."
        response = _Response(
            id=_new_id("resp"), item_id=_new_id("item"), transcript=f"{heard} This is the local emulator, not Azure."
        )
        self._response = response
        response.task = self._spawn(self._play(response))

    async def _play(self, response: _Response) -> None:
        """Stream the reply word by word while the tone plays for a plausible speaking time.

        Events in the service's order: the response, its output item and content part open, audio starts,
        transcript deltas, then `_finish_response` closes them all."""
        loop = asyncio.get_running_loop()
        words = response.transcript.split(" ")
        ends_at = loop.time() + max(MIN_REPLY_AUDIO_S, len(words) * WORD_INTERVAL_S)
        self._send("response.created", response=self._response_object(response, "in_progress"))
        item = self._assistant_item(response, "in_progress")
        self._send("response.output_item.added", response_id=response.id, output_index=0, item=item)
        response.previous_item_id, self._last_item_id = self._last_item_id, response.item_id
        self._items[response.item_id] = item
        self._send("conversation.item.added", previous_item_id=response.previous_item_id, item=item)
        self._send("response.content_part.added", **self._part_of(response), part={"type": "audio", "transcript": ""})
        self._send("output_audio_buffer.started", response_id=response.id)
        response.audio_playing = self._spoke = True
        self._tone.pitch_hz = VOICE_PITCH_HZ.get(_setting(self._session, "audio", "output", "voice"), DEFAULT_PITCH_HZ)
        for word in words:
            delta = f" {word}" if response.delivered else word
            response.delivered += delta
            self._send("response.output_audio_transcript.delta", **self._part_of(response), delta=delta)
            await asyncio.sleep(WORD_INTERVAL_S)
        await asyncio.sleep(ends_at - loop.time())
        self._finish_response("completed")

    def _on_response_cancel(self, event: dict) -> None:
        if self._response is None:
            self._error("response_cancel_not_active", "Cancellation failed: no active response found.", event)
            return
        self._cancel_response("client_cancelled")

    def _cancel_response(self, reason: str) -> None:
        """Stop streaming and audio at once, as response.cancel (or a barge-in) does."""
        assert self._response is not None and self._response.task is not None
        self._response.task.cancel()
        self._finish_response("cancelled", {"type": "cancelled", "reason": reason})

    def _finish_response(self, status: str, status_details: dict | None = None) -> None:
        """Close the audio, transcript, content part, output item and response, in the service's order.

        The service sends these also when a response is cancelled (with what was said so far). In WebRTC the
        output audio buffer drains after generation ends, so `output_audio_buffer.stopped` comes last."""
        response, self._response = self._response, None
        assert response is not None
        part = self._part_of(response)
        self._send("response.output_audio.done", **part)
        self._send("response.output_audio_transcript.done", **part, transcript=response.delivered)
        self._send("response.content_part.done", **part, part={"type": "audio", "transcript": response.delivered})
        item = self._assistant_item(response, _item_status(status))
        self._items[response.item_id] = item
        self._send("response.output_item.done", response_id=response.id, output_index=0, item=item)
        self._send("conversation.item.done", previous_item_id=response.previous_item_id, item=item)
        self._send("response.done", response=self._response_object(response, status, status_details))
        if response.audio_playing:
            self._tone.pitch_hz = None
            self._send("output_audio_buffer.stopped", response_id=response.id)

    def _on_output_clear(self, event: dict) -> None:
        self._clear_output_audio()

    def _clear_output_audio(self) -> None:
        """Cut the assistant's audio; any response keeps streaming its transcript, as on Azure."""
        response_id = None
        if self._response is not None:
            self._response.audio_playing = False
            response_id = self._response.id
        self._tone.pitch_hz = None
        self._send("output_audio_buffer.cleared", response_id=response_id)

    @staticmethod
    def _part_of(response: _Response) -> dict[str, Any]:
        """The fields that place an event in the reply's only output item and content part."""
        return {"response_id": response.id, "item_id": response.item_id, "output_index": 0, "content_index": 0}

    def _assistant_item(self, response: _Response, status: str) -> dict:
        content = [{"type": "output_audio", "transcript": response.delivered}] if status != "in_progress" else []
        return {
            "id": response.item_id, "object": "realtime.item", "type": "message", "status": status,
            "role": "assistant", "content": content,
        }  # fmt: skip

    def _response_object(self, response: _Response, status: str, status_details: dict | None = None) -> dict:
        output_tokens = len(response.delivered.split())
        return {
            "id": response.id,
            "object": "realtime.response",
            "status": status,
            "status_details": status_details,
            "output": [] if status == "in_progress" else [self._assistant_item(response, _item_status(status))],
            "output_modalities": _setting(self._session, "output_modalities"),
            "audio": {"output": {"voice": _setting(self._session, "audio", "output", "voice")}},
            "usage": None if status == "in_progress" else {
                "total_tokens": 10 + output_tokens, "input_tokens": 10, "output_tokens": output_tokens,  # nominal
            },
        }  # fmt: skip


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

    def answer(self, offer_sdp: str, session: dict, call_id: str | None = None, timeout: float = 10.0) -> str:
        """Create a call for this offer and return the complete answer SDP; ValueError if the offer is unusable.

        `call_id` is the id the HTTP side announces in `Location`, so tests can find this call's peer."""
        return self._on_loop(self._answer, offer_sdp, session, call_id or _new_id("rtc"), timeout=timeout)

    async def _answer(self, offer_sdp: str, session: dict, call_id: str) -> str:
        peer = EmulatedPeer(session, call_id)
        try:
            answer_sdp = await peer.negotiate(offer_sdp)
        except BaseException:  # also on cancellation by a timed-out caller: release the sockets
            await peer.close()
            raise
        self._peers.append(peer)
        return answer_sdp

    def inject_error(self, code: str, message: str) -> None:
        """Send an `error` server event on every open data channel, e.g. to show how a UI displays service errors."""
        self._on_loop(self._inject_error, code, message, timeout=5.0)

    async def _inject_error(self, code: str, message: str) -> None:
        for peer in self._peers:
            peer._error(code, message, error_type="server_error")

    @property
    def peers(self) -> list[EmulatedPeer]:
        """Every peer created so far, newest last."""
        return list(self._peers)

    def close(self) -> None:
        """Close every call and stop the loop thread; idempotent."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout=10)
