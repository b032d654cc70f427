"""Log lines that name the request they belong to and never carry a secret.

Every module logs through `logger(__name__)`. Its filter runs after the message is formatted (exception
text included), so no code path can log a credential by mistake: known secrets (the API key, tokens seen
in this process) and secret-shaped text are redacted, and the request id from the route guard is appended
so that the id a user quotes from an error leads to the log line.
"""

from __future__ import annotations

import contextvars
import logging
import re
import secrets
import traceback

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
REDACTED = "[redacted]"
_SHAPES = re.compile(r"(ek_[A-Za-z0-9_-]+|Bearer\s+\S+|eyJ[A-Za-z0-9_.-]{20,})")
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_KEEP = 16  # the API key, or the latest Entra tokens (one an hour): few, so the set stays small
_known: dict[str, None] = {}


def remember_secret(value: str) -> None:
    """Redact this exact value from every later log line (short values would redact ordinary words)."""
    if len(value) >= 8:
        _known[value] = None
        while len(_known) > _KEEP:
            del _known[next(iter(_known))]


def redact(text: str, extra: tuple[str, ...] = ()) -> str:
    for value in (*_known, *extra):
        if len(value) >= 8:
            text = text.replace(value, REDACTED)
    return _SHAPES.sub(REDACTED, text)


def new_request_id(traceparent: str | None) -> str:
    """The platform's trace id when the request carries W3C trace context, else a fresh one."""
    match = _TRACEPARENT.fullmatch((traceparent or "").strip())
    if match and match.group(1) != "0" * 32:
        return match.group(1)
    return secrets.token_hex(16)


class _Redactor(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            record.exc_info = None  # exporters would otherwise render the exception again, unredacted
        record.msg = f"{redact(text)} [request_id={REQUEST_ID.get()}]"
        record.args = None
        record.exc_text = None
        return True


_FILTER = _Redactor()


def logger(name: str) -> logging.Logger:
    log = logging.getLogger(name)
    if _FILTER not in log.filters:
        log.addFilter(_FILTER)
    return log
