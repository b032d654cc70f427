"""The managed-identity endpoint Azure Functions exposes (IDENTITY_ENDPOINT + IDENTITY_HEADER), on loopback."""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from localdev.fake_openai import LoopbackServer


class IdentityEndpoint:
    def __init__(self, on_token=lambda token: None) -> None:
        self.header = secrets.token_hex(8)
        self.requests: list[dict[str, str]] = []
        self.fail_with: int | None = None
        self.delay = 0.0  # seconds each answer stalls (a slow or hung identity endpoint)
        self.on_token = on_token
        self.server = LoopbackServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/msi/token"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                endpoint.requests.append(query)
                time.sleep(endpoint.delay)
                if self.headers.get("X-IDENTITY-HEADER") != endpoint.header or query.get("api-version") != "2019-08-01":
                    return self._send(400, {"error": "invalid_request", "error_description": "bad header or version"})
                if endpoint.fail_with:
                    return self._send(endpoint.fail_with, {"error": "unavailable", "error_description": "identity off"})
                token = "mi." + secrets.token_urlsafe(24)
                endpoint.on_token(token)
                self._send(
                    200,
                    {
                        "access_token": token,
                        "expires_on": str(int(time.time()) + 3600),
                        "resource": query.get("resource", ""),
                        "token_type": "Bearer",
                        "client_id": query.get("client_id", "system-assigned"),
                    },
                )

            def _send(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
