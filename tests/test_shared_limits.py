"""Limits for the whole app, the live-call ledger, ending calls from the server, on the in-process table.

The same code runs on Azure Table Storage (tests/test_shared_limits_storage.py runs it on Azurite across
processes); here every rule is shown on one instance, with a clock the test moves."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from typing import TypeVar

import pytest
import requests

from realtime_proxy.admission import Admission
from realtime_proxy.errors import ApiError
from realtime_proxy.ledger import Ledger
from realtime_proxy.settings import SharedLimits
from realtime_proxy.tables import MemoryTable, Op, Row
from tests.conftest import (
    API_KEY,
    OFFER,
    LocalHost,
    error_of,
    in_flight,
    make_proxy,
    offer_request,
    request,
    run_together,
)

T = TypeVar("T")

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
    now = proxy.ledger.clock()
    proxy.ledger.clock = lambda: now + 61
    assert proxy.sweep()["ended"] == 1
    call_id = live.headers["Location"].rsplit("/", 1)[-1]
    assert [r.endpoint for r in fake.requests].count("hangup") == 1 and fake.calls[call_id] == "ended"
    assert proxy.sweep()["ended"] == 0, "idempotent: a second run (or instance) finds nothing to do"
    assert connect(proxy).status_code == 201, "its session slot is free"


def test_a_failed_hang_up_is_retried_on_the_next_run(fake) -> None:
    from localdev.fake_openai import Fault

    proxy = make_proxy(fake, REALTIME_MAX_SESSION_SECONDS="60")
    assert connect(proxy).status_code == 201
    now = proxy.ledger.clock()
    proxy.ledger.clock = lambda: now + 61
    fake.fail_next("hangup", Fault(status=503))
    assert proxy.sweep()["failed"] == 1
    proxy.ledger.clock = lambda: now + 61 + 60  # the next run, a minute later
    assert proxy.sweep()["ended"] == 1


def test_the_kill_switch_ends_every_call_and_refuses_new_ones(fake) -> None:
    proxy = make_proxy(fake)
    calls = [connect(proxy, {"x-forwarded-for": f"198.51.100.{n}"}) for n in range(3)]
    assert {c.status_code for c in calls} == {201}
    paused = proxy.pause(request(method="POST", url="http://localhost:7071/operator/pause"))
    assert json.loads(paused.get_body()) == {"paused": True, "callsEnded": 3, "callsFailing": 0}
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


def hang_up_request(response, token: str | None = None):
    call_id = response.headers["Location"].rsplit("/", 1)[-1]
    return request(
        method="POST",
        url=f"http://localhost:7071/calls/{call_id}/hangup",
        headers={"x-call-token": token if token is not None else response.headers["X-Call-Token"]},
        route_params={"call_id": call_id},
    )


def test_ten_simultaneous_hang_ups_with_one_token_hang_up_once(fake) -> None:
    proxy = make_proxy(fake, MAX_ACTIVE_SESSIONS="1")
    live = connect(proxy)
    answers = run_together(*(proxy.proxy.hang_up(hang_up_request(live)) for _ in range(10)))
    assert {answer.status_code for answer in answers} == {200}
    assert len(fake.calls_to("hangup")) == 1, "one upstream hang-up is enough"
    assert connect(proxy).status_code == 201, "and the slot is free"


def test_a_malformed_call_token_is_the_same_404_as_a_wrong_one(fake) -> None:
    proxy = make_proxy(fake)
    live = connect(proxy)
    ledger_id = live.headers["X-Call-Token"].split(".")[0]
    for token in ("a" * 4096, f"{ledger_id}.{'A' * 33}", f"{ledger_id}.{'A' * 31}", f"{ledger_id.upper()}.{'A' * 32}"):
        refused = hang_up(proxy, live, token)
        assert (refused.status_code, error_of(refused, None)["code"]) == (404, "call_not_found"), token[:40]
    assert fake.calls_to("hangup") == []


@pytest.mark.parametrize(
    ("first", "second"),
    [("2001:db8::1", "2001:DB8:0:0:0:0:0:1"), ("203.0.113.9", "::ffff:203.0.113.9"), ("2001:db8::1", "2001:db8::2")],
)
def test_spellings_of_one_client_share_its_limits(fake, first: str, second: str) -> None:
    proxy = make_proxy(fake, MAX_ACTIVE_SESSIONS_PER_CLIENT="1")
    assert connect(proxy, {"x-forwarded-for": first}).status_code == 201
    refused = connect(proxy, {"x-forwarded-for": second})
    assert (refused.status_code, error_of(refused)["code"]) == (429, "too_many_sessions")


class StorageLatency(MemoryTable):
    """The in-process table with storage's latency (up to 2 ms per operation, at random), so concurrent
    admissions interleave between their reads and their writes as they do against Table Storage."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self._random = random.Random(seed)

    async def _latency(self) -> None:
        await asyncio.sleep(self._random.random() * 0.002)

    async def transact(self, ops: list[Op]) -> list[str]:
        await self._latency()
        return await super().transact(ops)

    async def get(self, key: str) -> Row | None:
        await self._latency()
        return await super().get(key)

    async def rows(self, prefix: str, below: str | None = None) -> list[Row]:
        await self._latency()
        return await super().rows(prefix, below)


def test_a_session_cap_refusal_says_how_long_honestly_even_under_a_burst() -> None:
    """Five clients, twenty connects at once, two sessions of at most 60 s: every refusal's Retry-After is
    when a session really ends (before, an interleaving read of an empty slot made it 3600 s)."""
    config = SharedLimits(max_active_sessions=2, max_active_sessions_per_client=1, max_session_seconds=60)

    async def burst(seed: int) -> list[int]:
        table, local = StorageLatency(seed), MemoryTable()
        ledger = Ledger(table, local, hangup=lambda call_id, kind: asyncio.sleep(0), slots_freed=lambda slots: None)
        admission = Admission(table, local, ledger, config, per_client_per_minute=0)

        async def one(n: int) -> int:
            try:
                await admission.admit(f"198.51.100.{n % 5}", "", "marin")
            except ApiError as refusal:
                assert refusal.code == "too_many_sessions"
                return int(refusal.headers["Retry-After"])
            return 0

        return await asyncio.gather(*(one(n) for n in range(20)))

    for seed in range(100):
        waits = asyncio.run(burst(seed))
        refused = [wait for wait in waits if wait]
        assert len(refused) == 18, f"seed {seed}: {len(waits) - len(refused)} admitted under a cap of 2"
        assert min(refused) >= 1 and max(refused) <= 60, f"seed {seed}: a session ends within 60 s, yet {refused}"


def test_failed_hang_ups_stop_no_other_and_are_retried_while_paused(fake) -> None:
    from localdev.fake_openai import Fault

    proxy = make_proxy(fake)
    for n in range(3):
        assert connect(proxy, {"x-forwarded-for": f"198.51.100.{n}"}).status_code == 201
    fake.fail_next("hangup", Fault(status=503), times=4)  # all three hang-ups fail, then the first retry
    paused = proxy.pause(request(method="POST", url="http://localhost:7071/operator/pause"))
    assert json.loads(paused.get_body()) == {"paused": True, "callsEnded": 2, "callsFailing": 1}
    assert sorted(fake.calls.values()) == ["ended", "ended", "live"], "a failure stopped none of the other retries"
    now = proxy.ledger.clock()
    proxy.ledger.clock = lambda: now + 60  # the next sweep, a minute later
    assert proxy.sweep()["ended"] == 1 and sorted(fake.calls.values()) == ["ended"] * 3


def test_a_connect_in_flight_when_the_pause_lands_is_hung_up_not_answered(fake) -> None:
    from localdev.fake_openai import Fault

    proxy = make_proxy(fake)
    fake.fail_next("calls", Fault(status=None, delay=1.0))  # the call is being created as the operator pauses
    connecting = in_flight(proxy.proxy.connect(offer_request()))
    wait_for(lambda: fake.calls_to("calls"), "the connect to reach /calls")
    paused = proxy.pause(request(method="POST", url="http://localhost:7071/operator/pause"))
    answer = connecting.result(timeout=30)
    assert (answer.status_code, error_of(answer)["code"]) == (503, "service_paused")
    assert list(fake.calls.values()) == ["ended"], "the call it made was hung up"
    assert json.loads(paused.get_body())["paused"] is True


def test_the_operator_routes_take_the_admin_key_never_a_function_key(fake) -> None:
    host = LocalHost(
        {
            "AZURE_OPENAI_BASE_URL": fake.url,
            "AZURE_OPENAI_API_KEY": API_KEY,
            "LOCAL_FUNCTION_KEY": "page-key-1234",
            "LOCAL_ADMIN_KEY": "master-key-5678",
            "CONNECT_AUTH_LEVEL": "function",
        }
    )
    try:
        pause = host.url + "/operator/pause"
        assert requests.post(pause, headers={"x-functions-key": "page-key-1234"}, timeout=30).status_code == 401
        assert requests.post(pause, params={"code": "page-key-1234"}, timeout=30).status_code == 401
        assert requests.post(pause, timeout=30).status_code == 401
        assert requests.post(pause, headers={"x-functions-key": "master-key-5678"}, timeout=30).json()["paused"] is True
        connect_url = host.url + "/connect"
        headers = {"Content-Type": "application/sdp", "x-functions-key": "page-key-1234"}
        connect = requests.post(connect_url, data=OFFER, headers=headers, timeout=30)
        assert connect.status_code == 503, "paused, for the page's key too"
    finally:
        host.close()


def test_malformed_storage_settings_are_not_configured_and_the_page_still_serves(fake) -> None:
    proxy = make_proxy(fake, AzureWebJobsStorage="DefaultEndpointsProtocol=https;AccountName=x;AccountKey=not base64!")
    refused = connect(proxy)
    assert (refused.status_code, error_of(refused)["code"]) == (503, "not_configured")
    assert "AzureWebJobsStorage" in error_of(refused)["message"] and "not base64" not in error_of(refused)["message"]
    page = proxy.static(request(method="GET", url="http://localhost:7071/", route_params={"path": ""}))
    assert page.status_code == 200
    for route in (proxy.pause, proxy.resume):
        answer = route(request(method="POST", url="http://localhost:7071/operator/pause"))
        assert (answer.status_code, error_of(answer, None)["code"]) == (503, "not_configured")


def wait_for(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
