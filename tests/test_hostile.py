"""Hostile callers and a hostile or broken upstream: a clear answer, inside the deadline, nothing leaked.

Each test reproduces one class of defect found by attacking `/connect`; see docs/security.md, "What is defended".
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.request import ProxyHandler, Request, build_opener

import azure.functions as func
import pytest

from localdev.fake_openai import FakeAzureOpenAI, Fault
from realtime_proxy.service import RealtimeProxy, guarded
from tests.conftest import (
    API_KEY,
    OFFER,
    WORKER_LOOP,
    LocalHost,
    error_of,
    make_proxy,
    offer_request,
    on_worker_loop,
    request,
)


def assert_no_credential(*texts: str, secrets: tuple[str, ...] = (API_KEY,)) -> None:
    for text in texts:
        for secret in secrets:
            assert secret[:6] not in text, "a credential (or a prefix of one) leaked"
        assert not re.search(r"ek_[A-Za-z0-9]|Bearer [A-Za-z0-9]", text), "an ephemeral secret or token leaked"


# -- never send a credential or an offer anywhere but the configured resource ------------------------------


@pytest.fixture
def elsewhere() -> Iterator[FakeAzureOpenAI]:
    """Another host a hostile redirect points at; it must never hear from the app."""
    server = FakeAzureOpenAI(api_key=None)
    yield server
    server.close()


@pytest.mark.parametrize("stage", ["client_secrets", "calls"])
@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_refused_not_followed(fake, elsewhere, logs, stage: str, status: int) -> None:
    target = f"{elsewhere.url}/openai/v1/realtime/{stage}?sig=s3cr3t"
    fake.fail_next(stage, Fault(status=status, body="", headers={"Location": target}))
    response = make_proxy(fake).connect(offer_request())
    error = error_of(response)
    assert (response.status_code, error["code"]) == (502, "upstream_error")
    assert f"{elsewhere.url}/openai/v1/realtime/{stage}" in error["message"], "says where it pointed"
    assert "s3cr3t" not in error["message"] and "s3cr3t" not in logs.text, "minus the query string"
    assert elsewhere.requests == [], "neither the key, the session nor the offer may leave for another host"


def test_no_cookie_is_kept_between_callers(fake) -> None:
    fake.fail_next("client_secrets", Fault(status=None, headers={"Set-Cookie": "affinity=caller-one; Path=/"}))
    proxy = make_proxy(fake)
    assert proxy.connect(offer_request()).status_code == 201
    assert proxy.connect(offer_request()).status_code == 201
    assert all("cookie" not in recorded.headers for recorded in fake.requests)


class ForwardProxy:
    """An HTTP forward proxy on loopback that counts what passes through it."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                proxy.seen.append(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "proxy-connection")}
                direct = build_opener(ProxyHandler({}))  # this process has HTTP_PROXY set: pointing at us
                try:
                    upstream = direct.open(Request(self.path, data=body, headers=headers, method="POST"), timeout=10)
                    status, reply = upstream.status, upstream
                except Exception as exc:  # HTTPError is a response too
                    status, reply = getattr(exc, "code", 502), exc
                payload = reply.read()
                self.send_response(status)
                for key, value in reply.headers.items():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_proxy_variables_are_honoured_as_requests_would(fake) -> None:
    forward = ForwardProxy()
    try:
        assert make_proxy(fake, HTTP_PROXY=forward.url).connect(offer_request()).status_code == 201
        assert [path.rsplit("/", 1)[-1] for path in forward.seen] == ["client_secrets", "calls"]
        for no_proxy in ("127.0.0.1", "localhost,127.0.0.0/8", "*"):
            app = make_proxy(fake, HTTP_PROXY=forward.url, NO_PROXY=no_proxy)
            assert app.connect(offer_request()).status_code == 201
            assert len(forward.seen) == 2, f"NO_PROXY={no_proxy} names the resource: no proxy"
    finally:
        forward.close()


# -- one deadline for the whole connect ---------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["client_secrets", "calls"])
def test_an_upstream_that_drips_bytes_is_cut_off_at_the_deadline(fake, stage: str) -> None:
    fake.fail_next(stage, Fault(status=None, drip=0.3))
    proxy = make_proxy(fake, CONNECT_DEADLINE_SECONDS="2", UPSTREAM_READ_TIMEOUT_SECONDS="10")
    started = time.monotonic()
    response = proxy.connect(offer_request())
    assert (response.status_code, error_of(response)["code"]) == (504, "upstream_timeout")
    assert time.monotonic() - started < 2.0 + 0.75


def test_oversized_answers_are_not_relayed(fake) -> None:
    huge = "v=0\r\n" + "a=x-padding:" + "p" * (2 * 1024 * 1024) + "\r\n"
    fake.fail_next("calls", Fault(status=201, body=huge, headers={"Content-Type": "application/sdp"}))
    fake.fail_next("client_secrets", Fault(status=200, body=json.dumps({"value": "ek_" + "a" * 200_000})))
    proxy = make_proxy(fake)
    secret_too_big = proxy.connect(offer_request())
    answer_too_big = proxy.connect(offer_request())
    for response in (secret_too_big, answer_too_big):
        assert (response.status_code, error_of(response)["code"]) == (502, "upstream_error")
        assert len(response.get_body()) < 1000


def run_concurrently(proxy: RealtimeProxy, count: int) -> list[int]:
    async def all_at_once() -> list[int]:
        responses = await asyncio.gather(*(proxy.connect(offer_request()) for _ in range(count)))
        return [response.status_code for response in responses]

    try:
        return asyncio.run_coroutine_threadsafe(all_at_once(), WORKER_LOOP).result()
    finally:
        asyncio.run_coroutine_threadsafe(proxy.aclose(), WORKER_LOOP).result()


def test_concurrent_first_connects_share_one_identity_request(fake, identity) -> None:
    identity.delay = 0.5
    proxy = RealtimeProxy.from_environ({"AZURE_OPENAI_BASE_URL": fake.url, "RATE_LIMIT_PER_MINUTE": "0"})
    assert run_concurrently(proxy, 12) == [201] * 12
    assert len(identity.requests) == 1


def test_a_stalled_identity_endpoint_ends_within_the_deadline(fake, identity) -> None:
    identity.delay = 6.0
    proxy = make_proxy(fake, api_key=None, CONNECT_DEADLINE_SECONDS="1.5")
    started = time.monotonic()
    response = proxy.connect(offer_request())
    assert (response.status_code, error_of(response)["code"]) == (503, "credential_unavailable")
    assert time.monotonic() - started < 1.5 + 0.75
    assert fake.requests == []


# -- no secret survives, not even a prefix ------------------------------------------------------------------


def test_a_key_straddling_the_truncation_point_is_scrubbed_whole(fake, logs) -> None:
    message = "x" * 290 + " key " + API_KEY + " was wrong"
    fake.fail_next("client_secrets", Fault(status=401, body=json.dumps({"error": {"message": message}})))
    response = make_proxy(fake).connect(offer_request())
    error = error_of(response)
    assert error["code"] == "upstream_auth"
    assert_no_credential(json.dumps(error), logs.text)


def test_every_credential_in_play_is_scrubbed(fake, identity, logs) -> None:
    tokens: list[str] = []

    def on_token(token: str) -> None:
        tokens.append(token)
        fake.accepted_tokens.add(token)

    identity.on_token = on_token
    fake.fail_next("client_secrets", Fault(status=401, echo_credentials=True))
    fake.fail_next("calls", Fault(status=403, echo_credentials=True))
    proxy = make_proxy(fake, api_key=None)
    token_echoed, ephemeral_echoed = proxy.connect(offer_request()), proxy.connect(offer_request())
    assert [error_of(r)["code"] for r in (token_echoed, ephemeral_echoed)] == ["upstream_auth", "upstream_auth"]
    assert "[redacted]" in error_of(token_echoed)["message"]
    assert_no_credential(
        token_echoed.get_body().decode(), ephemeral_echoed.get_body().decode(), logs.text, secrets=tuple(tokens)
    )
    assert not any(secret in logs.text for secret in fake.secrets)


@pytest.mark.parametrize("value", ["ek_abc123\r\nX-Injected: 1", "ek_abc123 evil", "ek_\u00e9t\u00e9", ["ek_x"]])
def test_an_upstream_secret_that_is_not_a_plain_token_is_refused(fake, logs, value: object) -> None:
    fake.fail_next("client_secrets", Fault(status=200, body=json.dumps({"value": value})))
    response = make_proxy(fake).connect(offer_request())
    error = error_of(response)
    assert (response.status_code, error["code"]) == (502, "upstream_error")
    assert fake.calls_to("calls") == [], "a malformed secret never reaches a header"
    assert "abc123" not in response.get_body().decode() + logs.text


@pytest.mark.parametrize("key", [API_KEY + "\r\n", " " + API_KEY + " "])
def test_surrounding_whitespace_in_the_key_setting_is_trimmed(fake, key: str) -> None:
    assert make_proxy(fake, api_key=key).connect(offer_request()).status_code == 201


@pytest.mark.parametrize("key", [API_KEY[:10] + "\n" + API_KEY[10:], API_KEY[:10] + "\x00" + API_KEY[10:]])
def test_a_key_setting_with_inner_control_characters_is_not_configured(fake, logs, key: str) -> None:
    response = make_proxy(fake, api_key=key).connect(offer_request())
    error = error_of(response)
    assert (response.status_code, error["code"]) == (503, "not_configured")
    assert "AZURE_OPENAI_API_KEY" in error["message"]
    assert_no_credential(json.dumps(error), logs.text)
    assert fake.requests == []


# -- no bare 500s -------------------------------------------------------------------------------------------


def multipart_body(boundary: str) -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="sdp"\r\n\r\n{OFFER}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="voice"\r\n\r\nash\r\n--{boundary}--\r\n'
    ).encode()


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data; boundary =XyZ",
        'multipart/form-data; boundary="XyZ"',
        "Multipart/Form-Data; BOUNDARY=XyZ",
        "multipart/form-data;boundary=XyZ ; charset=utf-8",
        'multipart/form-data; boundary = "XyZ"',
    ],
)
def test_every_legal_spelling_of_the_multipart_boundary_works(fake, content_type: str) -> None:
    response = make_proxy(fake).connect(request(multipart_body("XyZ"), content_type))
    assert response.status_code == 201, response.get_body()
    assert json.loads(fake.requests[0].body)["session"]["audio"]["output"]["voice"] == "ash"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (
            b'--b\r\nContent-Disposition: form-data; name="sdp\xff\xfe"\r\n\r\nv=0\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
            400,
            "bad_request",
        ),
        (b'{"sdp": "\\ud800v=0"}', "application/json", 400, "bad_request"),
        (b'{"sdp": "v=0", "voice": "\\udfff"}', "application/json", 400, "bad_request"),
        (b"[" * 50_000 + b"]" * 50_000, "application/json", 413, "payload_too_large"),
        (b'{"sdp": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", "application/json", 400, "bad_request"),
        (OFFER.replace("s=-", "s=\x00-").encode(), "application/sdp", 400, "invalid_sdp"),
        (OFFER.replace("s=-", "s=\x1b[31m-").encode(), "application/sdp", 400, "invalid_sdp"),
        (multipart_body("a" * 71), "multipart/form-data; boundary=" + "a" * 71, 400, "bad_request"),
        (
            multipart_body("b").replace(b'name="voice"', b'name="sdp"'),
            "multipart/form-data; boundary=b",
            400,
            "bad_request",
        ),
        (multipart_body("b").replace(b"\r\n\r\nash", b"ash"), "multipart/form-data; boundary=b", 400, "bad_request"),
    ],
)
def test_malformed_bodies_get_a_clear_4xx_and_reach_nothing(
    fake, body: bytes, content_type: str, status: int, code: str
) -> None:
    response = make_proxy(fake).connect(request(body, content_type))
    assert (response.status_code, error_of(response)["code"]) == (status, code)
    assert fake.requests == []


def test_a_very_long_path_segment_is_a_plain_404(fake) -> None:
    path = "a" * 5000 + ".js"
    response = make_proxy(fake).static(
        request(method="GET", url=f"http://localhost:7071/{path}", route_params={"path": path})
    )
    assert (response.status_code, error_of(response, None)["code"]) == (404, "not_found")


@pytest.mark.parametrize(
    ("header", "expected"),
    [("nan", None), ("-5", None), ("inf", "3600"), ("1e300", "3600"), ("9" * 400, "3600"), ("1", "1")],
)
def test_retry_after_ms_nonsense_never_breaks_the_answer(fake, header: str, expected: str | None) -> None:
    fake.fail_next("client_secrets", Fault(status=429, headers={"retry-after-ms": header}))
    response = make_proxy(fake).connect(offer_request())
    assert (response.status_code, error_of(response)["code"]) == (429, "upstream_rate_limited")
    assert response.headers.get("Retry-After") == expected


@pytest.mark.parametrize("stage", ["client_secrets", "calls"])
def test_a_connection_reset_inside_the_body_is_an_upstream_error(fake, stage: str) -> None:
    fake.fail_next(stage, Fault(status=None, cut=True))
    response = make_proxy(fake).connect(offer_request())
    assert (response.status_code, error_of(response)["code"]) == (502, "upstream_error")


@pytest.mark.parametrize(
    "location", ["::::", "/v1/realtime/calls/", "/v1/realtime/calls/rtc_<script>", "http://[::1/x"]
)
def test_a_malformed_location_still_returns_the_answer(fake, logs, location: str) -> None:
    fake.fail_next("calls", Fault(status=None, headers={"Location": location}))
    response = make_proxy(fake).connect(offer_request())
    assert response.status_code == 201 and response.get_body().startswith(b"v=0")
    assert "Location" not in response.headers
    assert "holds no call id" in logs.text


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AZURE_OPENAI_BASE_URL", "https://r.openai.azure.com:99999"),
        ("AZURE_OPENAI_BASE_URL", "https://r.openai.azure.com:https"),
        ("AZURE_OPENAI_BASE_URL", "https://r.openai.azure.com:"),
        ("RATE_LIMIT_PER_MINUTE", "1e-308"),
        ("RATE_LIMIT_PER_MINUTE", "-1"),
        ("RATE_LIMIT_BURST", "nan"),
        ("CONNECT_DEADLINE_SECONDS", "inf"),
        ("MAX_BODY_BYTES", "-1e9"),
        ("REALTIME_SESSION_TTL_SECONDS", "1e999"),
    ],
)
def test_absurd_settings_are_not_configured_naming_the_setting(fake, name: str, value: str) -> None:
    response = make_proxy(fake, **{name: value}).connect(offer_request())
    error = error_of(response)
    assert (response.status_code, error["code"]) == (503, "not_configured")
    assert name in error["message"] and value not in error["message"]


def test_the_example_settings_unchanged_are_not_configured(fake) -> None:
    example = json.loads(Path("local.settings.json.example").read_text())["Values"]
    response = make_proxy(fake, api_key=None, **example).connect(offer_request())
    error = error_of(response)
    assert (response.status_code, error["code"]) == (503, "not_configured")
    assert "AZURE_OPENAI_BASE_URL still holds the placeholder" in error["message"]
    assert "AZURE_OPENAI_API_KEY still holds the placeholder" in error["message"]
    assert fake.requests == []


def test_anything_unexpected_is_a_500_with_a_request_id_in_the_log(logs) -> None:
    async def broken(req: func.HttpRequest) -> func.HttpResponse:
        raise KeyError(f"an internal invariant failed near {API_KEY}")

    response = on_worker_loop(guarded(broken))(request())
    error = error_of(response, None)
    assert (response.status_code, error["code"]) == (500, "internal_error")
    assert error["requestId"] == response.headers["X-Request-Id"] and error["requestId"] in error["message"]
    assert f"request_id={error['requestId']}" in logs.text and "KeyError" in logs.text
    assert "Traceback" not in response.get_body().decode()
    assert_no_credential(response.get_body().decode(), logs.text)


def test_the_platform_trace_id_names_the_request(fake, logs) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = make_proxy(fake).connect(
        request(b"x", "text/plain", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    )
    assert response.headers["X-Request-Id"] == trace_id == error_of(response)["requestId"]
    assert f"request_id={trace_id}" in logs.text


# -- limits keyed on the client, not on strings the client picks -------------------------------------------


def test_origin_spellings_and_forwarded_hosts_share_one_bucket(fake) -> None:
    proxy = make_proxy(fake, ALLOWED_ORIGINS="*", RATE_LIMIT_PER_MINUTE="2", RATE_LIMIT_BURST="2")
    client = "203.0.113.7"
    spellings = [
        "https://a.example",
        "https://a.example/",
        "HTTPS://A.EXAMPLE",
        "https://b.example",
        "https://c.example/x",
    ]
    answers = [
        proxy.connect(
            offer_request(headers={"x-forwarded-for": client, "origin": origin, "x-forwarded-host": f"h{i}.example"})
        ).status_code
        for i, origin in enumerate(spellings)
    ]
    assert answers == [201, 201, 429, 429, 429]


def test_a_forged_forwarded_host_does_not_make_an_origin_same_origin(fake) -> None:
    response = make_proxy(fake).connect(
        offer_request(headers={"origin": "https://evil.example", "x-forwarded-host": "evil.example"})
    )
    assert (response.status_code, error_of(response)["code"]) == (403, "origin_not_allowed")
    assert fake.requests == []


def test_the_local_host_says_at_start_when_the_example_settings_are_unchanged() -> None:
    example = json.loads(Path("local.settings.json.example").read_text())["Values"]
    host = LocalHost(example)
    try:
        assert "AZURE_OPENAI_BASE_URL still holds the placeholder" in host.log()
        assert "AZURE_OPENAI_API_KEY still holds the placeholder" in host.log()
        assert "local emulator" not in host.log(), "settings were given: never the emulator instead"
    finally:
        host.close()
