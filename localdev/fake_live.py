"""What the GPT-Live session endpoint (`POST /openai/v1/live/sessions`, realtime-api.md §6) accepts, field by field.

The service is strict (unknown fields are refused) and a live session's model, instructions and voice are
immutable, so a broker must send exactly this shape; the fake refuses everything else with the service's 400.
"""

from __future__ import annotations

from .service_rules import VOICES, ServiceError, only

SESSION_KEYS = {"model", "instructions", "audio", "delegation"}
RESPONSES_KEYS = {"model", "instructions", "tools", "tool_choice"}


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
    delegation = session.get("delegation", {"type": "client"})
    only(delegation, {"type", "responses"}, "session.delegation.")
    kind = delegation.get("type")
    if kind == "client" and "responses" not in delegation:
        return
    if kind == "responses" and isinstance(delegation.get("responses"), dict):
        only(delegation["responses"], RESPONSES_KEYS, "session.delegation.responses.")
        return
    raise ServiceError(
        400,
        "invalid_value",
        "session.delegation must be {'type': 'client'} or {'type': 'responses', 'responses': {…}}.",
        "session.delegation",
    )
