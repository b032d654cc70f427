"""Checks a tool's arguments against its JSON Schema, for the subset of keywords tools need.

The `jsonschema` package would cover all of JSON Schema, but it is a dev-only dependency here and its import costs
70-110 ms at cold start (`python -X importtime -c "import jsonschema"`, 2026-12-06), for schemas that are, derived
or written by hand, a flat object of a few typed fields. So an explicit schema may use only the keywords below; one
using any other is refused when the tool is registered, never silently left unchecked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

ANNOTATIONS = frozenset({"description", "title", "default", "examples", "$comment"})
KEYWORDS = frozenset(
    {
        "type",
        "enum",
        "const",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minItems",
        "maxItems",
    }
)
_TYPES: Mapping[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


def check_supported(schema: Mapping[str, Any], where: str = "parameters") -> None:
    """Raises ValueError naming the first keyword or type this validator does not check."""
    if not isinstance(schema, Mapping):
        raise ValueError(f"{where} must be a JSON Schema object")
    for key, value in schema.items():
        if key in ANNOTATIONS:
            continue
        if key not in KEYWORDS:
            raise ValueError(f"{where} uses {key!r}, which the tool loop does not check (docs/tools.md)")
        if key == "type" and any(kind not in _TYPES for kind in _kinds(value)):
            raise ValueError(f"{where} has an unknown type {value!r}")
        if key == "properties":
            for name, sub in value.items():
                check_supported(sub, f"{where}.{name}")
        elif key in ("items", "additionalProperties") and not isinstance(value, bool):
            check_supported(value, f"{where}.{key}")
    if where == "parameters" and schema.get("type") != "object":
        raise ValueError("parameters must be a schema of type object")


def problem(value: object, schema: Mapping[str, Any], where: str = "arguments") -> str | None:
    """The first way `value` breaks `schema`, in words that name the field but never quote the value."""
    kinds = _kinds(schema.get("type"))
    if kinds and not any(_is(value, kind) for kind in kinds):
        return f"{where} must be {' or '.join(kinds)}"
    if "enum" in schema and not any(_same(value, option) for option in schema["enum"]):
        return f"{where} must be one of: {', '.join(map(str, schema['enum']))}"
    if "const" in schema and not _same(value, schema["const"]):
        return f"{where} must be {schema['const']}"
    if isinstance(value, str):
        return _string_problem(value, schema, where)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _number_problem(value, schema, where)
    if isinstance(value, list):
        return _array_problem(value, schema, where)
    if isinstance(value, dict):
        return _object_problem(value, schema, where)
    return None


def _string_problem(value: str, schema: Mapping[str, Any], where: str) -> str | None:
    if len(value) < schema.get("minLength", 0):
        return f"{where} must be at least {schema['minLength']} characters"
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        return f"{where} must be at most {schema['maxLength']} characters"
    if "pattern" in schema and not re.search(schema["pattern"], value):
        return f"{where} does not have the expected form"
    return None


def _number_problem(value: float, schema: Mapping[str, Any], where: str) -> str | None:
    bounds = (
        ("minimum", value < schema.get("minimum", value), "at least"),
        ("maximum", value > schema.get("maximum", value), "at most"),
        ("exclusiveMinimum", value <= schema.get("exclusiveMinimum", value - 1), "more than"),
        ("exclusiveMaximum", value >= schema.get("exclusiveMaximum", value + 1), "less than"),
    )
    for keyword, broken, words in bounds:
        if broken:
            return f"{where} must be {words} {schema[keyword]}"
    return None


def _array_problem(value: list[object], schema: Mapping[str, Any], where: str) -> str | None:
    if len(value) < schema.get("minItems", 0):
        return f"{where} must have at least {schema['minItems']} items"
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        return f"{where} must have at most {schema['maxItems']} items"
    items = schema.get("items")
    if isinstance(items, Mapping):
        for index, item in enumerate(value):
            if found := problem(item, items, f"{where}[{index}]"):
                return found
    return None


def _object_problem(value: dict[str, object], schema: Mapping[str, Any], where: str) -> str | None:
    properties: Mapping[str, Any] = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in value:
            return f"{_field(where, name)} is required"
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in properties:
            found = problem(item, properties[name], _field(where, name))
        elif extra is False:
            found = f"{_field(where, name[:64])} is not a parameter of this tool"
        else:
            found = problem(item, extra, _field(where, name[:64])) if isinstance(extra, Mapping) else None
        if found:
            return found
    return None


def _field(where: str, name: str) -> str:
    return name if where == "arguments" else f"{where}.{name}"


def _kinds(value: object) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value) if isinstance(value, list) else [str(value)]


def _is(value: object, kind: str) -> bool:
    return isinstance(value, _TYPES.get(kind, ())) and not (isinstance(value, bool) and kind in ("integer", "number"))


def _same(value: object, option: object) -> bool:
    """JSON equality: `true` is not `1`."""
    if isinstance(value, bool) or isinstance(option, bool):
        return type(value) is type(option) and value == option
    return value == option
