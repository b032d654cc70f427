"""Holds a live call to the session the server decided at creation.

A browser holding the data channel can send `session.update`; the service then sends every party a
`session.updated` carrying the whole session (realtime-api.md §5). This compares it with what the server sent
when it minted the call's secret (or created the GPT-Live session). Only the fields the server set count, and
within them only the keys it set: the service fills in defaults (a turn detection's threshold, audio formats),
and those are not violations.
"""

from __future__ import annotations

from typing import Any

# The fields the server decides (policy.session_config), as paths into the session.
GUARDED: tuple[tuple[str, ...], ...] = (
    ("instructions",),
    ("tools",),
    ("tool_choice",),
    ("model",),
    ("audio", "output", "voice"),
    ("audio", "input", "turn_detection"),
    ("audio", "input", "transcription"),
    ("delegation",),  # GPT-Live: the one field its session.update may change (policy.live_session_config)
)
TURN_DETECTION = ("audio", "input", "turn_detection")
_MISSING = object()


class PolicyGuard:
    def __init__(self, decided: dict[str, Any], turn_detection_choosable: bool = False) -> None:
        self.decided = decided
        self.fields = [path for path in GUARDED if _get(decided, path) is not _MISSING]
        # The owner lets the page offer push-to-talk: turning detection off is the browser's to choose.
        self.choosable = {TURN_DETECTION} if turn_detection_choosable else set()

    def violations(self, session: object) -> list[str]:
        """The guarded fields this session holds other than the server decided, by dotted name."""
        if not isinstance(session, dict):
            return []
        changed = []
        for path in self.fields:
            found = _get(session, path)
            if found is _MISSING or (path in self.choosable and found is None):
                continue  # not reported is not changed; the owner's choosable fields may be turned off
            if not _matches(_get(self.decided, path), found):
                changed.append(".".join(path))
        return changed

    def restore(self, changed: list[str]) -> dict[str, Any]:
        """The sparse `session.update` that puts the server's values back: with `session.type` as a realtime
        session needs it; a GPT-Live session has no type and takes no other field."""
        session: dict[str, Any] = {"type": self.decided["type"]} if "type" in self.decided else {}
        for name in changed:
            path = tuple(name.split("."))
            node = session
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = _get(self.decided, path)
        return {"type": "session.update", "session": session}


def _get(data: object, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return _MISSING
        data = data[key]
    return data


def _matches(decided: object, found: object) -> bool:
    """`found` holds everything `decided` holds: every key of an object (more keys are the service's defaults),
    every item of a list in order (and no more items), equal scalars."""
    if isinstance(decided, dict):
        return isinstance(found, dict) and all(
            key in found and _matches(value, found[key]) for key, value in decided.items()
        )
    if isinstance(decided, list):
        return (
            isinstance(found, list)
            and len(found) == len(decided)
            and all(_matches(want, got) for want, got in zip(decided, found, strict=True))
        )
    return decided == found and type(decided) is type(found)
