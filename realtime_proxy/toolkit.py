"""Function tools the server owns: a plain async function, registered with `@tool`, becomes a `session.tools` entry.

The name is the function's, the description the docstring's first paragraph, and the JSON Schema of its parameters
is derived from the type hints (`str`, `int`, `float`, `bool`, `Literal[...]`, `list[str]`, each optionally `| None`
with a default) and the docstring's `Args:` lines. Anything else takes an explicit `parameters=` schema. A parameter
annotated `ToolContext` is not the model's: the loop passes the call's context there (docs/tools.md).
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args, get_origin

from .schema import check_supported
from .settings import ToolSettings

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

ToolFunction = Callable[..., Awaitable[object]]
F = TypeVar("F", bound=ToolFunction)
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what the realtime API accepts as a function name
_SIMPLE: Mapping[object, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_ARG_LINE = re.compile(r"^\s*(\w+)(?:\s*\([^)]*\))?\s*:\s*(.+)$")


class ToolError(Exception):
    """Raised by a tool to give the model a short reason it can speak ("no such time zone"); the message becomes
    the `{"error": ...}` output as written, so it must hold nothing secret. Any other exception is reported as a
    generic failure."""


@dataclass(frozen=True)
class ToolContext:
    """What a tool may need from the app: the live call it serves, the tool settings and the app's identity
    (the one credential of the process, for Azure services the tool calls)."""

    call_id: str
    settings: ToolSettings
    credential: AsyncTokenCredential | None = None


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of an object: what the model must send
    function: ToolFunction
    context_parameter: str | None = None  # where the loop passes the ToolContext

    def declaration(self) -> dict[str, Any]:
        """The `session.tools` entry (realtime-api.md §5)."""
        return {"type": "function", "name": self.name, "description": self.description, "parameters": self.parameters}


class Registry:
    """The tools a process knows, by name; `REALTIME_TOOLS` then picks which are enabled."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def tool(
        self,
        function: F | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> Any:
        """`@tool` or `@tool(name=..., description=..., parameters=...)`; returns the function unchanged."""

        def register(function: F) -> F:
            self.add(make_tool(function, name=name, description=description, parameters=parameters))
            return function

        return register(function) if function is not None else register

    def add(self, tool: Tool) -> None:
        if tool.name in self._tools and self._tools[tool.name].function is not tool.function:
            raise ValueError(f"two tools are named {tool.name!r}")
        self._tools[tool.name] = tool

    def names(self) -> tuple[str, ...]:
        return tuple(self._tools)

    def select(self, names: Iterable[str] | None) -> tuple[Tool, ...]:
        """The tools `REALTIME_TOOLS` enables (None: all); a name that is not registered is a ValueError whose message
        names the setting and the registered tools, fit for `not_configured`."""
        if names is None:
            return tuple(self._tools.values())
        wanted = tuple(dict.fromkeys(names))
        if any(name not in self._tools for name in wanted):
            known = ", ".join(self._tools) or "none"
            raise ValueError(f"REALTIME_TOOLS names a tool that is not registered (registered: {known})")
        return tuple(self._tools[name] for name in wanted)


def make_tool(
    function: ToolFunction,
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> Tool:
    if not inspect.iscoroutinefunction(function):
        raise TypeError(f"tool {function.__name__} must be an async function (blocking work: asyncio.to_thread)")
    name = name or function.__name__
    if not NAME.fullmatch(name):
        raise ValueError(f"tool name {name!r} must be 1-64 letters, digits, _ or -")
    summary, documented = _docstring(function)
    hints = typing.get_type_hints(function)
    signature = inspect.signature(function)
    context = next((p for p in signature.parameters if hints.get(p) is ToolContext), None)
    if parameters is None:
        schema = _derive(function, signature, hints, documented, skip=context)
    else:
        schema = dict(parameters)
        check_supported(schema)
    description = description or summary
    if not description:
        raise ValueError(f"tool {name} needs a description: a docstring or description=")
    return Tool(name, description, schema, function, context)


def _derive(
    function: ToolFunction,
    signature: inspect.Signature,
    hints: Mapping[str, object],
    documented: Mapping[str, str],
    skip: str | None,
) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    for parameter in signature.parameters.values():
        if parameter.name == skip:
            continue
        if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            raise TypeError(f"tool {function.__name__}: *args/**kwargs need an explicit parameters= schema")
        hint = hints.get(parameter.name)
        optional = _is_optional(hint)
        schema = _schema_of(_without_none(hint) if optional else hint)
        if schema is None:
            raise TypeError(
                f"tool {function.__name__}: parameter {parameter.name} has a type ({hint}) that cannot be derived;"
                " give parameters= explicitly"
            )
        if optional:  # a model may send null for "not given": the tool then gets None, its default
            schema["type"] = [schema["type"], "null"]
            if "enum" in schema:
                schema["enum"].append(None)
        if parameter.name in documented:
            schema["description"] = documented[parameter.name]
        properties[parameter.name] = schema
        if parameter.default is parameter.empty:
            if optional:
                raise TypeError(f"tool {function.__name__}: optional parameter {parameter.name} needs a default")
            required.append(parameter.name)
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _is_optional(hint: object) -> bool:
    return get_origin(hint) in (typing.Union, types.UnionType) and type(None) in get_args(hint)


def _without_none(hint: object) -> object:
    rest = [arg for arg in get_args(hint) if arg is not type(None)]
    return rest[0] if len(rest) == 1 else None


def _schema_of(hint: object) -> dict[str, Any] | None:
    if hint in _SIMPLE:
        return {"type": _SIMPLE[hint]}
    if get_origin(hint) is Literal:
        values = list(get_args(hint))
        kinds = {_SIMPLE.get(type(value)) for value in values}
        if None in kinds or len(kinds) != 1:
            return None
        return {"type": kinds.pop(), "enum": values}
    if get_origin(hint) is list and get_args(hint) == (str,):
        return {"type": "array", "items": {"type": "string"}}
    return None


def _docstring(function: ToolFunction) -> tuple[str, dict[str, str]]:
    """The first paragraph, and the `name: text` entries under `Args:` (Google style), each joined to one line."""
    text = inspect.getdoc(function) or ""
    head, found, rest = text.partition("\nArgs:\n")
    summary = " ".join(head.split("\n\n", 1)[0].split())
    documented: dict[str, str] = {}
    lines = rest.splitlines() if found else []
    base = _indent(lines[0]) if lines else 0
    last = None
    for line in lines:
        if line.strip() and _indent(line) == 0:  # the next section
            break
        match = _ARG_LINE.match(line)
        if match and _indent(line) == base:
            last = match.group(1)
            documented[last] = match.group(2).strip()
        elif last is not None and line.strip():
            documented[last] += " " + line.strip()
    return summary, documented


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


REGISTRY = Registry()
tool = REGISTRY.tool  # the owner's decorator: `from realtime_proxy.toolkit import tool`
