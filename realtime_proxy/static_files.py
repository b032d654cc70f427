"""Serves the browser client from `static/` with ETags, and refuses every way out of that folder."""

from __future__ import annotations

import hashlib
import mimetypes
import threading
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
_NOT_FOUND = ApiError(404, "not_found", "No such page.")
_MAX_PATH = 512  # far longer than any file in static/; longer paths only make the file system raise


class StaticFiles:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._cache: dict[Path, tuple[float, bytes, str]] = {}
        self._lock = threading.Lock()

    def serve(self, req: func.HttpRequest, path: str) -> func.HttpResponse:
        try:
            file = self._resolve(path)
            body, etag = self._read(file)
        except ApiError as error:
            return error_response(error)
        content_type = (
            _TYPES.get(file.suffix.lower()) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        )
        if content_type.startswith(_TEXT):
            content_type += "; charset=utf-8"
        headers = {
            "Content-Type": content_type,
            "ETag": etag,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            # Public files: other origins import realtime-session.js / realtime-voice.js as ES modules.
            "Access-Control-Allow-Origin": "*",
        }
        if etag in (tag.strip() for tag in req.headers.get("if-none-match", "").split(",")):
            return func.HttpResponse(status_code=304, headers=headers)
        if req.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return func.HttpResponse(status_code=200, headers=headers)
        return func.HttpResponse(body, status_code=200, headers=headers)

    def _resolve(self, path: str) -> Path:
        """Decode until stable so double-encoded dots and slashes cannot hide, then allow only plain names."""
        if len(path) > _MAX_PATH:
            raise _NOT_FOUND
        decoded, previous = path, None
        while decoded != previous:
            previous, decoded = decoded, unquote(decoded)
        parts = decoded.split("/") if decoded else []
        if any(not part or part.startswith(".") or "\\" in part or ":" in part or "\0" in part for part in parts):
            raise _NOT_FOUND  # also an absolute path: its first part is empty
        try:
            file = (self.root / decoded).resolve() if decoded else self.root
            if file.is_dir():
                file = file / "index.html"
            if not file.is_relative_to(self.root) or not file.is_file():
                raise _NOT_FOUND
        except (OSError, ValueError):  # a name the file system refuses is no page either
            raise _NOT_FOUND from None
        return file

    def _read(self, file: Path) -> tuple[bytes, str]:
        mtime = file.stat().st_mtime
        with self._lock:
            cached = self._cache.get(file)
            if cached and cached[0] == mtime:
                return cached[1], cached[2]
        body = file.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        with self._lock:
            self._cache[file] = (mtime, body, etag)
        return body, etag
