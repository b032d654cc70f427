"""A span and a duration per server-run tool call, when telemetry is on (see telemetry.py for how it is switched on).

Like `/connect`'s, what is recorded comes from fixed fields: the tool's name, the outcome code, the live call's id.
Never the arguments or the output, which carry the user's words and the owner's data.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .telemetry import CALL_ID

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

TOOL_NAME = "realtime.tool.name"
TOOL_OUTCOME = "realtime.tool.outcome"  # "ok" or the error code of the output (toolcalls.py)
TOOL_ATTRIBUTES = frozenset({CALL_ID, TOOL_NAME, TOOL_OUTCOME})
TOOL_DURATION = "realtime.tool.duration"  # seconds, by TOOL_NAME and TOOL_OUTCOME: its count is calls per outcome
_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class ToolRecord:
    """What the loop learns while a tool runs; read when the call's span ends."""

    outcome: str = "ok"


class NoToolTelemetry:
    def call(self, name: str, call_id: str) -> AbstractContextManager[ToolRecord]:
        return nullcontext(ToolRecord())


NO_TOOL_TELEMETRY = NoToolTelemetry()


class ToolTelemetry:
    """Spans and a histogram on the given providers (the global ones, which telemetry_from_environ configured)."""

    def __init__(
        self, tracer_provider: TracerProvider | None = None, meter_provider: MeterProvider | None = None
    ) -> None:
        from opentelemetry import metrics, trace

        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        self._duration = metrics.get_meter(__name__, meter_provider=meter_provider).create_histogram(
            TOOL_DURATION,
            unit="s",
            description="Time a server-run tool took to answer, by tool and outcome",
            explicit_bucket_boundaries_advisory=_BUCKETS,
        )

    @contextmanager
    def call(self, name: str, call_id: str) -> Iterator[ToolRecord]:
        """The `tool <name>` span, current while the tool runs, so spans of the clients it uses are its children."""
        from opentelemetry.trace import StatusCode

        record = ToolRecord()
        started = time.perf_counter()
        with self._tracer.start_as_current_span(
            f"tool {name}", attributes={TOOL_NAME: name, CALL_ID: call_id}, record_exception=False
        ) as span:
            try:
                yield record
            finally:
                span.set_attribute(TOOL_OUTCOME, record.outcome)
                if record.outcome != "ok":
                    span.set_status(StatusCode.ERROR, record.outcome)
                self._duration.record(time.perf_counter() - started, {TOOL_NAME: name, TOOL_OUTCOME: record.outcome})
