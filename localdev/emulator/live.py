"""One emulated GPT-Live session's event protocol (realtime-api.md §6): full duplex, timed transcript fragments.

The same transport-free shape as `Conversation` (the peer feeds it microphone levels and client events and gives it
a `deliver` callable), with GPT-Live's behaviour instead of the realtime lifecycle: no items, no responses. While the
user speaks, `session.input_transcript.delta` fragments arrive with their `start_ms`/`end_ms` on the session's
timeline; after a second of speech the assistant answers *while the user goes on speaking*, in
`session.output_transcript.delta` fragments. Appended context is acknowledged (`….appended`), the immutable session
(model, instructions, voice) refuses a `session.update` that touches it, and the end is `session.closed` with a reason.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ..fake_call import usage_for
from ..fake_live import APPENDS, check_append, check_live_update, summed
from ..service_rules import ServiceError, client_event
from .conversation import SPEECH_LEVEL, SPEECH_ONSET_MS, WORD_INTERVAL_S, new_id
from .media import DEFAULT_PITCH_HZ, VOICE_PITCH_HZ, ToneTrack

FRAGMENT_MS = 800  # the user's speech is transcribed in fragments this long
REPLY_AFTER_MS = 1000  # this much speech since the assistant last spoke makes it answer, even mid-sentence
SILENCE_MS = 500
REPLY_END = "This is the local emulator in GPT-Live mode, not Azure."


class LiveConversation:
    def __init__(
        self,
        session: dict,
        deliver: Callable[[str], None],
        tone: ToneTrack,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task],
        session_id: str,
        hang_up: Callable[[], None],
    ) -> None:
        self.events_received: list[dict] = []
        self._session = {**session, "id": session_id, "object": "live.session"}
        self._deliver = deliver
        self._tone = tone
        self._spawn = spawn
        self._hang_up = hang_up  # closes the peer connection once the session has said why
        self._started = time.monotonic()
        self._audio_ms = 0.0  # microphone audio received: the timeline of input fragments (deterministic)
        self._loud_ms = 0.0
        self._quiet_ms = 0.0
        self._speaking_user = False
        self._fragment_start_ms = 0.0
        self._since_reply_ms = 0.0
        self._reply: asyncio.Task | None = None
        self._closed = False
        self._usage: dict[str, Any] = {}  # cumulative, from what the assistant said (fake_live's usage shape)

    def greet(self) -> None:
        self._send("session.started", session=self._session)

    def expire(self) -> None:
        """The service's limit: GPT-Live says so in `session.closed`; the peer then closes the call."""
        self.close("expired")

    def close(self, reason: str) -> None:
        """The session's last word: `session.closed` with its reason and the cumulative usage."""
        if not self._closed:
            self._closed = True
            self._send("session.closed", reason=reason, usage=self._usage)
            self._hang_up()

    def error(
        self,
        code: str,
        message: str,
        event: dict | None = None,
        param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        client_event_id = event.get("event_id") if event else None
        error = {"type": error_type, "code": code, "message": message, "param": param}
        self._send("error", error=error, client_event_id=client_event_id)

    def _send(self, event_type: str, **fields: Any) -> None:
        self._deliver(json.dumps({"type": event_type, "event_id": new_id("event"), **fields}))

    def _now_ms(self) -> int:
        return int((time.monotonic() - self._started) * 1000)

    # -- client events -----------------------------------------------------------------------------------------

    def receive(self, message: str | bytes) -> None:
        try:
            event = client_event(message)
        except ServiceError as problem:
            self.error(problem.code, problem.message, param=problem.param)
            return
        self.events_received.append(event)
        kind = event["type"]
        if kind in APPENDS:
            self._on_append(event)
        elif kind == "session.update":
            self._on_update(event)
        elif kind == "session.close":
            self.close("close_requested")
        else:  # response.create, conversation.item.create…: not GPT-Live's (no response lifecycle)
            self.error("unknown_event", f"Unsupported event type '{kind}' in a GPT-Live session.", event, "type")

    def _on_append(self, event: dict) -> None:
        try:
            content = check_append(event)
        except ServiceError as problem:
            self.error(problem.code, problem.message, event, problem.param)
            return
        self._send(event["type"].removesuffix("append") + "appended", client_event_id=event.get("event_id"))
        if event["type"] == "session.instructions.append":
            self._answer(f'I read: "{content.strip()}". {REPLY_END}')
        elif event["type"] == "session.commentary.append":
            self._answer(content.strip())

    def _on_update(self, event: dict) -> None:
        """Model, instructions and voice are immutable; only `delegation.responses` settings may change."""
        try:
            check_live_update(event.get("session"))
        except ServiceError as problem:
            self.error(problem.code, problem.message, event, problem.param)
            return
        self._send("session.updated", client_event_id=event.get("event_id"))

    # -- the microphone ----------------------------------------------------------------------------------------

    def hear(self, level: float, frame_ms: float) -> None:
        """Energy detection as the realtime emulator does, but nothing waits for the user to finish."""
        start_ms = self._audio_ms
        self._audio_ms += frame_ms
        if level < SPEECH_LEVEL:
            self._loud_ms = 0.0
            self._quiet_ms += frame_ms
            if self._speaking_user and self._quiet_ms >= SILENCE_MS:
                self._speaking_user = False
                self._fragment(self._audio_ms - self._quiet_ms)
            return
        self._quiet_ms = 0.0
        if not self._speaking_user:
            self._loud_ms += frame_ms
            if self._loud_ms < SPEECH_ONSET_MS:
                return
            self._speaking_user = True
            self._fragment_start_ms = start_ms - self._loud_ms + frame_ms
        self._since_reply_ms += frame_ms
        if self._audio_ms - self._fragment_start_ms >= FRAGMENT_MS:
            self._fragment(self._audio_ms)
        if self._since_reply_ms >= REPLY_AFTER_MS and self._reply is None:
            self._answer(f"I hear you while you speak. {REPLY_END}")

    def _fragment(self, end_ms: float) -> None:
        seconds = (end_ms - self._fragment_start_ms) / 1000
        if seconds > 0:
            self._send(
                "session.input_transcript.delta",
                delta=f"(emulator heard {seconds:.1f} s) ",
                start_ms=int(self._fragment_start_ms),
                end_ms=int(end_ms),
            )
        self._fragment_start_ms = end_ms

    # -- the assistant -----------------------------------------------------------------------------------------

    def _answer(self, text: str) -> None:
        """Speak now, whatever the user is doing (full duplex); a newer answer replaces one still being spoken."""
        if self._reply is not None:
            self._reply.cancel()
        self._usage = summed(self._usage, usage_for(text))
        self._reply = self._spawn(self._speak(text))

    async def _speak(self, text: str) -> None:
        voice = self._session.get("audio", {}).get("output", {}).get("voice")
        self._tone.pitch_hz = VOICE_PITCH_HZ.get(voice, DEFAULT_PITCH_HZ)
        try:
            for index, word in enumerate(text.split(" ")):
                start = self._now_ms()
                await asyncio.sleep(WORD_INTERVAL_S)
                delta = word if index == 0 else f" {word}"
                self._send("session.output_transcript.delta", delta=delta, start_ms=start, end_ms=self._now_ms())
        finally:
            if self._reply is asyncio.current_task():  # not replaced by a newer answer
                self._tone.pitch_hz = None
                self._since_reply_ms = 0.0
                self._reply = None
