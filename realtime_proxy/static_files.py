"""Serves the browser client from `static/` with ETags, and refuses every way out of that folder.

The folder is read once, when the app loads: deployed files never change under a running instance, a request
never touches the disk (nothing blocks the event loop), and only names found in the folder can be served, so
no spelling of a path can reach anything else. The local host swaps in a fresh index when files change.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import azure.functions as func

from .errors import ApiError, error_response

_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain",
    ".webmanifest": "application/manifest+json",
}
_TEXT = ("text/", "application/json", "application/manifest+json", "image/svg+xml")
_MAX_PATH = 512  # far longer than any file in static/


@dataclass(frozen=True)
class _File:
    body: bytes
    etag: str
    content_type: str


def _not_found() -> ApiError:
    """A fresh error per refusal: raising one shared instance again grows its traceback on every request."""
    return ApiError(404, "not_found", "No such page.")


class StaticFiles:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.files = index(self.root)

    def refresh(self) -> None:
        """Reads the folder again (the local host calls it when a file changed); one assignment swaps the index."""
        self.files = index(self.root)

    def serve(self, req: func.HttpRequest, path: str) -> func.HttpResponse:
        file = self.files.get(_name(path)) if len(path) <= _MAX_PATH else None
        if file is None:
            return error_response(_not_found())
        headers = {
            "Content-Type": file.content_type,
            "ETag": file.etag,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            # Public files: other origins import realtime-session.js / realtime-voice.js as ES modules.
            "Access-Control-Allow-Origin": "*",
        }
        if file.etag in (tag.strip() for tag in req.headers.get("if-none-match", "").split(",")):
            return func.HttpResponse(status_code=304, headers=headers)
        if req.method == "HEAD":
            headers["Content-Length"] = str(len(file.body))
            return func.HttpResponse(status_code=200, headers=headers)
        return func.HttpResponse(file.body, status_code=200, headers=headers)


def _name(path: str) -> str:
    """The index key a URL path names: decoded until stable (double-encoded dots and slashes cannot hide), a
    folder meaning its index.html. Whatever this yields, only names found in the folder match."""
    decoded, previous = path, None
    while decoded != previous:
        previous, decoded = decoded, unquote(decoded)
    return decoded + "index.html" if not decoded or decoded.endswith("/") else decoded


def index(root: Path) -> dict[str, _File]:
    """Every plain file under `root` (no hidden names, nothing a link leads out to), keyed by its path relative
    to it, '/'-separated; a folder's index.html is also the page of the folder's own name."""
    root = root.resolve()
    files: dict[str, _File] = {}
    for file in sorted(root.rglob("*")):
        relative = file.relative_to(root)
        hidden = any(part.startswith(".") for part in relative.parts)
        if hidden or not file.is_file() or not file.resolve().is_relative_to(root):
            continue
        body = file.read_bytes()
        content_type = (
            _TYPES.get(file.suffix.lower()) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        )
        if content_type.startswith(_TEXT):
            content_type += "; charset=utf-8"
        entry = _File(body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"', content_type)
        files[relative.as_posix()] = entry
        if file.name == "index.html" and relative.parent != Path():
            files[relative.parent.as_posix()] = entry
    return files
