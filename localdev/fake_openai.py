"""A local Azure OpenAI realtime endpoint on a real socket: validates requests the way the service does,
records them, and injects faults on demand.

It checks what the real `/openai/v1` endpoints check (auth header, JSON shape, `session.type`, the ten
voices, beta-era fields, content types, SDP, which deployments reason and which are GPT-Live) so the function
app's requests are proven correct, not just sent. GPT-Live's strict session endpoint is `fake_live`. Offers are
answered by a pluggable answerer: a canned SDP for HTTP tests, a real WebRTC peer for the emulator.
Each call then has a `FakeCall` (`fake.call(id)`), which a server may join over the sideband WebSocket
(`GET /openai/v1/realtime?call_id=`, realtime-api.md §4-§5) on the same port as the HTTP endpoints; each GPT-Live
session a `LiveCall` (`fake.live_call(id)`), joined at `GET /openai/v1/live/sessions/{id}/attach` (§6) with the
same checks and refusals.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qs, urlsplit

from .fake_call import FakeCall, FakeSession
from .fake_live import LiveCall, check_live_request
from .service_rules import ServiceError, check_session_fields, effective_session, only
from .sideband import SidebandSocket, accept_token

if TYPE_CHECKING:
    from .emulator import PeerHost

Hangup = Callable[[str], object]  # ends the call's media and data channel (the emulator's peer)
LIVE_ATTACH = re.compile(r"/openai/v1/live/sessions/([^/]+)/attach")


class Answerer(Protocol):
    """(offer, session, call id, webrtcfilter) -> answer SDP. `webrtc_filter`: the call was made with
    `?webrtcfilter=on`, so its browser sees only some events; GPT-Live sessions, which have no such filter, are
    answered without it."""

    def __call__(self, offer: str, session: dict, call_id: str, webrtc_filter: bool = False, /) -> str: ...


@dataclass
class Fault:
    """What the next matching request gets instead of a normal answer."""

    status: int | None = 500  # None: answer normally (with `headers` added) once the delay is over
    body: str | None = None  # None: a JSON error shaped like the service's
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to stall before answering (timeouts)
    drop: bool = False  # close the connection without answering (a sideband: accept, then cut the connection)
    drip: float = 0.0  # seconds between the body's bytes (read timeouts restart per byte)
    cut: bool = False  # announce the whole body, send half of it, then reset the connection
    echo_credentials: bool = False  # the error message quotes the request's api-key/Authorization (hostile upstream)
    garbage: bool = False  # a sideband: accept, then send text frames that are not JSON and binary frames first


@dataclass
class Recorded:
    endpoint: str
    headers: dict[str, str]
    body: bytes
    query: dict[str, list[str]]


def canned_answer(offer: str, session: dict, call_id: str, webrtc_filter: bool = False) -> str:
    """A well-formed SDP answer for tests that exercise HTTP only."""
    return (
        "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\n"
        "a=rtpmap:111 opus/48000/2\r\na=setup:active\r\n"
    )


class FakeAzureOpenAI:
    def __init__(
        self,
        api_key: str | None = "test-key",
        deployments: tuple[str, ...] = ("gpt-realtime",),
        answerer: Answerer = canned_answer,
        host: str = "127.0.0.1",
        port: int = 0,
        hangup: Hangup = lambda call_id: None,
        reasoning_deployments: tuple[str, ...] = ("gpt-realtime-2",),
        live_deployments: tuple[str, ...] = ("gpt-live-1",),
        live_answerer: Answerer | None = None,
        peers: PeerHost | None = None,
    ) -> None:
        """`peers`: the emulator runs every call (answers, hang-ups, and the conversation sidebands join)."""
        self.api_key = api_key
        self.peers = peers
        self.hangup = peers.hangup if peers else hangup
        self.calls: dict[str, str] = {}  # call id -> "live" | "ended"
        self.live_sessions: dict[str, dict] = {}  # GPT-Live session id -> its session
        self.live_status = 201  # the service documents a JSON answer; 200 and 201 are both seen
        self.deployments = set(deployments)
        self.reasoning_deployments = set(reasoning_deployments)
        self.live_deployments = set(live_deployments)
        self.accepted_tokens: set[str] = set()
        self.answerer = peers.answer if peers else answerer
        self.live_answerer = peers.answer_live if peers else live_answerer or answerer
        self.requests: list[Recorded] = []
        self.connections = 0
        self.secrets: dict[str, dict] = {}
        self._faults: dict[str, list[Fault]] = {
            "client_secrets": [],
            "calls": [],
            "hangup": [],
            "sideband": [],
            "live_sessions": [],
            "attach": [],
        }
        self._lock = threading.Lock()
        self._calls = threading.Condition(self._lock)  # notified when a call is created
        self._call_objects: dict[str, FakeSession] = {}  # realtime calls and GPT-Live sessions, by id
        self.host = host
        self.server = LoopbackServer((host, port), _handler_for(self))
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(0.05,), name="fake-azure-openai", daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server.server_port}"

    def fail_next(self, endpoint: str, fault: Fault, times: int = 1) -> None:
        with self._lock:
            self._faults[endpoint].extend([fault] * times)

    def calls_to(self, endpoint: str) -> list[Recorded]:
        return [r for r in self.requests if r.endpoint == endpoint]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.connections = 0
            for queue in self._faults.values():
                queue.clear()

    def call(self, call_id: str, timeout: float = 5.0) -> FakeCall:
        """The realtime call with this id, waiting until it exists; TimeoutError if it never does."""
        call = self._session(call_id, timeout)
        assert isinstance(call, FakeCall), f"{call_id} is a GPT-Live session"
        return call

    def live_call(self, session_id: str, timeout: float = 5.0) -> LiveCall:
        """The GPT-Live session with this id, waiting until it exists; TimeoutError if it never does."""
        call = self._session(session_id, timeout)
        assert isinstance(call, LiveCall), f"{session_id} is a realtime call"
        return call

    def _session(self, call_id: str, timeout: float) -> FakeSession:
        with self._calls:
            if not self._calls.wait_for(lambda: call_id in self._call_objects, timeout):
                raise TimeoutError(f"no call {call_id} within {timeout} s")
            return self._call_objects[call_id]

    def close(self) -> None:
        with self._lock:
            calls = list(self._call_objects.values())
        for call in calls:
            call.close_sidebands()
        self.server.shutdown()
        self.server.server_close()

    def _take_fault(self, endpoint: str) -> Fault | None:
        with self._lock:
            queue = self._faults[endpoint]
            return queue.pop(0) if queue else None

    def _count_connection(self) -> None:
        with self._lock:
            self.connections += 1

    # -- what the service checks ---------------------------------------------------------------

    def handle(
        self,
        endpoint: str,
        headers: dict[str, str],
        query: dict[str, list[str]],
        body: bytes,
        call_id: str | None = None,
    ) -> tuple[int, dict, bytes]:
        self._check_ga(headers, query)
        if endpoint == "client_secrets":
            return self._client_secret(headers, body)
        if endpoint == "hangup":
            return self._hangup(headers, call_id or "")
        if endpoint == "live_sessions":
            return self._live_session(headers, body)
        return self._call(headers, query, body)

    @staticmethod
    def _check_ga(headers: dict[str, str], query: dict[str, list[str]]) -> None:
        if "api-version" in query:
            raise ServiceError(400, "unsupported_api_version", "api-version is not supported on the v1 API.")
        if "openai-beta" in headers:
            raise ServiceError(400, "invalid_beta", "The OpenAI-Beta header is not supported on the GA API.")

    def sideband_call(self, headers: dict[str, str], query: dict[str, list[str]]) -> FakeCall:
        """The live call a sideband upgrade names, checked as the service does before it upgrades (§5)."""
        self._check_ga(headers, query)
        self._authenticate(headers)
        call_id = query.get("call_id", [""])[0]
        if not call_id:
            raise ServiceError(400, "missing_required_parameter", "Missing required parameter: 'call_id'.", "call_id")
        with self._lock:
            call = self._call_objects.get(call_id)
        if not isinstance(call, FakeCall) or call.ended:
            raise ServiceError(404, "call_not_found", f"No live call with id '{call_id}'.")
        return call

    def live_attach(self, headers: dict[str, str], query: dict[str, list[str]], session_id: str) -> LiveCall:
        """The GPT-Live session an attach upgrade names (§6), checked as the realtime sideband is."""
        self._check_ga(headers, query)
        self._authenticate(headers)
        with self._lock:
            call = self._call_objects.get(session_id)
        if not isinstance(call, LiveCall) or call.ended:
            raise ServiceError(404, "session_not_found", f"No live session with id '{session_id}'.")
        return call

    def _ended(self, call: FakeSession, reason: str) -> None:
        """A call ended (hang-up, the session limit, the browser gone): its media ends too."""
        with self._lock:
            self.calls[call.call_id] = "ended"
        if self.peers is not None and reason == "session_expired":
            self.peers.expire(call.call_id)
        else:
            self.hangup(call.call_id)

    def _client_secret(self, headers: dict[str, str], body: bytes) -> tuple[int, dict, bytes]:
        payload = self._json_request(headers, body)
        only(payload, {"expires_after", "session"}, "")
        ttl = self._expiry(payload.get("expires_after"))
        session = payload.get("session")
        if not isinstance(session, dict):
            raise ServiceError(400, "missing_required_parameter", "Missing required parameter: 'session'.", "session")
        self._check_session(session)
        value = "ek_" + secrets.token_hex(16)
        expires_at = int(time.time()) + ttl
        with self._lock:
            self.secrets[value] = {"session": session, "expires_at": expires_at}
        answer = {
            "value": value,
            "expires_at": expires_at,
            "session": {**session, "id": "sess_" + secrets.token_hex(8)},
        }
        return 200, {"Content-Type": "application/json"}, json.dumps(answer).encode()

    def _json_request(self, headers: dict[str, str], body: bytes) -> dict:
        self._authenticate(headers)
        if headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise ServiceError(400, "invalid_content_type", "Content-Type must be application/json.")
        try:
            payload = json.loads(body)
        except ValueError:
            raise ServiceError(400, "invalid_json", "We could not parse the JSON body of your request.") from None
        if not isinstance(payload, dict):
            raise ServiceError(400, "invalid_type", "The body must be a JSON object.")
        return payload

    def _live_session(self, headers: dict[str, str], body: bytes) -> tuple[int, dict, bytes]:
        """GPT-Live (realtime-api.md §6): the backend posts the session and the offer; JSON with the answer back."""
        session, offer = check_live_request(self._json_request(headers, body))
        if session["model"] not in self.live_deployments:
            raise ServiceError(404, "DeploymentNotFound", "The API deployment for this resource does not exist.")
        session_id = "sess_" + secrets.token_hex(12)
        try:
            answer = self.live_answerer(offer, session, session_id)
        except ValueError as exc:
            raise ServiceError(400, "invalid_offer", f"The SDP offer could not be applied: {exc}") from None
        call = LiveCall(session_id, session, self._ended)
        with self._lock:
            self.live_sessions[session_id] = session
            self.calls[session_id] = "live"
            self._call_objects[session_id] = call
            self._calls.notify_all()
        if self.peers is not None:
            self.peers.bind(call)
        created = {"session": {**session, "id": session_id, "object": "live.session"}, "transport": {"sdp": answer}}
        return self.live_status, {"Content-Type": "application/json"}, json.dumps(created).encode()

    def _authenticate(self, headers: dict[str, str]) -> None:
        key, auth = headers.get("api-key"), headers.get("authorization", "")
        if key is not None:
            if self.api_key is None or not secrets.compare_digest(key, self.api_key):
                raise ServiceError(401, "invalid_api_key", "Access denied due to invalid subscription key.")
            return
        if auth.startswith("Bearer ") and auth[7:] in self.accepted_tokens:
            return
        raise ServiceError(401, "unauthorized", "Access denied due to missing or invalid authentication.")

    @staticmethod
    def _expiry(expires_after: object) -> int:
        if expires_after is None:
            return 600
        if not isinstance(expires_after, dict) or expires_after.get("anchor") != "created_at":
            raise ServiceError(
                400, "invalid_value", "expires_after.anchor must be 'created_at'.", "expires_after.anchor"
            )
        only(expires_after, {"anchor", "seconds"}, "expires_after.")
        seconds = expires_after.get("seconds", 600)
        if not isinstance(seconds, int) or not 10 <= seconds <= 7200:
            raise ServiceError(400, "invalid_value", "expires_after.seconds must be 10..7200.", "expires_after.seconds")
        return seconds

    def _check_session(self, session: dict) -> None:
        check_session_fields(session)
        model = session.get("model")
        if model in self.live_deployments:
            raise ServiceError(400, "invalid_value", "GPT-Live issues no client secrets; use /live/sessions.", "model")
        if model not in self.deployments | self.reasoning_deployments:
            raise ServiceError(404, "DeploymentNotFound", "The API deployment for this resource does not exist.")
        if "reasoning" in session and model not in self.reasoning_deployments:
            raise ServiceError(400, "unknown_parameter", "Unknown parameter: 'session.reasoning'.", "session.reasoning")

    def _call(self, headers: dict[str, str], query: dict[str, list[str]], body: bytes) -> tuple[int, dict, bytes]:
        auth = headers.get("authorization", "")
        with self._lock:
            secret = self.secrets.get(auth[7:]) if auth.startswith("Bearer ") else None
        if secret is None or secret["expires_at"] < time.time():
            raise ServiceError(401, "invalid_client_secret", "Invalid or expired ephemeral key.")
        if headers.get("content-type", "").split(";")[0].strip() != "application/sdp":
            raise ServiceError(400, "invalid_content_type", "Content-Type must be application/sdp.")
        offer = body.decode("utf-8", "replace")
        if not offer.startswith("v=0") or "m=audio" not in offer:
            raise ServiceError(400, "invalid_offer", "The SDP offer is invalid.")
        call_id = "rtc_" + secrets.token_hex(12)
        try:
            answer = self.answerer(offer, secret["session"], call_id, query.get("webrtcfilter") == ["on"])
        except ValueError as exc:
            raise ServiceError(400, "invalid_offer", f"The SDP offer could not be applied: {exc}") from None
        call = FakeCall(call_id, effective_session(secret["session"]), self._ended)
        with self._lock:
            self.calls[call_id] = "live"
            self._call_objects[call_id] = call
            self._calls.notify_all()
        if self.peers is not None:
            self.peers.bind(call)
        return 201, {"Content-Type": "application/sdp", "Location": f"/v1/realtime/calls/{call_id}"}, answer.encode()

    def _hangup(self, headers: dict[str, str], call_id: str) -> tuple[int, dict, bytes]:
        """Server-side call control (realtime-api.md §4): the resource's own credentials, a call it knows."""
        self._authenticate(headers)
        with self._lock:
            call = self._call_objects.get(call_id)
        if call is None:
            raise ServiceError(404, "call_not_found", f"No call with id '{call_id}'.")
        call.end("hangup")
        return 200, {"Content-Type": "application/json"}, b"{}"


class LoopbackServer(ThreadingHTTPServer):
    """A threaded HTTP server for local fakes: daemon threads, a deep accept queue, quiet about hang-ups."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512  # a burst of new connections queues like at a real front end instead of being reset

    def handle_error(self, request: socket.socket | tuple[bytes, socket.socket], client_address: object) -> None:
        """A client that hangs up (or a connection a fault reset) is routine here, not a traceback on stderr."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler_for(fake: FakeAzureOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is observable

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            fake._count_connection()

        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

        def do_POST(self) -> None:
            parts = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            endpoint = parts.path.removeprefix("/openai/v1/realtime/")
            call_id = endpoint.removeprefix("calls/").removesuffix("/hangup") if endpoint.endswith("/hangup") else None
            endpoint = "hangup" if call_id else endpoint
            endpoint = "live_sessions" if parts.path == "/openai/v1/live/sessions" else endpoint
            if endpoint not in ("client_secrets", "calls", "hangup", "live_sessions"):
                not_found = ServiceError(404, "404", "Resource not found").body()
                self._send(404, {"Content-Type": "application/json"}, not_found, Fault())
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            query = parse_qs(parts.query)
            with fake._lock:
                fake.requests.append(Recorded(endpoint, headers, body, query))
            fault = fake._take_fault(endpoint) or Fault(status=None)
            if self._fault(fault, headers):
                return
            try:
                status, out_headers, out = fake.handle(endpoint, headers, query, body, call_id)
            except ServiceError as error:
                status, out_headers, out = error.status, {"Content-Type": "application/json"}, error.body()
            self._send(status, {**out_headers, **fault.headers}, out, fault)

        def do_GET(self) -> None:
            """The sidebands (realtime-api.md §5, §6): refusals are plain HTTP answers before the upgrade."""
            parts = urlsplit(self.path)
            live = LIVE_ATTACH.fullmatch(parts.path)
            if parts.path.rstrip("/") != "/openai/v1/realtime" and live is None:
                self._send(
                    404,
                    {"Content-Type": "application/json"},
                    ServiceError(404, "404", "Resource not found").body(),
                    Fault(),
                )
                return
            endpoint = "attach" if live else "sideband"
            headers = {k.lower(): v for k, v in self.headers.items()}
            query = parse_qs(parts.query)
            with fake._lock:
                fake.requests.append(Recorded(endpoint, headers, b"", query))
            fault = fake._take_fault(endpoint) or Fault(status=None)
            if self._fault(replace(fault, drop=False), headers):
                return
            try:
                call = fake.live_attach(headers, query, live.group(1)) if live else fake.sideband_call(headers, query)
                if headers.get("upgrade", "").lower() != "websocket" or headers.get("sec-websocket-version") != "13":
                    raise ServiceError(400, "websocket_required", "This endpoint takes a WebSocket upgrade only.")
                key = headers.get("sec-websocket-key", "")
            except ServiceError as error:
                self._send(error.status, {"Content-Type": "application/json"}, error.body(), Fault())
                return
            sideband = SidebandSocket(self.connection, self.rfile)  # sends nothing before serve()
            if fault.garbage:
                for text in ("not json", '{"type": ', "<html>502 Bad Gateway</html>"):
                    sideband.send(text)
                for data in (b"\x00\x01\x02", json.dumps({"type": "session.updated"}).encode()):
                    sideband.send_bytes(data)
            attached = not fault.drop and call.attach(sideband)  # before the 101: no event is missed after it
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", accept_token(key))
            self.end_headers()
            self.close_connection = True
            if fault.drop:
                sideband.abort()
            try:
                sideband.serve(call.client_event if attached else lambda message: None)
            finally:
                if attached:
                    call.detach(sideband)

        def _fault(self, fault: Fault, headers: dict[str, str]) -> bool:
            """Stall, drop or answer with the fault; False when the request should then be handled normally."""
            if fault.delay:
                time.sleep(fault.delay)
            if fault.drop:
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return True
            if fault.status is None:
                return False
            message = f"Injected fault {fault.status}."
            if fault.echo_credentials:
                message += f" Rejected api-key={headers.get('api-key')} authorization={headers.get('authorization')}."
            body = (
                fault.body
                if fault.body is not None
                else ServiceError(fault.status, f"fault_{fault.status}", message).body().decode()
            )
            ctype = "application/json" if fault.body is None else "text/html"
            self._send(fault.status, {"Content-Type": ctype, **fault.headers}, body.encode(), fault)
            return True

        def _send(self, status: int, headers: dict[str, str], body: bytes, fault: Fault) -> None:
            try:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault.cut:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
                    self.close_connection = True
                elif fault.drip:
                    for index in range(len(body)):
                        self.wfile.write(body[index : index + 1])
                        self.wfile.flush()
                        time.sleep(fault.drip)
                else:
                    self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up first
                self.close_connection = True

    return Handler
