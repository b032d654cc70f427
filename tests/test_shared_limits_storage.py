"""Shared limits on a real Azurite over loopback: they hold across app processes, and storage trouble is a
clear answer inside the deadline, with recovery and nothing lost."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.conftest import API_KEY, OFFER, WORKER_LOOP, LocalHost, error_of, make_proxy, offer_request
from tests.test_storage_faults import storage_env as shared_storage


def storage_env(azurite, name: str = "limits") -> dict[str, str]:
    """The limits and the minute sweep on their own: supervision (tested in tests/test_supervisor*.py) is off, so it
    neither ends these calls first nor adds its queue and lease traffic to the storage these tests load on purpose."""
    return {**shared_storage(azurite, name), "REALTIME_SUPERVISOR": "off"}


def test_the_app_wide_limit_holds_across_two_app_processes(fake, azurite) -> None:
    env = {
        "AZURE_OPENAI_BASE_URL": fake.url,
        "AZURE_OPENAI_API_KEY": API_KEY,
        "RATE_LIMIT_PER_MINUTE": "0",
        "APP_RATE_LIMIT_PER_MINUTE": "10",
        **storage_env(azurite),
    }
    hosts = [LocalHost(env), LocalHost(env)]
    try:
        urls = [host.url + "/connect" for host in hosts]
        started = time.time()
        with ThreadPoolExecutor(max_workers=16) as pool:
            statuses = list(
                pool.map(
                    lambda n: (
                        requests.post(
                            urls[n % 2], data=OFFER, headers={"Content-Type": "application/sdp"}, timeout=30
                        ).status_code
                    ),
                    range(40),
                )
            )
        windows = {int(started // 60), int(time.time() // 60)}
    finally:
        for host in hosts:
            host.close()
    admitted = statuses.count(201)
    assert set(statuses) <= {201, 429}, statuses
    assert admitted <= 10 * len(windows), f"{admitted} admitted across two processes, limit 10 a minute"
    if len(windows) == 1:
        assert admitted == 10
    assert len(fake.calls_to("calls")) == admitted, "a refused connect never reached the upstream"


def test_storage_going_away_is_a_clear_503_and_recovers_with_nothing_lost(fake, azurite) -> None:
    closed = make_proxy(fake, MAX_ACTIVE_SESSIONS="5", **storage_env(azurite))
    opened = make_proxy(fake, MAX_ACTIVE_SESSIONS="5", LIMITS_FAIL_MODE="open", **storage_env(azurite))
    before = closed.connect(offer_request())
    assert before.status_code == 201
    azurite.azurite.stop()
    started = time.monotonic()
    refused = closed.connect(offer_request())
    assert (refused.status_code, error_of(refused)["code"]) == (503, "limits_unavailable")
    assert refused.headers["Retry-After"] and time.monotonic() - started < closed.settings.limits.deadline_seconds
    assert opened.connect(offer_request()).status_code == 201, "LIMITS_FAIL_MODE=open admits on per-instance limits"
    azurite.azurite.start()
    assert closed.connect(offer_request()).status_code == 201, "recovers when storage returns"
    ledger_id = before.headers["X-Call-Token"].split(".")[0]
    row = asyncio.run_coroutine_threadsafe(closed.ledger.table.get(f"call-{ledger_id}"), WORKER_LOOP).result()
    assert (
        row is not None
        and row.props["status"] == "live"
        and row.props["call"] == before.headers["Location"].rsplit("/", 1)[-1]
    )


def test_a_session_cap_and_the_callers_hang_up_on_table_storage(fake, azurite) -> None:
    proxy = make_proxy(fake, MAX_ACTIVE_SESSIONS_PER_CLIENT="1", **storage_env(azurite))
    first, second = proxy.connect(offer_request()), proxy.connect(offer_request())
    assert (first.status_code, error_of(second)["code"]) == (201, "too_many_sessions")
    other = make_proxy(fake, MAX_ACTIVE_SESSIONS_PER_CLIENT="1", **storage_env(azurite))  # another instance
    assert error_of(other.connect(offer_request()))["code"] == "too_many_sessions", "the cap holds for every instance"
    call_id = first.headers["Location"].rsplit("/", 1)[-1]
    from tests.conftest import request

    ended = other.hang_up(
        request(
            method="POST",
            url=f"http://localhost/calls/{call_id}/hangup",
            headers={"x-call-token": first.headers["X-Call-Token"]},
            route_params={"call_id": call_id},
        )
    )
    assert ended.status_code == 200 and fake.calls[call_id] == "ended"
    assert other.connect(offer_request()).status_code == 201, "the slot is free for every instance at once"


def test_the_local_host_runs_the_sweep_on_its_schedule_and_ends_a_call_at_its_limit(fake, azurite) -> None:
    env = {
        "AZURE_OPENAI_BASE_URL": fake.url,
        "AZURE_OPENAI_API_KEY": API_KEY,
        "REALTIME_MAX_SESSION_SECONDS": "10",
        "MAX_ACTIVE_SESSIONS": "1",
        "LOCAL_TIMER_INTERVAL_SECONDS": "1",
        **storage_env(azurite),
    }
    host = LocalHost(env)
    try:
        answer = requests.post(
            host.url + "/connect", data=OFFER, headers={"Content-Type": "application/sdp"}, timeout=30
        )
        assert answer.status_code == 201
        call_id = answer.headers["Location"].rsplit("/", 1)[-1]
        assert requests.get(host.url + "/config", timeout=10).json()["session"] == {"maxSeconds": 10}
        started, deadline = time.monotonic(), time.monotonic() + 40
        while fake.calls.get(call_id) != "ended":  # the timer hangs it up once its ten seconds are over
            assert time.monotonic() < deadline, "the sweep never ended the call"
            time.sleep(0.2)
        assert time.monotonic() - started >= 9, "not before its limit"
        assert (
            requests.post(
                host.url + "/connect", data=OFFER, headers={"Content-Type": "application/sdp"}, timeout=30
            ).status_code
            == 201
        ), "its session slot is free again"
    finally:
        host.close()
