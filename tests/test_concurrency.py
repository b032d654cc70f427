"""Hundreds of connects at once on one worker loop: each caller gets the answer to its own offer, nothing is
lost, and the state they share (credential, token, connection pool, rate limiter) holds."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import pytest

from localdev.fake_openai import FakeAzureOpenAI
from realtime_proxy.service import RealtimeProxy
from tests.conftest import OFFER, WORKER_LOOP, request
from tests.identity_endpoint import IdentityEndpoint

CALLERS = 300


def origin_line(sdp: str) -> str:
    """The o= line, which holds the session id."""
    origin = re.search(r"^o=.*$", sdp, re.MULTILINE)
    assert origin, sdp
    return origin.group(0)


def echo_answer(offer: str, session: dict, call_id: str, webrtc_filter: bool = False) -> str:
    """An answer that carries its offer's session id, so a mixed-up answer is visible."""
    media = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0"
    return f"v=0\r\n{origin_line(offer)}\r\ns=-\r\nt=0 0\r\n{media}\r\na=x-call:{call_id}\r\n"


@pytest.fixture
def echoing(identity: IdentityEndpoint) -> Iterator[FakeAzureOpenAI]:
    server = FakeAzureOpenAI(api_key=None, answerer=echo_answer)
    identity.on_token = server.accepted_tokens.add
    yield server
    server.close()


def on_loop(coroutine):
    return asyncio.run_coroutine_threadsafe(coroutine, WORKER_LOOP).result()


def test_hundreds_of_concurrent_connects_each_get_their_own_answer(echoing, identity) -> None:
    identity.delay = 0.3  # a cold identity: every first connect waits on the same token request
    proxy = RealtimeProxy.from_environ(
        {
            "AZURE_OPENAI_BASE_URL": echoing.url,
            "RATE_LIMIT_PER_MINUTE": str(CALLERS // 2),
            "RATE_LIMIT_BURST": str(CALLERS // 2),
        }
    )
    offers = [OFFER.replace("o=- 7614219274584779017", f"o=- {1000 + n}") for n in range(CALLERS)]

    async def everyone() -> list:
        return await asyncio.gather(*(proxy.connect(request(offer.encode(), "application/sdp")) for offer in offers))

    try:
        responses = on_loop(everyone())
    finally:
        on_loop(proxy.aclose())
    admitted = [(offer, r) for offer, r in zip(offers, responses, strict=False) if r.status_code == 201]
    refused = [r for r in responses if r.status_code == 429]
    assert {r.status_code for r in responses} == {201, 429}, [
        r.get_body() for r in responses if r.status_code not in (201, 429)
    ][:3]
    assert len(admitted) == CALLERS // 2 and len(refused) == CALLERS - CALLERS // 2, (
        "the bucket admits its burst, no more"
    )
    for offer, response in admitted:
        assert origin_line(offer) in response.get_body().decode()
    call_ids = {response.headers["Location"] for _, response in admitted}
    assert len(call_ids) == len(admitted), "every caller got its own call"
    assert len(echoing.calls_to("calls")) == len(admitted) and len(echoing.calls_to("client_secrets")) == len(admitted)
    assert len(identity.requests) == 1, "one token request served every caller"
    assert echoing.connections <= CALLERS // 2, "no more upstream connections than connects in flight"


def test_the_credential_warms_in_the_background_when_the_app_loads(echoing, identity) -> None:
    async def load_app() -> RealtimeProxy:  # the worker imports function_app.py inside its running loop
        return RealtimeProxy.from_environ({"AZURE_OPENAI_BASE_URL": echoing.url})

    proxy = on_loop(load_app())
    try:
        deadline = time.monotonic() + 10
        while not echoing.accepted_tokens:  # the token is issued before any connect
            assert time.monotonic() < deadline, "the credential never warmed"
            time.sleep(0.02)
        identity.fail_with = 500  # from now on the endpoint is down: the first connect must not need it
        assert on_loop(proxy.connect(request(OFFER.encode(), "application/sdp"))).status_code == 201
        assert len(identity.requests) == 1
    finally:
        on_loop(proxy.aclose())


def test_a_failed_warm_up_never_stops_the_app(fake, identity) -> None:
    identity.fail_with = 400

    async def load_app() -> RealtimeProxy:
        return RealtimeProxy.from_environ({"AZURE_OPENAI_BASE_URL": fake.url})

    proxy = on_loop(load_app())
    try:
        response = on_loop(proxy.connect(request(OFFER.encode(), "application/sdp")))
        assert response.status_code == 503, "a clear credential_unavailable, not a crash"
    finally:
        on_loop(proxy.aclose())
