"""`/connect` against a local fake Azure OpenAI: the happy path in every body form, every bad input, every fault."""

from __future__ import annotations

import json
import socket
import time

import pytest

from localdev.fake_openai import Fault
from tests.conftest import API_KEY, OFFER, driven, error_of, make_proxy, multipart, offer_request, request

SECRET_MARKERS = (API_KEY, "ek_", "Bearer", "Traceback")


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for marker in SECRET_MARKERS:
            assert marker not in text, f"{marker!r} leaked"


def test_multipart_offer_yields_the_upstream_answer_and_call_id(fake, logs) -> None:
    proxy = make_proxy(fake)
    response = proxy.connect(offer_request({"voice": "cedar", "instructions": "Speak like a pirate."}))
    assert response.status_code == 201
    assert response.headers["Content-Type"] == "application/sdp"
    assert response.get_body().decode().startswith("v=0\r\n")
    assert response.headers["Location"].startswith("/v1/realtime/calls/rtc_")
    secret_request, call_request = fake.requests
    assert secret_request.endpoint == "client_secrets" and call_request.endpoint == "calls"
    assert secret_request.headers["api-key"] == API_KEY
    assert "authorization" not in secret_request.headers
    session = json.loads(secret_request.body)["session"]
    assert session["type"] == "realtime" and session["model"] == "gpt-realtime"
    assert session["audio"]["output"]["voice"] == "cedar"
    assert session["instructions"].endswith("\n\nSpeak like a pirate.")
    assert session["audio"]["input"]["transcription"] == {"model": "whisper-1"}
    assert json.loads(secret_request.body)["expires_after"] == {"anchor": "created_at", "seconds": 600}
    minted = next(iter(fake.secrets))
    assert call_request.headers["authorization"] == f"Bearer {minted}"
    assert call_request.headers["content-type"] == "application/sdp"
    assert call_request.body == OFFER.encode(), "the offer must reach upstream byte for byte"
    assert call_request.query == {}
    assert_no_secrets(response.get_body().decode(), json.dumps(dict(response.headers)), logs.text)


def test_json_body_and_raw_sdp_body_are_accepted(fake) -> None:
    proxy = make_proxy(fake)
    as_json = proxy.connect(request(json.dumps({"sdp": OFFER, "voice": "ash"}).encode(), "application/json"))
    raw = proxy.connect(request(OFFER.encode(), "application/sdp", params={"voice": "sage", "instructions": "Hi"}))
    assert (as_json.status_code, raw.status_code) == (201, 201)
    voices = [json.loads(r.body)["session"]["audio"]["output"]["voice"] for r in fake.calls_to("client_secrets")]
    assert voices == ["ash", "sage"]
    assert [r.body for r in fake.calls_to("calls")] == [OFFER.encode()] * 2


def test_default_voice_and_server_instructions_when_caller_sends_none(fake) -> None:
    make_proxy(fake, REALTIME_INSTRUCTIONS="Be brief.").connect(offer_request())
    session = json.loads(fake.requests[0].body)["session"]
    assert session["audio"]["output"]["voice"] == "marin"
    assert session["instructions"] == "Be brief."


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (lambda: offer_request({"sdp": ""}), 400, "missing_sdp"),
        (lambda: request(*multipart({"voice": "ash"})), 400, "missing_sdp"),
        (lambda: offer_request({"sdp": "hello, not sdp"}), 400, "invalid_sdp"),
        (lambda: offer_request({"sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\n"}), 400, "invalid_sdp"),
        (lambda: offer_request({"sdp": OFFER + "a=x:" + "y" * 40000 + "\r\n"}), 413, "payload_too_large"),
        (lambda: offer_request({"voice": "nova"}), 400, "voice_not_allowed"),
        (lambda: offer_request({"instructions": "x" * 4001}), 400, "instructions_too_long"),
        (lambda: request(b"x" * (64 * 1024 + 1), "application/sdp"), 413, "payload_too_large"),
        (lambda: request(OFFER.encode(), "text/plain"), 415, "unsupported_media_type"),
        (lambda: request(OFFER.encode()), 415, "unsupported_media_type"),
        (
            lambda: request(b"--abc\r\nno headers\r\n--abc--\r\n", "multipart/form-data; boundary=abc"),
            400,
            "bad_request",
        ),
        (lambda: request(OFFER.encode(), "multipart/form-data"), 400, "bad_request"),
        (
            lambda: request(
                b'--abc\r\nContent-Disposition: form-data; name="sdp"\r\n\r\nv=0', "multipart/form-data; boundary=abc"
            ),
            400,
            "bad_request",
        ),
        (lambda: request(b"{not json", "application/json"), 400, "bad_request"),
        (lambda: request(b"[1, 2]", "application/json"), 400, "bad_request"),
        (lambda: request(json.dumps({"sdp": OFFER, "voice": 7}).encode(), "application/json"), 400, "bad_request"),
        (lambda: request(b"\xff\xfe v=0", "application/sdp"), 400, "bad_request"),
        (lambda: offer_request(headers={"x-padding": "p" * 17000}), 431, "headers_too_large"),
    ],
)
def test_bad_input_is_refused_before_any_upstream_call(fake, make, status: int, code: str) -> None:
    response = make_proxy(fake).connect(make())
    assert response.status_code == status
    error = error_of(response)
    assert error["code"] == code and error["message"]
    assert fake.requests == [], "invalid input must never reach upstream"


def json_fault(status: int, message: str = "Something upstream.", **headers: str) -> Fault:
    return Fault(
        status=status, body=json.dumps({"error": {"message": message, "type": "x", "code": "y"}}), headers=headers
    )


@pytest.mark.parametrize(
    ("stage", "fault", "status", "code", "says"),
    [
        (
            "client_secrets",
            json_fault(401, "Access denied due to invalid subscription key."),
            502,
            "upstream_auth",
            "AZURE_OPENAI_API_KEY",
        ),
        (
            "client_secrets",
            json_fault(403, "Public access is disabled."),
            502,
            "upstream_auth",
            "Public access is disabled.",
        ),
        (
            "client_secrets",
            json_fault(404, "The API deployment for this resource does not exist."),
            502,
            "deployment_not_found",
            "AZURE_OPENAI_DEPLOYMENT",
        ),
        (
            "client_secrets",
            json_fault(500, "The server had an error."),
            502,
            "upstream_error",
            "The server had an error.",
        ),
        ("client_secrets", Fault(status=200, body="<html>gateway</html>"), 502, "upstream_error", "without a secret"),
        ("client_secrets", Fault(status=200, body='{"value": 5}'), 502, "upstream_error", "without a secret"),
        ("calls", Fault(status=502, body="<html>Bad Gateway</html>"), 502, "upstream_error", "502"),
        ("calls", json_fault(400, "Invalid SDP offer."), 502, "upstream_rejected", "Invalid SDP offer."),
        ("calls", json_fault(500), 502, "upstream_error", "500"),
        ("calls", Fault(status=201, body="<html>not sdp</html>"), 502, "upstream_error", "without an SDP answer"),
        ("calls", json_fault(401, "Invalid ephemeral key ek_abc123secret."), 502, "upstream_auth", "[redacted]"),
    ],
)
def test_upstream_failures_map_to_gateway_errors(fake, logs, stage, fault, status, code, says) -> None:
    fake.fail_next(stage, fault)
    response = make_proxy(fake).connect(offer_request())
    assert response.status_code == status
    error = error_of(response)
    assert error["code"] == code
    assert says in error["message"]
    assert_no_secrets(json.dumps(error), logs.text)


def test_upstream_rate_limit_passes_retry_after_through(fake) -> None:
    fake.fail_next("client_secrets", json_fault(429, "Rate limit reached.", **{"Retry-After": "17"}))
    fake.fail_next("calls", json_fault(429, "Too many calls.", **{"retry-after-ms": "2500"}))
    proxy = make_proxy(fake)
    first, second = proxy.connect(offer_request()), proxy.connect(offer_request())
    assert (first.status_code, error_of(first)["code"], first.headers["Retry-After"]) == (
        429,
        "upstream_rate_limited",
        "17",
    )
    assert (second.status_code, second.headers["Retry-After"]) == (429, "3")


def test_a_transient_secret_failure_is_retried_once_then_succeeds(fake) -> None:
    fake.fail_next("client_secrets", json_fault(503))
    response = make_proxy(fake).connect(offer_request())
    assert response.status_code == 201
    assert len(fake.calls_to("client_secrets")) == 2


def test_secret_failures_are_retried_at_most_once_and_calls_never(fake) -> None:
    fake.fail_next("client_secrets", json_fault(503), times=3)
    proxy = make_proxy(fake)
    assert error_of(proxy.connect(offer_request()))["code"] == "upstream_error"
    assert len(fake.calls_to("client_secrets")) == 2
    fake.reset()
    fake.fail_next("client_secrets", json_fault(500))
    assert proxy.connect(offer_request()).status_code == 502
    assert len(fake.calls_to("client_secrets")) == 1, "a 500 is not retried"
    fake.reset()
    fake.fail_next("calls", json_fault(503))
    assert proxy.connect(offer_request()).status_code == 502
    assert len(fake.calls_to("calls")) == 1, "the offer is never sent twice"


def test_a_dropped_connection_is_retried_once(fake) -> None:
    fake.fail_next("client_secrets", Fault(drop=True))
    assert make_proxy(fake).connect(offer_request()).status_code == 201
    assert len(fake.calls_to("client_secrets")) == 2


def test_a_slow_upstream_times_out_in_bounded_time(fake) -> None:
    fake.fail_next("calls", Fault(delay=3.0))
    proxy = make_proxy(fake, UPSTREAM_READ_TIMEOUT_SECONDS="0.5")
    started = time.monotonic()
    response = proxy.connect(offer_request())
    assert response.status_code == 504 and error_of(response)["code"] == "upstream_timeout"
    assert time.monotonic() - started < 2.0


def test_the_whole_connect_respects_its_deadline(fake) -> None:
    fake.fail_next("client_secrets", Fault(status=None, delay=0.8))
    fake.fail_next("calls", Fault(delay=3.0))
    proxy = make_proxy(fake, CONNECT_DEADLINE_SECONDS="1.5", UPSTREAM_READ_TIMEOUT_SECONDS="10")
    started = time.monotonic()
    response = proxy.connect(offer_request())
    assert error_of(response)["code"] == "upstream_timeout"
    assert time.monotonic() - started < 2.2


def test_an_unreachable_resource_is_reported(fake) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    proxy = make_proxy(fake, AZURE_OPENAI_BASE_URL=f"http://127.0.0.1:{closed_port}")
    response = proxy.connect(offer_request())
    assert (response.status_code, error_of(response)["code"]) == (502, "upstream_unreachable")


def test_missing_configuration_names_the_setting_not_its_value(fake) -> None:
    proxy = driven({"AZURE_OPENAI_API_KEY": API_KEY, "REALTIME_SESSION_TTL_SECONDS": "99999"})
    response = proxy.connect(offer_request())
    error = error_of(response)
    assert (response.status_code, error["code"]) == (503, "not_configured")
    assert "AZURE_OPENAI_BASE_URL" in error["message"] and "REALTIME_SESSION_TTL_SECONDS" in error["message"]
    assert "99999" not in error["message"] and API_KEY not in error["message"]
    assert proxy.static(request(method="GET", url="http://localhost:7071/")).status_code == 200, "the page still serves"


def test_consecutive_connects_reuse_one_upstream_connection(fake) -> None:
    proxy = make_proxy(fake)
    for _ in range(5):
        assert proxy.connect(offer_request()).status_code == 201
    assert fake.connections == 1


def test_webrtc_filter_setting_adds_the_query_parameter(fake) -> None:
    make_proxy(fake, REALTIME_WEBRTC_FILTER="true").connect(offer_request())
    assert fake.calls_to("calls")[0].query == {"webrtcfilter": ["on"]}


def test_server_timing_reports_both_upstream_stages(fake) -> None:
    response = make_proxy(fake).connect(offer_request())
    stages = [entry.split(";")[0].strip() for entry in response.headers["Server-Timing"].split(",")]
    assert stages == ["credential", "secret", "call"]
