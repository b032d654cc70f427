"""Which web origins may call `/connect`, and the headers that tell a browser so.

CORS headers only instruct browsers; the 403 for a disallowed `Origin` is what keeps other sites' pages
from spending this resource. Scripts outside a browser can send any Origin (docs/embedding.md).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import azure.functions as func

from .errors import ApiError, error_response

EXPOSED = "Location, Retry-After, Server-Timing, X-Request-Id, X-Call-Token"
# What browsers may send on POST /connect: the bundled client's, and what OpenAI-style WebRTC clients put on their
# SDP POST (Authorization with their ephemeral-key placeholder; the Agents SDK's X-OpenAI-Agents-SDK). Allowing a
# header only lets a browser send it: the app never forwards a caller's headers, it builds its own upstream.
ALLOWED_HEADERS = "Content-Type, x-functions-key, Authorization, X-OpenAI-Agents-SDK, X-Call-Token"


class OriginPolicy:
    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.any = "*" in allowed
        self.allowed = frozenset(allowed)

    def check(self, req: func.HttpRequest) -> dict[str, str]:
        """CORS headers for an allowed request; ApiError(403) for an origin that is not allowed."""
        origin = req.headers.get("origin")
        if not origin or _same_origin(origin, req):
            return {"Vary": "Origin"}
        if self.any or origin.rstrip("/").lower() in self.allowed:
            return {"Access-Control-Allow-Origin": origin, "Access-Control-Expose-Headers": EXPOSED, "Vary": "Origin"}
        # The refusal itself is readable by the refused page, so it can tell its user why; it grants nothing.
        raise ApiError(
            403,
            "origin_not_allowed",
            f"Origin {origin[:100]} may not call this endpoint; add it to the ALLOWED_ORIGINS app setting.",
            {"Access-Control-Allow-Origin": origin, "Vary": "Origin"},
        )

    def preflight(self, req: func.HttpRequest) -> func.HttpResponse:
        """The answer to any route's CORS preflight: 204 with what may be sent, or the refusal as JSON."""
        try:
            headers = self.check(req)
        except ApiError as error:
            return error_response(error)
        headers.update(
            {
                "Access-Control-Allow-Methods": "POST, OPTIONS",
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": "600",
            }
        )
        return func.HttpResponse(status_code=204, headers=headers)


def _same_origin(origin: str, req: func.HttpRequest) -> bool:
    """Same host as the request: the page this app serves calling its own endpoint (the platform may
    terminate TLS in front of the worker, so the scheme is not compared). `X-Forwarded-Host` is not
    consulted: any client can send it."""
    host: str = (req.headers.get("host") or urlsplit(req.url).netloc).lower()
    try:
        return urlsplit(origin).netloc.lower() == host
    except ValueError:
        return False
