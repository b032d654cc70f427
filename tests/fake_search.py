"""A fake Azure AI Search service on loopback: the documents search of its REST contract, nothing else.

`POST /indexes('{index}')/docs/search.post.search?api-version=...` with a JSON body (`search`, `top`, `searchMode`)
and a Bearer token, answered with `{"value": [{"@search.score": ..., ...fields}]}` as the service does. Matching is
naive (any query word in `content`); what is checked is the request the app sends and what it makes of the answer.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from localdev.fake_openai import LoopbackServer

_PATH = re.compile(r"/indexes\('([^']+)'\)/docs/search\.post\.search")


@dataclass
class Searched:
    index: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeSearch:
    index: str
    documents: list[dict[str, Any]]
    accepted_tokens: set[str] = field(default_factory=set)
    requests: list[Searched] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server = LoopbackServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                parts = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                match = _PATH.fullmatch(unquote(parts.path))
                query = parse_qs(parts.query)
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if not match or match.group(1) != fake.index:
                    return self._send(404, {"error": {"code": "", "message": "The index was not found."}})
                if token not in fake.accepted_tokens:
                    return self._send(403, {"error": {"code": "", "message": "Forbidden"}})
                if not query.get("api-version") or "json" not in self.headers.get("Content-Type", ""):
                    return self._send(400, {"error": {"code": "", "message": "Bad request"}})
                request = json.loads(body)
                fake.requests.append(Searched(match.group(1), query, dict(self.headers), request))
                words = set(str(request.get("search", "")).lower().split())
                hits = [
                    {"@search.score": 1.0, **document}
                    for document in fake.documents
                    if words & set(str(document.get("content", "")).lower().split())
                ]
                self._send(200, {"value": hits[: int(request.get("top", 50))]})

            def _send(self, status: int, payload: object) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; odata.metadata=none")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
