"""Reads a `/connect` request in any of its three forms and refuses bad input before anything goes upstream.

Forms: `multipart/form-data` (the original contract), a JSON object, or a raw `application/sdp` body with
`voice`/`instructions`/`model`/`reasoning` in the query string (what OpenAI-style clients send).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from email.message import Message

import azure.functions as func

from .errors import ApiError
from .multipart import form_parts
from .settings import REASONING_EFFORTS, Deployment, Settings

FIELDS = ("sdp", "voice", "instructions", "model", "reasoning")
CHOICES = FIELDS[1:]  # what a raw SDP body carries in its query string
# RFC 2046 boundary: 1-70 characters from this set, not ending in a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
# An offer as browsers write it: printable ASCII lines, `v=0` first, an audio section. Anything else (a NUL, an
# escape sequence, exotic line breaks) is refused here, before the service can refuse it at the owner's cost.
# static/openapi.json states this and the ICE rule below as one pattern (tests/test_contract.py holds them equivalent).
# Without its ICE credentials no service can connect to the browser (nor can the emulator answer the offer).
ICE_UFRAG = re.compile(r"^a=ice-ufrag:[\x21-\x7e]", re.MULTILINE)
ICE_PWD = re.compile(r"^a=ice-pwd:[\x21-\x7e]", re.MULTILINE)
SDP_OFFER = re.compile(r"v=0\r?\n(?:[\t\x20-\x7e]*\r?\n)*m=audio[\t\x20-\x7e]*(?:\r?\n[\t\x20-\x7e]*)*\Z")


@dataclass(frozen=True)
class Offer:
    sdp: str
    voice: str
    instructions: str
    model: Deployment
    reasoning: str | None  # an effort, only for a `reasoning` deployment


def read_offer(req: func.HttpRequest, settings: Settings) -> Offer:
    limits = settings.limits
    if sum(len(name) + len(value) + 4 for name, value in req.headers.items()) > limits.max_header_bytes:
        raise ApiError(
            431, "headers_too_large", f"The request headers are larger than {limits.max_header_bytes} bytes."
        )
    body = req.get_body() or b""
    if len(body) > limits.max_body_bytes:
        raise ApiError(413, "payload_too_large", f"The request body is larger than {limits.max_body_bytes} bytes.")
    header = Message()
    header["content-type"] = req.headers.get("content-type", "")
    content_type = header.get_content_type()
    if content_type == "multipart/form-data":
        fields = _multipart_fields(body, header)
    elif content_type == "application/json":
        fields = _json_fields(body)
    elif content_type == "application/sdp":
        fields = {"sdp": _text(body), **{name: req.params.get(name, "") for name in CHOICES}}
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            "Send multipart/form-data (sdp, voice, instructions, model, reasoning), application/json, or "
            "application/sdp.",
        )
    return _validated(fields, settings)


def _model(fields: dict[str, str], settings: Settings) -> tuple[Deployment, str | None]:
    """The deployment the caller chose, from those the owner offers, and its reasoning effort if it takes one."""
    name = fields.get("model") or settings.default_model
    model = settings.model(name)
    offered = ", ".join(d.name for d in settings.deployments)
    if model is None:
        raise ApiError(400, "model_not_allowed", f"Model '{name[:64]}' is not offered here; choose one of: {offered}.")
    effort = fields.get("reasoning") or None
    if effort is not None and model.efforts is None:
        raise ApiError(400, "model_not_allowed", f"Model '{model.name}' takes no reasoning effort.")
    if effort is not None and effort not in REASONING_EFFORTS:
        raise ApiError(
            400,
            "model_not_allowed",
            f"Reasoning effort '{effort[:20]}' is not one of: {', '.join(REASONING_EFFORTS)}.",
        )
    return model, effort


def _validated(fields: dict[str, str], settings: Settings) -> Offer:
    policy, limits = settings.policy, settings.limits
    for name, value in fields.items():
        if not value.isascii() and not _encodable(value):
            raise ApiError(400, "bad_request", f"The '{name}' field is not valid Unicode text (a lone surrogate?).")
    sdp = fields.get("sdp", "")
    if not sdp.strip():
        raise ApiError(400, "missing_sdp", "The request has no 'sdp' field with the browser's SDP offer.")
    if len(sdp.encode("utf-8")) > limits.max_sdp_bytes:
        raise ApiError(413, "payload_too_large", f"The SDP offer is larger than {limits.max_sdp_bytes} bytes.")
    if not SDP_OFFER.match(sdp):
        raise ApiError(
            400,
            "invalid_sdp",
            "The 'sdp' field is not an SDP offer: printable ASCII lines, v=0 first, an m=audio section.",
        )
    if not (ICE_UFRAG.search(sdp) and ICE_PWD.search(sdp)):
        raise ApiError(
            400,
            "invalid_sdp",
            "The SDP offer has no ICE credentials (a=ice-ufrag and a=ice-pwd): send the offer exactly as the "
            "browser's createOffer() made it.",
        )
    voice = fields.get("voice") or policy.default_voice
    if voice not in policy.allowed_voices:
        raise ApiError(
            400,
            "voice_not_allowed",
            f"Voice '{voice[:40]}' is not allowed; choose one of: {', '.join(policy.allowed_voices)}.",
        )
    instructions = fields.get("instructions", "").strip()
    if len(instructions) > policy.max_instructions_chars:
        raise ApiError(
            400,
            "instructions_too_long",
            f"Instructions are limited to {policy.max_instructions_chars} characters; got {len(instructions)}.",
        )
    model, reasoning = _model(fields, settings)
    return Offer(sdp=sdp, voice=voice, instructions=instructions, model=model, reasoning=reasoning)


def _multipart_fields(body: bytes, header: Message) -> dict[str, str]:
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not _BOUNDARY.fullmatch(boundary):
        raise ApiError(400, "bad_request", "The multipart/form-data Content-Type has no valid boundary.")
    try:
        parts = form_parts(body, boundary, FIELDS)
    except UnicodeDecodeError:
        raise ApiError(400, "bad_request", "The multipart/form-data part headers are not UTF-8.") from None
    except ValueError as exc:
        raise ApiError(400, "bad_request", f"The multipart/form-data body is malformed: {exc}.") from None
    return {name: _text(value) for name, value in parts.items()}


def _json_fields(body: bytes) -> dict[str, str]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
        raise ApiError(400, "bad_request", "The JSON body could not be parsed.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", "The JSON body must be an object with 'sdp' and optional choices.")
    for name in FIELDS:
        if data.get(name) is not None and not isinstance(data[name], str):
            raise ApiError(400, "bad_request", f"The JSON field '{name}' must be a string.")
    return {name: data[name] for name in FIELDS if isinstance(data.get(name), str)}


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "bad_request", "Request fields must be UTF-8 text.") from None
