"""Turns the server's session policy plus a caller's choices into the `session` object sent upstream.

The caller chooses a voice from the allowed list and, depending on the mode, adds to or replaces the
server's instructions; everything else (model, transcription, turn detection, tools) is the server's
*when the session is created*. A browser holding the data channel can change most of it afterwards with
`session.update` (docs/security.md: "What the server controls, and what the browser can still change").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .offer import Offer
from .settings import SessionPolicy, Settings


def effective_instructions(policy: SessionPolicy, caller: str) -> str:
    if policy.instructions_mode == "ignore" or not caller:
        return policy.instructions
    if policy.instructions_mode == "replace":
        return caller
    return f"{policy.instructions}\n\n{caller}"


def session_config(policy: SessionPolicy, offer: Offer, tools: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The session minted for a realtime (or reasoning) deployment; `reasoning` only when the caller chose an
    effort, since other models reject the field (realtime-api.md §5). `tools`: the server-run tools' declarations
    (toolcalls.Toolbox.declarations), given only when a supervisor will be in the call to answer them."""
    turn_detection = None if policy.turn_detection == "none" else {"type": policy.turn_detection}
    audio_input: dict[str, Any] = {"turn_detection": turn_detection}
    if policy.transcription_model:
        audio_input["transcription"] = {"model": policy.transcription_model}
    config: dict[str, Any] = {
        "type": "realtime",
        "model": offer.model.name,
        "instructions": effective_instructions(policy, offer.instructions),
        "tools": [dict(tool) for tool in tools],
        "audio": {"input": audio_input, "output": {"voice": offer.voice}},
    }
    if tools:
        config["tool_choice"] = "auto"
    if offer.reasoning:
        config["reasoning"] = {"effort": offer.reasoning}
    return config


def live_session_config(
    policy: SessionPolicy, offer: Offer, delegation: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The session of a GPT-Live deployment, exactly the fields its strict `session` takes (realtime-api.md §6).
    Model, instructions and voice are immutable once it starts, so the server's policy holds for its whole life;
    `delegation` (live_delegation) is the one field a `session.update` may change, and the supervisor holds it."""
    return {
        "model": offer.model.name,
        "instructions": effective_instructions(policy, offer.instructions),
        "audio": {"output": {"voice": offer.voice}},
        "delegation": dict(delegation or CLIENT_DELEGATION),
    }


CLIENT_DELEGATION: Mapping[str, Any] = {"type": "client"}
DELEGATE_INSTRUCTIONS = (
    "You do the work a voice assistant delegates to you. Call the tools the task needs, then answer in a few "
    "plain sentences the assistant can speak. If no tool can do it, say so briefly."
)


def live_delegation(model: str | None, tools: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """GPT-Live hands tasks to a Responses deployment (`REALTIME_LIVE_DELEGATE_MODEL`) that calls the server-run
    tools, answered by the supervisor (realtime_proxy/delegation.py); without a model or tools (no supervisor),
    delegation stays the client's, as before."""
    if not model or not tools:
        return CLIENT_DELEGATION
    responses = {
        "model": model,
        "instructions": DELEGATE_INSTRUCTIONS,
        "tools": [dict(tool) for tool in tools],
        "tool_choice": "auto",
    }
    return {"type": "responses", "responses": responses}


def public_models(settings: Settings) -> dict[str, Any]:
    """The deployments a caller may pick (/config `models`, `defaultModel`) with the efforts each takes."""
    models = [
        {"name": d.name, "kind": d.kind, "reasoning": list(d.efforts) if d.efforts else None}
        for d in settings.deployments
    ]
    return {"models": models, "defaultModel": settings.default_model}


def public_config(policy: SessionPolicy, emulator: bool) -> dict[str, Any]:
    """What a browser may know in order to offer choices: nothing secret, not the server's instructions."""
    return {
        "voices": list(policy.allowed_voices),
        "defaultVoice": policy.default_voice,
        "instructions": {
            "editable": policy.instructions_mode != "ignore",
            "mode": policy.instructions_mode,
            "maxLength": policy.max_instructions_chars,
        },
        # Whether the page may offer push-to-talk (it then turns detection off with session.update, which a
        # connected browser could do anyway): a choice the owner makes for the UI, not a security boundary.
        "turnDetection": {"type": policy.turn_detection, "choosable": policy.turn_detection_choosable},
        "emulator": emulator,
    }
