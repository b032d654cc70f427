"""GPT-Live as the fake holds it (realtime-api.md §6): what `POST /openai/v1/live/sessions` accepts, field by field,
and a session's state for its attach socket (`GET …/live/sessions/{id}/attach`).

The service is strict (unknown fields are refused) and a live session's model, instructions and voice are
immutable, so a broker must send exactly this shape; the fake refuses everything else with the service's 400. The
rules for what an attached server (or the browser) sends are shared with the emulator's GPT-Live mode.

`session.closed` carries the session's cumulative `usage`; its shape is not documented, so the fake reports it in
the realtime `response.usage` shape (§5, token counts), which is what the app reads. Its `reason` values besides
`close_requested` are this fake's labels too (the page knows the same ones).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .fake_call import FakeSession, usage_for
from .service_rules import VOICES, ServiceError, new_id, only

SESSION_KEYS = {"model", "instructions", "audio", "delegation"}
RESPONSES_KEYS = {"model", "instructions", "tools", "tool_choice"}
TOOL_KEYS = {"type", "name", "description", "parameters", "strict"}
APPENDS = ("session.instructions.append", "session.thinking.append", "session.commentary.append")
MAX_APPEND_CHARS = 2000  # about 500 tokens, the documented bound on appended context
# How a session ended (FakeSession.end's reasons) as `session.closed` says it.
CLOSED_REASONS = {"session_expired": "expired", "hangup": "remote_hangup", "gone": "connection_lost"}


def check_live_request(payload: object) -> tuple[dict, str]:
    """The session and the SDP offer of a well-formed request; ServiceError for the first problem."""
    only(payload, {"session", "transport"}, "")
    assert isinstance(payload, dict)
    for name in ("session", "transport"):
        if name not in payload:
            raise ServiceError(400, "missing_required_parameter", f"Missing required parameter: '{name}'.", name)
    transport = payload["transport"]
    only(transport, {"type", "sdp"}, "transport.")
    if transport.get("type") != "webrtc":
        raise ServiceError(400, "invalid_value", "transport.type must be 'webrtc'.", "transport.type")
    sdp = transport.get("sdp")
    if not isinstance(sdp, str) or not sdp.startswith("v=0") or "m=audio" not in sdp:
        raise ServiceError(400, "invalid_offer", "transport.sdp is not an SDP offer.", "transport.sdp")
    session = payload["session"]
    check_live_session(session)
    return session, sdp


def check_live_session(session: object) -> None:
    only(session, SESSION_KEYS, "session.")
    assert isinstance(session, dict)
    if not isinstance(session.get("model"), str):
        raise ServiceError(
            400, "missing_required_parameter", "Missing required parameter: 'session.model'.", "session.model"
        )
    if "instructions" in session and not isinstance(session["instructions"], str):
        raise ServiceError(400, "invalid_type", "session.instructions must be a string.", "session.instructions")
    audio = session.get("audio", {})
    only(audio, {"output"}, "session.audio.")
    output = audio.get("output", {})
    only(output, {"voice"}, "session.audio.output.")
    if "voice" in output and output["voice"] not in VOICES:
        raise ServiceError(400, "invalid_value", f"Invalid value: '{output['voice']}'.", "session.audio.output.voice")
    check_delegation(session.get("delegation", {"type": "client"}))


def check_delegation(delegation: object) -> None:
    """`session.delegation`, at creation or in a later `session.update`."""
    only(delegation, {"type", "responses"}, "session.delegation.")
    assert isinstance(delegation, dict)
    kind = delegation.get("type")
    if kind == "client" and "responses" not in delegation:
        return
    if kind == "responses" and isinstance(delegation.get("responses"), dict):
        check_responses(delegation["responses"])
        return
    raise ServiceError(
        400,
        "invalid_value",
        "session.delegation must be {'type': 'client'} or {'type': 'responses', 'responses': {…}}.",
        "session.delegation",
    )


def check_responses(responses: dict) -> None:
    """`delegation.responses`: a Responses model, and function tools in the Responses shape."""
    only(responses, RESPONSES_KEYS, "session.delegation.responses.")
    where = "session.delegation.responses."
    if not isinstance(responses.get("model"), str):
        raise ServiceError(400, "missing_required_parameter", f"Missing required parameter: '{where}model'.")
    if "instructions" in responses and not isinstance(responses["instructions"], str):
        raise ServiceError(400, "invalid_type", f"{where}instructions must be a string.", f"{where}instructions")
    tools = responses.get("tools", [])
    if not isinstance(tools, list):
        raise ServiceError(400, "invalid_type", f"{where}tools must be an array.", f"{where}tools")
    for index, tool in enumerate(tools):
        only(tool, TOOL_KEYS, f"{where}tools[{index}].")
        if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            message = f"{where}tools[{index}] must be a function tool with a name."
            raise ServiceError(400, "invalid_value", message, f"{where}tools[{index}]")
    if responses.get("tool_choice", "auto") not in ("auto", "none", "required"):
        raise ServiceError(400, "invalid_value", f"Invalid value for '{where}tool_choice'.", f"{where}tool_choice")


def check_live_update(update: object) -> None:
    """A `session.update` on a started session: model, instructions and voice are immutable; only `delegation`
    (its `responses` settings) may change."""
    if not isinstance(update, dict):
        raise ServiceError(400, "missing_required_parameter", "Missing required parameter: 'session'.", "session")
    fixed = next((key for key in update if key != "delegation"), None)
    if fixed is not None:
        message = f"session.{fixed} cannot be changed once a GPT-Live session has started."
        raise ServiceError(400, "immutable_parameter", message, f"session.{fixed}")
    if "delegation" in update:
        check_delegation(update["delegation"])


def check_append(event: dict) -> str:
    """The content of a `session.{instructions,thinking,commentary}.append`, or ServiceError."""
    content, delegation = event.get("content"), event.get("delegation_id", "missing")
    if not isinstance(content, str) or not content.strip() or len(content) > MAX_APPEND_CHARS:
        raise ServiceError(400, "invalid_value", "content must be text of at most 500 tokens.", "content")
    if delegation is not None and not isinstance(delegation, str):
        raise ServiceError(400, "invalid_value", "delegation_id must be a delegation's id or null.", "delegation_id")
    return content


def summed(total: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """Usage objects added field by field (nested details too): a session's cumulative usage."""
    out = dict(total)
    for key, value in more.items():
        if isinstance(value, dict):
            out[key] = summed(out.get(key) or {}, value)
        elif isinstance(value, int):
            out[key] = out.get(key, 0) + value
    return out


class LiveCall(FakeSession):
    """One GPT-Live session: full duplex, so no items and no responses; timed transcript fragments, appended
    context acknowledged, and `session.close` ending it with `session.closed` (reason and cumulative usage)."""

    def __init__(self, session_id: str, session: dict, on_end: Callable[[FakeSession, str], None]) -> None:
        super().__init__(session_id, {**session, "id": session_id, "object": "live.session"}, on_end)
        self.usage: dict[str, Any] = {}  # cumulative, as `session.closed` reports it
        self.outputs: dict[str, str] = {}  # delegated function calls' outputs, by call_id
        self._awaiting: dict[str, str] = {}  # delegated call_id -> its delegation, until its output comes
        self._answered: set[str] = set()  # delegations whose outputs came, until a response.create continues them
        self._started = time.monotonic()

    def handlers(self) -> dict[str, Callable[[dict], None]]:
        """No response lifecycle, except to answer a `responses` delegation's function calls."""
        delegated = {"response.item.create": self._on_delegated_output, "response.create": self._on_delegated_create}
        return {
            "session.close": lambda event: self.end("close_requested"),
            "session.update": self._on_update,
            **dict.fromkeys(APPENDS, self._on_append),
            **(delegated if self.session.get("delegation", {}).get("type") == "responses" else {}),
        }

    def delegate_tools(self, calls: list[tuple[str, str]]) -> list[str]:
        """GPT-Live delegates a task and its Responses model calls these function tools, (name, arguments JSON)
        each, in one response, its events wrapped as §6 describes; returns the `call_id`s an answer must name."""
        delegation = self.session["delegation"]
        assert delegation["type"] == "responses", "the session was created with client delegation"
        delegation_id, response_id = new_id("dlg"), new_id("resp")
        self.emit({"type": "session.delegation.created", "delegation": {"id": delegation_id, "target": "responses"}})
        items = [
            {"id": new_id("fc"), "type": "function_call", "status": "completed", "call_id": new_id("call"),
             "name": name, "arguments": arguments}
            for name, arguments in calls
        ]  # fmt: skip
        for index, item in enumerate(items):
            self._delegated(delegation_id, {"type": "response.output_item.done", "output_index": index, "item": item})
        self._delegated(
            delegation_id,
            {"type": "response.completed", "response": {"id": response_id, "status": "completed", "output": items}},
        )
        self._awaiting.update((item["call_id"], delegation_id) for item in items)
        return [item["call_id"] for item in items]

    def _delegated(self, delegation_id: str, event: dict) -> None:
        self.emit({"type": "response.event", "delegation_id": delegation_id, "event": event})

    def _on_delegated_output(self, event: dict) -> None:
        """`response.item.create`: a function call's output, for a call the delegate made and is waiting on."""
        item = event.get("item")
        try:
            only(event, {"type", "event_id", "item"}, "")
            only(item, {"type", "call_id", "output"}, "item.")
            assert isinstance(item, dict)
            if item.get("type") != "function_call_output" or not isinstance(item.get("output"), str):
                raise ServiceError(400, "invalid_value", "item must be a function_call_output with an output.", "item")
            if item.get("call_id") not in self._awaiting:
                raise ServiceError(
                    400, "invalid_value", "No delegated call is waiting on this call_id.", "item.call_id"
                )
        except ServiceError as problem:
            self._error(problem.code, problem.message, event, problem.param)
            return
        self.outputs[item["call_id"]] = item["output"]
        self._answered.add(self._awaiting.pop(item["call_id"]))

    def _on_delegated_create(self, event: dict) -> None:
        """`response.create`: the delegate answers from the outputs it got, and GPT-Live speaks the result."""
        if set(event) - {"type", "event_id"} or not self._answered:
            self._error("invalid_value", "response.create continues a delegation that received its outputs.", event)
            return
        for delegation_id in sorted(self._answered):
            if delegation_id in self._awaiting.values():
                continue  # a call of this delegation still has no output
            self._answered.discard(delegation_id)
            self._delegated(delegation_id, {"type": "response.completed", "response": {"status": "completed"}})
            self.say("Here is what I found.")

    def hear(self, text: str) -> None:
        """The user's words, as one `session.input_transcript.delta` fragment."""
        self._fragment("session.input_transcript.delta", text)

    def say(self, text: str) -> None:
        """The assistant's words, a fragment per word; what they cost joins the session's usage."""
        for index, word in enumerate(text.split(" ")):
            self._fragment("session.output_transcript.delta", word if index == 0 else f" {word}")
        self.usage = summed(self.usage, usage_for(text))

    def _fragment(self, kind: str, delta: str) -> None:
        now = int((time.monotonic() - self._started) * 1000)
        self.emit({"type": kind, "delta": delta, "start_ms": now, "end_ms": now + 40 * len(delta)})

    def _last_words(self, reason: str) -> None:
        self.emit({"type": "session.closed", "reason": CLOSED_REASONS.get(reason, reason), "usage": self.usage})

    def _on_update(self, event: dict) -> None:
        try:
            check_live_update(event.get("session"))
        except ServiceError as problem:
            self._error(problem.code, problem.message, event, problem.param)
            return
        self.session = {**self.session, **event["session"]}  # a new delegation replaces the old one whole
        self.emit({"type": "session.updated", "client_event_id": event.get("event_id"), "session": self.session})

    def _on_append(self, event: dict) -> None:
        try:
            check_append(event)
        except ServiceError as problem:
            self._error(problem.code, problem.message, event, problem.param)
            return
        self.emit({"type": event["type"].removesuffix("append") + "appended", "client_event_id": event.get("event_id")})
