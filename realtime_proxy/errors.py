"""One error type and one JSON shape for every refusal, so clients can branch on a stable `code`."""

from __future__ import annotations

import json
from collections.abc import Mapping

import azure.functions as func

from .logs import REQUEST_ID


class ApiError(Exception):
    """A refusal the caller should see: HTTP status, stable code, human message (never a secret)."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message, "requestId": REQUEST_ID.get()}}


def json_response(payload: object, status: int = 200, headers: Mapping[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(payload, separators=(",", ":")),
        status_code=status,
        headers={"Cache-Control": "no-store", **(headers or {})},
        mimetype="application/json",
        charset="utf-8",
    )


def error_response(error: ApiError, headers: Mapping[str, str] | None = None) -> func.HttpResponse:
    return json_response(error.body(), error.status, {**(headers or {}), **error.headers})
