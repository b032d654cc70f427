"""Choosing a model at `/connect` (issue 19): the deployments the owner offers, reasoning efforts, and GPT-Live sessions
created by the server, against the strict fake (localdev/fake_openai.py, localdev/fake_live.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
import requests

from localdev.fake_openai import FakeAzureOpenAI, Fault
from realtime_proxy.settings import Deployment, load_settings
from tests.conftest import (
    API_KEY,
    OFFER,
    WORKER_LOOP,
    Driven,
    LocalHost,
    error_of,
    make_proxy,
    offer_request,
    request,
)
from tests.contract import check

OFFERED = "gpt-realtime, gpt-realtime-mini, gpt-realtime-2:reasoning, gpt-live-1:live"


@pytest.fixture
def fake() -> Iterator[FakeAzureOpenAI]:
    server = FakeAzureOpenAI(api_key=API_KEY, deployments=("gpt-realtime", "gpt-realtime-mini"))
    yield server
    server.close()


def offering(fake: FakeAzureOpenAI, **env: str) -> Driven:
    return make_proxy(fake, **{"REALTIME_DEPLOYMENTS": OFFERED, **env})


def call_rows(proxy: Driven) -> list[dict]:
    rows = asyncio.run_coroutine_threadsafe(proxy.ledger.table.rows("call-"), WORKER_LOOP).result()
    return [row.props for row in rows]


# -- settings ------------------------------------------------------------------------------------------------------


def test_without_a_list_the_one_deployment_is_offered_as_before() -> None:
    settings = load_settings({"AZURE_OPENAI_DEPLOYMENT": "my-voice"})
    assert settings.deployments == (Deployment("my-voice", "realtime"),)
    assert settings.default_model == "my-voice"


def test_the_list_gives_kinds_and_the_default_is_the_configured_deployment_or_the_first() -> None:
    settings = load_settings({"REALTIME_DEPLOYMENTS": OFFERED.replace("gpt-live-1:live", "gpt-live-1:LIVE")})
    assert [(d.name, d.kind) for d in settings.deployments] == [
        ("gpt-realtime", "realtime"),
        ("gpt-realtime-mini", "realtime"),
        ("gpt-realtime-2", "reasoning"),
        ("gpt-live-1", "live"),
    ]
    assert settings.default_model == "gpt-realtime", "AZURE_OPENAI_DEPLOYMENT's default is in the list"
    other = load_settings({"REALTIME_DEPLOYMENTS": "gpt-live-1:live,gpt-realtime-mini", "AZURE_OPENAI_DEPLOYMENT": "x"})
    assert other.default_model == "gpt-live-1"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("gpt-realtime, gpt-4o:chat", "REALTIME_DEPLOYMENTS entry 2 must have no kind or one of: realtime, reasoning"),
        ("gpt-realtime:", "REALTIME_DEPLOYMENTS entry 1 must have no kind"),
        ("a, gpt-realtime, gpt-realtime:live", "REALTIME_DEPLOYMENTS entry 3 repeats an earlier deployment"),
        ("gpt-realtime, sk/secret+value", "REALTIME_DEPLOYMENTS entry 2 is not a deployment name"),
        ("gpt-realtime, <deployment>", "REALTIME_DEPLOYMENTS still holds the placeholder"),
        ("gpt-realtime, two words", "REALTIME_DEPLOYMENTS must be one line without spaces"),
    ],
)
def test_a_bad_list_is_not_configured_naming_the_entry_never_its_value(fake, value: str, problem: str) -> None:
    settings = load_settings({"AZURE_OPENAI_BASE_URL": fake.url, "REALTIME_DEPLOYMENTS": value})
    assert any(p.startswith(problem) for p in settings.problems), settings.problems
    assert not any(secret in p for p in settings.problems for secret in ("sk/secret", "gpt-4o", "two words"))
    refused = offering(fake, REALTIME_DEPLOYMENTS=value).connect(offer_request())
    assert (refused.status_code, error_of(refused)["code"]) == (503, "not_configured")
    assert "REALTIME_DEPLOYMENTS" in error_of(refused)["message"]
    assert fake.requests == []


def test_config_lists_the_models_and_the_default(fake) -> None:
    response = offering(fake).config(request(method="GET", url="http://localhost:7071/config"))
    check("/config", "GET", response.status_code, response.mimetype, response.get_body())
    config = json.loads(response.get_body())
    assert config["models"] == [
        {"name": "gpt-realtime", "kind": "realtime", "reasoning": None},
        {"name": "gpt-realtime-mini", "kind": "realtime", "reasoning": None},
        {"name": "gpt-realtime-2", "kind": "reasoning", "reasoning": ["minimal", "low", "medium", "high"]},
        {"name": "gpt-live-1", "kind": "live", "reasoning": None},
    ]
    assert config["defaultModel"] == "gpt-realtime"


# -- choosing --------------------------------------------------------------------------------------------------------


def raw(params: dict[str, str]):
    return request(OFFER.encode(), "application/sdp", params=params)


def as_json(fields: dict[str, str]):
    return request(json.dumps({"sdp": OFFER, **fields}).encode(), "application/json")


@pytest.mark.parametrize("form", [offer_request, as_json, raw])
@pytest.mark.parametrize(
    ("choice", "says"),
    [
        ({"model": "gpt-4o-realtime-preview"}, "is not offered here; choose one of: gpt-realtime, gpt-realtime-mini"),
        ({"model": "gpt-realtime-mini", "reasoning": "high"}, "takes no reasoning effort"),
        ({"model": "gpt-live-1", "reasoning": "low"}, "takes no reasoning effort"),
        ({"reasoning": "low"}, "'gpt-realtime' takes no reasoning effort"),
        ({"model": "gpt-realtime-2", "reasoning": "extreme"}, "is not one of: minimal, low, medium, high"),
    ],
)
def test_a_model_or_effort_not_offered_is_refused_before_upstream_and_admission(fake, form, choice, says) -> None:
    proxy = offering(fake, MAX_ACTIVE_SESSIONS="1")
    refused = proxy.connect(form(choice))
    error = error_of(refused)
    assert (refused.status_code, error["code"]) == (400, "model_not_allowed")
    assert says in error["message"]
    assert fake.requests == [], "nothing goes upstream"
    assert call_rows(proxy) == [], "no session slot was taken"


@pytest.mark.parametrize("form", [offer_request, as_json, raw])
def test_each_form_carries_the_model_and_effort_to_the_minted_session(fake, form) -> None:
    proxy = offering(fake)
    assert proxy.connect(form({"model": "gpt-realtime-2", "reasoning": "high"})).status_code == 201
    assert proxy.connect(form({"model": "gpt-realtime-mini"})).status_code == 201
    assert proxy.connect(form({"model": "gpt-realtime-2"})).status_code == 201
    sessions = [json.loads(r.body)["session"] for r in fake.calls_to("client_secrets")]
    assert [(s["model"], s.get("reasoning")) for s in sessions] == [
        ("gpt-realtime-2", {"effort": "high"}),
        ("gpt-realtime-mini", None),
        ("gpt-realtime-2", None),
    ]
    assert fake.calls_to("live_sessions") == []


def test_the_strict_fake_refuses_an_effort_for_a_model_that_does_not_reason(fake) -> None:
    """The fake is strict where the service is, so the app's omission of `reasoning` above is proven, not assumed."""
    body = {"session": {"type": "realtime", "model": "gpt-realtime-mini", "reasoning": {"effort": "low"}}}
    answer = requests.post(
        fake.url + "/openai/v1/realtime/client_secrets", json=body, headers={"api-key": API_KEY}, timeout=10
    )
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, "unknown_parameter")


# -- GPT-Live --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201])
def test_a_live_deployment_gets_a_session_created_by_the_server(fake, status: int, logs) -> None:
    fake.live_status = status
    proxy = offering(fake, REALTIME_INSTRUCTIONS="Be brief.")
    response = proxy.connect(offer_request({"model": "gpt-live-1", "voice": "cedar", "instructions": "Say hi."}))
    assert response.status_code == 201, response.get_body()
    check("/connect", "POST", 201, response.headers["Content-Type"], response.get_body())
    assert response.get_body().decode().startswith("v=0\r\n")
    [created] = fake.calls_to("live_sessions")
    assert [r.endpoint for r in fake.requests] == ["live_sessions"], "no client secret, no /calls"
    assert created.headers["api-key"] == API_KEY and created.headers["content-type"] == "application/json"
    assert json.loads(created.body) == {
        "session": {
            "model": "gpt-live-1",
            "instructions": "Be brief.\n\nSay hi.",
            "audio": {"output": {"voice": "cedar"}},
            "delegation": {"type": "client"},
        },
        "transport": {"type": "webrtc", "sdp": OFFER},
    }
    [session_id] = fake.live_sessions
    assert response.headers["Location"] == f"/v1/live/sessions/{session_id}"
    assert response.headers["X-Call-Token"]
    assert (
        response.headers["Server-Timing"].startswith("credential;dur=")
        and ", session;dur=" in response.headers["Server-Timing"]
    )
    [row] = call_rows(proxy)
    assert (row["status"], row["call"], row["kind"]) == ("live", session_id, "live")
    assert API_KEY not in logs.text


def test_the_callers_end_of_a_live_call_closes_the_session_and_frees_its_slot(fake) -> None:
    """GPT-Live documents no HTTP hang-up: with no supervisor (no storage here), a short-lived attach sends
    `session.close` (tests/test_live_supervision.py has the supervised path)."""
    proxy = offering(fake, MAX_ACTIVE_SESSIONS="1")
    response = proxy.connect(offer_request({"model": "gpt-live-1"}))
    session_id = response.headers["Location"].rsplit("/", 1)[-1]
    refused = proxy.connect(offer_request({"model": "gpt-live-1"}))
    assert error_of(refused)["code"] == "too_many_sessions"
    ended = proxy.hang_up(
        request(
            url=f"http://localhost:7071/calls/{session_id}/hangup",
            headers={"X-Call-Token": response.headers["X-Call-Token"]},
            route_params={"call_id": session_id},
        )
    )
    assert ended.status_code == 200
    assert fake.calls_to("hangup") == [], "a live session is not a realtime call"
    session = fake.live_call(session_id)
    session.wait_received(lambda event: event["type"] == "session.close")  # recorded once handled: it ends the session
    assert session.ended and [e["type"] for e in session.received] == ["session.close"]
    assert fake.calls_to("attach")[0].headers["api-key"] == API_KEY
    assert proxy.connect(offer_request({"model": "gpt-live-1"})).status_code == 201, "the slot is free again"


def test_a_live_call_is_ended_through_the_closer_once_one_is_attached(fake) -> None:
    """The seam the supervisor fills: ending a live call (here the kill switch) goes to `live.closer`."""
    proxy = offering(fake)
    closed: list[str] = []

    async def close(session_id: str) -> None:
        closed.append(session_id)

    assert proxy.proxy.live is not None
    proxy.proxy.live.closer = close
    live = proxy.connect(offer_request({"model": "gpt-live-1"}))
    realtime = proxy.connect(offer_request({"model": "gpt-realtime-mini"}))
    assert json.loads(proxy.pause(request(url="http://localhost:7071/operator/pause")).get_body())["callsEnded"] == 2
    assert closed == [live.headers["Location"].rsplit("/", 1)[-1]]
    assert fake.calls[realtime.headers["Location"].rsplit("/", 1)[-1]] == "ended", "the realtime call hung up as before"
    assert len(fake.calls_to("hangup")) == 1


def live_answer(body: object, status: int = 200) -> Fault:
    return Fault(status=status, body=body if isinstance(body, str) else json.dumps(body))


SDP_ANSWER = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


@pytest.mark.parametrize(
    ("fault", "status", "code", "says"),
    [
        (live_answer({"session": {"id": "sess_1"}}), 502, "upstream_error", "without an SDP answer"),
        (live_answer({"session": {"id": "sess_1"}, "transport": {"sdp": "hello"}}), 502, "upstream_error", "SDP"),
        (live_answer({"transport": {"sdp": SDP_ANSWER}}), 502, "upstream_error", "without a usable session id"),
        (
            live_answer({"session": {"id": "../x"}, "transport": {"sdp": SDP_ANSWER}}),
            502,
            "upstream_error",
            "session id",
        ),
        (live_answer("<html>gateway</html>"), 502, "upstream_error", "without a JSON object"),
        (live_answer({"error": {"message": "quota gone"}}, 201), 502, "upstream_error", "with an error: quota gone"),
        (
            live_answer({"session": {"id": "s"}, "transport": {"sdp": SDP_ANSWER}}, 202),
            502,
            "upstream_error",
            "with a status that creates no session",
        ),
        (live_answer({"x": "y" * 70_000}), 502, "upstream_error", "broke off or was malformed"),
        (
            live_answer({"error": {"message": "The API deployment for this resource does not exist."}}, 404),
            502,
            "deployment_not_found",
            "no deployment named 'gpt-live-1'",
        ),
        (live_answer({"error": {"message": "Unknown parameter: 'session.x'."}}, 400), 502, "upstream_rejected", "x"),
        (Fault(status=401, echo_credentials=True), 502, "upstream_auth", "AZURE_OPENAI_API_KEY"),
        (Fault(status=429, headers={"Retry-After": "7"}), 429, "upstream_rate_limited", "rate limiting"),
        (Fault(status=None, drop=True), 502, "upstream_unreachable", "Could not reach"),
        (Fault(status=302, headers={"Location": "https://evil.example/steal"}), 502, "upstream_error", "redirect"),
    ],
)
def test_a_hostile_or_odd_live_answer_is_a_clear_error_and_frees_the_slot(fake, fault, status, code, says) -> None:
    proxy = offering(fake, MAX_ACTIVE_SESSIONS="1")
    fake.fail_next("live_sessions", fault)
    response = proxy.connect(offer_request({"model": "gpt-live-1"}))
    error = error_of(response)
    assert (response.status_code, error["code"]) == (status, code), error
    assert says in error["message"]
    assert API_KEY not in json.dumps(error)
    assert [row["status"] for row in call_rows(proxy)] == ["failed"]
    assert proxy.connect(offer_request({"model": "gpt-live-1"})).status_code == 201, "the slot was freed"


def test_a_live_call_through_the_local_host_over_http(fake) -> None:
    host = LocalHost(
        {
            "AZURE_OPENAI_BASE_URL": fake.url,
            "AZURE_OPENAI_API_KEY": API_KEY,
            "REALTIME_DEPLOYMENTS": OFFERED,
            "RATE_LIMIT_PER_MINUTE": "0",
        }
    )
    try:
        config = requests.get(host.url + "/config", timeout=10).json()
        assert [m["name"] for m in config["models"] if m["kind"] == "live"] == ["gpt-live-1"]
        answer = requests.post(
            host.url + "/connect", files={"sdp": (None, OFFER), "model": (None, "gpt-live-1")}, timeout=30
        )
        assert answer.status_code == 201, answer.text
        check("/connect", "POST", 201, answer.headers["Content-Type"], answer.content)
        session_id = answer.headers["Location"].rsplit("/", 1)[-1]
        assert session_id in fake.live_sessions
        ended = requests.post(
            f"{host.url}/calls/{session_id}/hangup",
            headers={"X-Call-Token": answer.headers["X-Call-Token"]},
            timeout=30,
        )
        assert (ended.status_code, ended.json()) == (200, {"ended": True})
        refused = requests.post(
            host.url + "/connect?model=gpt-realtime-2&reasoning=maximal",
            data=OFFER,
            headers={"Content-Type": "application/sdp"},
            timeout=30,
        )
        assert (refused.status_code, refused.json()["error"]["code"]) == (400, "model_not_allowed")
        assert [r.endpoint for r in fake.requests] == ["live_sessions", "attach"], "ended by session.close"
        assert fake.live_call(session_id).ended
    finally:
        host.close()
