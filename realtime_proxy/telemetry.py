"""OpenTelemetry for `/connect`: one span per connect, a child span per upstream stage, and two histograms.

With `APPLICATIONINSIGHTS_CONNECTION_STRING` set, the Azure Monitor distro (`configure_azure_monitor`, what
Azure Functions documents for Python) exports traces, metrics and this app's log lines to Application
Insights; it also honours `APPLICATIONINSIGHTS_AUTHENTICATION_STRING` (Entra auth, as infra/ deploys it).
Without it nothing from `opentelemetry` or `azure.monitor` is imported: `NO_TELEMETRY` costs a few no-op calls.

What is recorded is chosen here, from fixed fields, never from free text: an outcome code, HTTP statuses,
the call id, the voice, the deployment, the caller's `Origin` and the request id. Never a credential, an
SDP body or instructions (tests/test_telemetry.py serialises everything exported and searches it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

import azure.functions as func

from .logs import REQUEST_ID, logger
from .offer import Offer
from .upstream import Answer, Call

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider

CONNECTION_STRING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
LOGGER_NAME = "realtime_proxy"  # every module logs under it (logs.logger(__name__)), already redacted

# Span and metric attribute names: the queries in docs/operating.md use exactly these (a test checks).
OUTCOME = "realtime.outcome"  # "ok" or the error code the caller got
UPSTREAM_STATUS = "realtime.upstream.status"  # HTTP status Azure OpenAI answered in the (last) stage
CALL_ID = "realtime.call_id"
VOICE = "realtime.voice"
DEPLOYMENT = "realtime.deployment"
CLIENT_ORIGIN = "realtime.client.origin"  # the Origin header as sent (browsers send it with every POST)
REQUEST_ID_ATTRIBUTE = "realtime.request_id"  # X-Request-Id; also the trace id when the caller sent traceparent
STAGE = "realtime.stage"
TOKEN_KIND = "realtime.token.kind"  # usage.COUNTS names: inputAudioTokens, outputTextTokens, …
CLIENT = "realtime.client"  # the ledger's hash of the caller's address, never the address itself
STATUS_CODE = "http.response.status_code"  # what the caller got; Application Insights shows it as resultCode
METHOD = "http.request.method"  # without it the exporter leaves resultCode at 0
ATTRIBUTES = frozenset(
    {
        OUTCOME,
        UPSTREAM_STATUS,
        CALL_ID,
        VOICE,
        DEPLOYMENT,
        CLIENT_ORIGIN,
        REQUEST_ID_ATTRIBUTE,
        STAGE,
        STATUS_CODE,
        METHOD,
    }
)
CONNECT_DURATION = "realtime.connect.duration"  # seconds, by OUTCOME: its count per outcome is "outcomes by code"
UPSTREAM_DURATION = "realtime.upstream.duration"  # seconds, by STAGE and OUTCOME
TOKENS = "realtime.tokens"  # tokens a supervised call consumed, by TOKEN_KIND, DEPLOYMENT and CLIENT
METRIC_ATTRIBUTES = frozenset({OUTCOME, STAGE, TOKEN_KIND, DEPLOYMENT, CLIENT})  # what metrics carry
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0)  # seconds, up to the deadline
_MAX_ORIGIN = 256  # a real origin is short; the header is the caller's to fill
log = logger(__name__)


class Record(Protocol):
    """What `/connect` tells the telemetry as it goes; every method is cheap and never raises."""

    def offer(self, offer: Offer) -> None: ...

    def stage(self, name: str) -> None:
        """Ends the running stage (it succeeded) and starts `name`."""
        ...

    def call(self, call: Call) -> None: ...

    def upstream_answered(self, answer: Answer) -> None: ...

    def done(self, response: func.HttpResponse, outcome: str) -> func.HttpResponse:
        """The answer the caller gets and its outcome code ("ok" or the error code); returns the response."""
        ...


class _NoRecord:
    def offer(self, offer: Offer) -> None:
        pass

    def stage(self, name: str) -> None:
        pass

    def call(self, call: Call) -> None:
        pass

    def upstream_answered(self, answer: Answer) -> None:
        pass

    def done(self, response: func.HttpResponse, outcome: str) -> func.HttpResponse:
        return response


class NoTelemetry:
    """No exporter configured: hooks do nothing and the upstream is the plain one."""

    _record: Record = _NoRecord()

    def connect(self, req: func.HttpRequest, deployment: str) -> AbstractContextManager[Record]:
        return nullcontext(self._record)

    def upstream_answered(self, answer: Answer) -> None:
        pass

    def tokens(self, added: dict[str, int], model: str, client: str) -> None:
        pass


NO_TELEMETRY = NoTelemetry()
_NO_RECORD = _NoRecord()
_RECORD: ContextVar[Record | None] = ContextVar("connect_record", default=None)  # set while a connect runs


class Telemetry:
    """Spans and metrics for `/connect` on the given providers (the global ones when none are given)."""

    def __init__(
        self, tracer_provider: TracerProvider | None = None, meter_provider: MeterProvider | None = None
    ) -> None:
        from opentelemetry import metrics, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        meter = metrics.get_meter(__name__, meter_provider=meter_provider)
        self.connect_duration = meter.create_histogram(
            CONNECT_DURATION,
            unit="s",
            description="Time to answer POST /connect, by outcome",
            explicit_bucket_boundaries_advisory=_BUCKETS,
        )
        self.upstream_duration = meter.create_histogram(
            UPSTREAM_DURATION,
            unit="s",
            description="Time spent in each upstream stage of a connect",
            explicit_bucket_boundaries_advisory=_BUCKETS,
        )
        self.token_counter = meter.create_counter(
            TOKENS, unit="{token}", description="Tokens supervised calls consumed, by kind, deployment and client"
        )
        self._propagator = TraceContextTextMapPropagator()

    @contextmanager
    def connect(self, req: func.HttpRequest, deployment: str) -> Iterator[Record]:
        """The `connect` span, a child of the caller's `traceparent` when it sent one (so its trace id is the
        request id), current while the connect runs so log lines and library spans join it."""
        from opentelemetry import context, trace

        carrier = {name: value for name in ("traceparent", "tracestate") if (value := req.headers.get(name))}
        parent = self._propagator.extract(carrier)
        attributes: dict[str, Any] = {
            METHOD: "POST",
            DEPLOYMENT: deployment,
            REQUEST_ID_ATTRIBUTE: REQUEST_ID.get(),
        }
        if origin := req.headers.get("origin"):
            attributes[CLIENT_ORIGIN] = origin[:_MAX_ORIGIN]
        span = self._tracer.start_span(
            "connect", parent, trace.SpanKind.SERVER, attributes, record_exception=False, set_status_on_exception=False
        )
        token = context.attach(trace.set_span_in_context(span, parent))
        record = _SpanRecord(self, span)
        current = _RECORD.set(record)
        try:
            yield record
        except Exception as exc:  # the route guard answers 500 internal_error
            record.failed(exc, "internal_error", 500)
            raise
        except BaseException as exc:  # cancelled: the caller gets nothing from this handler
            record.failed(exc, "cancelled", None)
            raise
        finally:
            record.end()
            _RECORD.reset(current)
            context.detach(token)

    def upstream_answered(self, answer: Answer) -> None:
        """Notes every Azure OpenAI answer's status on the running connect, retries included, before it becomes
        a result or an ApiError that no longer carries the status (Upstream's `on_answer` hook)."""
        (_RECORD.get() or _NO_RECORD).upstream_answered(answer)

    def tokens(self, added: dict[str, int], model: str, client: str) -> None:
        """One response's usage (the supervisor's meter): a data point per kind of token."""
        for kind, count in added.items():
            self.token_counter.add(count, {TOKEN_KIND: kind, DEPLOYMENT: model, CLIENT: client})

    def stage_span(self, name: str, parent: Span) -> Span:
        from opentelemetry import trace

        return self._tracer.start_span(
            name,
            trace.set_span_in_context(parent),
            trace.SpanKind.CLIENT,
            {STAGE: name},
            record_exception=False,
            set_status_on_exception=False,
        )


class _SpanRecord:
    def __init__(self, telemetry: Telemetry, span: Span) -> None:
        self._telemetry = telemetry
        self._span = span
        self._started = time.perf_counter()
        self._stage: tuple[str, Span, float, object] | None = None
        self._outcome: str | None = None
        self._status: int | None = None
        self._upstream_status: int | None = None

    def offer(self, offer: Offer) -> None:
        self._span.set_attribute(VOICE, offer.voice)  # the voice only: never the SDP or the instructions
        self._span.set_attribute(DEPLOYMENT, offer.model.name)  # the caller's pick, once it is known to be offered

    def stage(self, name: str) -> None:
        from opentelemetry import context, trace

        self._end_stage("ok")
        self._upstream_status = None  # the connect shows the status of its last stage: the one that failed, if any
        span = self._telemetry.stage_span(name, self._span)
        self._stage = (name, span, time.perf_counter(), context.attach(trace.set_span_in_context(span)))

    def call(self, call: Call) -> None:
        if call.call_id:
            self._span.set_attribute(CALL_ID, call.call_id)

    def upstream_answered(self, answer: Answer) -> None:
        if self._stage:
            self._stage[1].set_attribute(UPSTREAM_STATUS, answer.status)
            self._upstream_status = answer.status

    def done(self, response: func.HttpResponse, outcome: str) -> func.HttpResponse:
        self._outcome, self._status = outcome, response.status_code
        return response

    def failed(self, exc: BaseException, outcome: str, status: int | None) -> None:
        """An exception left the handler: its type is recorded, never its message (it may quote anything)."""
        self._outcome, self._status = outcome, status
        self._span.set_attribute("error.type", type(exc).__qualname__)

    def end(self) -> None:
        from opentelemetry.trace import StatusCode

        outcome = self._outcome or "internal_error"
        self._end_stage(outcome)
        self._span.set_attribute(OUTCOME, outcome)
        if self._status is not None:
            self._span.set_attribute(STATUS_CODE, self._status)
        if self._upstream_status is not None:
            self._span.set_attribute(UPSTREAM_STATUS, self._upstream_status)
        if self._status is None or self._status >= 500:  # a 4xx is the caller's doing, not a server error
            self._span.set_status(StatusCode.ERROR, outcome)
        self._span.end()
        self._telemetry.connect_duration.record(time.perf_counter() - self._started, {OUTCOME: outcome})

    def _end_stage(self, outcome: str) -> None:
        """The stage running when the connect ended is the one that failed, so it carries the connect's outcome."""
        if self._stage is None:
            return
        from opentelemetry import context
        from opentelemetry.trace import StatusCode

        name, span, started, token = self._stage
        self._stage = None
        context.detach(token)  # type: ignore[arg-type]
        span.set_attribute(OUTCOME, outcome)
        if outcome != "ok":
            span.set_status(StatusCode.ERROR, outcome)
        span.end()
        self._telemetry.upstream_duration.record(time.perf_counter() - started, {STAGE: name, OUTCOME: outcome})


def telemetry_from_environ(env: Mapping[str, str]) -> Telemetry | NoTelemetry:
    """Configures the Azure Monitor distro once per process when the connection string is set. A bad
    connection string turns telemetry off with a log line; like every setting, it never stops the app."""
    global _configured
    if not env.get(CONNECTION_STRING, "").strip():
        return NO_TELEMETRY
    if not _configured:
        try:
            from azure.monitor.opentelemetry import configure_azure_monitor

            configure_azure_monitor(connection_string=env[CONNECTION_STRING].strip(), logger_name=LOGGER_NAME)
        except ValueError as error:
            log.warning(
                "telemetry is off: %s is not a valid connection string (%s)", CONNECTION_STRING, type(error).__name__
            )
            return NO_TELEMETRY
        _configured = True
    return Telemetry()


_configured = False
