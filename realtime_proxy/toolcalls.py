"""The tool loop of one live call, without the socket: a server event in, the client events to send out.

It answers at `response.done` (realtime-api.md §5), whose `response.output[]` lists every function call of the
response with its name, `call_id` and arguments: the calls run concurrently and are answered together, one
`function_call_output` each, then one `response.create`. `response.function_call_arguments.done` is not used: it
carries no tool name, it is also sent for a response that was then cancelled, and answering there as well would
answer twice. A response that did not complete (the user spoke over it) is not answered: its calls are dropped.

Every failure is an output the model can speak from, `{"error": "..."}`, never a trace or a secret: arguments that
are not JSON or break the schema, an unknown tool, a tool that raises or outlasts its timeout, a call past the caps.
"""

from __future__ import annotations

import asyncio
import json
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from .logs import logger
from .schema import problem
from .settings import ToolSettings
from .tool_telemetry import NO_TOOL_TELEMETRY, NoToolTelemetry, ToolTelemetry
from .toolkit import Tool, ToolContext, ToolError

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

MAX_CALLS_PER_RESPONSE = 8  # the model asks for a handful at most; more in one response is a loop or an attack
MAX_ARGUMENT_CHARS = 32_000  # arguments are a few words; anything this long is refused before it is parsed
TRUNCATED = " …[truncated]"
CREATE: dict[str, Any] = {"type": "response.create"}
_REMEMBERED = 1000  # call ids already answered: a replayed response.done is not answered twice
log = logger(__name__)


class Failure(Exception):
    """A call that gets an error output: a stable code (telemetry, logs) and a short message (the model's)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class ToolStats:
    """Per live call, for the ledger and the supervisor."""

    calls: int = 0  # function calls the model made, refused ones included
    errors: int = 0  # calls answered with an error output, refused ones included
    refused: int = 0  # calls past a cap
    seconds: float = 0.0  # time spent running tools (concurrent calls add up)


@dataclass(frozen=True)
class Answered:
    """What a response's function calls got: (call_id, output) in order, and whether a cap refused some."""

    outputs: list[tuple[str, str]]
    capped: bool


class Toolbox:
    """The process's enabled tools and what every call of them needs: built once, one `ToolCalls` per live call."""

    def __init__(
        self,
        tools: Iterable[Tool],
        settings: ToolSettings,
        credential: AsyncTokenCredential | None = None,
        telemetry: ToolTelemetry | NoToolTelemetry = NO_TOOL_TELEMETRY,
    ) -> None:
        self.tools = {tool.name: tool for tool in tools}
        self.settings = settings
        self.credential = credential
        self.telemetry = telemetry

    def declarations(self) -> list[dict[str, Any]]:
        """`session.tools` for `policy.session_config` (only when a supervisor will be there to answer)."""
        return [tool.declaration() for tool in self.tools.values()]

    def for_call(self, call_id: str) -> ToolCalls:
        return ToolCalls(self, call_id)


class ToolCalls:
    """One live call's tool calls: answers, counts and caps them."""

    def __init__(self, toolbox: Toolbox, call_id: str) -> None:
        self._box = toolbox
        self._context = ToolContext(call_id, toolbox.settings, toolbox.credential)
        self.call_id = call_id
        self.stats = ToolStats()
        self._answered: dict[str, None] = {}

    @property
    def over_limit(self) -> bool:
        """True once a call was refused for a cap: the supervisor may let the call go on (the model was told to
        answer without tools) or end it."""
        return self.stats.refused > 0

    async def answer(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The client events that answer `event`: none unless it is a completed `response.done` with function
        calls not answered yet. Takes as long as the slowest tool (at most the timeout): a supervisor that must
        keep reading events meanwhile awaits it in a task."""
        if event.get("type") != "response.done" or not isinstance(event.get("response"), dict):
            return []
        response: dict[str, Any] = event["response"]
        answered = await self.run(_function_calls(response), response.get("status"))
        if not answered.outputs:
            return []
        events = [_output_event(call_id, output) for call_id, output in answered.outputs]
        # Past a cap, the next response may not call tools at all: a model calling in a loop is stopped here.
        events.append(
            {"type": "response.create", "response": {"tool_choice": "none"}} if answered.capped else CREATE.copy()
        )
        return events

    async def run(self, items: list[dict[str, Any]], status: object) -> Answered:
        """Runs the function calls (`function_call` items with a string `call_id`) of a response that ended with
        `status`, concurrently, each at most once: the outputs in order, or none for a response that did not
        complete (the user spoke over it: its calls are dropped)."""
        calls = [item for item in items if item["call_id"] not in self._answered]
        if not calls:
            return Answered([], capped=False)
        for item in calls:
            self._remember(item["call_id"])
        if status != "completed":
            log.info(
                "call %s: %d tool call(s) dropped, their response ended %s", self.call_id, len(calls), str(status)[:32]
            )
            return Answered([], capped=False)
        room = max(0, min(MAX_CALLS_PER_RESPONSE, self._box.settings.max_calls - self.stats.calls))
        self.stats.calls += len(calls)
        outputs = await asyncio.gather(*(self._run(item) for item in calls[:room]))
        refusals = [self._refuse(item) for item in calls[room:]]
        ids = [item["call_id"] for item in calls]
        return Answered(list(zip(ids, [*outputs, *refusals], strict=True)), capped=bool(refusals))

    async def _run(self, item: dict[str, Any]) -> str:
        name = str(item.get("name"))[:64]
        started = time.perf_counter()
        with self._box.telemetry.call(name, self.call_id) as record:
            try:
                output = _capped(await self._execute(name, item.get("arguments")), self._box.settings)
            except Failure as failure:
                record.outcome = failure.code
                output = self._failed(item["call_id"], name, failure)
        seconds = time.perf_counter() - started
        self.stats.seconds += seconds
        log.info(
            "call %s: tool %s answered call_id %s: %s in %.0f ms",
            self.call_id,
            name,
            item["call_id"],
            record.outcome,
            seconds * 1000,
        )
        return output

    async def _execute(self, name: str, raw: object) -> str:
        tool = self._box.tools.get(name)
        if tool is None:
            raise Failure("unknown_tool", "There is no tool by that name.")
        arguments = _arguments(raw, tool)
        if tool.context_parameter:
            arguments[tool.context_parameter] = self._context
        timeout = self._box.settings.timeout_seconds
        try:
            async with asyncio.timeout(timeout) as scope:
                result = await tool.function(**arguments)
        except ToolError as error:
            raise Failure("tool_error", str(error)[:500] or "The tool could not answer.") from None
        except TimeoutError:
            if not scope.expired():
                raise Failure("failed", "The tool failed.") from None
            raise Failure("timeout", f"The tool did not answer within {timeout:g} seconds.") from None
        except Exception as error:
            # Where, but not the message or the trace's locals: an exception may quote anything (a password).
            frame = traceback.extract_tb(error.__traceback__)[-1]
            log.warning(
                "call %s: tool %s raised %s at %s:%s",
                self.call_id,
                name,
                type(error).__name__,
                Path(frame.filename).name,
                frame.lineno,
            )
            raise Failure("failed", "The tool failed.") from None
        if isinstance(result, str):
            return result
        try:
            return json.dumps(result, ensure_ascii=False)
        except (TypeError, ValueError):
            raise Failure("failed", "The tool's answer was not JSON.") from None

    def _failed(self, call_id: str, name: str, failure: Failure) -> str:
        self.stats.errors += 1
        log.warning("call %s: tool %s, call_id %s: %s (%s)", self.call_id, name, call_id, failure.code, failure)
        return json.dumps({"error": failure.message})

    def _refuse(self, item: dict[str, Any]) -> str:
        self.stats.refused += 1
        name = str(item.get("name"))[:64]
        with self._box.telemetry.call(name, self.call_id) as record:
            record.outcome = "too_many_calls"
        return self._failed(
            item["call_id"],
            name,
            Failure("too_many_calls", "Too many tool calls: stop calling tools and answer with what you have."),
        )

    def _remember(self, call_id: str) -> None:
        self._answered[call_id] = None
        while len(self._answered) > _REMEMBERED:
            del self._answered[next(iter(self._answered))]


def _function_calls(response: dict[str, Any]) -> list[dict[str, Any]]:
    output = response.get("output")
    return [item for item in (output if isinstance(output, list) else []) if is_function_call(item)]


def is_function_call(item: object) -> TypeGuard[dict[str, Any]]:
    """A `function_call` output item the tool loop can answer (it names its `call_id`)."""
    return isinstance(item, dict) and item.get("type") == "function_call" and isinstance(item.get("call_id"), str)


def _arguments(raw: object, tool: Tool) -> dict[str, Any]:
    if not isinstance(raw, str):
        raise Failure("invalid_arguments", "The arguments must be a JSON object.")
    if len(raw) > MAX_ARGUMENT_CHARS:
        raise Failure("invalid_arguments", f"The arguments are longer than {MAX_ARGUMENT_CHARS} characters.")
    try:
        arguments = json.loads(raw or "{}")
    except (ValueError, RecursionError):
        raise Failure("invalid_arguments", "The arguments are not valid JSON.") from None
    if not isinstance(arguments, dict):
        raise Failure("invalid_arguments", "The arguments must be a JSON object.")
    found = problem(arguments, tool.parameters)
    if found:
        raise Failure("invalid_arguments", f"Invalid arguments: {found}.")
    if tool.context_parameter in arguments:
        raise Failure("invalid_arguments", "Invalid arguments.")
    return arguments


def _capped(output: str, settings: ToolSettings) -> str:
    limit = settings.output_max_chars
    return output if len(output) <= limit else output[: limit - len(TRUNCATED)] + TRUNCATED


def _output_event(call_id: str, output: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": call_id, "output": output},
    }
