"""The conversation and event protocol of one emulated call: what the service answers to each client event.

Transport-free: it reads microphone levels (`hear`) and client events (`receive`), drives the assistant's tone and
hands server events to a `deliver` callable, so the peer owns the sockets and this module owns the behaviour.
Every client event it accepts gets the server events the service sends, in the service's order; what the service
refuses gets an `error` event in the service's shape, with nothing applied.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ..service_rules import (
    SESSION_EXPIRED,
    ServiceError,
    checked_item,
    client_event,
    effective_session,
    new_id,
    updated_session,
)
from .media import DEFAULT_PITCH_HZ, VOICE_PITCH_HZ, ToneTrack
from .tools import declared_functions, spoken_answer, tool_call_for

SPEECH_LEVEL = 0.05  # peak level (0..1) a mic frame must reach to count as speech
SPEECH_ONSET_MS = 200  # speech must last this long before speech_started, so clicks do not open a turn
WORD_INTERVAL_S = 0.12
MIN_REPLY_AUDIO_S = 3.0  # the tone plays at least this long, like a short spoken answer


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


@dataclass
class _Response:
    id: str
    item_id: str
    transcript: str  # the whole canned reply
    task: asyncio.Task | None = None
    delivered: str = ""  # transcript deltas sent so far
    audio_playing: bool = False
    previous_item_id: str | None = None  # the conversation item the reply follows


class Conversation:
    """One call's session, items, input buffer, turn detection and responses."""

    def __init__(
        self,
        session: dict,
        deliver: Callable[[str], None],
        tone: ToneTrack,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task],
    ) -> None:
        self.events_received: list[dict] = []
        self._session = effective_session(session)
        self._deliver = deliver  # sends one JSON text on the data channel, if it is open
        self._tone = tone
        self._spawn = spawn  # tasks the peer cancels when the call closes
        self._response: _Response | None = None
        self._items: dict[str, dict] = {}  # the conversation, in order, as conversation.item.retrieve reports it
        self._last_item_id: str | None = None
        self._spoke = False  # assistant audio is present: the voice is locked, as on the service
        self._last_user_text: str | None = None
        self._replayed_replies = 0  # assistant items a client created, i.e. context carried over from an earlier call
        self._tool_outputs: list[str] = []  # function_call_output items since the last response: the next one speaks
        # Input buffer and VAD state, in milliseconds of microphone audio received (not wall time: deterministic).
        self._audio_ms = 0.0
        self._buffer_start_ms = 0.0
        self._loud_ms = 0.0
        self._quiet_ms = 0.0
        self._speech_item: str | None = None  # set while the user is speaking
        self._speech_start_ms = 0.0
        self._last_loud_ms = 0.0

    @property
    def session(self) -> dict:
        """The whole session in force, as the last session.created/updated reported it."""
        return self._session

    def greet(self) -> None:
        """What the service sends as soon as the data channel opens."""
        self._send("session.created", session=self._session)

    def expire(self) -> None:
        """The service's notice that the session reached its time limit; the peer then closes the call."""
        self.error("session_expired", SESSION_EXPIRED)

    def _send(self, event_type: str, **fields: Any) -> None:
        self._deliver(json.dumps({"type": event_type, "event_id": new_id("event"), **fields}))

    def error(
        self,
        code: str,
        message: str,
        event: dict | None = None,
        param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        client_event_id = event.get("event_id") if event else None
        self._send(
            "error",
            error={"type": error_type, "code": code, "message": message, "param": param, "event_id": client_event_id},
        )

    def receive(self, message: str | bytes) -> None:
        try:
            event = client_event(message)
        except ServiceError as problem:
            self.error(problem.code, problem.message, param=problem.param)
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
            self.error("unknown_event", f"Unsupported event type '{event['type']}'.", event, param="type")
        else:
            handler(event)

    def _on_session_update(self, event: dict) -> None:
        update = event.get("session")
        if not isinstance(update, dict):
            self.error("missing_required_parameter", "Missing required parameter: 'session'.", event, "session")
            return
        try:
            # A call's model is its deployment, fixed when the secret was minted; what Azure does with another name
            # here is not something the emulator can vouch for, so it keeps the call's.
            session = updated_session(self._session, {k: v for k, v in update.items() if k != "model"})
            voice = _setting(update, "audio", "output", "voice")
            if self._spoke and voice is not None and voice != _setting(self._session, "audio", "output", "voice"):
                message = "Cannot update a conversation's voice if assistant audio is present."
                raise ServiceError(400, "cannot_update_voice", message)
        except ServiceError as problem:  # the service applies nothing of a refused update
            self.error(problem.code, problem.message, event, problem.param)
            return
        self._session = session
        self._send("session.updated", session=self._session)

    def _on_item_create(self, event: dict) -> None:
        """A typed message, a turn a client replays into a new call to restore context (user or assistant text), or
        a server-run tool's output (sideband, §5)."""
        try:
            item = checked_item(event.get("item"))
        except ServiceError as problem:
            self.error(problem.code, problem.message, event, problem.param)
            return
        content, role = item.get("content"), item.get("role")
        parts = [part for part in (content if isinstance(content, list) else []) if isinstance(part, dict)]
        texts = [p["text"] for p in parts if p.get("type") == "input_text" and isinstance(p.get("text"), str)]
        if role == "user" and texts:
            self._last_user_text = " ".join(texts)
        if role == "assistant":
            self._replayed_replies += 1
        if item["type"] == "function_call_output":
            self._tool_outputs.append(item["output"])
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
            self.error("item_retrieve_invalid_item_id", message, event)
            return
        self._send("conversation.item.retrieved", item=item)

    def _on_item_delete(self, event: dict) -> None:
        item_id = event.get("item_id")
        if self._items.pop(item_id, None) is None:  # type: ignore[arg-type]
            self.error(
                "item_delete_invalid_item_id",
                f"Error deleting item: the item with id '{item_id}' does not exist.",
                event,
            )
            return
        if self._last_item_id == item_id:
            self._last_item_id = next(reversed(self._items), None)
        self._send("conversation.item.deleted", item_id=item_id)

    def hear(self, level: float, frame_ms: float) -> None:
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
        self._speech_item = new_id("item")
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
        item_id, self._speech_item = self._speech_item or new_id("item"), None
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
        self._add_item(
            {
                "id": item_id,
                "object": "realtime.item",
                "type": "message",
                "status": "completed",
                "role": "user",
                "content": [part],
            }
        )
        if _setting(self._session, "audio", "input", "transcription"):
            part["transcript"] = f"(emulator heard {seconds:.1f} s of speech)"
            where = {"item_id": item_id, "content_index": 0}
            self._send("conversation.item.input_audio_transcription.delta", **where, delta=part["transcript"])
            self._send("conversation.item.input_audio_transcription.completed", **where, transcript=part["transcript"])

    def _on_input_commit(self, event: dict) -> None:
        """Manual turns (turn_detection null): commit what arrived since the last commit or clear."""
        seconds = (self._audio_ms - self._buffer_start_ms) / 1000
        if seconds < 0.1:
            self.error(
                "input_audio_buffer_commit_empty",
                f"Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                f"but buffer only has {seconds * 1000:.2f}ms of audio.",
                event,
            )
            return
        self._speech_item = None
        self._loud_ms = 0.0
        self._commit(new_id("item"), seconds)

    def _on_input_clear(self, event: dict) -> None:
        self._buffer_start_ms = self._audio_ms
        self._speech_item = None
        self._loud_ms = 0.0
        self._send("input_audio_buffer.cleared")

    # --- responses ---

    def _on_response_create(self, event: dict) -> None:
        if self._response is not None:
            self.error(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self._response.id}. "
                "Wait until the response is finished before creating a new one.",
                event,
            )
            return
        self._start_response()

    def _start_response(self) -> None:
        """Speak from the tools' outputs the server sent, call a declared tool the user's words ask for (then wait
        for its output), or answer with the canned line."""
        if self._tool_outputs:
            transcript, self._tool_outputs = spoken_answer(self._tool_outputs), []
        elif call := tool_call_for(self._last_user_text, declared_functions(self._session)):
            self._last_user_text = None  # asked and being answered: the words do not call the tool again
            self._call_tool(*call)
            return
        else:
            heard = f"You said: {self._last_user_text.rstrip('.!? ')}." if self._last_user_text else "I heard you."
            # Say so when a client replayed earlier replies, so a page can show that context survived a new call.
            memory = " I remember our conversation so far." if self._replayed_replies else ""
            transcript = f"{heard}{memory} This is the local emulator, not Azure."
        response = _Response(id=new_id("resp"), item_id=new_id("item"), transcript=transcript)
        self._response = response
        response.task = self._spawn(self._play(response))

    def _call_tool(self, name: str, arguments: str) -> None:
        """A response whose only output is a function call, in the service's events (§5); no audio. The model then
        waits for a `function_call_output` and a `response.create` (from the server's sideband)."""
        response = _Response(id=new_id("resp"), item_id=new_id("item"), transcript="")
        item = {
            "id": response.item_id,
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "name": name,
            "call_id": new_id("call"),
            "arguments": "",
        }
        where = {"response_id": response.id, "item_id": item["id"], "output_index": 0, "call_id": item["call_id"]}
        self._send("response.created", response=self._response_object(response, "in_progress"))
        self._send("response.output_item.added", response_id=response.id, output_index=0, item=item)
        previous, self._last_item_id = self._last_item_id, item["id"]
        self._items[item["id"]] = item
        self._send("conversation.item.added", previous_item_id=previous, item=item)
        self._send("response.function_call_arguments.delta", **where, delta=arguments)
        self._send("response.function_call_arguments.done", **where, arguments=arguments)
        done = self._items[item["id"]] = {**item, "status": "completed", "arguments": arguments}
        self._send("response.output_item.done", response_id=response.id, output_index=0, item=done)
        self._send("conversation.item.done", previous_item_id=previous, item=done)
        self._send("response.done", response=self._response_object(response, "completed", output=[done]))

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
            self.error("response_cancel_not_active", "Cancellation failed: no active response found.", event)
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
            "id": response.item_id,
            "object": "realtime.item",
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def _response_object(
        self, response: _Response, status: str, status_details: dict | None = None, output: list[dict] | None = None
    ) -> dict:
        """`output`: the response's items when they are not its spoken reply (a function call)."""
        output_tokens = len(response.delivered.split()) or len(output or ())
        return {
            "id": response.id,
            "object": "realtime.response",
            "status": status,
            "status_details": status_details,
            "output": []
            if status == "in_progress"
            else output or [self._assistant_item(response, _item_status(status))],
            "output_modalities": _setting(self._session, "output_modalities"),
            "audio": {"output": {"voice": _setting(self._session, "audio", "output", "voice")}},
            "usage": None
            if status == "in_progress"
            else {
                "total_tokens": 10 + output_tokens,
                "input_tokens": 10,
                "output_tokens": output_tokens,  # nominal
            },
        }
