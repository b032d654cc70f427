"""Limits for the whole app, the live-call ledger, ending calls from the server, on the in-process table.

The same code runs on Azure Table Storage (tests/test_shared_limits_storage.py runs it on Azurite across
processes); here every rule is shown on one instance, with a clock the test moves."""

from __future__ import annotations

import json

import pytest

from tests.conftest import error_of, make_proxy, offer_request, request

CLIENT = {"x-forwarded-for": "203.0.113.7"}


def connect(proxy, client: dict[str, str] = CLIENT):
    return proxy.connect(offer_request(headers=client))


def hang_up(proxy, response, token: str | None = None):
    call_id = response.headers["Location"].rsplit("/", 1)[-1]
    headers = {"x-call-token": token if token is not None else response.headers["X-Call-Token"]}
    return proxy.hang_up(
        request(
            method="POST",
            url=f"http://localhost:7071/calls/{call_id}/hangup",
            headers=headers,
            route_params={"call_id": call_id},
        )
    )


def test_the_per_client_rate_is_a_window_per_minute(fake) -> None:
    proxy = make_proxy(fake, RATE_LIMIT_PER_MINUTE="3", RATE_LIMIT_BURST="100")
    assert [connect(proxy).status_code for _ in range(3)] == [201] * 3
    refused = connect(proxy)
    assert (refused.status_code, error_of(refused)["code"]) == (429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert connect(proxy, {"x-forwarded-for": "198.51.100.1"}).status_code == 201, "another client has its own window"
    assert len(fake.calls_to("calls")) == 4


def test_the_app_wide_rate_holds_whoever_asks(fake) -> None:
    proxy = make_proxy(fake, APP_RATE_LIMIT_PER_MINUTE="2")
    answers = [connect(proxy, {"x-forwarded-for": f"198.51.100.{n}"}).status_code for n in range(4)]
    assert answers == [201, 201, 429, 429]


def test_a_session_cap_frees_its_slot_when_the_caller_ends_the_call(fake) -> None:
    proxy = make_proxy(fake, MAX_ACTIVE_SESSIONS_PER_CLIENT="1")
    first = connect(proxy)
    second = connect(proxy)
    assert (first.status_code, second.status_code, error_of(second)["code"]) == (201, 429, "too_many_sessions")
    assert int(second.headers["Retry-After"]) >= 1
    ended = hang_up(proxy, first)
    assert (ended.status_code, json.loads(ended.get_body())) == (200, {"ended": True})
    hangups = fake.calls_to("hangup")
    assert len(hangups) == 1 and hangups[0].headers["api-key"], "the server hangs up with the resource's own key"
    assert connect(proxy).status_code == 201, "the slot is free at once"


def test_only_the_caller_that_created_a_call_can_end_it(fake) -> None:
    proxy = make_proxy(fake)
    mine, theirs = connect(proxy), connect(proxy)
    assert (hang_up(proxy, mine, "").status_code, error_of(hang_up(proxy, mine, ""), None)["code"]) == (
        400,
        "bad_request",
    )
    for token in ("nonsense", theirs.headers["X-Call-Token"], mine.headers["X-Call-Token"] + "x"):
        refused = hang_up(proxy, mine, token)
        assert (refused.status_code, error_of(refused, None)["code"]) == (404, "call_not_found")
    assert fake.calls_to("hangup") == []
    assert hang_up(proxy, mine).status_code == 200
    assert hang_up(proxy, mine).status_code == 200, "ending it twice is harmless"
    assert len(fake.calls_to("hangup")) == 1


def test_a_failed_connect_gives_its_session_slot_back(fake) -> None:
    from localdev.fake_openai import Fault

    proxy = make_proxy(fake, MAX_ACTIVE_SESSIONS="1")
    fake.fail_next("calls", Fault(status=500))
    assert connect(proxy).status_code == 502
    assert connect(proxy).status_code == 201


def test_the_timer_hangs_up_calls_past_their_length_once(fake) -> None:
    proxy = make_proxy(fake, REALTIME_MAX_SESSION_SECONDS="60", MAX_ACTIVE_SESSIONS="1")
    live = connect(proxy)
    assert live.status_code == 201
    assert proxy.sweep() == {"ended": 0, "failed": 0, "released": 0, "deleted": 0}, "not yet"
    now = proxy.admission.clock()
    proxy.admission.clock = lambda: now + 61
    assert proxy.sweep()["ended"] == 1
    call_id = live.headers["Location"].rsplit("/", 1)[-1]
    assert [r.endpoint for r in fake.requests].count("hangup") == 1 and fake.calls[call_id] == "ended"
    assert proxy.sweep()["ended"] == 0, "idempotent: a second run (or instance) finds nothing to do"
    assert connect(proxy).status_code == 201, "its session slot is free"


def test_a_failed_hang_up_is_retried_on_the_next_run(fake) -> None:
    from localdev.fake_openai import Fault

    proxy = make_proxy(fake, REALTIME_MAX_SESSION_SECONDS="60")
    assert connect(proxy).status_code == 201
    now = proxy.admission.clock()
    proxy.admission.clock = lambda: now + 61
    fake.fail_next("hangup", Fault(status=503))
    assert proxy.sweep()["failed"] == 1
    assert proxy.sweep()["ended"] == 1


def test_the_kill_switch_ends_every_call_and_refuses_new_ones(fake) -> None:
    proxy = make_proxy(fake)
    calls = [connect(proxy, {"x-forwarded-for": f"198.51.100.{n}"}) for n in range(3)]
    assert {c.status_code for c in calls} == {201}
    paused = proxy.pause(request(method="POST", url="http://localhost:7071/operator/pause"))
    assert json.loads(paused.get_body()) == {"paused": True, "callsEnded": 3}
    assert sorted(fake.calls.values()) == ["ended"] * 3
    refused = connect(proxy)
    assert (refused.status_code, error_of(refused)["code"]) == (503, "service_paused")
    assert fake.calls_to("client_secrets") and len(fake.calls_to("client_secrets")) == 3, "nothing went upstream"
    proxy.resume(request(method="POST", url="http://localhost:7071/operator/resume"))
    assert connect(proxy).status_code == 201


@pytest.mark.parametrize("name", ["MAX_ACTIVE_SESSIONS", "APP_RATE_LIMIT_PER_MINUTE", "REALTIME_MAX_SESSION_SECONDS"])
def test_limit_settings_are_validated(fake, name: str) -> None:
    response = connect(make_proxy(fake, **{name: "-3"}))
    assert (response.status_code, error_of(response)["code"]) == (503, "not_configured")
    assert name in error_of(response)["message"]
