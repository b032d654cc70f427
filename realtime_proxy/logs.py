"""Log lines that name the request they belong to and never carry a secret.

Every module logs through `logger(__name__)`, which installs a log record factory for the whole process: each
record is formatted as it is made (exception text included), so no code path, the app's or a library's, can
log a credential by mistake: known secrets (the API key, tokens seen in this process, the storage account key)
and secret-shaped text are redacted, and the request id from the route guard is appended so that the id a
user quotes from an error leads to the log line.
"""

from __future__ import annotations

import contextvars
import logging
import re
import secrets
import traceback
from typing import Any

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
REDACTED = "[redacted]"
# Ephemeral secrets, bearer and storage shared-key auth, JWTs, SAS signatures, account keys in connection strings.
_SHAPES = re.compile(
    r"(ek_[A-Za-z0-9_-]+|(?:Bearer|SharedKey)\s+\S+|eyJ[A-Za-z0-9_.-]{20,}|\bsig=[^&\s\"']+|AccountKey=[^;\s\"']+)"
)
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


def _scrubbed(record: logging.LogRecord) -> logging.LogRecord:
    """Formats the message now (exception text included), redacted, and names the request it belongs to."""
    text = record.getMessage()
    if record.exc_info:
        text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        record.exc_info = None  # exporters would otherwise render the exception again, unredacted
    request_id = REQUEST_ID.get()
    record.msg = redact(text) + (f" [request_id={request_id}]" if request_id != "-" else "")
    record.args = None
    record.exc_text = None
    return record


def install() -> None:
    """Every record of the process passes here before any handler sees it, whoever logs it: this app, the Azure
    SDK (azure.core's HTTP logging, azure-identity, azure-data-tables), aiohttp. A logger filter would not do:
    it runs only for records logged on that very logger, not on its children."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return _scrubbed(previous(*args, **kwargs))

    logging.setLogRecordFactory(factory)
    # The Azure SDK logs every HTTP request's and answer's headers at INFO: with supervisors renewing a lease every
    # 30 s per call that is most of a busy app's log (and Application Insights bill). Its warnings still show, and an
    # owner chasing a storage problem lowers this logger's level again.
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
    _installed = True


_installed = False


def logger(name: str) -> logging.Logger:
    install()
    return logging.getLogger(name)
