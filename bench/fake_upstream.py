"""A fast fake Azure OpenAI realtime endpoint for load runs, with a managed-identity endpoint beside it.

`localdev/fake_openai.py` validates every field but is a thread-per-connection server; under hundreds of
concurrent connects it would be the bottleneck and the benchmark would measure it. This one is asyncio
(aiohttp's low-level server), sustains well over 1000 requests/s on one core, and still refuses what the
service refuses where it matters for a broker: a wrong `api-key`, a Bearer token it never issued, the wrong
content type, a body that is not an SDP offer. Each request waits `latency` seconds, like a remote service.
It counts accepted TCP connections, so pool churn shows.

Run as a process (its CPU must not be billed to the app or the Worker):
    python bench/fake_upstream.py --latency 0.15 --key K --identity-delay 0.3
It prints one JSON line with its URLs, then serves until stdin closes. `GET /_stats` and `POST /_reset`
read and clear the counters; `/_reset?latency=S` also changes the service time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.identity_endpoint import IdentityEndpoint

ANSWER = (
    b"v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    b"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\n"
    b"a=rtpmap:111 opus/48000/2\r\na=setup:active\r\n"
)


def _error(status: int, code: str) -> web.Response:
    return web.json_response({"error": {"message": code, "type": "invalid_request_error", "code": code}}, status=status)


class FakeRealtime:
    """The two endpoints a connect needs, with a fixed service time and connection/request counters."""

    def __init__(self, api_key: str, latency: float) -> None:
        self.api_key = api_key
        self.latency = latency
        self.tokens: set[str] = set()  # identity tokens the service accepts as Bearer
        self.secrets: set[str] = set()  # ephemeral keys it minted
        self.connections = 0
        self.requests = 0

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path == "/_stats":
            return web.json_response({"connections": self.connections, "requests": self.requests})
        if path == "/_reset":
            self.connections = self.requests = 0
            if "latency" in request.query:
                self.latency = float(request.query["latency"])
            return web.json_response({})
        body = await request.read()
        self.requests += 1
        await asyncio.sleep(self.latency)
        if request.method != "POST":
            return _error(405, "method_not_allowed")
        if path.endswith("/openai/v1/realtime/client_secrets"):
            return self._client_secret(request, body)
        if path.endswith("/openai/v1/realtime/calls"):
            return self._call(request, body)
        return _error(404, "404")

    def _client_secret(self, request: web.BaseRequest, body: bytes) -> web.Response:
        key, auth = request.headers.get("api-key"), request.headers.get("Authorization", "")
        if not (key == self.api_key or (key is None and auth.removeprefix("Bearer ") in self.tokens)):
            return _error(401, "invalid_api_key")
        if request.content_type != "application/json":
            return _error(400, "invalid_content_type")
        try:
            session = json.loads(body)["session"]
        except (ValueError, KeyError, TypeError):
            return _error(400, "invalid_json")
        if not isinstance(session, dict) or session.get("type", "realtime") != "realtime":
            return _error(400, "invalid_value")
        value = "ek_" + secrets.token_hex(16)
        self.secrets.add(value)
        return web.json_response({"value": value, "expires_at": int(time.time()) + 600, "session": session})

    def _call(self, request: web.BaseRequest, body: bytes) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.secrets:
            return _error(401, "invalid_client_secret")
        if request.content_type != "application/sdp":
            return _error(400, "invalid_content_type")
        if not body.startswith(b"v=0") or b"m=audio" not in body:
            return _error(400, "invalid_offer")
        location = f"/v1/realtime/calls/rtc_{secrets.token_hex(12)}"
        return web.Response(status=201, body=ANSWER, headers={"Content-Type": "application/sdp", "Location": location})

    def protocol_factory(self, server: web.Server):
        """Wraps aiohttp's per-connection protocol factory so each accepted TCP connection is counted."""

        def factory():
            self.connections += 1
            return server()

        return factory


async def serve(api_key: str, latency: float, identity_delay: float) -> None:
    fake = FakeRealtime(api_key, latency)

    def on_token(token: str) -> None:  # runs in the identity endpoint's thread, before it answers
        time.sleep(identity_delay)
        fake.tokens.add(token)

    identity = IdentityEndpoint(on_token=on_token)
    loop = asyncio.get_running_loop()
    server = web.Server(fake.handle, access_log=None)
    listener = await loop.create_server(fake.protocol_factory(server), "127.0.0.1", 0, backlog=4096)
    port = listener.sockets[0].getsockname()[1]
    print(
        json.dumps(
            {"url": f"http://127.0.0.1:{port}", "identity_endpoint": identity.url, "identity_header": identity.header}
        ),
        flush=True,
    )
    await loop.run_in_executor(None, sys.stdin.read)  # the parent closes our stdin (or dies) to stop us
    listener.close()
    identity.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.15, help="seconds per upstream request (default 0.15)")
    parser.add_argument("--key", default="bench-key", help="the api-key the fake accepts")
    parser.add_argument(
        "--identity-delay", type=float, default=0.3, help="seconds the identity endpoint takes per token"
    )
    args = parser.parse_args()
    asyncio.run(serve(args.key, args.latency, args.identity_delay))


if __name__ == "__main__":
    main()
