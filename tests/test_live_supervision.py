"""GPT-Live sessions under the supervisor, over real sockets: /connect creates the session, the supervisor attaches at
`…/live/sessions/{id}/attach` on the fake service, and ends the session with `session.close` when the server ends it
(the session length, the caller's End, the kill switch), from whichever instance ends it. The ledger is Table Storage
on Azurite; the queue message is taken from the connect's output binding, as in tests/test_supervisor.py."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import requests
from aiortc import RTCSessionDescription

from localdev.emulator import PeerHost
from localdev.fake_live import LiveCall
from localdev.fake_openai import FakeAzureOpenAI, Fault
from tests.azurite import Storage
from tests.conftest import API_KEY, OFFER, Driven, error_of, in_flight, make_proxy, offer_request, request
from tests.test_fake_sideband import Sideband, until
from tests.test_supervisor import SESSION_LIMIT, Binding, Supervised, handed_over, supervised_app
from tests.test_webrtc_peer import Browser

OFFERED = "gpt-realtime, gpt-live-1:live"
LIVE = {"model": "gpt-live-1"}


class LiveSupervised(Supervised):
    @property
    def live(self) -> LiveCall:
        return self.fake.live_call(self.call_id)


def live_app(fake: FakeAzureOpenAI, azurite: Storage, **env: str) -> Driven:
    return supervised_app(fake, azurite, REALTIME_DEPLOYMENTS=OFFERED, **env)


def connect_live(app: Driven, fake: FakeAzureOpenAI) -> LiveSupervised:
    supervised = handed_over(app, fake, LIVE, LiveSupervised)  # a live session goes to the supervisor queue too
    supervised.live.wait_attached(1)
    return supervised


def hang_up(app: Driven, supervised: Supervised) -> int:
    return app.hang_up(
        request(
            url=f"http://localhost:7071/calls/{supervised.call_id}/hangup",
            headers={"X-Call-Token": supervised.token},
            route_params={"call_id": supervised.call_id},
        )
    ).status_code


USAGE = {
    "input_tokens": 900,
    "output_tokens": 250,
    "input_token_details": {"text_tokens": 300, "audio_tokens": 600, "cached_tokens": 128},
    "output_token_details": {"text_tokens": 50, "audio_tokens": 200},
}


@pytest.fixture
def app(fake: FakeAzureOpenAI, azurite: Storage) -> Iterator[Driven]:
    yield live_app(fake, azurite)


def test_a_live_session_is_supervised_on_its_attach_socket_and_its_end_frees_the_slot_at_once(
    app: Driven, fake: FakeAzureOpenAI
) -> None:
    supervised = connect_live(app, fake)
    [attach] = fake.calls_to("attach")
    assert attach.headers["api-key"] == API_KEY and fake.calls_to("sideband") == [], "GPT-Live's own attach URL"
    row = supervised.row()
    assert (row["kind"], row["supervisor"] != "") == ("live", True)
    assert error_of(app.connect(offer_request(LIVE)))["code"] == "too_many_sessions"
    supervised.live.hear("What time is it?")
    supervised.live.usage = USAGE
    supervised.live.end("gone")  # the browser left: the service closes the session
    supervised.done()
    row = supervised.row()
    assert (row["status"], row["reason"]) == ("ended", "gone")
    counts = json.loads(row["usage"])
    assert (counts["inputTokens"], counts["outputAudioTokens"], counts["inputCachedTokens"]) == (900, 200, 128)
    assert app.connect(offer_request(LIVE)).status_code == 201, "the slot was free at once"


def test_a_session_the_service_expires_is_the_services_end(app: Driven, fake: FakeAzureOpenAI) -> None:
    supervised = connect_live(app, fake)
    supervised.live.end("session_expired")  # session.closed {reason: expired}
    supervised.done()
    assert supervised.row()["reason"] == "service"


def test_the_session_length_ends_a_live_session_with_session_close_and_records_its_usage(
    fake: FakeAzureOpenAI, azurite: Storage
) -> None:
    app = live_app(fake, azurite, REALTIME_MAX_SESSION_SECONDS=str(SESSION_LIMIT), REALTIME_END_WARNING_SECONDS="5")
    supervised = connect_live(app, fake)
    started = float(supervised.row()["start"])
    supervised.live.say("Sure, the store opens at nine tomorrow.")
    reported = dict(supervised.live.usage)
    warning = supervised.live.wait_received(lambda event: event["type"] == "session.commentary.append", timeout=20)
    assert "ends in 5 seconds" in warning["content"] and warning["delegation_id"] is None
    supervised.done(timeout=30)
    assert [event["type"] for event in supervised.live.received] == ["session.commentary.append", "session.close"]
    assert len(fake.calls_to("attach")) == 1, "closed on the supervisor's own socket"
    row = supervised.row()
    assert (row["status"], row["reason"]) == ("ended", "time_limit")
    assert started + SESSION_LIMIT <= float(row["claimed"]) < started + SESSION_LIMIT + 1.5, "to the second"
    counts = json.loads(row["usage"])
    assert (counts["inputTokens"], counts["outputTokens"]) == (reported["input_tokens"], reported["output_tokens"])
    assert counts["outputAudioTokens"] == reported["output_token_details"]["audio_tokens"]


def test_the_callers_hang_up_closes_the_session_through_its_supervisor(app: Driven, fake: FakeAzureOpenAI) -> None:
    supervised = connect_live(app, fake)
    supervised.live.usage = USAGE
    assert hang_up(app, supervised) == 200
    supervised.done()
    assert [event["type"] for event in supervised.live.received] == ["session.close"]
    assert supervised.live.end_reason == "close_requested" and len(fake.calls_to("attach")) == 1
    row = supervised.row()
    assert (row["status"], row["reason"], json.loads(row["usage"])["inputTokens"]) == ("ended", "user", 900)
    assert fake.calls_to("hangup") == []


def test_the_kill_switch_on_another_instance_closes_the_session_with_an_attach_of_its_own(
    app: Driven, fake: FakeAzureOpenAI, azurite: Storage
) -> None:
    supervised = connect_live(app, fake)
    supervised.live.usage = USAGE
    other = live_app(fake, azurite)  # holds no supervisor for this session
    assert json.loads(other.pause(request(url="http://localhost:7071/operator/pause")).get_body())["callsEnded"] == 1
    supervised.done()
    assert supervised.live.attaches == 2 and supervised.live.end_reason == "close_requested"
    row = supervised.row()
    assert (row["status"], row["reason"]) == ("ended", "operator")
    assert json.loads(row["usage"])["inputTokens"] == 900, "the supervisor still read session.closed"
    other.resume(request(url="http://localhost:7071/operator/resume"))


def test_a_session_the_service_already_ended_is_over_when_the_server_ends_it(fake: FakeAzureOpenAI) -> None:
    """No supervisor here (no storage): the caller's End attaches, the service answers 404, the call is over."""
    app = make_proxy(fake, REALTIME_DEPLOYMENTS=OFFERED, MAX_ACTIVE_SESSIONS="1")
    response = app.connect(offer_request(LIVE))
    session_id = response.headers["Location"].rsplit("/", 1)[-1]
    fake.live_call(session_id).end("gone")
    ended = app.hang_up(
        request(
            url=f"http://localhost:7071/calls/{session_id}/hangup",
            headers={"X-Call-Token": response.headers["X-Call-Token"]},
            route_params={"call_id": session_id},
        )
    )
    assert ended.status_code == 200 and fake.calls_to("attach")
    assert app.connect(offer_request(LIVE)).status_code == 201


def test_an_attach_that_redirects_is_not_followed_and_the_end_is_retried(fake: FakeAzureOpenAI) -> None:
    app = make_proxy(fake, REALTIME_DEPLOYMENTS=OFFERED)
    response = app.connect(offer_request(LIVE))
    session_id = response.headers["Location"].rsplit("/", 1)[-1]
    fake.fail_next("attach", Fault(status=302, headers={"Location": "http://127.0.0.1:9/steal"}))
    refused = app.hang_up(
        request(
            url=f"http://localhost:7071/calls/{session_id}/hangup",
            headers={"X-Call-Token": response.headers["X-Call-Token"]},
            route_params={"call_id": session_id},
        )
    )
    error = error_of(refused, path=None)
    assert (refused.status_code, error["code"]) == (502, "upstream_error") and "redirect" in error["message"]
    assert not fake.live_call(session_id).ended, "nothing reached the session"


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_attach_is_logged_and_the_sweep_still_ends_the_session(
    fake: FakeAzureOpenAI, azurite: Storage, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    caplog.set_level(logging.INFO)
    app = live_app(fake, azurite)
    fake.fail_next("attach", Fault(status))
    binding = Binding()
    assert in_flight(app.proxy.connect(offer_request(LIVE), binding)).result().status_code == 201
    assert binding.value
    session_id = json.loads(binding.value)["call"]
    in_flight(app.proxy.supervise(binding.value.encode())).result(timeout=10)
    assert f"call {session_id}: sideband refused" in caplog.text and "NOT supervised" in caplog.text
    assert fake.api_key and fake.api_key not in caplog.text
    rows = in_flight(app.ledger.table.rows("call-")).result()
    assert [row.props["status"] for row in rows] == ["live"], "still the sweep's to end at its planned end"


# -- delegation to the server-run tools (realtime_proxy/delegation.py) ---------------------------------------------

DELEGATE = "gpt-5-mini"


def test_gpt_live_delegates_to_the_server_run_tools_and_its_supervisor_answers_them(
    fake: FakeAzureOpenAI, azurite: Storage
) -> None:
    supervised = connect_live(live_app(fake, azurite, REALTIME_LIVE_DELEGATE_MODEL=DELEGATE), fake)
    live = supervised.live
    responses = live.session["delegation"]["responses"]  # the fake refuses any other shape at creation
    assert (live.session["delegation"]["type"], responses["model"]) == ("responses", DELEGATE)
    assert [tool["name"] for tool in responses["tools"]] == ["get_current_time", "search_knowledge"]
    ids = live.delegate_tools(
        [("get_current_time", '{"timezone": "Europe/Paris"}'), ("search_knowledge", '{"query": "deploy"}')]
    )
    live.wait_received(lambda event: event["type"] == "response.create")
    sent = [event["type"] for event in live.received]
    assert sent == ["response.item.create", "response.item.create", "response.create"], "answered together"
    assert set(live.outputs) == set(ids), "each output names a call the delegate is waiting on"
    assert "+01:00" in json.loads(live.outputs[ids[0]])["time"] or "+02:00" in json.loads(live.outputs[ids[0]])["time"]
    assert any(hit["path"] == "deploying.md" for hit in json.loads(live.outputs[ids[1]])["hits"])
    assert live.usage["output_tokens"] > 0, "the fake took the response.create and GPT-Live spoke the result"
    live.end("gone")
    supervised.done()
    assert json.loads(supervised.row()["tools"])["calls"] == 2


def test_without_a_delegate_model_or_a_supervisor_delegation_stays_the_clients(
    fake: FakeAzureOpenAI, azurite: Storage
) -> None:
    supervised = connect_live(live_app(fake, azurite), fake)
    assert supervised.live.session["delegation"] == {"type": "client"}
    supervised.live.end("gone")
    supervised.done()
    unsupervised = live_app(fake, azurite, REALTIME_LIVE_DELEGATE_MODEL=DELEGATE, REALTIME_SUPERVISOR="off")
    response = unsupervised.connect(offer_request(LIVE))
    assert response.status_code == 201, response.get_body()
    session_id = response.headers["Location"].rsplit("/", 1)[-1]
    assert fake.live_call(session_id).session["delegation"] == {"type": "client"}, "no tools nobody would answer"


def test_a_browser_that_changes_the_delegation_gets_the_servers_back(fake: FakeAzureOpenAI, azurite: Storage) -> None:
    supervised = connect_live(live_app(fake, azurite, REALTIME_LIVE_DELEGATE_MODEL=DELEGATE), fake)
    live = supervised.live
    decided = live.session["delegation"]
    live.browser_update({"delegation": {"type": "responses", "responses": {"model": "gpt-5-pro", "tools": []}}})
    restore = live.wait_received(lambda event: event["type"] == "session.update")
    assert restore["session"] == {"delegation": decided}, "GPT-Live takes no session.type and no immutable field"
    assert live.session["delegation"] == decided
    live.end("gone")
    supervised.done()
    assert supervised.row()["strikes"] == 1, "the violation counted"


# -- the fake's and the emulator's attach socket ------------------------------------------------------------------


def create_live(fake: FakeAzureOpenAI, session: dict[str, Any], offer: str = OFFER) -> requests.Response:
    return requests.post(
        fake.url + "/openai/v1/live/sessions",
        headers={"api-key": API_KEY},
        json={"session": session, "transport": {"type": "webrtc", "sdp": offer}},
        timeout=10,
    )


def live_session(fake: FakeAzureOpenAI, offer: str = OFFER) -> tuple[str, str]:
    created = create_live(fake, {"model": "gpt-live-1", "instructions": "Be brief."}, offer)
    assert created.status_code == 201, created.text
    return created.json()["session"]["id"], created.json()["transport"]["sdp"]


@pytest.mark.parametrize(
    ("responses", "param"),
    [
        ({"model": "m", "tools": [{"type": "function", "name": "f", "secret": 1}]}, "tools[0].secret"),
        ({"model": "m", "tools": [{"type": "mcp", "name": "f"}]}, "tools[0]"),
        ({"model": "m", "tool_choice": "sometimes"}, "tool_choice"),
        ({"model": "m", "temperature": 2}, "temperature"),
    ],
)
def test_the_fake_refuses_a_responses_delegation_the_service_would_refuse(
    fake: FakeAzureOpenAI, responses: dict[str, Any], param: str
) -> None:
    delegation = {"type": "responses", "responses": responses}
    refused = create_live(fake, {"model": "gpt-live-1", "delegation": delegation})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "session.delegation.responses." + param


def test_the_fake_takes_outputs_only_for_calls_a_delegate_is_waiting_on(fake: FakeAzureOpenAI) -> None:
    delegation = {"type": "responses", "responses": {"model": "m", "tools": [{"type": "function", "name": "f"}]}}
    created = create_live(fake, {"model": "gpt-live-1", "delegation": delegation})
    session_id = created.json()["session"]["id"]
    live = fake.live_call(session_id)

    async def main() -> str:
        async with aiohttp.ClientSession() as http:
            sideband = await attach(http, fake, session_id)
            await sideband.send({"type": "response.create"})
            assert (await sideband.expect("error"))["error"]["code"] == "invalid_value", "no delegation awaits one"
            [call_id] = await asyncio.to_thread(live.delegate_tools, [("f", "{}")])
            output = {"type": "function_call_output", "call_id": "call_other", "output": "{}"}
            await sideband.send({"type": "response.item.create", "item": output})
            assert (await sideband.expect("error"))["error"]["param"] == "item.call_id"
            await sideband.send({"type": "response.item.create", "item": {**output, "call_id": call_id}})
            await sideband.send({"type": "response.create"})
            await sideband.expect("session.output_transcript.delta")  # GPT-Live speaks the delegate's result
            return call_id

    call_id = asyncio.run(main())
    assert live.outputs == {call_id: "{}"}


async def attach(http: aiohttp.ClientSession, fake: FakeAzureOpenAI, session_id: str, key: str = API_KEY) -> Sideband:
    url = fake.url.replace("http://", "ws://") + f"/openai/v1/live/sessions/{session_id}/attach"
    return Sideband(await http.ws_connect(url, headers={"api-key": key}))


def test_the_fakes_attach_socket_speaks_gpt_live(fake: FakeAzureOpenAI) -> None:
    session_id, _ = live_session(fake)

    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            for key, status in (("wrong", 401), (API_KEY, 404)):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await attach(http, fake, session_id if status == 401 else "sess_unknown", key)
                assert refused.value.status == status
            sideband = await attach(http, fake, session_id)
            await sideband.send({"type": "session.update", "session": {"instructions": "Obey me."}})
            error = (await sideband.expect("error"))["error"]
            assert (error["code"], error["param"]) == ("immutable_parameter", "session.instructions")
            odd = {"type": "responses", "responses": {"model": "m", "budget": 1}}
            await sideband.send({"type": "session.update", "session": {"delegation": odd}})
            error = (await sideband.expect("error"))["error"]
            assert (error["code"], error["param"]) == ("unknown_parameter", "session.delegation.responses.budget")
            await sideband.send({"type": "session.instructions.append", "content": "Be kind.", "delegation_id": None})
            await sideband.expect("session.instructions.appended")
            await sideband.send({"type": "response.create"})
            assert (await sideband.expect("error"))["error"]["code"] == "unknown_event", "no response lifecycle"
            await sideband.send({"type": "session.close"})
            closed = await sideband.expect("session.closed")
            assert closed["reason"] == "close_requested" and isinstance(closed["usage"], dict)
            assert await sideband.closed() == 1000
            with pytest.raises(aiohttp.WSServerHandshakeError) as gone:
                await attach(http, fake, session_id)
            assert gone.value.status == 404, "the session ended"

    asyncio.run(main())
    assert fake.live_call(session_id).ended


def test_session_close_on_the_emulators_attach_socket_closes_the_browsers_channel() -> None:
    peers = PeerHost()
    emulator = FakeAzureOpenAI(api_key=API_KEY, peers=peers)

    async def main() -> None:
        browser = Browser()
        await browser.pc.setLocalDescription(await browser.pc.createOffer())
        session_id, answer = await asyncio.to_thread(live_session, emulator, browser.pc.localDescription.sdp)
        await browser.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        try:
            async with aiohttp.ClientSession() as http:
                await browser.expect("session.started")
                sideband = await attach(http, emulator, session_id)
                await sideband.send({"type": "session.commentary.append", "content": "Hello", "delegation_id": None})
                await sideband.expect("session.commentary.appended")
                await sideband.expect("session.output_transcript.delta")  # spoken to the browser, mirrored here
                await sideband.send({"type": "session.close"})
                assert (await sideband.expect("session.closed"))["reason"] == "close_requested"
                assert (await browser.expect("session.closed"))["reason"] == "close_requested"
                assert await sideband.closed() == 1000
                await until(lambda: browser.channel.readyState == "closed", "the browser's channel to close")
        finally:
            await browser.hang_up()

    try:
        asyncio.run(main())
    finally:
        emulator.close()
        peers.close()
