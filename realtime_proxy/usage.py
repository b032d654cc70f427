"""What a call consumed: `response.done` usage summed per call (realtime-api.md §5), and what it cost.

A GPT-Live session reports its usage once, cumulative, in `session.closed` (§6): that replaces the counts rather than
adding to them. Its shape is not documented beyond "cumulative usage"; the token fields of §5 are read where they
are, and anything else (a billed duration, say) is not metered.

Counts are the service's own; a malformed or absurd usage object is skipped, never trusted into the sum. The
cost is an estimate from a price table per deployment (per 1M tokens): the defaults are examples of published
list prices to check against your agreement, and `REALTIME_PRICES` replaces them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# Our name -> where it sits in `response.usage`.
COUNTS: dict[str, tuple[str, ...]] = {
    "inputTokens": ("input_tokens",),
    "outputTokens": ("output_tokens",),
    "inputTextTokens": ("input_token_details", "text_tokens"),
    "inputAudioTokens": ("input_token_details", "audio_tokens"),
    "inputCachedTokens": ("input_token_details", "cached_tokens"),
    "inputCachedTextTokens": ("input_token_details", "cached_tokens_details", "text_tokens"),
    "inputCachedAudioTokens": ("input_token_details", "cached_tokens_details", "audio_tokens"),
    "outputTextTokens": ("output_token_details", "text_tokens"),
    "outputAudioTokens": ("output_token_details", "audio_tokens"),
}
MAX_PER_RESPONSE = 10_000_000  # far beyond any real response: larger is garbage, not usage
MAX_PER_SESSION = 1_000_000_000  # likewise for a whole session (an hour of audio is well under a million tokens)
# USD per 1M tokens, list prices published for these models (2026-12; examples: check your own agreement).
EXAMPLE_PRICES: dict[str, dict[str, float]] = {
    "gpt-realtime": {
        "textIn": 4.0,
        "cachedTextIn": 0.4,
        "audioIn": 32.0,
        "cachedAudioIn": 0.4,
        "textOut": 16.0,
        "audioOut": 64.0,
    },
    "gpt-realtime-mini": {
        "textIn": 0.6,
        "cachedTextIn": 0.06,
        "audioIn": 10.0,
        "cachedAudioIn": 0.3,
        "textOut": 2.4,
        "audioOut": 20.0,
    },
}


@dataclass
class Usage:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    responses: int = 0

    def add(self, usage: object) -> dict[str, int]:
        """Adds one response's usage; the amounts added (empty when the object was not usage)."""
        added = _read(usage, MAX_PER_RESPONSE)
        for name, value in added.items():
            self.counts[name] += value
        self.responses += 1 if added else 0
        return added

    def cumulative(self, usage: object) -> dict[str, int]:
        """Takes a session's usage so far (GPT-Live's `session.closed`): counts never go down, so a total seen
        again (after a re-attach) adds nothing; the amounts added."""
        added = {}
        for name, value in _read(usage, MAX_PER_SESSION).items():
            if value > self.counts[name]:
                added[name] = value - self.counts[name]
                self.counts[name] = value
        return added

    def dumps(self) -> str:
        return json.dumps(self.counts, separators=(",", ":"))

    @classmethod
    def loads(cls, text: object) -> Usage:
        usage = cls()
        try:
            stored = json.loads(str(text)) if text else {}
        except ValueError:
            stored = {}
        if isinstance(stored, dict):
            usage.counts.update({k: v for k, v in stored.items() if k in COUNTS and isinstance(v, int)})
        return usage

    def public(self) -> dict[str, int]:
        """As `/operator/calls` reports it (the cached text/audio split only feeds the cost)."""
        return {
            name: self.counts[name]
            for name in COUNTS
            if not name.startswith("inputCached") or name == "inputCachedTokens"
        }

    def cost(self, prices: dict[str, float] | None) -> float | None:
        """Estimated USD, or None when the deployment has no prices. Cached tokens without a text/audio split
        count as cached text."""
        if not prices:
            return None
        c = self.counts
        cached_audio = c["inputCachedAudioTokens"]
        cached_text = c["inputCachedTextTokens"] or max(0, c["inputCachedTokens"] - cached_audio)
        per_million = (
            max(0, c["inputTextTokens"] - cached_text) * prices["textIn"]
            + cached_text * prices["cachedTextIn"]
            + max(0, c["inputAudioTokens"] - cached_audio) * prices["audioIn"]
            + cached_audio * prices["cachedAudioIn"]
            + c["outputTextTokens"] * prices["textOut"]
            + c["outputAudioTokens"] * prices["audioOut"]
        )
        return round(per_million / 1_000_000, 6)


def _read(usage: object, limit: int) -> dict[str, int]:
    """Our counts found in a service usage object; a value that is not a plausible count is left out."""
    if not isinstance(usage, dict):
        return {}
    found = {}
    for name, path in COUNTS.items():
        value: Any = usage
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit:
            found[name] = value
    return found
