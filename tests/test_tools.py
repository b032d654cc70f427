"""Server-run tools without the socket: how a function becomes a tool, and what the loop answers to a response.

The loop is fed the server events the sideband carries (realtime-api.md §5) and returns the client events it
would send; the supervisor's socket is the lead's (issue 17). Tools here are real async functions: the slow ones
really sleep, the hung one really never returns.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Histogram, InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import tools
from realtime_proxy import tool_telemetry as tt
from realtime_proxy.offer import Offer
from realtime_proxy.policy import session_config
from realtime_proxy.service import RealtimeProxy
from realtime_proxy.settings import Deployment, SessionPolicy, ToolSettings, load_settings
from realtime_proxy.telemetry import CALL_ID
from realtime_proxy.toolcalls import MAX_ARGUMENT_CHARS, MAX_CALLS_PER_RESPONSE, Toolbox, ToolCalls
from realtime_proxy.toolkit import REGISTRY, Registry, ToolContext, ToolError, make_tool

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-this-must-never-reach-the-model-0123456789"
registry = Registry()


@registry.tool
async def lookup(
    order: str,
    count: int,
    weight: float,
    gift: bool,
    speed: Literal["slow", "fast"],
    tags: list[str],
    note: str | None = None,
) -> dict[str, object]:
    """Look up an order.

    Longer text that is not the description.

    Args:
        order: The order number,
            as printed on the receipt.
        count (int): How many.
        weight: Kilograms.
        gift: Wrapped or not.
        speed: Delivery speed.
        tags: Labels.
        note: Anything else.
    """
    return {"order": order, "count": count, "note": note}


@registry.tool
async def whoami(context: ToolContext) -> str:
    """The live call this tool serves."""
    return context.call_id


@registry.tool
async def nap(seconds: float) -> str:
    """Sleep, then say so."""
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@registry.tool
async def hang() -> str:
    """Never answers."""
    await asyncio.Event().wait()
    return "never"


@registry.tool
async def crash() -> str:
    """Fails with a secret in its message and its traceback."""
    raise RuntimeError(f"database password is {SECRET}")


@registry.tool
async def refuse() -> str:
    """Fails on purpose with a reason for the model."""
    raise ToolError("That order is not yours.")


@registry.tool
async def own_timeout() -> str:
    """A tool whose own client timed out: a failure, not the loop's timeout."""
    raise TimeoutError


@registry.tool
async def not_json() -> object:
    """Returns something that is not JSON."""
    return {1, 2}


@registry.tool
async def chatty(size: int) -> str:
    """Answers with `size` characters."""
    return "x" * size


@registry.tool(
    name="explicit",
    description="Takes a nested object.",
    parameters={
        "type": "object",
        "properties": {"address": {"type": "object", "properties": {"zip": {"type": "string", "maxLength": 5}}}},
        "required": ["address"],
    },
)
async def explicit_schema(address: dict[str, Any]) -> dict[str, Any]:
    return address


def box(**settings: Any) -> Toolbox:
    return Toolbox(registry.select(None), ToolSettings(**settings))


def done(*calls: tuple[str, str | object], status: str = "completed", start: int = 1) -> dict[str, Any]:
    """A `response.done` holding one function call per (name, arguments)."""
    output = [
        {
            "type": "function_call",
            "id": f"item_{n}",
            "call_id": f"fc_{n}",
            "name": name,
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
            "status": "completed",
        }
        for n, (name, arguments) in enumerate(calls, start)
    ]
    return {"type": "response.done", "response": {"id": "resp_1", "status": status, "output": output}}


def answer(calls: ToolCalls, event: dict[str, Any]) -> list[dict[str, Any]]:
    return asyncio.run(calls.answer(event))


def outputs(events: list[dict[str, Any]]) -> dict[str, str]:
    """call_id -> output, checking the shape: one item per call, then exactly one response.create."""
    *items, create = events
    assert create["type"] == "response.create"
    assert all(e["type"] == "conversation.item.create" and e["item"]["type"] == "function_call_output" for e in items)
    return {e["item"]["call_id"]: e["item"]["output"] for e in items}


def error(output: str) -> str:
    parsed = json.loads(output)
    assert list(parsed) == ["error"], parsed
    return str(parsed["error"])


# --- registering: the schema the model sees ---


def test_the_schema_is_derived_from_type_hints_and_the_docstring() -> None:
    (tool,) = [t for t in registry.select(None) if t.name == "lookup"]
    assert tool.declaration() == {
        "type": "function",
        "name": "lookup",
        "description": "Look up an order.",
        "parameters": {
            "type": "object",
            "properties": {
                "order": {"type": "string", "description": "The order number, as printed on the receipt."},
                "count": {"type": "integer", "description": "How many."},
                "weight": {"type": "number", "description": "Kilograms."},
                "gift": {"type": "boolean", "description": "Wrapped or not."},
                "speed": {"type": "string", "enum": ["slow", "fast"], "description": "Delivery speed."},
                "tags": {"type": "array", "items": {"type": "string"}, "description": "Labels."},
                "note": {"type": ["string", "null"], "description": "Anything else."},
            },
            "required": ["order", "count", "weight", "gift", "speed", "tags"],
            "additionalProperties": False,
        },
    }
    (whoami_tool,) = [t for t in registry.select(None) if t.name == "whoami"]
    assert whoami_tool.parameters["properties"] == {}, "the context is the app's to pass, not the model's"


def test_what_cannot_be_derived_or_checked_is_refused_when_registering() -> None:
    async def nested(address: dict[str, str]) -> str:
        """Has a type without a derived schema."""
        return ""

    def blocking(city: str) -> str:
        """Not async."""
        return city

    async def undocumented(city: str) -> str:
        return city

    async def loose(**anything: str) -> str:
        """Takes anything."""
        return ""

    with pytest.raises(TypeError, match="give parameters= explicitly"):
        make_tool(nested)
    with pytest.raises(TypeError, match="async"):
        make_tool(blocking)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="description"):
        make_tool(undocumented)
    with pytest.raises(TypeError, match="explicit"):
        make_tool(loose)
    with pytest.raises(ValueError, match="'oneOf'"):
        make_tool(nested, parameters={"type": "object", "properties": {"address": {"oneOf": []}}})
    with pytest.raises(ValueError, match="name"):
        make_tool(nested, name="no spaces allowed", parameters={"type": "object"})
    assert make_tool(nested, parameters={"type": "object"}).parameters == {"type": "object"}


def test_realtime_tools_picks_the_enabled_tools_and_an_unknown_name_is_not_configured() -> None:
    base = {"AZURE_OPENAI_BASE_URL": "https://res.openai.azure.com", "AZURE_OPENAI_API_KEY": "k" * 32}
    everything = RealtimeProxy(load_settings(base))
    assert list(everything.toolbox.tools) == ["get_current_time", "search_knowledge"] == list(REGISTRY.names())
    assert everything.settings.configured
    one = RealtimeProxy(load_settings({**base, "REALTIME_TOOLS": " search_knowledge "}))
    assert list(one.toolbox.tools) == ["search_knowledge"]
    assert not RealtimeProxy(load_settings({**base, "REALTIME_TOOLS": "none"})).toolbox.tools
    wrong = RealtimeProxy(load_settings({**base, "REALTIME_TOOLS": "get_current_time,book_flight"}))
    assert wrong.settings.problems == (
        "REALTIME_TOOLS names a tool that is not registered (registered: get_current_time, search_knowledge)",
    )


def test_tool_settings_have_defaults_and_bounds() -> None:
    defaults = load_settings({}).tools
    assert defaults == ToolSettings(None, 10.0, 4000, 20, None, None)
    read = load_settings(
        {
            "REALTIME_TOOL_TIMEOUT_SECONDS": "2.5",
            "REALTIME_TOOL_OUTPUT_MAX_CHARS": "500",
            "REALTIME_MAX_TOOL_CALLS": "3",
            "AZURE_SEARCH_ENDPOINT": "https://docs.search.windows.net/",
            "AZURE_SEARCH_INDEX": "handbook",
        }
    )
    assert read.tools == ToolSettings(None, 2.5, 500, 3, "https://docs.search.windows.net", "handbook")
    bad = load_settings(
        {
            "REALTIME_TOOL_TIMEOUT_SECONDS": "0",
            "REALTIME_MAX_TOOL_CALLS": "-1",
            "AZURE_SEARCH_ENDPOINT": "http://search.example.com",
            "AZURE_SEARCH_INDEX": "handbook",
        }
    )
    assert {p.split(" ")[0] for p in bad.problems} >= {
        "REALTIME_TOOL_TIMEOUT_SECONDS",
        "REALTIME_MAX_TOOL_CALLS",
        "AZURE_SEARCH_ENDPOINT",
    }
    assert bad.tools.search_endpoint is None
    half = load_settings({"AZURE_SEARCH_INDEX": "handbook"})
    assert "AZURE_SEARCH_ENDPOINT and AZURE_SEARCH_INDEX are set together or not at all" in half.problems


def test_tools_reach_the_session_only_when_given() -> None:
    offer = Offer(sdp="v=0", voice="marin", instructions="", model=Deployment("gpt-realtime"), reasoning=None)
    plain = session_config(SessionPolicy(), offer)
    assert plain["tools"] == [] and "tool_choice" not in plain
    declared = Toolbox(REGISTRY.select(None), ToolSettings()).declarations()
    with_tools = session_config(SessionPolicy(), offer, declared)
    assert with_tools["tool_choice"] == "auto"
    assert [t["name"] for t in with_tools["tools"]] == ["get_current_time", "search_knowledge"]
    assert all(t["type"] == "function" and t["parameters"]["type"] == "object" for t in with_tools["tools"])


# --- the loop ---


def test_calls_in_one_response_are_answered_together_then_one_response_create() -> None:
    calls = box().for_call("rtc_call_1")
    events = answer(
        calls,
        done(
            ("lookup", {"order": "A1", "count": 2, "weight": 1.5, "gift": False, "speed": "fast", "tags": []}),
            ("whoami", {}),
        ),
    )
    assert events[-1] == {"type": "response.create"}
    assert outputs(events) == {"fc_1": '{"order": "A1", "count": 2, "note": null}', "fc_2": "rtc_call_1"}
    assert (calls.stats.calls, calls.stats.errors, calls.over_limit) == (2, 0, False)


def test_two_slow_tools_take_as_long_as_the_slower_not_the_sum() -> None:
    calls = box().for_call("rtc")
    started = time.perf_counter()
    events = answer(calls, done(("nap", {"seconds": 0.6}), ("nap", {"seconds": 0.6})))
    elapsed = time.perf_counter() - started
    assert outputs(events) == {"fc_1": "slept 0.6", "fc_2": "slept 0.6"}
    assert 0.6 <= elapsed < 1.1, elapsed
    assert calls.stats.seconds >= 1.2, "each call's own duration is counted"


def test_only_a_completed_response_done_is_answered_and_never_twice() -> None:
    calls = box().for_call("rtc")
    arguments_done = {
        "type": "response.function_call_arguments.done",
        "call_id": "fc_1",
        "item_id": "item_1",
        "arguments": "{}",
    }
    assert answer(calls, arguments_done) == []
    assert answer(calls, done(("whoami", {}), status="cancelled")) == [], "the user spoke over it: dropped"
    assert answer(calls, {"type": "response.done", "response": {"status": "completed", "output": []}}) == []
    assert answer(calls, {"type": "response.done", "response": "nonsense"}) == []
    fresh = done(("whoami", {}), start=7)
    assert outputs(answer(calls, fresh)) == {"fc_7": "rtc"}
    assert answer(calls, fresh) == [], "a replayed response.done is not answered again"
    assert calls.stats.calls == 1


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("lookup", "{not json", "The arguments are not valid JSON."),
        ("lookup", "[" * 100_000 + "]" * 100_000, f"The arguments are longer than {MAX_ARGUMENT_CHARS} characters."),
        ("lookup", "[" * 5000 + "]" * 5000, "The arguments are not valid JSON."),  # deeper than the parser goes
        ("lookup", '["a list"]', "The arguments must be a JSON object."),
        (
            "lookup",
            {"order": 1, "count": 1, "weight": 1, "gift": False, "speed": "fast", "tags": []},
            "Invalid arguments: order must be string.",
        ),
        (
            "lookup",
            {"order": "1", "count": True, "weight": 1, "gift": False, "speed": "fast", "tags": []},
            "Invalid arguments: count must be integer.",
        ),
        (
            "lookup",
            {"order": "1", "count": 1, "weight": 1, "gift": False, "speed": "warp", "tags": []},
            "Invalid arguments: speed must be one of: slow, fast.",
        ),
        (
            "lookup",
            {"order": "1", "count": 1, "weight": 1, "gift": False, "speed": "fast", "tags": [1]},
            "Invalid arguments: tags[0] must be string.",
        ),
        ("lookup", {"count": 1}, "Invalid arguments: order is required."),
        ("whoami", {"context": "forged"}, "Invalid arguments: context is not a parameter of this tool."),
        ("explicit", {"address": {"zip": "123456"}}, "Invalid arguments: address.zip must be at most 5 characters."),
        ("book_flight", {}, "There is no tool by that name."),
        ("crash", {}, "The tool failed."),
        ("refuse", {}, "That order is not yours."),
        ("own_timeout", {}, "The tool failed."),
        ("not_json", {}, "The tool's answer was not JSON."),
    ],
)
def test_each_failure_is_a_short_error_output_and_the_call_goes_on(
    name: str, arguments: str | dict[str, object], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    calls = box().for_call("rtc_call_9")
    events = answer(calls, done((name, arguments), ("whoami", {})))
    answered = outputs(events)
    assert error(answered["fc_1"]) == message
    assert answered["fc_2"] == "rtc_call_9", "the other call of the response is answered as usual"
    assert events[-1] == {"type": "response.create"}, "the model speaks from the error"
    assert (calls.stats.calls, calls.stats.errors) == (2, 1)
    logged = caplog.text
    assert "fc_1" in logged and "rtc_call_9" in logged, "the log line names the call"
    assert SECRET not in json.dumps(events) and "Traceback" not in json.dumps(events)
    assert SECRET not in logged, "the log is redacted too"


def test_a_tool_slower_than_the_timeout_is_an_error_output_on_time() -> None:
    calls = box(timeout_seconds=0.3).for_call("rtc")
    started = time.perf_counter()
    answered = outputs(answer(calls, done(("hang", {}), ("nap", {"seconds": 0.05}))))
    assert time.perf_counter() - started < 2
    assert error(answered["fc_1"]) == "The tool did not answer within 0.3 seconds."
    assert answered["fc_2"] == "slept 0.05"


def test_an_output_longer_than_the_cap_is_cut_and_says_so() -> None:
    answered = outputs(answer(box(output_max_chars=100).for_call("rtc"), done(("chatty", {"size": 10_000}))))
    assert len(answered["fc_1"]) == 100 and answered["fc_1"].endswith("…[truncated]")
    fits = outputs(answer(box(output_max_chars=100).for_call("rtc"), done(("chatty", {"size": 100}))))
    assert fits["fc_1"] == "x" * 100


def test_calls_past_the_caps_are_refused_and_the_model_is_told_to_stop_calling() -> None:
    calls = box().for_call("rtc")
    many: list[tuple[str, object]] = [("whoami", {})] * (MAX_CALLS_PER_RESPONSE + 2)
    events = answer(calls, done(*many))
    answered = list(outputs(events).values())
    assert answered[:MAX_CALLS_PER_RESPONSE] == ["rtc"] * MAX_CALLS_PER_RESPONSE
    assert [error(o) for o in answered[MAX_CALLS_PER_RESPONSE:]] == [
        "Too many tool calls: stop calling tools and answer with what you have."
    ] * 2
    assert events[-1] == {"type": "response.create", "response": {"tool_choice": "none"}}
    assert calls.over_limit and calls.stats.refused == 2

    per_call = box(max_calls=3).for_call("rtc")
    assert outputs(answer(per_call, done(("whoami", {}), ("whoami", {})))) == {"fc_1": "rtc", "fc_2": "rtc"}
    assert not per_call.over_limit
    second = answer(per_call, done(("whoami", {}), ("whoami", {}), start=3))
    assert outputs(second)["fc_3"] == "rtc" and "error" in json.loads(outputs(second)["fc_4"])
    assert per_call.over_limit and per_call.stats.calls == 4
    third = answer(per_call, done(("whoami", {}), start=5))
    assert "error" in json.loads(outputs(third)["fc_5"]) and third[-1]["response"] == {"tool_choice": "none"}


@pytest.fixture
def exported() -> Iterator[tuple[InMemorySpanExporter, InMemoryMetricReader, tt.ToolTelemetry]]:
    spans, metrics = InMemorySpanExporter(), InMemoryMetricReader()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    yield spans, metrics, tt.ToolTelemetry(provider, MeterProvider(metric_readers=[metrics]))


def test_each_tool_call_is_a_span_and_a_duration_by_outcome(exported) -> None:
    spans, metrics, telemetry = exported
    calls = Toolbox(registry.select(None), ToolSettings(), telemetry=telemetry).for_call("rtc_5")
    answer(calls, done(("whoami", {}), ("crash", {}), ("book_flight", {"x": SECRET})))
    finished = {span.name: span for span in spans.get_finished_spans()}
    assert set(finished) == {"tool whoami", "tool crash", "tool book_flight"}
    assert dict(finished["tool crash"].attributes or {}) == {
        tt.TOOL_NAME: "crash",
        CALL_ID: "rtc_5",
        tt.TOOL_OUTCOME: "failed",
    }
    assert (finished["tool book_flight"].attributes or {})[tt.TOOL_OUTCOME] == "unknown_tool"
    assert {key for span in finished.values() for key in (span.attributes or {})} == tt.TOOL_ATTRIBUTES
    data = metrics.get_metrics_data()
    points = {
        (point.attributes or {})[tt.TOOL_OUTCOME]: point.count
        for resource in (data.resource_metrics if data else ())
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == tt.TOOL_DURATION and isinstance(metric.data, Histogram)
        for point in metric.data.data_points
    }
    assert points == {"ok": 1, "failed": 1, "unknown_tool": 1}
    everything = "".join(span.to_json() for span in spans.get_finished_spans()) + (data.to_json() if data else "")
    assert SECRET not in everything


# --- the shipped tools ---


def shipped(*calls: tuple[str, object]) -> dict[str, str]:
    return outputs(answer(Toolbox(REGISTRY.select(None), ToolSettings()).for_call("rtc"), done(*calls)))


def test_get_current_time_gives_the_local_time_with_its_offset() -> None:
    assert tools.clock.get_current_time.__name__ == "get_current_time"
    answered = shipped(("get_current_time", {"timezone": "Asia/Tokyo"}), ("get_current_time", {"timezone": "UTC"}))
    tokyo, utc = (json.loads(answered[k]) for k in ("fc_1", "fc_2"))
    local = datetime.fromisoformat(tokyo["time"])
    assert tokyo["time"].endswith("+09:00") and local.utcoffset() is not None
    assert abs((local - datetime.fromisoformat(utc["time"])).total_seconds()) < 5, "the same moment, two zones"
    assert tokyo["weekday"] == local.strftime("%A")


@pytest.mark.parametrize(
    "zone",
    ["Mars/Olympus_Mons", "../../etc/passwd", "/etc/passwd", "Europe/../../etc/passwd", "x" * 5000, "a\x00b", ""],
)
def test_an_unknown_or_hostile_time_zone_is_an_error_output(zone: str) -> None:
    answered = shipped(("get_current_time", {"timezone": zone}))
    assert error(answered["fc_1"]) == "Unknown time zone: use an IANA name such as Europe/Paris."


def test_the_deploy_package_carries_the_tools_and_knowledge_but_not_the_local_azurite() -> None:
    """`.funcignore` (gitignore patterns) decides what azd and func zip for Azure."""
    patterns = [line.strip().rstrip("/") for line in (ROOT / ".funcignore").read_text().splitlines() if line.strip()]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        return any(fnmatch.fnmatch(part, pattern) for part in parts for pattern in patterns)

    assert not ignored("tools/clock.py") and not ignored("knowledge/deploying.md")
    assert ignored("localdev/azurite-npm/package.json") and ignored("localdev/azurite-npm/node_modules/azurite")
    assert not (ROOT / "tools" / "azurite").exists()
