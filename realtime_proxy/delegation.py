"""GPT-Live's `responses` delegation answered by the server-run tools, without the socket (realtime-api.md §6).

A session created with `delegation: {"type": "responses", …}` (policy.live_delegation) runs a Responses model for
the tasks GPT-Live delegates; that model's events reach the sideband wrapped, `{"type": "response.event",
"delegation_id", "event": {…}}`. A finished function call is a wrapped `response.output_item.done` whose item is a
`function_call`; when the wrapped response ends (`response.completed`, with its `output` too), every call it made
is run by the same loop as a realtime call's (toolcalls.ToolCalls: caps, timeouts, errors as outputs, each call
answered once) and answered together: one `response.item.create` per call, then one `response.create`. A
response that failed or was cut short is not answered: its calls are dropped, as for a realtime response.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from .toolcalls import ToolCalls, is_function_call

ENDED = {"response.completed": "completed", "response.failed": "failed", "response.incomplete": "incomplete"}
MAX_PENDING = 64  # function calls awaiting their response's end, across a session's delegations
# The work that answers a response's calls: started by the supervisor beside the event stream, or never (the call
# ended first), so it is a callable rather than a coroutine that could be left un-awaited.
Answers = Callable[[], Coroutine[Any, Any, list[dict[str, Any]]]]


class Delegations:
    """One GPT-Live session's delegated responses and the calls each is waiting on."""

    def __init__(self, tools: ToolCalls) -> None:
        self.tools = tools
        self.pending: dict[str, dict[str, dict[str, Any]]] = {}  # delegation id -> call id -> function call item

    def on(self, event: dict[str, Any]) -> Answers | None:
        """Notes a wrapped event at once, in the order events arrive; when it ends a response whose calls need
        answers, returns the work that runs them and gives the client events to send (the supervisor runs it
        beside the event stream)."""
        delegation, inner = event.get("delegation_id"), event.get("event")
        if event.get("type") != "response.event" or not isinstance(delegation, str) or not isinstance(inner, dict):
            return None
        kind = inner.get("type")
        if kind == "response.output_item.done":
            item = inner.get("item")
            if is_function_call(item) and sum(map(len, self.pending.values())) < MAX_PENDING:
                self.pending.setdefault(delegation, {})[item["call_id"]] = item
            return None
        if not isinstance(kind, str) or kind not in ENDED:
            return None
        calls = self.pending.pop(delegation, {})
        response = inner.get("response")
        output = response.get("output") if isinstance(response, dict) else None
        for item in output if isinstance(output, list) else []:
            if is_function_call(item):
                calls.setdefault(item["call_id"], item)
        return partial(self._answer, list(calls.values()), ENDED[kind]) if calls else None

    async def _answer(self, calls: list[dict[str, Any]], status: str) -> list[dict[str, Any]]:
        answered = await self.tools.run(calls, status)
        if not answered.outputs:
            return []
        events: list[dict[str, Any]] = [
            {
                "type": "response.item.create",
                "item": {"type": "function_call_output", "call_id": call_id, "output": output},
            }
            for call_id, output in answered.outputs
        ]
        # Past a cap the outputs themselves tell the model to stop calling tools: GPT-Live documents no
        # `tool_choice` on this `response.create`.
        events.append({"type": "response.create"})
        return events
