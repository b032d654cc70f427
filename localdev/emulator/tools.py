"""When the emulated model calls a server-run tool, and what it says once the server answered (realtime-api.md §5).

Only tools the session declares are called, so a session without `session.tools` behaves as before. Trigger
phrases, in the user's typed words (docs/tools.md), case-insensitive:
- "time" (a word): `get_current_time`, with the IANA zone the text names ("Asia/Tokyo"), or a known city's zone
  ("in Tokyo"), else Europe/Paris;
- "deploy", "how do I" or "search the docs for …": `search_knowledge`, with what follows "search the docs for",
  else the whole text.
Spoken turns carry no words here (the emulator does no speech recognition), so they never call a tool.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

DEFAULT_ZONE = "Europe/Paris"
CITY_ZONES = {
    "tokyo": "Asia/Tokyo",
    "paris": "Europe/Paris",
    "london": "Europe/London",
    "new york": "America/New_York",
    "sydney": "Australia/Sydney",
}
_ZONE = re.compile(r"\b[A-Z][A-Za-z_]+/[A-Z][A-Za-z_]+(?:/[A-Z][A-Za-z_]+)?\b")
_TIME = re.compile(r"\btime\b", re.IGNORECASE)
_SEARCH = re.compile(r"search the docs for\s+(.+)", re.IGNORECASE)
_KNOWLEDGE = re.compile(r"\bdeploy|\bhow do i\b", re.IGNORECASE)


def declared_functions(session: dict[str, Any]) -> set[str]:
    """The names of the function tools a session declares."""
    tools = session.get("tools")
    return {
        tool["name"]
        for tool in (tools if isinstance(tools, list) else [])
        if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("name"), str)
    }


def tool_call_for(text: str | None, declared: set[str]) -> tuple[str, str] | None:
    """The (tool name, arguments JSON) the model calls for these words, or None to answer in words."""
    if not text:
        return None
    if "get_current_time" in declared and _TIME.search(text):
        named = _ZONE.search(text)
        city = next((zone for city, zone in CITY_ZONES.items() if city in text.lower()), None)
        return "get_current_time", json.dumps({"timezone": named.group(0) if named else city or DEFAULT_ZONE})
    search = _SEARCH.search(text)
    if "search_knowledge" in declared and (search or _KNOWLEDGE.search(text)):
        query = (search.group(1) if search else text).strip().rstrip("?.!")
        return "search_knowledge", json.dumps({"query": query})
    return None


def spoken_answer(outputs: list[str]) -> str:
    """What the model says from the tools' outputs (strings, JSON for structured results)."""
    return " ".join(_sentence(output) for output in outputs)


def _sentence(output: str) -> str:
    try:
        value = json.loads(output)
    except ValueError:
        value = output
    if isinstance(value, dict):
        if isinstance(value.get("error"), str):
            return f"The lookup failed: {value['error'].rstrip('.')}."
        if isinstance(value.get("time"), str):
            return _time_sentence(value["time"], str(value.get("timezone") or "that time zone"))
        if isinstance(value.get("hits"), list):
            return _hits_sentence(value["hits"])
    return f"The lookup said: {str(value)[:200]}."


def _time_sentence(iso: str, zone: str) -> str:
    try:
        local = datetime.fromisoformat(iso)
    except ValueError:
        return f"It is {iso} in {zone}."
    return f"It is {local:%H:%M} in {zone}."


def _hits_sentence(hits: list[Any]) -> str:
    first = hits[0] if hits and isinstance(hits[0], dict) else None
    if first is None:
        return "I found nothing about that in the documents."
    return f"From {first.get('path', 'the documents')}: {str(first.get('snippet', '')).strip()[:300]}"
