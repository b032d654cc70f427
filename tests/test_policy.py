"""Embedding safely: origin allowlist, server-owned session policy, per-client rate limit, read-only /config."""

from __future__ import annotations

import json

import pytest

from tests.conftest import error_of, make_proxy, offer_request, request

APP = "https://app.contoso.com"


def test_a_disallowed_origin_is_refused_before_upstream(fake) -> None:
    response = make_proxy(fake, ALLOWED_ORIGINS=APP).connect(offer_request(headers={"origin": "https://evil.example"}))
    assert (response.status_code, error_of(response)["code"]) == (403, "origin_not_allowed")
    assert response.headers["Access-Control-Allow-Origin"] == "https://evil.example", "the page may read why"
    assert "Access-Control-Expose-Headers" not in response.headers
    assert fake.requests == []


def test_an_allowed_origin_gets_cors_headers_and_exposed_location(fake) -> None:
    response = make_proxy(fake, ALLOWED_ORIGINS=f"{APP}/, https://other.example").connect(
        offer_request(headers={"origin": APP})
    )
    assert response.status_code == 201
    assert response.headers["Access-Control-Allow-Origin"] == APP
    assert response.headers["Vary"] == "Origin"
    assert set(response.headers["Access-Control-Expose-Headers"].split(", ")) == {
        "Location",
        "Retry-After",
        "Server-Timing",
        "X-Request-Id",
        "X-Call-Token",
    }


def test_same_origin_and_non_browser_callers_need_no_allowlist(fake) -> None:
    proxy = make_proxy(fake)
    assert proxy.connect(offer_request(headers={"origin": "http://localhost:7071"})).status_code == 201
    assert proxy.connect(offer_request()).status_code == 201
    assert proxy.connect(offer_request(headers={"origin": APP})).status_code == 403, "default: no cross-origin callers"


def test_wildcard_only_when_set(fake) -> None:
    response = make_proxy(fake, ALLOWED_ORIGINS="*").connect(offer_request(headers={"origin": "https://any.example"}))
    assert response.status_code == 201 and response.headers["Access-Control-Allow-Origin"] == "https://any.example"


def test_preflight(fake) -> None:
    proxy = make_proxy(fake, ALLOWED_ORIGINS=APP)
    ok = proxy.preflight(request(method="OPTIONS", headers={"origin": APP, "access-control-request-method": "POST"}))
    assert ok.status_code == 204
    assert ok.headers["Access-Control-Allow-Origin"] == APP and "POST" in ok.headers["Access-Control-Allow-Methods"]
    refused = proxy.preflight(request(method="OPTIONS", headers={"origin": "https://evil.example"}))
    assert (refused.status_code, error_of(refused, method="OPTIONS")["code"]) == (403, "origin_not_allowed")
    assert fake.requests == []


@pytest.mark.parametrize(
    ("mode", "caller", "expected"),
    [
        ("append", "Talk like a pirate.", "Be kind.\n\nTalk like a pirate."),
        ("append", "", "Be kind."),
        ("replace", "Talk like a pirate.", "Talk like a pirate."),
        ("replace", "", "Be kind."),
        ("ignore", "Talk like a pirate.", "Be kind."),
    ],
)
def test_instruction_modes(fake, mode: str, caller: str, expected: str) -> None:
    proxy = make_proxy(fake, REALTIME_INSTRUCTIONS="Be kind.", REALTIME_INSTRUCTIONS_MODE=mode)
    assert proxy.connect(offer_request({"instructions": caller} if caller else {})).status_code == 201
    assert json.loads(fake.requests[0].body)["session"]["instructions"] == expected


def test_server_policy_shapes_the_session(fake) -> None:
    proxy = make_proxy(
        fake,
        REALTIME_ALLOWED_VOICES="alloy,echo",
        REALTIME_DEFAULT_VOICE="echo",
        REALTIME_TRANSCRIPTION_MODEL="none",
        REALTIME_TURN_DETECTION="semantic_vad",
        REALTIME_SESSION_TTL_SECONDS="120",
    )
    refused = proxy.connect(offer_request({"voice": "marin"}))
    assert error_of(refused)["code"] == "voice_not_allowed" and fake.requests == []
    assert proxy.connect(offer_request()).status_code == 201
    body = json.loads(fake.requests[0].body)
    assert body["expires_after"]["seconds"] == 120
    session = body["session"]
    assert session["audio"]["output"]["voice"] == "echo" and session["tools"] == []
    assert session["audio"]["input"] == {"turn_detection": {"type": "semantic_vad"}}


def test_config_tells_the_browser_its_choices_and_nothing_secret(fake) -> None:
    proxy = make_proxy(
        fake,
        REALTIME_ALLOWED_VOICES="alloy,echo",
        REALTIME_DEFAULT_VOICE="echo",
        REALTIME_INSTRUCTIONS="Secret persona.",
        REALTIME_INSTRUCTIONS_MODE="ignore",
        REALTIME_MAX_SESSION_SECONDS="600",
        REALTIME_TURN_DETECTION_CHOOSABLE="true",
    )
    response = proxy.config(request(method="GET", url="http://localhost:7071/config"))
    config = json.loads(response.get_body())
    assert config == {
        "voices": ["alloy", "echo"],
        "defaultVoice": "echo",
        "emulator": False,
        "instructions": {"editable": False, "mode": "ignore", "maxLength": 4000},
        "turnDetection": {"type": "server_vad", "choosable": True},
        "session": {"maxSeconds": 600},
        "limits": "instance",
        "models": [{"name": "gpt-realtime", "kind": "realtime", "reasoning": None}],
        "defaultModel": "gpt-realtime",
    }
    assert b"Secret persona" not in response.get_body() and fake.url.encode() not in response.get_body()


def test_rate_limit_trips_and_recovers(fake) -> None:
    now = [1000.0]
    proxy = make_proxy(fake, RATE_LIMIT_PER_MINUTE="60", RATE_LIMIT_BURST="2")
    proxy.limiter.clock = lambda: now[0]
    client = {"x-forwarded-for": "203.0.113.9, 198.51.100.7"}
    assert [proxy.connect(offer_request(headers=client)).status_code for _ in range(2)] == [201, 201]
    limited = proxy.connect(offer_request(headers=client))
    assert (limited.status_code, error_of(limited)["code"], limited.headers["Retry-After"]) == (
        429,
        "rate_limited",
        "1",
    )
    assert len(fake.calls_to("calls")) == 2, "a limited request never reaches upstream"
    other = proxy.connect(offer_request(headers={"x-forwarded-for": "203.0.113.9, 198.51.100.8"}))
    assert other.status_code == 201, "the platform's last X-Forwarded-For entry is the client; spoofed entries are not"
    now[0] += 1.0
    assert proxy.connect(offer_request(headers=client)).status_code == 201


def test_rate_limit_off_when_zero(fake) -> None:
    proxy = make_proxy(fake, RATE_LIMIT_PER_MINUTE="0", RATE_LIMIT_BURST="1")
    assert {proxy.connect(offer_request()).status_code for _ in range(4)} == {201}
