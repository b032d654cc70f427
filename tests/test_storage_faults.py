"""Storage trouble on a real Azurite: stalled (SIGSTOP), gone (stopped) or refusing. Every route answers a clear
JSON error inside the connect deadline, no call escapes the ledger, and each call is ended exactly once."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from localdev.fake_openai import Fault
from tests.azurite import Storage
from tests.conftest import error_of, in_flight, make_proxy, offer_request, request, run_together
from tests.test_shared_limits import hang_up_request, wait_for


def storage_env(azurite: Storage, name: str = "limits") -> dict[str, str]:
    return {"AzureWebJobsStorage": azurite.connection_string, "LIMITS_TABLE": azurite.table(name)}


@contextmanager
def stalled(azurite: Storage) -> Iterator[None]:
    """Azurite frozen: connections are accepted by the kernel and never answered, as a hung storage front end."""
    assert azurite.azurite.process is not None
    pid = azurite.azurite.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def operator(proxy, action: str):
    return getattr(proxy, action)(request(method="POST", url=f"http://localhost:7071/operator/{action}"))


def test_every_route_that_touches_storage_answers_503_while_it_is_down(fake, azurite) -> None:
    proxy = make_proxy(fake, **storage_env(azurite))
    live = proxy.connect(offer_request())
    assert live.status_code == 201
    azurite.azurite.stop()
    for answer in (proxy.hang_up(hang_up_request(live)), operator(proxy, "pause"), operator(proxy, "resume")):
        assert (answer.status_code, error_of(answer, None)["code"]) == (503, "limits_unavailable"), answer.get_body()
        assert answer.headers["Retry-After"] and answer.headers["X-Request-Id"]
    assert fake.calls_to("hangup") == [], "nothing was ended blindly"


def test_a_malformed_call_token_never_reaches_storage(fake, azurite) -> None:
    proxy = make_proxy(fake, **storage_env(azurite))
    live = proxy.connect(offer_request())
    too_long = "a" * 3000 + "." + "b" * 32  # as a row key it is over Table Storage's 1 KiB, which storage refuses
    for _ in ("storage up", "storage down"):  # down: a token that reached storage would be a 503
        refused = proxy.hang_up(hang_up_request(live, too_long))
        assert (refused.status_code, error_of(refused, None)["code"]) == (404, "call_not_found")
        azurite.azurite.stop()


def test_one_deadline_bounds_a_connect_when_storage_stalls(fake, azurite) -> None:
    proxy = make_proxy(fake, CONNECT_DEADLINE_SECONDS="2", **storage_env(azurite))
    assert proxy.connect(offer_request()).status_code == 201  # the table exists; storage answers
    with stalled(azurite):
        started = time.monotonic()
        refused = proxy.connect(offer_request())
        took = time.monotonic() - started
    assert (refused.status_code, error_of(refused)["code"]) == (503, "limits_unavailable")
    assert took < 2.5, f"answered after {took:.1f} s with a 2 s deadline"
    assert len(fake.calls_to("client_secrets")) == 1, "nothing went upstream"


def test_a_call_that_cannot_be_recorded_is_hung_up_and_the_caller_told(fake, azurite) -> None:
    proxy = make_proxy(fake, CONNECT_DEADLINE_SECONDS="4", **storage_env(azurite))
    fake.fail_next("calls", Fault(status=None, delay=1.0))  # storage stalls while the call is being created
    answer = in_flight(proxy.proxy.connect(offer_request()))
    wait_for(lambda: fake.calls_to("calls"), "the connect to reach /calls")
    with stalled(azurite):
        started = time.monotonic()
        refused = answer.result(timeout=30)
        took = time.monotonic() - started
    assert (refused.status_code, error_of(refused)["code"]) == (503, "limits_unavailable")
    assert took < 4, "inside the deadline"
    assert list(fake.calls.values()) == ["ended"], "the unrecorded call was hung up, not left to run"


def test_a_call_neither_recorded_nor_hung_up_is_ended_by_its_instance_when_it_can(fake, azurite) -> None:
    proxy = make_proxy(fake, CONNECT_DEADLINE_SECONDS="4", **storage_env(azurite))
    fake.fail_next("calls", Fault(status=None, delay=1.0))
    fake.fail_next("hangup", Fault(status=503), times=2)  # the hang-up fails too, and so does its first retry
    answer = in_flight(proxy.proxy.connect(offer_request()))
    wait_for(lambda: fake.calls_to("calls"), "the connect to reach /calls")
    with stalled(azurite):
        refused = answer.result(timeout=30)
    assert error_of(refused)["code"] == "limits_unavailable"
    assert list(fake.calls.values()) == ["live"]
    wait_for(lambda: list(fake.calls.values()) == ["ended"], "the instance to end the call", timeout=30)
    assert len(fake.calls_to("hangup")) == 3


def test_two_sweeps_at_once_hang_each_expired_call_up_once(fake, azurite) -> None:
    env = {"REALTIME_MAX_SESSION_SECONDS": "10", **storage_env(azurite)}
    first, second = make_proxy(fake, **env), make_proxy(fake, **env)  # two instances
    for n in range(4):
        assert first.connect(offer_request(headers={"x-forwarded-for": f"198.51.100.{n}"})).status_code == 201
    later = time.time() + 11
    first.ledger.clock = second.ledger.clock = lambda: later
    done = run_together(first.proxy.sweep(), second.proxy.sweep())
    assert done[0]["ended"] + done[1]["ended"] == 4
    assert len(fake.calls_to("hangup")) == 4, "a call is ended once"
    assert sorted(fake.calls.values()) == ["ended"] * 4


def test_open_mode_calls_can_be_ended_by_their_caller_and_by_their_length_during_an_outage(fake, azurite) -> None:
    proxy = make_proxy(fake, LIMITS_FAIL_MODE="open", REALTIME_MAX_SESSION_SECONDS="10", **storage_env(azurite))
    assert proxy.connect(offer_request()).status_code == 201
    azurite.azurite.stop()
    mine, timed = proxy.connect(offer_request()), proxy.connect(offer_request())
    assert (mine.status_code, timed.status_code) == (201, 201), "admitted on per-instance limits"
    ended = proxy.hang_up(hang_up_request(mine))
    assert ended.status_code == 200, ended.get_body()
    mine_id, timed_id = (r.headers["Location"].rsplit("/", 1)[-1] for r in (mine, timed))
    assert fake.calls[mine_id] == "ended", "End works for a call the shared ledger never saw"
    started = time.monotonic()
    wait_for(lambda: fake.calls[timed_id] == "ended", "the session length to end the call", timeout=30)
    assert time.monotonic() - started > 5, "not before its length"


def test_open_mode_calls_move_to_the_shared_ledger_when_storage_returns(fake, azurite) -> None:
    env = {"LIMITS_FAIL_MODE": "open", **storage_env(azurite)}
    proxy = make_proxy(fake, **env)
    assert proxy.connect(offer_request()).status_code == 201
    azurite.azurite.stop()
    kept = proxy.connect(offer_request())
    assert kept.status_code == 201
    azurite.azurite.start()
    assert proxy.connect(offer_request()).status_code == 201  # storage answers again
    other = make_proxy(fake, **env)  # another instance, which never held the call
    kept_id = kept.headers["Location"].rsplit("/", 1)[-1]

    def ended_by_the_other_instance() -> bool:
        return other.hang_up(hang_up_request(kept)).status_code == 200

    wait_for(ended_by_the_other_instance, "the call to reach the shared ledger")
    assert fake.calls[kept_id] == "ended"


def test_an_outage_does_not_make_an_open_mode_app_forget_it_is_paused(fake, azurite) -> None:
    proxy = make_proxy(fake, LIMITS_FAIL_MODE="open", **storage_env(azurite))
    assert operator(proxy, "pause").status_code == 200
    azurite.azurite.stop()
    refused = proxy.connect(offer_request())
    assert (refused.status_code, error_of(refused)["code"]) == (503, "service_paused")


def test_calls_another_instance_admits_on_its_cached_switch_are_hung_up_before_the_pause_answers(fake, azurite) -> None:
    env = storage_env(azurite)
    pausing, other = make_proxy(fake, **env), make_proxy(fake, **env)
    assert other.connect(offer_request()).status_code == 201  # `other` now believes the app is open
    paused = threading.Thread(target=operator, args=(pausing, "pause"))
    paused.start()
    wait_for(lambda: list(fake.calls.values()) == ["ended"], "the pause to end the first call")
    slipped = other.connect(offer_request(headers={"x-forwarded-for": "198.51.100.9"}))
    paused.join(timeout=30)
    if slipped.status_code == 201:  # admitted on its cached view of the switch
        assert fake.calls[slipped.headers["Location"].rsplit("/", 1)[-1]] == "ended", (
            "hung up before the pause answered"
        )
    else:
        assert error_of(slipped)["code"] == "service_paused"
    after = other.connect(offer_request(headers={"x-forwarded-for": "198.51.100.10"}))
    assert (after.status_code, error_of(after)["code"]) == (503, "service_paused"), "none admitted after the answer"
    assert all(state == "ended" for state in fake.calls.values())


@pytest.mark.parametrize("action", ["pause", "resume"])
def test_the_operator_routes_answer_not_configured_without_an_upstream(azurite, action: str) -> None:
    from tests.conftest import driven

    proxy = driven(storage_env(azurite))  # no AZURE_OPENAI_BASE_URL
    answer = operator(proxy, action)
    assert (answer.status_code, error_of(answer, None)["code"]) == (503, "not_configured")
