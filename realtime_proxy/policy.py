"""Turns the server's session policy plus a caller's choices into the `session` object sent upstream.

The caller chooses a voice from the allowed list and, depending on the mode, adds to or replaces the
server's instructions; everything else (model, transcription, turn detection, tools) is the server's
*when the session is created*. A browser holding the data channel can change most of it afterwards with
`session.update` (README: "What the server controls, and what the browser can still change").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .offer import Offer
from .settings import SessionPolicy


def effective_instructions(policy: SessionPolicy, caller: str) -> str:
    if policy.instructions_mode == "ignore" or not caller:
        return policy.instructions
    if policy.instructions_mode == "replace":
        return caller
    return f"{policy.instructions}\n\n{caller}"


def session_config(
    policy: SessionPolicy, deployment: str, offer: Offer, tools: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """`tools`: the server-run tools' declarations (toolcalls.Toolbox.declarations), given only when a supervisor
    will be in the call to answer them; with none the session has no tools."""
    turn_detection = None if policy.turn_detection == "none" else {"type": policy.turn_detection}
    audio_input: dict[str, Any] = {"turn_detection": turn_detection}
    if policy.transcription_model:
        audio_input["transcription"] = {"model": policy.transcription_model}
    session: dict[str, Any] = {
        "type": "realtime",
        "model": deployment,
        "instructions": effective_instructions(policy, offer.instructions),
        "tools": [dict(tool) for tool in tools],
        "audio": {"input": audio_input, "output": {"voice": offer.voice}},
    }
    if tools:
        session["tool_choice"] = "auto"
    return session


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
