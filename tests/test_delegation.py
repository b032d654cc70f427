"""GPT-Live's `responses` delegation without the socket: what the server sends when the session is created, and
what it answers to the wrapped events of the delegate model (realtime-api.md §6). The real socket, queue and
fake service are in tests/test_live_supervision.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from realtime_proxy.delegation import MAX_PENDING, Delegations
from realtime_proxy.guard import PolicyGuard
from realtime_proxy.offer import Offer
from realtime_proxy.policy import live_delegation, live_session_config
from realtime_proxy.settings import Deployment, SessionPolicy, load_settings
from tests.test_tools import box, done

TOOLS = [{"type": "function", "name": "lookup", "description": "Look up an order.", "parameters": {}}]
LOOKUP = {"order": "A1", "count": 2, "weight": 1.5, "gift": False, "speed": "fast", "tags": []}


def wrapped(delegation_id: str, event: dict[str, Any]) -> dict[str, Any]:
    return {"type": "response.event", "delegation_id": delegation_id, "event": event}


def delegated(delegations: Delegations, delegation_id: str, response: dict[str, Any]) -> list[dict[str, Any]]:
    """A delegate's response as the sideband carries it: each finished item, then the response's end."""
    for index, item in enumerate(response["output"]):
        event = {"type": "response.output_item.done", "output_index": index, "item": item}
        assert delegations.on(wrapped(delegation_id, event)) is None, "nothing is answered before the response ends"
    status = response["status"]
    end = "response.completed" if status == "completed" else f"response.{status}"
    answers = delegations.on(wrapped(delegation_id, {"type": end, "response": response}))
    return [] if answers is None else asyncio.run(answers())


def test_a_session_gets_responses_delegation_only_with_a_delegate_model_and_tools() -> None:
    offer = Offer(sdp="v=0", voice="marin", instructions="", model=Deployment("gpt-live-1", "live"), reasoning=None)
    assert live_session_config(SessionPolicy(), offer)["delegation"] == {"type": "client"}
    assert live_delegation(None, TOOLS) == {"type": "client"}, "no delegate model"
    assert live_delegation("gpt-5-mini", []) == {"type": "client"}, "no tools (no supervisor to answer them)"
    delegation = live_session_config(SessionPolicy(), offer, live_delegation("gpt-5-mini", TOOLS))["delegation"]
    assert delegation["type"] == "responses"
    assert (delegation["responses"]["model"], delegation["responses"]["tool_choice"]) == ("gpt-5-mini", "auto")
    assert delegation["responses"]["tools"] == TOOLS and delegation["responses"]["instructions"]


def test_the_delegate_model_setting_must_be_a_deployment_name() -> None:
    base = {"AZURE_OPENAI_BASE_URL": "https://r.openai.azure.com", "AZURE_OPENAI_API_KEY": "k"}
    assert load_settings(base).tools.live_delegate is None
    assert load_settings({**base, "REALTIME_LIVE_DELEGATE_MODEL": "gpt-5-mini"}).tools.live_delegate == "gpt-5-mini"
    bad = load_settings({**base, "REALTIME_LIVE_DELEGATE_MODEL": "gpt-5/../x"})
    assert bad.tools.live_delegate is None
    assert any("REALTIME_LIVE_DELEGATE_MODEL is not a deployment name" in p for p in bad.problems)


def test_the_calls_of_a_delegated_response_are_answered_together_when_it_completes() -> None:
    calls = box().for_call("live_1")
    events = delegated(Delegations(calls), "dlg_1", done(("lookup", LOOKUP), ("whoami", {}))["response"])
    assert [event["type"] for event in events] == ["response.item.create", "response.item.create", "response.create"]
    outputs = {event["item"]["call_id"]: event["item"]["output"] for event in events[:-1]}
    assert outputs == {"fc_1": '{"order": "A1", "count": 2, "note": null}', "fc_2": "live_1"}
    assert all(event["item"]["type"] == "function_call_output" for event in events[:-1])
    assert calls.stats.calls == 2


def test_a_failed_or_cut_short_delegated_response_is_not_answered_and_nothing_is_answered_twice() -> None:
    delegations = Delegations(box().for_call("live_1"))
    assert delegated(delegations, "dlg_1", done(("whoami", {}), status="failed")["response"]) == []
    assert delegated(delegations, "dlg_2", done(("whoami", {}), status="incomplete", start=2)["response"]) == []
    first = delegated(delegations, "dlg_3", done(("whoami", {}), start=3)["response"])
    assert [event["item"]["call_id"] for event in first[:-1]] == ["fc_3"]
    assert delegated(delegations, "dlg_3", done(("whoami", {}), start=3)["response"]) == [], "a replay"
    assert delegations.tools.stats.calls == 1 and delegations.pending == {}


def test_calls_only_in_the_completed_response_are_answered_and_other_events_are_ignored() -> None:
    delegations = Delegations(box().for_call("live_1"))
    response = done(("whoami", {}))["response"]
    assert delegations.on({"type": "response.done", "response": response}) is None, "not wrapped: not delegated"
    assert delegations.on(wrapped("dlg_1", {"type": "response.output_text.delta", "delta": "hm"})) is None
    assert delegations.on({"type": "response.event", "delegation_id": 7, "event": {}}) is None
    answers = delegations.on(wrapped("dlg_1", {"type": "response.completed", "response": response}))
    assert answers is not None
    assert [event["type"] for event in asyncio.run(answers())] == ["response.item.create", "response.create"]


def test_past_the_caps_the_outputs_tell_the_model_to_stop() -> None:
    delegations = Delegations(box(max_calls=1).for_call("live_1"))
    events = delegated(delegations, "dlg_1", done(("whoami", {}), ("whoami", {}))["response"])
    assert "Too many tool calls" in json.loads(events[1]["item"]["output"])["error"]
    assert events[-1] == {"type": "response.create"}


def test_calls_waiting_for_their_response_are_bounded() -> None:
    delegations = Delegations(box().for_call("live_1"))
    for n in range(MAX_PENDING + 10):
        item = done(("whoami", {}), start=n)["response"]["output"][0]
        delegations.on(wrapped(f"dlg_{n}", {"type": "response.output_item.done", "output_index": 0, "item": item}))
    assert sum(map(len, delegations.pending.values())) == MAX_PENDING


def test_the_guard_holds_a_live_sessions_delegation_and_restores_it_without_a_type() -> None:
    offer = Offer(sdp="v=0", voice="marin", instructions="", model=Deployment("gpt-live-1", "live"), reasoning=None)
    decided = live_session_config(SessionPolicy(), offer, live_delegation("gpt-5-mini", TOOLS))
    guard = PolicyGuard(decided)
    costlier = {**decided, "delegation": {"type": "responses", "responses": {"model": "gpt-5-pro", "tools": TOOLS}}}
    assert guard.violations(costlier) == ["delegation"]
    assert guard.restore(["delegation"]) == {"type": "session.update", "session": {"delegation": decided["delegation"]}}
    assert guard.violations(decided) == []
