"""One live call as the fake service holds it: its session and the sideband WebSockets attached to it.

`FakeSession` is what every kind of call shares (the sockets, the record of what they sent, the end); `FakeCall` is
a realtime call, `fake_live.LiveCall` a GPT-Live session. Tests drive it as the model would (`respond`, `call_tools`,
`browser_update`, `end`, ...) and observe what the sidebands sent (`received`, `wait_received`). Events a sideband
sends are handled as the service does (shared/docs/realtime-api.md §5, §6): by these classes when the fake answers
offers with a canned SDP, or by the emulator's conversation when a real WebRTC peer holds the call (`peer` is then
set and every server event it sends is mirrored here). Thread-safe: sockets, the emulator's loop and tests call in
from their own threads.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

from .service_rules import SESSION_EXPIRED, ServiceError, checked_item, client_event, new_id, updated_session


class Sideband(Protocol):
    """An attached sideband socket, as the call sees it."""

    def send(self, text: str) -> None: ...

    def close(self, code: int = 1000, reason: str = "") -> None: ...


def usage_for(transcript: str) -> dict[str, Any]:
    """A plausible `response.usage` (§5) for a spoken answer of this length: audio dominates, some input cached."""
    words = max(1, len(transcript.split()))
    text_in, audio_in, cached = 180, 40 + 2 * words, 128
    text_out, audio_out = words + 2, 8 * words
    return {
        "total_tokens": text_in + audio_in + text_out + audio_out,
        "input_tokens": text_in + audio_in,
        "output_tokens": text_out + audio_out,
        "input_token_details": {
            "text_tokens": text_in,
            "audio_tokens": audio_in,
            "image_tokens": 0,
            "cached_tokens": cached,
            "cached_tokens_details": {"text_tokens": cached, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
    }


class FakeSession:
    """A call's sockets and end, whatever its kind; subclasses say how it handles what a sideband sends."""

    UPDATE_FIELDS: ClassVar[Mapping[str, str]] = {}  # what every `session.update` of this kind of session carries

    def __init__(self, call_id: str, session: dict, on_end: Callable[[FakeSession, str], None]) -> None:
        self.call_id = call_id
        self.session = session  # the whole effective session, as the last session.created/updated carried it
        self.received: list[dict] = []  # well-formed events the sidebands sent, in order
        self._handled = 0  # how many of them have been handled (wait_received waits for that too)
        self.attaches = 0
        self.max_attached = 0
        self.ended = False
        self.end_reason: str | None = None
        # Set by the emulator: takes each event a sideband sent (JSON text) into the WebRTC call's conversation.
        self.peer: Callable[[str], object] | None = None
        self._on_end = on_end  # the fake marks the call ended and ends its media
        self._sidebands: list[Sideband] = []
        self._changed = threading.Condition()

    # -- observation ------------------------------------------------------------------------------

    @property
    def attached(self) -> int:
        """Sidebands open now."""
        with self._changed:
            return len(self._sidebands)

    def wait_received(self, predicate: Callable[[dict], bool], timeout: float = 5.0) -> dict:
        """The first event a sideband sent that matches, once the call has handled it (its effects are visible);
        TimeoutError if none came in time."""

        def first() -> dict | None:
            return next((event for event in self.received[: self._handled] if predicate(event)), None)

        with self._changed:
            found = self._changed.wait_for(first, timeout)
        if found is None:
            raise TimeoutError(f"no matching sideband event within {timeout} s; got {self.received}")
        return found

    def wait_attached(self, count: int = 1, timeout: float = 5.0) -> None:
        """Until `count` sidebands are open at once; TimeoutError otherwise."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._sidebands) >= count, timeout):
                raise TimeoutError(f"{len(self._sidebands)} sidebands attached after {timeout} s, wanted {count}")

    # -- sockets ----------------------------------------------------------------------------------

    def attach(self, sideband: Sideband) -> bool:
        """Join the call's event stream; False (and the socket closed) if the call ended meanwhile."""
        with self._changed:
            if not self.ended:
                self._sidebands.append(sideband)
                self.attaches += 1
                self.max_attached = max(self.max_attached, len(self._sidebands))
                self._changed.notify_all()
                return True
        sideband.close(1000, self.end_reason or "")
        return False

    def detach(self, sideband: Sideband) -> None:
        with self._changed:
            if sideband in self._sidebands:
                self._sidebands.remove(sideband)
                self._changed.notify_all()

    def client_event(self, message: str | bytes) -> None:
        """An event a sideband sent: recorded, then handled by the emulator's conversation or here; `wait_received`
        answers once it is handled (on the canned fake; the emulator handles it on its own loop)."""
        try:
            event = client_event(message)
        except ServiceError as problem:
            self._error(problem.code, problem.message, param=problem.param)
            return
        with self._changed:
            self.received.append(event)
        handler = self.handlers().get(event["type"])
        try:
            if self.peer is not None:
                self.peer(json.dumps(event))
            elif handler is None:
                self._error("unknown_event", f"Unsupported event type '{event['type']}'.", event, "type")
            else:
                handler(event)
        finally:
            with self._changed:
                self._handled += 1
                self._changed.notify_all()

    def handlers(self) -> dict[str, Callable[[dict], None]]:
        """The client events this kind of call takes from a sideband, by type (when no emulated peer holds it)."""
        return {}

    def browser_update(self, session_patch: dict) -> None:
        """As if the browser sent `session.update` with this patch on its data channel (a realtime session's
        `type` added): the whole session goes to every sideband in `session.updated`, or an `error` if the
        service would refuse it."""
        event = {"type": "session.update", "session": {**self.UPDATE_FIELDS, **session_patch}}
        if self.peer is not None:
            self.peer(json.dumps(event))
        else:
            self.handlers()["session.update"](event)

    # -- what the service sends -------------------------------------------------------------------

    def emit(self, event: dict) -> None:
        """A server event to every attached sideband (an `event_id` is added if missing)."""
        event = {"event_id": new_id("event"), **event}
        self._broadcast(event, json.dumps(event))

    def mirror(self, text: str) -> None:
        """A server event (JSON text) the emulator's peer sent its browser, to every sideband as well."""
        self._broadcast(json.loads(text), text)

    def _broadcast(self, event: dict, text: str) -> None:
        """The session an event carries becomes the call's session; the text goes to every sideband."""
        if event.get("type") in ("session.created", "session.updated"):
            self.session = event["session"]
        with self._changed:
            sidebands = list(self._sidebands)
        for sideband in sidebands:
            sideband.send(text)

    def end(self, reason: str = "hangup") -> None:
        """The call ends (its media too): the service's last words first (`_last_words`); every sideband is then
        closed normally and later attaches are refused with 404. Idempotent."""
        with self._changed:
            if self.ended:
                return
            self.ended, self.end_reason = True, reason
            self._changed.notify_all()
        if self.peer is None:  # an emulated peer says so itself
            self._last_words(reason)
        self._on_end(self, reason)
        with self._changed:
            sidebands, self._sidebands = self._sidebands, []
            self._changed.notify_all()
        for sideband in sidebands:
            sideband.close(1000, reason)

    def close_sidebands(self, code: int = 1001) -> None:
        """The service going away (the fake shuts down): sidebands close, the call itself is left as it is."""
        with self._changed:
            sidebands, self._sidebands = self._sidebands, []
        for sideband in sidebands:
            sideband.close(code, "going away")

    def _last_words(self, reason: str) -> None:
        """What the service says on the sidebands as the call ends for `reason`, before closing them."""

    def _error(self, code: str, message: str, event: dict | None = None, param: str | None = None) -> None:
        client_event_id = event.get("event_id") if event else None
        error = {
            "type": "invalid_request_error",
            "code": code,
            "message": message,
            "param": param,
            "event_id": client_event_id,
        }
        self.emit({"type": "error", "error": error})


class FakeCall(FakeSession):
    """A realtime call (§5): session updates, items and responses, as the canned service answers them."""

    UPDATE_FIELDS: ClassVar[Mapping[str, str]] = {"type": "realtime"}

    def __init__(self, call_id: str, session: dict, on_end: Callable[[FakeSession, str], None]) -> None:
        super().__init__(call_id, session, on_end)
        self._tool_loop: tuple[str, str] | None = None
        self._last_item_id: str | None = None
        self._streaming: threading.Event | None = None

    def handlers(self) -> dict[str, Callable[[dict], None]]:
        return {
            "session.update": self._on_session_update,
            "conversation.item.create": self._on_item_create,
            "response.create": self._on_response_create,
        }

    def end(self, reason: str = "hangup") -> None:
        self.stop_stream()
        super().end(reason)

    def _last_words(self, reason: str) -> None:
        """`session_expired` says so in an `error` event."""
        if reason == "session_expired":
            self._error("session_expired", SESSION_EXPIRED)

    def respond(self, usage: dict | None = None, transcript: str = "Here is what I found for you.") -> str:
        """One spoken answer, `response.created` to `response.done` (with `usage`, §5); returns the response id."""
        response_id, item_id = new_id("resp"), new_id("item")
        item: dict[str, Any] = {"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant"}
        part = {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
        self.emit({"type": "response.created", "response": self._response(response_id, "in_progress", [], None)})
        self._output_item_added(response_id, 0, {**item, "status": "in_progress", "content": []})
        for index, word in enumerate(transcript.split(" ")):
            self.emit({"type": "response.output_audio_transcript.delta", **part, "delta": f" {word}"[not index :]})
        self.emit({"type": "response.output_audio_transcript.done", **part, "transcript": transcript})
        done = {**item, "status": "completed", "content": [{"type": "output_audio", "transcript": transcript}]}
        self._output_item_done(response_id, 0, done)
        self.emit(
            {
                "type": "response.done",
                "response": self._response(response_id, "completed", [done], usage or usage_for(transcript)),
            }
        )
        return response_id

    def call_tools(self, calls: list[tuple[str, str]]) -> list[str]:
        """One response in which the model calls these function tools, (name, arguments JSON string) each, as §5
        describes; returns their `call_id`s, which a `function_call_output` must name."""
        response_id = new_id("resp")
        self.emit({"type": "response.created", "response": self._response(response_id, "in_progress", [], None)})
        items = []
        for index, (name, arguments) in enumerate(calls):
            item = {
                "id": new_id("item"),
                "object": "realtime.item",
                "type": "function_call",
                "name": name,
                "call_id": new_id("call"),
                "arguments": "",
            }
            where = {
                "response_id": response_id,
                "item_id": item["id"],
                "output_index": index,
                "call_id": item["call_id"],
            }
            self._output_item_added(response_id, index, {**item, "status": "in_progress"})
            self.emit({"type": "response.function_call_arguments.delta", **where, "delta": arguments})
            self.emit({"type": "response.function_call_arguments.done", **where, "name": name, "arguments": arguments})
            items.append({**item, "status": "completed", "arguments": arguments})
            self._output_item_done(response_id, index, items[-1])
        self.emit(
            {
                "type": "response.done",
                "response": self._response(response_id, "completed", items, usage_for(" ".join(n for n, _ in calls))),
            }
        )
        return [item["call_id"] for item in items]

    def keep_calling_tools(self, name: str | None, arguments: str = "{}") -> None:
        """A model stuck in a tool loop: every `response.create` a sideband sends is answered with another call of
        this tool (None: answer normally again). Canned calls only; the emulator's conversation calls a declared
        tool only when the user's words ask for it (localdev/emulator/tools.py)."""
        self._tool_loop = None if name is None else (name, arguments)

    def stream(self, rate_per_second: float) -> None:
        """Emit a realistic mix of a conversation's events (turns, transcripts, usage) at this rate until
        `stop_stream()` or the call's end, e.g. for a benchmark of many supervised calls."""
        self.stop_stream()
        stop = self._streaming = threading.Event()
        threading.Thread(
            target=self._stream, args=(stop, 1 / rate_per_second), daemon=True, name=f"stream-{self.call_id}"
        ).start()

    def stop_stream(self) -> None:
        if self._streaming is not None:
            self._streaming.set()

    # -- handlers for the canned call -------------------------------------------------------------

    def _on_session_update(self, event: dict) -> None:
        try:
            session = updated_session(self.session, event.get("session"))
        except ServiceError as problem:  # the service applies nothing of a refused update
            self._error(problem.code, problem.message, event, problem.param)
            return
        self.emit({"type": "session.updated", "session": session})

    def _on_item_create(self, event: dict) -> None:
        try:
            item = checked_item(event.get("item"))
        except ServiceError as problem:
            self._error(problem.code, problem.message, event, problem.param)
            return
        previous, self._last_item_id = self._last_item_id, item["id"]
        self.emit({"type": "conversation.item.added", "previous_item_id": previous, "item": item})
        self.emit({"type": "conversation.item.done", "previous_item_id": previous, "item": item})

    def _on_response_create(self, event: dict) -> None:
        if self._tool_loop is not None:
            self.call_tools([self._tool_loop])
        else:
            self.respond()

    def _output_item_added(self, response_id: str, index: int, item: dict) -> None:
        previous, self._last_item_id = self._last_item_id, item["id"]
        self.emit(
            {"type": "response.output_item.added", "response_id": response_id, "output_index": index, "item": item}
        )
        self.emit({"type": "conversation.item.added", "previous_item_id": previous, "item": item})

    def _output_item_done(self, response_id: str, index: int, item: dict) -> None:
        self.emit(
            {"type": "response.output_item.done", "response_id": response_id, "output_index": index, "item": item}
        )
        self.emit({"type": "conversation.item.done", "previous_item_id": None, "item": item})

    def _response(self, response_id: str, status: str, output: list[dict], usage: dict | None) -> dict:
        return {
            "id": response_id,
            "object": "realtime.response",
            "status": status,
            "status_details": None,
            "output": output,
            "conversation_id": "conv_" + self.call_id,
            "output_modalities": self.session.get("output_modalities"),
            "audio": {"output": {"voice": self.session.get("audio", {}).get("output", {}).get("voice")}},
            "usage": usage,
        }

    def _stream(self, stop: threading.Event, interval: float) -> None:
        """Turn after turn: the user speaks and is transcribed, the assistant answers, usage is reported."""
        while not stop.is_set():
            item_id, response_id = new_id("item"), new_id("resp")
            ms = int(time.monotonic() * 1000)
            words = ["Sure,", "the", "store", "opens", "at", "nine", "tomorrow."]
            turn: list[dict] = [
                {"type": "input_audio_buffer.speech_started", "item_id": item_id, "audio_start_ms": ms},
                {"type": "input_audio_buffer.speech_stopped", "item_id": item_id, "audio_end_ms": ms + 1400},
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": item_id,
                    "content_index": 0,
                    "transcript": "When do you open tomorrow?",
                },
                {"type": "response.created", "response": self._response(response_id, "in_progress", [], None)},
                *(
                    {
                        "type": "response.output_audio_transcript.delta",
                        "response_id": response_id,
                        "item_id": item_id,
                        "output_index": 0,
                        "content_index": 0,
                        "delta": f" {word}",
                    }
                    for word in words
                ),
                {
                    "type": "response.done",
                    "response": self._response(response_id, "completed", [], usage_for(" ".join(words))),
                },
            ]
            for event in turn:
                if stop.wait(interval):
                    return
                self.emit(event)
