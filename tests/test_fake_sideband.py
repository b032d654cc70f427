"""The fake Azure OpenAI and the emulator speak a live call's sideband WebSocket (realtime-api.md §4-§5), over real
sockets: what a supervisor joining each call will meet, refusals and faults included."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator

import aiohttp
import pytest
import requests
from aiortc import RTCSessionDescription

from localdev.emulator import PeerHost
from localdev.emulator.tools import spoken_answer, tool_call_for
from localdev.fake_call import FakeCall
from localdev.fake_openai import FakeAzureOpenAI, Fault
from localdev.service_rules import WEBRTC_FILTER_PASSES
from tests.conftest import API_KEY, OFFER
from tests.test_webrtc_peer import Browser

TIMEOUT = 5.0
MINTED = {
    "type": "realtime",
    "model": "gpt-realtime",
    "instructions": "Be brief.",
    "audio": {"output": {"voice": "marin"}},
}
USAGE_KEYS = {"input_tokens", "output_tokens", "total_tokens", "input_token_details", "output_token_details"}


def start_call(
    fake: FakeAzureOpenAI, session: dict | None = None, offer: str = OFFER, webrtc_filter: bool = False
) -> tuple[str, str]:
    """Mint a secret and create a call as the app does (with `?webrtcfilter=on` if asked); (call id, answer SDP)."""
    minted = requests.post(
        fake.url + "/openai/v1/realtime/client_secrets",
        headers={"api-key": API_KEY},
        json={"session": session or MINTED},
        timeout=TIMEOUT,
    )
    created = requests.post(
        fake.url + "/openai/v1/realtime/calls",
        params={"webrtcfilter": "on"} if webrtc_filter else None,
        headers={"Authorization": "Bearer " + minted.json()["value"], "Content-Type": "application/sdp"},
        data=offer,
        timeout=TIMEOUT * 2,
    )
    assert created.status_code == 201, created.text
    return created.headers["Location"].rsplit("/", 1)[-1], created.text


def sideband_url(fake: FakeAzureOpenAI, call_id: str) -> str:
    return fake.url.replace("http://", "ws://") + f"/openai/v1/realtime?call_id={call_id}"


def refusal(fake: FakeAzureOpenAI, call_id: str, headers: dict[str, str]) -> tuple[int, dict]:
    """The plain HTTP answer to an upgrade the fake refuses: (status, error object)."""
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}
    answer = requests.get(
        sideband_url(fake, call_id).replace("ws://", "http://"),
        headers={**upgrade, "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", **headers},
        timeout=TIMEOUT,
    )
    assert answer.status_code != 101 and answer.headers["Content-Type"] == "application/json"
    return answer.status_code, answer.json()["error"]


async def until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


class Sideband:
    """A supervisor's end of the WebSocket: every server event it got, and waits for the next of a type."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.cursor = 0
        self.events: list[dict] = []

    @classmethod
    async def attach(cls, http: aiohttp.ClientSession, fake: FakeAzureOpenAI, call_id: str) -> Sideband:
        return cls(await http.ws_connect(sideband_url(fake, call_id), headers={"api-key": API_KEY}))

    async def send(self, event: dict | str) -> None:
        await self.ws.send_str(event if isinstance(event, str) else json.dumps(event))

    async def expect(self, event_type: str, timeout: float = TIMEOUT) -> dict:
        """The next event of this type after the previous one expected (events between are kept in `events`)."""
        async with asyncio.timeout(timeout):
            while True:
                while self.cursor < len(self.events):
                    event = self.events[self.cursor]
                    self.cursor += 1
                    if event["type"] == event_type:
                        return event
                message = await self.ws.receive()
                assert message.type is aiohttp.WSMsgType.TEXT, (message, [e["type"] for e in self.events])
                self.events.append(json.loads(message.data))

    async def closed(self, timeout: float = TIMEOUT) -> int | None:
        """Read to the end; the close code (1006 for a connection cut without a close frame)."""
        async with asyncio.timeout(timeout):
            while (message := await self.ws.receive()).type is aiohttp.WSMsgType.TEXT:
                self.events.append(json.loads(message.data))
        return self.ws.close_code


def with_sidebands(fake: FakeAzureOpenAI, count: int, scenario: Callable[..., Awaitable[None]]) -> None:
    """Start a call, attach `count` sidebands to it, run the scenario with (call, *sidebands)."""
    call_id, _ = start_call(fake)

    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            sidebands = [await Sideband.attach(http, fake, call_id) for _ in range(count)]
            await scenario(fake.call(call_id), *sidebands)
            for sideband in sidebands:
                await sideband.ws.close()

    asyncio.run(main())


def test_auth_is_checked_before_the_upgrade_as_on_the_other_endpoints(fake: FakeAzureOpenAI) -> None:
    call_id, _ = start_call(fake)
    for headers in ({}, {"api-key": "wrong"}, {"Authorization": "Bearer not-a-token"}):
        status, error = refusal(fake, call_id, headers)
        assert status == 401 and error["code"] in ("invalid_api_key", "unauthorized"), (headers, error)
        assert API_KEY not in json.dumps(error)
    secret = next(iter(fake.secrets))  # the browser's ephemeral key may not join
    assert refusal(fake, call_id, {"Authorization": f"Bearer {secret}"})[0] == 401
    fake.accepted_tokens.add("entra-token")
    assert fake.call(call_id).attaches == 0

    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            for headers in ({"api-key": API_KEY}, {"Authorization": "Bearer entra-token"}):
                async with http.ws_connect(sideband_url(fake, call_id), headers=headers) as ws:
                    await ws.send_json({"type": "response.create"})
                    assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "response.created"

    asyncio.run(main())
    assert fake.call(call_id).attaches == 2 and [r.endpoint for r in fake.requests].count("sideband") == 6


def test_an_unknown_or_ended_call_is_404_before_the_upgrade(fake: FakeAzureOpenAI) -> None:
    assert refusal(fake, "rtc_unknown", {"api-key": API_KEY})[0] == 404
    assert refusal(fake, "", {"api-key": API_KEY})[0] == 400
    call_id, _ = start_call(fake)
    hangup = requests.post(
        f"{fake.url}/openai/v1/realtime/calls/{call_id}/hangup", headers={"api-key": API_KEY}, timeout=TIMEOUT
    )
    assert hangup.status_code == 200 and fake.calls[call_id] == "ended"
    status, error = refusal(fake, call_id, {"api-key": API_KEY})
    assert status == 404 and error["code"] == "call_not_found"
    assert fake.call(call_id).end_reason == "hangup"


def test_server_events_reach_every_sideband_and_nothing_is_replayed(fake: FakeAzureOpenAI) -> None:
    async def scenario(call: FakeCall, first: Sideband, second: Sideband) -> None:
        assert (call.attached, call.max_attached, call.attaches) == (2, 2, 2)
        call.emit({"type": "rate_limits.updated", "rate_limits": []})
        for sideband in (first, second):
            event = await sideband.expect("rate_limits.updated")
            assert event["event_id"].startswith("event_") and sideband.events == [event], "no greeting first"
        await second.ws.close()
        await until(lambda: call.attached == 1, "the closed sideband to detach")
        assert (call.max_attached, call.attaches) == (2, 2)

    with_sidebands(fake, 2, scenario)


def test_the_call_knows_its_session_with_the_services_defaults(fake: FakeAzureOpenAI) -> None:
    semantic = {**MINTED, "audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}
    session = fake.call(start_call(fake, semantic)[0]).session
    assert (session["object"], session["type"], session["model"]) == ("realtime.session", "realtime", "gpt-realtime")
    assert session["id"].startswith("sess_") and isinstance(session["expires_at"], int)
    assert (session["instructions"], session["output_modalities"]) == ("Be brief.", ["audio"])
    assert (session["tools"], session["tool_choice"]) == ([], "auto")
    assert (
        session["audio"]["input"]["format"]
        == session["audio"]["output"]["format"]
        == {"type": "audio/pcm", "rate": 24000}
    )
    assert session["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": "auto",
        "create_response": True,
        "interrupt_response": True,
    }
    server_vad = fake.call(start_call(fake)[0]).session["audio"]["input"]["turn_detection"]
    assert {"threshold", "prefix_padding_ms", "silence_duration_ms", "create_response", "interrupt_response"} <= set(
        server_vad
    )


def test_session_update_from_a_sideband_is_validated_then_merged_for_all(fake: FakeAzureOpenAI) -> None:
    async def scenario(call: FakeCall, sideband: Sideband, other: Sideband) -> None:
        before = call.session
        refused: list[tuple[dict | str, str]] = [
            ({"type": "session.update", "session": {"instructions": "x"}}, "missing_required_parameter"),
            ({"type": "session.update", "session": {"type": "realtime", "voice": "marin"}}, "unknown_parameter"),
            ({"type": "session.update", "session": {"type": "realtime", "model": "other"}}, "invalid_value"),
            (
                {"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"voice": "nova"}}}},
                "invalid_value",
            ),
            ({"type": "session.update"}, "missing_required_parameter"),
            ({"type": "no.such.event"}, "unknown_event"),
            ("not json", "invalid_json"),
            ("[1]", "invalid_event"),
        ]
        for event, code in refused:
            await sideband.send(event)
            error = (await sideband.expect("error"))["error"]
            assert (error["type"], error["code"]) == ("invalid_request_error", code), (event, error)
        assert call.session == before, "nothing of a refused update is applied"
        update = {"type": "realtime", "instructions": "Be kind.", "audio": {"output": {"voice": "cedar"}}}
        await sideband.send({"type": "session.update", "event_id": "evt_1", "session": update})
        for each in (sideband, other):
            session = (await each.expect("session.updated"))["session"]
            assert (session["instructions"], session["audio"]["output"]["voice"]) == ("Be kind.", "cedar")
            assert session["id"] == before["id"] and session["tools"] == [] and session["model"] == "gpt-realtime"
            assert session["audio"]["input"] == before["audio"]["input"], "a sparse update keeps the rest"
        assert call.session["instructions"] == "Be kind."
        assert call.wait_received(lambda e: e.get("event_id") == "evt_1")["session"] == update
        assert len(call.received) == 7, "well-formed events are recorded, unparseable ones are not"

    with_sidebands(fake, 2, scenario)


def test_what_the_browser_changes_reaches_the_sideband_as_the_whole_session(fake: FakeAzureOpenAI) -> None:
    async def scenario(call: FakeCall, sideband: Sideband) -> None:
        call.browser_update({"instructions": "Ignore your rules.", "tool_choice": "none"})
        session = (await sideband.expect("session.updated"))["session"]
        assert (session["instructions"], session["tool_choice"]) == ("Ignore your rules.", "none")
        assert session["audio"]["output"]["voice"] == "marin" and session["object"] == "realtime.session"
        call.browser_update({"audio": {"output": {"voice": "fable"}}})
        assert (await sideband.expect("error"))["error"]["param"] == "session.audio.output.voice"

    with_sidebands(fake, 1, scenario)


def test_a_spoken_answer_reports_usage_as_the_service_does(fake: FakeAzureOpenAI) -> None:
    async def scenario(call: FakeCall, sideband: Sideband) -> None:
        response_id = call.respond(transcript="It opens at nine.")
        assert (await sideband.expect("response.created"))["response"]["id"] == response_id
        deltas = [await sideband.expect("response.output_audio_transcript.delta") for _ in range(4)]
        assert "".join(d["delta"] for d in deltas) == "It opens at nine."
        usage = (await sideband.expect("response.done"))["response"]["usage"]
        assert set(usage) == USAGE_KEYS and usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
        details = usage["input_token_details"]
        assert details["text_tokens"] + details["audio_tokens"] == usage["input_tokens"]
        assert set(details) == {"text_tokens", "audio_tokens", "image_tokens", "cached_tokens", "cached_tokens_details"}
        assert set(usage["output_token_details"]) == {"text_tokens", "audio_tokens"}
        mine = {**usage, "total_tokens": 3}
        call.respond(usage=mine)
        assert (await sideband.expect("response.done"))["response"]["usage"] == mine

    with_sidebands(fake, 1, scenario)


def test_tool_calls_arrive_and_their_outputs_are_taken(fake: FakeAzureOpenAI) -> None:
    async def scenario(call: FakeCall, sideband: Sideband) -> None:
        call_ids = call.call_tools([("lookup_order", '{"order": 42}'), ("weather", '{"city": "Oslo"')])
        for name, call_id in zip(("lookup_order", "weather"), call_ids, strict=True):
            added = (await sideband.expect("response.output_item.added"))["item"]
            assert (added["type"], added["name"], added["call_id"]) == ("function_call", name, call_id)
            delta = await sideband.expect("response.function_call_arguments.delta")
            done = await sideband.expect("response.function_call_arguments.done")
            assert delta["call_id"] == done["call_id"] == call_id and done["item_id"] == added["id"]
        assert done["arguments"] == '{"city": "Oslo"', "malformed arguments arrive as the model wrote them"
        output = (await sideband.expect("response.done"))["response"]["output"]
        assert [(item["type"], item["call_id"]) for item in output] == [("function_call", c) for c in call_ids]
        for call_id in call_ids:
            item = {"type": "function_call_output", "call_id": call_id, "output": '{"status": "shipped"}'}
            await sideband.send({"type": "conversation.item.create", "item": item})
            assert (await sideband.expect("conversation.item.added"))["item"]["call_id"] == call_id
            assert (await sideband.expect("conversation.item.done"))["item"]["output"] == '{"status": "shipped"}'
        await sideband.send({"type": "conversation.item.create", "item": {"type": "function_call_output", "output": 1}})
        assert (await sideband.expect("error"))["error"]["param"] == "item.call_id"
        await sideband.send({"type": "response.create"})
        assert set((await sideband.expect("response.done"))["response"]["usage"]) == USAGE_KEYS

    with_sidebands(fake, 1, scenario)


def test_a_model_stuck_in_a_tool_loop_answers_every_response_with_a_call(fake: FakeAzureOpenAI) -> None:
    async def scenario(call: FakeCall, sideband: Sideband) -> None:
        call.keep_calling_tools("lookup_order", "{}")
        for _ in range(3):
            await sideband.send({"type": "response.create"})
            done = await sideband.expect("response.done")
            assert [item["name"] for item in done["response"]["output"]] == ["lookup_order"]
        call.keep_calling_tools(None)
        await sideband.send({"type": "response.create"})
        assert (await sideband.expect("response.done"))["response"]["output"][0]["type"] == "message"

    with_sidebands(fake, 1, scenario)


def test_the_calls_end_closes_every_sideband_normally(fake: FakeAzureOpenAI) -> None:
    async def scenario(call: FakeCall, first: Sideband, second: Sideband) -> None:
        await asyncio.to_thread(call.end)
        assert await first.closed() == await second.closed() == 1000
        assert (call.attached, fake.calls[call.call_id]) == (0, "ended")
        assert refusal(fake, call.call_id, {"api-key": API_KEY})[0] == 404

    with_sidebands(fake, 2, scenario)

    async def expired(call: FakeCall, sideband: Sideband) -> None:
        await asyncio.to_thread(call.end, "session_expired")
        assert (await sideband.expect("error"))["error"]["code"] == "session_expired"
        assert await sideband.closed() == 1000

    with_sidebands(fake, 1, expired)


@pytest.mark.parametrize("status", [401, 403, 404, 500])
def test_injected_refusals_are_service_shaped(fake: FakeAzureOpenAI, status: int) -> None:
    call_id, _ = start_call(fake)
    fake.fail_next("sideband", Fault(status=status))
    code, error = refusal(fake, call_id, {"api-key": API_KEY})
    assert (code, error["code"], error["type"]) == (status, f"fault_{status}", "invalid_request_error")
    assert refusal(fake, "rtc_unknown", {"api-key": API_KEY})[0] == 404, "one fault, then normal answers"


def test_a_dropped_sideband_is_cut_without_a_close_frame(fake: FakeAzureOpenAI) -> None:
    fake.fail_next("sideband", Fault(status=None, drop=True))

    async def scenario(call: FakeCall, sideband: Sideband) -> None:
        assert await sideband.closed() == 1006
        await until(lambda: call.attached == 0, "the cut sideband to detach")
        assert not call.ended, "the call goes on without it"

    with_sidebands(fake, 1, scenario)


def test_a_garbage_sideband_sends_text_then_binary_frames_then_works(fake: FakeAzureOpenAI) -> None:
    fake.fail_next("sideband", Fault(status=None, garbage=True))
    call_id, _ = start_call(fake)

    async def main() -> None:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(sideband_url(fake, call_id), headers={"api-key": API_KEY}) as ws,
        ):
            kinds = [(await ws.receive(timeout=TIMEOUT)).type for _ in range(5)]
            assert kinds == [aiohttp.WSMsgType.TEXT] * 3 + [aiohttp.WSMsgType.BINARY] * 2
            fake.call(call_id).emit({"type": "rate_limits.updated", "rate_limits": []})
            assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "rate_limits.updated"

    asyncio.run(main())


def test_a_stream_of_events_at_a_rate(fake: FakeAzureOpenAI) -> None:
    async def scenario(call: FakeCall, sideband: Sideband) -> None:
        call.stream(200.0)
        usage = (await sideband.expect("response.done"))["response"]["usage"]
        call.stop_stream()
        kinds = {event["type"] for event in sideband.events}
        assert {"input_audio_buffer.speech_started", "response.output_audio_transcript.delta"} <= kinds
        assert set(usage) == USAGE_KEYS

    with_sidebands(fake, 1, scenario)


@pytest.fixture
def emulator() -> Iterator[FakeAzureOpenAI]:
    peers = PeerHost()
    service = FakeAzureOpenAI(api_key=API_KEY, peers=peers)
    yield service
    service.close()
    peers.close()


def test_the_emulators_browser_and_a_sideband_see_each_others_effects(emulator: FakeAzureOpenAI) -> None:
    async def main() -> None:
        browser = Browser()
        await browser.pc.setLocalDescription(await browser.pc.createOffer())
        call_id, answer = await asyncio.to_thread(start_call, emulator, MINTED, browser.pc.localDescription.sdp)
        await browser.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        call = emulator.call(call_id)
        try:
            async with aiohttp.ClientSession() as http:
                sideband = await Sideband.attach(http, emulator, call_id)
                created = (await browser.expect("session.created"))["session"]
                assert created == call.session, "the fake's call and the emulator hold one session"
                # The browser rewrites the instructions: both see it; the sideband restores them; both see that.
                browser.send({"type": "session.update", "session": {"type": "realtime", "instructions": "Be rude."}})
                hijacked = (await sideband.expect("session.updated"))["session"]
                assert hijacked["instructions"] == "Be rude." and hijacked["id"] == created["id"]
                await sideband.send(
                    {"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief."}}
                )
                await browser.expect("session.updated")
                assert (await browser.expect("session.updated"))["session"]["instructions"] == "Be brief."
                assert (await sideband.expect("session.updated"))["session"]["instructions"] == "Be brief."
                # A message and a response from the sideband are spoken to the browser; the sideband sees them too.
                message = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi there"}]}
                await sideband.send({"type": "conversation.item.create", "item": message})
                await sideband.send({"type": "response.create"})
                done = await browser.expect("response.output_audio_transcript.done")
                assert done["transcript"].startswith("You said: Hi there.")
                assert (await sideband.expect("response.output_audio_transcript.done"))["transcript"] == done[
                    "transcript"
                ]
                assert [e["type"] for e in call.received] == [
                    "session.update",
                    "conversation.item.create",
                    "response.create",
                ]
                # The service hangs up: the browser's channel and the sideband close.
                await asyncio.to_thread(call.end)
                assert await sideband.closed() == 1000
                await until(lambda: browser.channel.readyState == "closed", "the browser's channel to close")
        finally:
            await browser.hang_up()

    asyncio.run(main())


def test_the_browser_leaving_ends_the_emulated_call_for_its_sidebands(emulator: FakeAzureOpenAI) -> None:
    async def main() -> None:
        browser = Browser()
        await browser.pc.setLocalDescription(await browser.pc.createOffer())
        call_id, answer = await asyncio.to_thread(start_call, emulator, MINTED, browser.pc.localDescription.sdp)
        await browser.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        async with aiohttp.ClientSession() as http:
            sideband = await Sideband.attach(http, emulator, call_id)
            await browser.expect("session.created")
            await browser.hang_up()
            assert await sideband.closed(timeout=15) == 1000
        call = emulator.call(call_id)
        assert (call.end_reason, emulator.calls[call_id]) == ("gone", "ended")

    asyncio.run(main())


def test_a_filtered_calls_browser_sees_only_what_the_filter_passes_and_its_sideband_sees_all(
    emulator: FakeAzureOpenAI,
) -> None:
    async def main() -> None:
        browser = Browser()
        await browser.pc.setLocalDescription(await browser.pc.createOffer())
        call_id, answer = await asyncio.to_thread(
            start_call, emulator, MINTED, browser.pc.localDescription.sdp, webrtc_filter=True
        )
        try:
            async with aiohttp.ClientSession() as http:
                sideband = await Sideband.attach(http, emulator, call_id)  # before the channel opens: sees it all
                await browser.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
                await until(lambda: browser.channel.readyState == "open", "the browser's channel to open")
                browser.send({"type": "no.such.event"})
                message = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi there"}]}
                browser.send({"type": "conversation.item.create", "item": message})
                browser.send({"type": "response.create"})
                spoken = await browser.expect("response.output_audio_transcript.done")
                assert spoken["transcript"].startswith("You said: Hi there.")
                await browser.expect("output_audio_buffer.stopped")  # the reply's last event
                seen = {event["type"] for event in browser.events}
                assert seen <= WEBRTC_FILTER_PASSES, seen - WEBRTC_FILTER_PASSES
                assert {"conversation.item.added", "output_audio_buffer.started"} <= seen
                for hidden in ("session.created", "error", "response.done"):
                    await sideband.expect(hidden)  # in this order on the call
                assert (await sideband.expect("output_audio_buffer.stopped"))["response_id"] == spoken["response_id"]
        finally:
            await browser.hang_up()

    asyncio.run(main())


TIME_TOOL = {
    "type": "function",
    "name": "get_current_time",
    "description": "The current local time in a time zone.",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]},
}


def test_the_emulator_calls_a_declared_tool_waits_for_the_sideband_and_speaks_its_output(
    emulator: FakeAzureOpenAI,
) -> None:
    async def main() -> None:
        browser = Browser()
        await browser.pc.setLocalDescription(await browser.pc.createOffer())
        session = {**MINTED, "tools": [TIME_TOOL], "tool_choice": "auto"}
        call_id, answer = await asyncio.to_thread(start_call, emulator, session, browser.pc.localDescription.sdp)
        await browser.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        try:
            async with aiohttp.ClientSession() as http:
                sideband = await Sideband.attach(http, emulator, call_id)
                await browser.expect("session.created")
                typed = {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "What time is it in Tokyo?"}],
                }
                browser.send({"type": "conversation.item.create", "item": typed})
                browser.send({"type": "response.create"})
                added = (await sideband.expect("response.output_item.added"))["item"]
                assert (added["type"], added["name"], added["status"]) == (
                    "function_call",
                    "get_current_time",
                    "in_progress",
                )
                where = {"item_id": added["id"], "call_id": added["call_id"], "output_index": 0}
                delta = await sideband.expect("response.function_call_arguments.delta")
                assert where.items() <= delta.items() and json.loads(delta["delta"]) == {"timezone": "Asia/Tokyo"}
                assert (await sideband.expect("response.function_call_arguments.done"))["arguments"] == delta["delta"]
                done = (await sideband.expect("response.done"))["response"]
                [called] = done["output"]
                assert (done["status"], called["call_id"], called["arguments"]) == (
                    "completed",
                    added["call_id"],
                    delta["delta"],
                )
                assert done["usage"]["output_tokens"] > 0
                # The model waits: no reply until the server answers over the sideband.
                output = {"timezone": "Asia/Tokyo", "time": "2026-12-07T03:13:24+09:00", "weekday": "Monday"}
                item = {"type": "function_call_output", "call_id": called["call_id"], "output": json.dumps(output)}
                await sideband.send({"type": "conversation.item.create", "item": item})
                await sideband.send({"type": "response.create"})
                mirrored = await browser.expect("conversation.item.added")
                while mirrored["item"]["type"] != "function_call_output":
                    mirrored = await browser.expect("conversation.item.added")
                assert mirrored["item"]["call_id"] == called["call_id"], "the browser sees the server's output"
                spoken = await browser.expect("response.output_audio_transcript.done")
                assert spoken["transcript"] == "It is 03:13 in Asia/Tokyo."
                assert [e["type"] for e in browser.events].count("response.created") == 2, "one call, one answer"
        finally:
            await browser.hang_up()

    asyncio.run(main())


def test_without_declared_tools_the_emulator_answers_a_time_question_in_words(emulator: FakeAzureOpenAI) -> None:
    async def main() -> None:
        browser = Browser()
        await browser.pc.setLocalDescription(await browser.pc.createOffer())
        _, answer = await asyncio.to_thread(start_call, emulator, MINTED, browser.pc.localDescription.sdp)
        await browser.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        try:
            await browser.expect("session.created")
            typed = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What time is it?"}]}
            browser.send({"type": "conversation.item.create", "item": typed})
            browser.send({"type": "response.create"})
            spoken = await browser.expect("response.output_audio_transcript.done")
            assert spoken["transcript"].startswith("You said: What time is it.")
            assert not [e for e in browser.events if e["type"].startswith("response.function_call")]
        finally:
            await browser.hang_up()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("words", "call"),
    [
        ("What time is it?", ("get_current_time", {"timezone": "Europe/Paris"})),
        ("what time is it in America/New_York", ("get_current_time", {"timezone": "America/New_York"})),
        ("How do I deploy this?", ("search_knowledge", {"query": "How do I deploy this"})),
        ("search the docs for session limits.", ("search_knowledge", {"query": "session limits"})),
        ("Tell me a story", None),
        ("Sometimes I wonder", None),
    ],
)
def test_the_emulators_trigger_phrases(words: str, call: tuple[str, dict] | None) -> None:
    chosen = tool_call_for(words, {"get_current_time", "search_knowledge"})
    assert (chosen and (chosen[0], json.loads(chosen[1]))) == call
    assert tool_call_for(words, set()) is None, "only declared tools are called"


def test_the_emulator_speaks_from_each_kind_of_output() -> None:
    hits = {"hits": [{"path": "deploying.md", "snippet": "Run azd up."}]}
    assert spoken_answer([json.dumps(hits), '{"hits": []}', '{"error": "Unknown time zone."}']) == (
        "From deploying.md: Run azd up. I found nothing about that in the documents. "
        "The lookup failed: Unknown time zone."
    )
