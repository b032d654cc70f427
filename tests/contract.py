"""Checks a response against static/openapi.json, so the published contract and the code cannot drift apart."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

SPEC = json.loads((Path(__file__).resolve().parent.parent / "static" / "openapi.json").read_text())


def resolve(node: dict) -> dict:
    while "$ref" in node:
        target = SPEC
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def check(path: str, method: str, status: int, content_type: str, body: bytes) -> None:
    """Raises AssertionError when the status, media type or JSON body is not what the spec promises."""
    responses = SPEC["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} answered {status}, which openapi.json does not list"
    response = resolve(responses[str(status)])
    content = response.get("content")
    if not content:
        return
    media = content_type.split(";")[0].strip()
    assert media in content, f"{method} {path} {status} answered {media}, openapi.json says {list(content)}"
    schema = resolve(content[media]["schema"])
    instance = json.loads(body) if media == "application/json" else body.decode()
    resolver_schema = {**schema, "components": SPEC["components"]}
    jsonschema.validate(instance, resolver_schema, format_checker=jsonschema.FormatChecker())
