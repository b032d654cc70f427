"""Reads a `/connect` request in any of its three forms and refuses bad input before anything goes upstream.

Forms: `multipart/form-data` (the original contract), a JSON object, or a raw `application/sdp` body with
`voice`/`instructions` in the query string (what OpenAI-style clients send).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from email.message import Message

import azure.functions as func

from .errors import ApiError
from .multipart import form_parts
from .settings import Limits, SessionPolicy

FIELDS = ("sdp", "voice", "instructions")
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


def read_offer(req: func.HttpRequest, policy: SessionPolicy, limits: Limits) -> Offer:
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
        fields = {"sdp": _text(body), **{name: req.params.get(name, "") for name in ("voice", "instructions")}}
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            "Send multipart/form-data (sdp, voice, instructions), application/json, or application/sdp.",
        )
    return _validated(fields, policy, limits)


def _validated(fields: dict[str, str], policy: SessionPolicy, limits: Limits) -> Offer:
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
    return Offer(sdp=sdp, voice=voice, instructions=instructions)


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
        raise ApiError(400, "bad_request", "The JSON body must be an object with 'sdp', 'voice' and 'instructions'.")
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
