"""`GET /operator/calls?since=<ISO time>`: the calls the ledger holds, with how they ended and what they used.

Operator only (the admin key, like `/operator/pause`). The ledger keeps a call's row for a day after it ends,
so that is as far back as this looks; Application Insights keeps the metrics longer (docs/supervisor.md).
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

import azure.functions as func

from .errors import ApiError, json_response
from .ledger import KEEP_ENDED_SECONDS, Ledger, decided_session
from .tables import Row
from .usage import EXAMPLE_PRICES, Usage

DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})")
MAX_CALLS = 5000  # newest first; a day of calls of a busy app stays well under a response's size
# Why a call ended (docs/supervisor.md); rows that never became calls (failed connects) are not listed.
REASONS = frozenset({"user", "time_limit", "policy", "operator", "service", "gone", "unrecorded"})


class CallReport:
    def __init__(self, ledger: Ledger, prices: dict[str, dict[str, float]] | None) -> None:
        self.ledger = ledger
        self.prices = EXAMPLE_PRICES if prices is None else prices

    async def calls(self, req: func.HttpRequest) -> func.HttpResponse:
        since = _since(req.params.get("since"), self.ledger.clock())
        rows = [
            row for row in await self.ledger.table.rows("call-") if _started(row) >= since and row.props.get("call")
        ]
        rows.sort(key=_started, reverse=True)
        return json_response(
            {"calls": [self._call(row) for row in rows[:MAX_CALLS]], "truncated": len(rows) > MAX_CALLS}
        )

    def _call(self, row: Row) -> dict[str, Any]:
        props = row.props
        usage = Usage.loads(props.get("usage"))
        model = str(decided_session(props).get("model") or props.get("model") or "") or None
        over = props.get("status") in ("ended", "failed", "cancelled")
        return {
            "callId": props.get("call"),
            "status": props.get("status"),
            "client": props.get("client"),
            "origin": props.get("origin") or None,
            "model": model,
            "voice": props.get("voice"),
            "startedAt": _iso(props.get("start")),
            "endedAt": _iso(props.get("ended")) if over else None,
            "endReason": (props.get("reason") if props.get("reason") in REASONS else "gone") if over else None,
            "strikes": int(str(props.get("strikes") or 0)),
            "usage": usage.public(),
            "toolCalls": _tool_calls(props.get("tools")),
            "costEstimate": usage.cost(self.prices.get(model or "")),
        }


def _tool_calls(stored: object) -> int:
    """How many function calls the model made in the call (the supervisor's tool counters)."""
    try:
        stats = json.loads(str(stored)) if stored else {}
    except ValueError:
        return 0
    calls = stats.get("calls") if isinstance(stats, dict) else 0
    return calls if isinstance(calls, int) and calls >= 0 else 0


def _since(raw: str | None, now: float) -> float:
    """An RFC 3339 date-time, as openapi.json says (`2026-12-06T09:00:00Z`, an offset, fractions); absent: a day."""
    if raw is None:
        return now - KEEP_ENDED_SECONDS
    if not DATE_TIME.fullmatch(raw):
        raise ApiError(400, "bad_request", "since must be an ISO 8601 time, such as 2026-12-06T09:00:00Z.")
    try:
        moment = datetime.fromisoformat(raw.upper().replace("Z", "+00:00"))
    except ValueError:  # the right shape, but no such day or hour
        raise ApiError(400, "bad_request", "since must be an ISO 8601 time, such as 2026-12-06T09:00:00Z.") from None
    return moment.timestamp()


def _started(row: Row) -> float:
    value = row.props.get("start")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


def _iso(value: object) -> str | None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
