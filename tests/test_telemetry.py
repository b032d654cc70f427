"""What an operator sees in Application Insights, checked in-process with the OpenTelemetry SDK's own in-memory
exporters: the connect span and its stage spans, their attributes, the two histograms, and that no secret, SDP
or instructions text reaches any exporter (traces, metrics or logs)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Histogram, HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util.types import AnyValue

from localdev.fake_openai import FakeAzureOpenAI, Fault
from realtime_proxy import telemetry as t
from realtime_proxy.service import RealtimeProxy
from realtime_proxy.settings import load_settings
from tests.conftest import API_KEY, OFFER, Driven, error_of, offer_request

ROOT = Path(__file__).resolve().parent.parent
ORIGIN = "https://app.example"
SERVER_INSTRUCTIONS = "Server persona: the lighthouse keeper who never names the island."
CALLER_INSTRUCTIONS = "Caller asks: speak like a pirate about buried treasure."
TRACE_ID, PARENT_SPAN_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


@dataclass
class Exported:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    logs: InMemoryLogRecordExporter
    telemetry: t.Telemetry

    def span(self, name: str) -> ReadableSpan:
        (span,) = [s for s in self.spans.get_finished_spans() if s.name == name]
        return span

    def names(self) -> list[str]:
        return [s.name for s in self.spans.get_finished_spans()]

    def histogram(self, name: str) -> dict[tuple[tuple[str, AnyValue], ...], HistogramDataPoint]:
        """Data points by their attributes, e.g. {(("realtime.outcome", "ok"),): point}."""
        data = self.metrics.get_metrics_data()
        return {
            tuple(sorted((point.attributes or {}).items(), key=lambda item: item[0])): point
            for resource in (data.resource_metrics if data else ())
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name and isinstance(metric.data, Histogram)
            for point in metric.data.data_points
        }

    def everything(self) -> str:
        """Every span, metric and log record as the exporters hold them, serialised."""
        data = self.metrics.get_metrics_data()
        return "\n".join(
            [span.to_json() for span in self.spans.get_finished_spans()]
            + [data.to_json() if data else ""]
            + [record.to_json() for record in self.logs.get_finished_logs()]
        )


@pytest.fixture
def exported() -> Iterator[Exported]:
    """Private providers (nothing global is touched) and, as the distro does, an OpenTelemetry logging handler
    on the app's logger, removed afterwards."""
    spans, metrics, logs = InMemorySpanExporter(), InMemoryMetricReader(), InMemoryLogRecordExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    app_logger = logging.getLogger(t.LOGGER_NAME)
    handler, level = LoggingHandler(logger_provider=logger_provider), app_logger.level
    app_logger.addHandler(handler)
    app_logger.setLevel(logging.INFO)
    yield Exported(spans, metrics, logs, t.Telemetry(tracer_provider, MeterProvider(metric_readers=[metrics])))
    app_logger.removeHandler(handler)
    app_logger.setLevel(level)


def observed(exported: Exported, fake: FakeAzureOpenAI, api_key: str | None = API_KEY, **env: str) -> Driven:
    settings = {
        "AZURE_OPENAI_BASE_URL": fake.url,
        "ALLOWED_ORIGINS": ORIGIN,
        "REALTIME_INSTRUCTIONS": SERVER_INSTRUCTIONS,
        **env,
    }
    if api_key:
        settings["AZURE_OPENAI_API_KEY"] = api_key
    return Driven(RealtimeProxy(load_settings(settings), telemetry=exported.telemetry))


def connect_from_browser(proxy: Driven, voice: str = "cedar", **headers: str):
    return proxy.connect(
        offer_request({"voice": voice, "instructions": CALLER_INSTRUCTIONS}, headers={"origin": ORIGIN, **headers})
    )


def assert_nothing_secret(exported: Exported, fake: FakeAzureOpenAI) -> None:
    text = exported.everything()
    assert "realtime.outcome" in text, "the serialisation holds the telemetry"
    offer_lines = [line for line in OFFER.split("\r\n") if len(line) > 12]
    for secret in (
        API_KEY,
        *fake.secrets,
        *fake.accepted_tokens,
        "ek_",
        "Bearer",
        SERVER_INSTRUCTIONS,
        CALLER_INSTRUCTIONS,
        "pirate",
        *offer_lines,
    ):
        assert secret not in text, f"{secret!r} reached an exporter"


def test_a_connect_is_one_span_with_a_child_per_stage_joined_to_the_callers_trace(fake, exported) -> None:
    proxy = observed(exported, fake)
    response = connect_from_browser(proxy, traceparent=f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
    assert response.status_code == 201

    assert exported.names() == ["credential", "client_secrets", "calls", "connect"]
    connect = exported.span("connect")
    assert connect.kind is SpanKind.SERVER and connect.status.status_code is StatusCode.UNSET
    assert f"{connect.context.trace_id:032x}" == TRACE_ID == response.headers["X-Request-Id"]
    assert f"{connect.parent.span_id:016x}" == PARENT_SPAN_ID and connect.parent.is_remote
    call_id = response.headers["Location"].rsplit("/", 1)[-1]
    assert dict(connect.attributes) == {
        t.METHOD: "POST",
        t.STATUS_CODE: 201,
        t.OUTCOME: "ok",
        t.UPSTREAM_STATUS: 201,
        t.CALL_ID: call_id,
        t.VOICE: "cedar",
        t.DEPLOYMENT: "gpt-realtime",
        t.CLIENT_ORIGIN: ORIGIN,
        t.REQUEST_ID_ATTRIBUTE: TRACE_ID,
    }
    for name, status in (("credential", None), ("client_secrets", 200), ("calls", 201)):
        stage = exported.span(name)
        assert stage.parent.span_id == connect.context.span_id and stage.context.trace_id == connect.context.trace_id
        assert stage.kind is SpanKind.CLIENT
        assert stage.attributes[t.STAGE] == name and stage.attributes[t.OUTCOME] == "ok"
        assert stage.attributes.get(t.UPSTREAM_STATUS) == status
    emitted = {key for span in exported.spans.get_finished_spans() for key in span.attributes}
    assert emitted == t.ATTRIBUTES, "ATTRIBUTES (what docs/operating.md's queries may use) is exactly what spans carry"

    (ok,) = exported.histogram(t.CONNECT_DURATION).items()
    assert ok[0] == ((t.OUTCOME, "ok"),) and ok[1].count == 1 and 0 < ok[1].sum < 5
    stages = exported.histogram(t.UPSTREAM_DURATION)
    assert {dict(key)[t.STAGE]: point.count for key, point in stages.items()} == {
        "credential": 1,
        "client_secrets": 1,
        "calls": 1,
    }
    assert all(dict(key)[t.OUTCOME] == "ok" for key in stages)
    log_lines = [record.log_record.body for record in exported.logs.get_finished_logs()]
    assert any(f"connect ok: call {call_id}" in line and f"request_id={TRACE_ID}" in line for line in log_lines)
    assert_nothing_secret(exported, fake)


def test_without_traceparent_the_request_id_is_still_on_the_span(fake, exported) -> None:
    response = connect_from_browser(observed(exported, fake))
    connect = exported.span("connect")
    assert connect.attributes[t.REQUEST_ID_ATTRIBUTE] == response.headers["X-Request-Id"]
    assert connect.parent is None


def test_a_managed_identity_token_stays_out_of_every_exporter(fake, identity, exported) -> None:
    assert connect_from_browser(observed(exported, fake, api_key=None)).status_code == 201
    assert fake.accepted_tokens, "a real token was issued and used"
    assert exported.span("connect").attributes[t.OUTCOME] == "ok"
    assert_nothing_secret(exported, fake)


@pytest.mark.parametrize(
    ("case", "status", "code", "stages", "upstream_status"),
    [
        ("bad_request", 400, "voice_not_allowed", [], None),
        ("not_configured", 503, "not_configured", [], None),
        ("rate_limited", 429, "rate_limited", [], None),
        ("credential_unavailable", 503, "credential_unavailable", ["credential"], None),
        ("upstream_auth", 502, "upstream_auth", ["credential", "client_secrets"], 401),
        ("upstream_timeout", 504, "upstream_timeout", ["credential", "client_secrets", "calls"], None),
    ],
)
def test_each_failure_class_is_recorded_against_the_stage_that_failed(
    request, fake, exported, case, status, code, stages, upstream_status
) -> None:
    env: dict[str, str] = {}
    api_key: str | None = API_KEY
    voice = "cedar"
    if case == "bad_request":
        voice = "robot"
    elif case == "not_configured":
        env["AZURE_OPENAI_BASE_URL"] = ""
    elif case == "rate_limited":
        env.update(RATE_LIMIT_PER_MINUTE="1", RATE_LIMIT_BURST="1")
    elif case == "credential_unavailable":
        request.getfixturevalue("identity").fail_with = 400
        api_key = None
    elif case == "upstream_auth":  # a hostile upstream quotes the credential it was sent back in its error
        fake.fail_next("client_secrets", Fault(status=401, echo_credentials=True))
    elif case == "upstream_timeout":
        fake.fail_next("calls", Fault(delay=3.0))
        env["UPSTREAM_READ_TIMEOUT_SECONDS"] = "0.5"
    proxy = observed(exported, fake, api_key, **env)
    if case == "rate_limited":
        assert connect_from_browser(proxy).status_code == 201
        exported.spans.clear()

    response = connect_from_browser(proxy, voice)
    assert (response.status_code, error_of(response)["code"]) == (status, code)

    assert exported.names() == [*stages, "connect"]
    connect = exported.span("connect")
    assert connect.attributes[t.OUTCOME] == code and connect.attributes[t.STATUS_CODE] == status
    assert connect.attributes[t.REQUEST_ID_ATTRIBUTE] == response.headers["X-Request-Id"]
    assert connect.attributes[t.CLIENT_ORIGIN] == ORIGIN and connect.attributes[t.DEPLOYMENT] == "gpt-realtime"
    assert connect.attributes.get(t.UPSTREAM_STATUS) == upstream_status
    assert t.CALL_ID not in connect.attributes
    assert connect.attributes.get(t.VOICE) == (
        None if case in ("bad_request", "not_configured", "rate_limited") else voice
    )
    assert connect.status.status_code is (StatusCode.ERROR if status >= 500 else StatusCode.UNSET)
    if stages:
        failed = exported.span(stages[-1])
        assert failed.attributes[t.OUTCOME] == code and failed.status.status_code is StatusCode.ERROR
        assert failed.attributes.get(t.UPSTREAM_STATUS) == upstream_status
        assert all(exported.span(name).attributes[t.OUTCOME] == "ok" for name in stages[:-1])

    outcomes = {dict(key)[t.OUTCOME]: point.count for key, point in exported.histogram(t.CONNECT_DURATION).items()}
    assert outcomes == ({"ok": 1, code: 1} if case == "rate_limited" else {code: 1})
    by_stage = {
        dict(key)[t.STAGE]: dict(key)[t.OUTCOME]
        for key in exported.histogram(t.UPSTREAM_DURATION)
        if case != "rate_limited" or dict(key)[t.OUTCOME] != "ok"
    }
    assert by_stage == ({stages[-1]: code} | {name: "ok" for name in stages[:-1]} if stages else {})
    assert_nothing_secret(exported, fake)


def test_an_unexpected_failure_is_an_internal_error_span_without_its_message(fake, exported, monkeypatch) -> None:
    proxy = observed(exported, fake)

    def broken(*args: object) -> dict:
        raise RuntimeError(f"bug while holding {API_KEY}")

    monkeypatch.setattr("realtime_proxy.exchange.session_config", broken)
    response = connect_from_browser(proxy)
    assert (response.status_code, error_of(response)["code"]) == (500, "internal_error")
    connect = exported.span("connect")
    assert connect.attributes[t.OUTCOME] == "internal_error" and connect.attributes[t.STATUS_CODE] == 500
    assert connect.attributes["error.type"] == "RuntimeError" and connect.status.status_code is StatusCode.ERROR
    assert exported.span("client_secrets").attributes[t.OUTCOME] == "internal_error"
    assert_nothing_secret(exported, fake)


def test_documented_queries_use_only_names_the_app_emits() -> None:
    page = (ROOT / "docs" / "operating.md").read_text(encoding="utf-8")
    section = page.split("\n## Logs and telemetry\n", 1)[1].split("\n## ", 1)[0]
    used = set(re.findall(r'(?:customDimensions|Properties)\["([^"]+)"\]', section))
    known = t.ATTRIBUTES | t.METRIC_ATTRIBUTES
    assert {t.OUTCOME, t.STAGE, t.CLIENT_ORIGIN} <= used <= known, used - known
    metrics = set(re.findall(r'name == "(realtime\.[^"]+)"', section))
    assert metrics <= {t.CONNECT_DURATION, t.UPSTREAM_DURATION, t.TOKENS}, metrics


def imported_after_function_app(**env: str) -> list[str]:
    """The telemetry modules a fresh worker process has loaded once function_app.py is imported."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "REALTIME_", "APPLICATIONINSIGHTS_"))}
    probe = (
        "import sys, function_app; print(json.dumps(sorted(m for m in sys.modules "
        "if m.startswith(('opentelemetry', 'azure.monitor')))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", "import json; " + probe],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout.splitlines()[-1])


def test_without_a_connection_string_nothing_from_opentelemetry_is_imported() -> None:
    assert imported_after_function_app() == []


def test_with_a_connection_string_the_distro_is_configured_at_import() -> None:
    modules = imported_after_function_app(
        APPLICATIONINSIGHTS_CONNECTION_STRING="InstrumentationKey=00000000-0000-4000-8000-000000000000;"
        "IngestionEndpoint=http://127.0.0.1:9/",
        AZURE_OPENAI_BASE_URL="http://127.0.0.1:9",
        AZURE_OPENAI_API_KEY=API_KEY,
    )
    assert "azure.monitor.opentelemetry" in modules and "opentelemetry.sdk.trace" in modules


def test_a_malformed_connection_string_turns_telemetry_off_not_the_app(logs) -> None:
    assert t.telemetry_from_environ({t.CONNECTION_STRING: "not a connection string"}) is t.NO_TELEMETRY
    assert "telemetry is off" in logs.text
