"""What the realtime service accepts and fills in for a session, shared by everything that plays the service locally:
the fake's HTTP endpoints, its sideband WebSocket (`fake_call`) and the emulator's data channel.

Field checks follow shared/docs/realtime-api.md §1; the defaults are what the service reports in `session.created` and
`session.updated` for fields the client left out, so code comparing sessions sees what it would see on Azure.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from typing import Any

VOICES = {"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"}
# Session fields, in two kinds (docs/local-development.md, "What the emulator can vouch for"). AZURE_*: named by
# Microsoft's docs for the GA WebRTC flow (shared/docs/realtime-api.md §1), so known to be accepted by Azure.
# OPENAI_*: in OpenAI's GA reference and sent by OpenAI's clients (the Agents SDK sends `tracing`, `tool_choice`, the
# formats and `speed` on every connect); the emulator accepts them but cannot vouch that Azure does. Anything else is
# refused.
AZURE_SESSION_KEYS = {"type", "model", "instructions", "output_modalities", "audio"}
OPENAI_SESSION_KEYS = {"tools", "tool_choice", "max_output_tokens", "tracing", "truncation", "prompt", "include"}
OPENAI_SESSION_KEYS |= {"reasoning"}  # reasoning deployments only (realtime-api.md §5: `realtime_reasoning_param.py`)
EFFORTS = {"minimal", "low", "medium", "high"}
SESSION_KEYS = AZURE_SESSION_KEYS | OPENAI_SESSION_KEYS
AUDIO_INPUT_KEYS = {"transcription", "turn_detection", "noise_reduction"} | {"format"}  # Azure's | OpenAI's
AUDIO_OUTPUT_KEYS = {"voice"} | {"format", "speed"}  # Azure's | OpenAI's
SESSION_LIFETIME_S = 3600
SESSION_EXPIRED = "Your session hit the maximum duration of 60 minutes."  # the service's words
# The only server events `?webrtcfilter=on` lets through to the browser's data channel (realtime-api.md, "Details that
# trip implementations"); a sideband still gets every event.
WEBRTC_FILTER_PASSES = frozenset(
    {
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "output_audio_buffer.started",
        "output_audio_buffer.stopped",
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.added",
        "conversation.item.created",
        "response.output_text.delta",
        "response.output_text.done",
        "response.output_audio_transcript.delta",
        "response.output_audio_transcript.done",
    }
)
# What the service fills into a turn_detection object of each type (the other type's fields do not apply).
TURN_DETECTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "server_vad": {
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    },
    "semantic_vad": {"eagerness": "auto", "create_response": True, "interrupt_response": True},
}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


class ServiceError(Exception):
    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param

    def body(self) -> bytes:
        error = {"message": self.message, "type": "invalid_request_error", "code": self.code, "param": self.param}
        return json.dumps({"error": error}).encode()


def client_event(message: str | bytes) -> dict:
    """A client event as the service reads one off the data channel or a sideband; ServiceError when it is not."""
    try:
        event = json.loads(message)
    except ValueError:
        raise ServiceError(400, "invalid_json", "The event could not be parsed as JSON.") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ServiceError(400, "invalid_event", "The event must be a JSON object with a string 'type'.", "type")
    return event


def check_session_fields(session: dict) -> None:
    """The checks the service applies to a `session` object wherever it arrives (a client secret, or a
    `session.update` on the data channel or the sideband); raises ServiceError for the first problem, as the
    service answers one."""
    only(session, SESSION_KEYS, "session.")
    if "type" not in session:
        raise ServiceError(
            400, "missing_required_parameter", "Missing required parameter: 'session.type'.", "session.type"
        )
    if session["type"] != "realtime":
        raise ServiceError(400, "invalid_value", "session.type must be 'realtime'.", "session.type")
    if "instructions" in session and not isinstance(session["instructions"], str):
        raise ServiceError(400, "invalid_type", "session.instructions must be a string.", "session.instructions")
    audio = session.get("audio", {})
    if not isinstance(audio, dict):
        raise ServiceError(400, "invalid_type", "session.audio must be an object.", "session.audio")
    only(audio, {"input", "output"}, "session.audio.")
    only(audio.get("input", {}), AUDIO_INPUT_KEYS, "session.audio.input.")
    only(audio.get("output", {}), AUDIO_OUTPUT_KEYS, "session.audio.output.")
    voice = audio.get("output", {}).get("voice")
    if voice is not None and voice not in VOICES:
        raise ServiceError(400, "invalid_value", f"Invalid value: '{voice}'.", "session.audio.output.voice")
    reasoning = session.get("reasoning", {"effort": "low"})
    only(reasoning, {"effort"}, "session.reasoning.")
    if reasoning.get("effort") not in EFFORTS:
        raise ServiceError(400, "invalid_value", "Invalid reasoning effort.", "session.reasoning.effort")
    turn = audio.get("input", {}).get("turn_detection")
    if turn is not None and (not isinstance(turn, dict) or turn.get("type") not in TURN_DETECTION_DEFAULTS):
        raise ServiceError(
            400, "invalid_value", "Unknown turn_detection type.", "session.audio.input.turn_detection.type"
        )


def only(obj: object, allowed: set[str], where: str) -> None:
    if not isinstance(obj, dict):
        raise ServiceError(400, "invalid_type", f"{where.rstrip('.') or 'body'} must be an object.")
    for key in obj:
        if key not in allowed:
            raise ServiceError(400, "unknown_parameter", f"Unknown parameter: '{where}{key}'.", f"{where}{key}")


def merged(base: dict, update: dict) -> dict:
    """Merge as session.update does: nested objects merge, anything else (null included) replaces."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def effective_session(config: dict) -> dict:
    """The session as the service reports it for a call minted with `config`: the config over the defaults."""
    pcm = {"type": "audio/pcm", "rate": 24000}
    defaults = {
        "type": "realtime",
        "object": "realtime.session",
        "model": "gpt-realtime",
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "include": None,
        "audio": {
            "input": {
                "format": pcm,
                "transcription": {"model": "whisper-1"},
                "noise_reduction": None,
                "turn_detection": {"type": "server_vad"},
            },
            "output": {"format": pcm, "voice": "alloy", "speed": 1.0},
        },
    }
    session = _completed(merged(defaults, config))
    session.update(id=new_id("sess"), type="realtime", expires_at=int(time.time()) + SESSION_LIFETIME_S)
    return session


def updated_session(session: dict, update: object) -> dict:
    """The session after a `session.update` carrying `update`, or ServiceError (nothing applied) as the service
    refuses it: GA-shaped fields only, and the call's model (its deployment) cannot change."""
    if not isinstance(update, dict):
        raise ServiceError(400, "missing_required_parameter", "Missing required parameter: 'session'.", "session")
    check_session_fields(update)
    if "model" in update and update["model"] != session.get("model"):
        raise ServiceError(400, "invalid_value", "session.model cannot be changed after a call starts.", "model")
    return _completed(merged(session, update))


def _completed(session: dict) -> dict:
    """Fill turn detection for its type (what a switch between server and semantic VAD leaves is dropped)."""
    turn = session.get("audio", {}).get("input", {}).get("turn_detection")
    if isinstance(turn, dict) and turn.get("type") in TURN_DETECTION_DEFAULTS:
        defaults = TURN_DETECTION_DEFAULTS[turn["type"]]
        session["audio"]["input"]["turn_detection"] = {
            "type": turn["type"],
            **{key: turn.get(key, value) for key, value in defaults.items()},
        }
    return session


# What a client may add to a conversation (conversation.item.create), by role: the content types the service takes.
ITEM_CONTENT_TYPES = {
    "user": {"input_text", "input_audio"},
    "assistant": {"output_text", "output_audio"},
    "system": {"input_text"},
}


def checked_item(item: object) -> dict:
    """The item of a `conversation.item.create` as the service stores it, or ServiceError: a message (typed, or a
    turn replayed from an earlier call), or a function call and its output (server-run tools, §5)."""
    if not isinstance(item, dict):
        raise ServiceError(400, "missing_required_parameter", "Missing required parameter: 'item'.", "item")
    item = {"object": "realtime.item", "status": "completed", **item, "id": item.get("id") or new_id("item")}
    kind, role = item.get("type"), item.get("role")
    if kind == "message":
        allowed = ITEM_CONTENT_TYPES.get(role)  # type: ignore[arg-type]
        if allowed is None:
            message = f"Invalid value: '{role}'. Supported values are: 'user', 'assistant', and 'system'."
            raise ServiceError(400, "invalid_value", message, "item.role")
        content = item.get("content")
        parts = [part for part in (content if isinstance(content, list) else []) if isinstance(part, dict)]
        wrong = next((p.get("type") for p in parts if p.get("type") not in allowed), None)
        if wrong is not None or not parts:
            message = f"Invalid value: '{wrong}'. A {role} message takes content of type {', '.join(sorted(allowed))}."
            raise ServiceError(400, "invalid_value", message, "item.content")
    elif kind in ("function_call", "function_call_output"):
        strings = ("call_id", "output") if kind == "function_call_output" else ("call_id", "name", "arguments")
        for name in strings:
            if not isinstance(item.get(name), str) or (name != "output" and not item[name]):
                message = f"Missing required parameter: 'item.{name}' (a non-empty string)."
                raise ServiceError(400, "missing_required_parameter", message, f"item.{name}")
    else:
        message = (
            f"Invalid value: '{kind}'. Supported values are: 'message', 'function_call', and 'function_call_output'."
        )
        raise ServiceError(400, "invalid_value", message, "item.type")
    return item
