"""The emulated realtime peer, driven like a browser would drive Azure: a real aiortc client over loopback sockets.

Each test runs the client on its own asyncio loop in the test thread while PeerHost runs on its loop thread.
Waits poll for the expected event with a timeout instead of sleeping a fixed time.
"""

from __future__ import annotations

import array
import asyncio
import json
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator

import av
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack

from localdev.emulator import SPEECH_LEVEL, PeerHost, audio_frames
from localdev.emulator import peer as emulator_peer

TIMEOUT = 5.0
QUIET = 0.01  # peak level of "silence" after Opus round trips
LOUD = 0.15  # the peer's tone is ~0.3 peak


def peak(frame: av.AudioFrame) -> float:
    samples = array.array("h", bytes(frame.planes[0]))[: frame.samples * len(frame.layout.channels)]
    return max(max(samples), -min(samples)) / 32768


async def until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


class Microphone(AudioStreamTrack):
    """A fake microphone the test switches between a 440 Hz tone (speech to the VAD) and silence."""

    def __init__(self) -> None:
        super().__init__()
        self.speaking = False

    async def recv(self) -> av.AudioFrame:
        frame = await super().recv()  # paced silence
        assert isinstance(frame, av.AudioFrame) and frame.pts is not None
        if self.speaking:
            step = 2 * math.pi * 440 / frame.sample_rate
            tone = array.array("h", (int(16000 * math.sin(step * (frame.pts + i))) for i in range(frame.samples)))
            frame.planes[0].update(tone.tobytes())
        return frame


class Browser:
    """The browser's side of a call: microphone, `oai-events` channel, events received and speaker levels."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = Microphone()
        self.pc.addTrack(self.mic)
        self.channel = self.pc.createDataChannel("oai-events")
        self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)
        self.events: list[dict] = []
        self.received_at: list[float] = []
        self.levels: list[tuple[float, float]] = []  # (arrival time, peak) of each speaker frame
        self.cursor = 0  # index after the last event `expect` returned
        self.at = 0.0  # when that event arrived
        self._speaker: asyncio.Task | None = None

    @classmethod
    async def call(cls, host: PeerHost, session: dict, extra_candidates: tuple[str, ...] = ()) -> Browser:
        """Offer, get the answer from the host as fake_openai would, apply it."""
        browser = cls()
        await browser.pc.setLocalDescription(await browser.pc.createOffer())
        end = "a=end-of-candidates"
        offer = browser.pc.localDescription.sdp.replace(end, "\r\n".join([*extra_candidates, end]))
        answer = await asyncio.to_thread(host.answer, offer, session)
        await browser.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        return browser

    def _on_message(self, message: str) -> None:
        self.events.append(json.loads(message))
        self.received_at.append(time.monotonic())

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._speaker = asyncio.ensure_future(self._listen(track))

    async def _listen(self, track: MediaStreamTrack) -> None:
        async for frame in audio_frames(track):
            self.levels.append((time.monotonic(), peak(frame)))

    def send(self, event: dict | str) -> None:
        self.channel.send(event if isinstance(event, str) else json.dumps(event))

    async def expect(self, event_type: str, timeout: float = TIMEOUT) -> dict:
        """The next event of this type after the previous expected one, so sequences are checked in order."""

        def found() -> bool:
            return any(e["type"] == event_type for e in self.events[self.cursor :])

        await until(found, f"{event_type} after {self.skipped(0)[-3:]}", timeout)
        index = next(i for i in range(self.cursor, len(self.events)) if self.events[i]["type"] == event_type)
        self.cursor = index + 1
        self.at = self.received_at[index]
        return self.events[index]

    def skipped(self, since: int) -> list[str]:
        """Types of the events passed over between cursor position `since` and now."""
        return [e["type"] for e in self.events[since : self.cursor]]

    def passed(self, since: int, event_type: str) -> list[dict]:
        """The events of one type passed over between cursor position `since` and now."""
        return [e for e in self.events[since : self.cursor] if e["type"] == event_type]

    def loudest(self, start: float, end: float = math.inf) -> float:
        return max((level for t, level in self.levels if start <= t <= end), default=0.0)

    async def hear_silence_after(self, moment: float, timeout: float = 1.0) -> None:
        await until(lambda: any(t > moment and lvl < QUIET for t, lvl in self.levels), "silence", timeout)

    async def hang_up(self) -> None:
        await self.pc.close()
        if self._speaker is not None:
            await self._speaker


def run_call(
    host: PeerHost,
    session: dict,
    scenario: Callable[[Browser], Awaitable[None]],
    extra_candidates: tuple[str, ...] = (),
) -> None:
    async def main() -> None:
        browser = await Browser.call(host, session, extra_candidates)
        try:
            await scenario(browser)
        finally:
            await browser.hang_up()

    asyncio.run(main())


@pytest.fixture
def host() -> Iterator[PeerHost]:
    peer_host = PeerHost()
    yield peer_host
    peer_host.close()


def test_typed_message_gets_a_streamed_spoken_reply_that_can_be_cancelled(host: PeerHost) -> None:
    voice = {"output": {"voice": "marin"}}
    session = {"type": "realtime", "model": "my-realtime", "instructions": "Be brief.", "audio": voice}
    lan_and_mdns = (  # as Chromium offers them; the peer must not use them
        "a=candidate:9 1 udp 2122260223 192.0.2.2 50000 typ host",
        "a=candidate:8 1 udp 2122260223 0f3c2a9e-1111-4c4c-9b9b-123456789abc.local 50001 typ host",
    )

    async def scenario(browser: Browser) -> None:
        created = (await browser.expect("session.created"))["session"]
        assert created["id"].startswith("sess_") and created["type"] == "realtime"
        assert (created["model"], created["instructions"]) == ("my-realtime", "Be brief.")
        assert created["audio"]["output"]["voice"] == "marin"
        peer = host.peers[-1]
        assert peer.call_id.startswith("rtc_") and peer.channel_open
        applied = [line for line in peer._pc.remoteDescription.sdp.splitlines() if line.startswith("a=candidate:")]
        assert applied and all(" 127.0.0.1 " in line for line in applied), "LAN and mDNS candidates must be dropped"

        browser.send({"type": "session.update", "session": {"type": "realtime", "instructions": "Be terse."}})
        updated = (await browser.expect("session.updated"))["session"]
        assert (updated["id"], updated["instructions"]) == (created["id"], "Be terse.")
        assert updated["audio"]["output"]["voice"] == "marin", "session.update merges, it does not replace"

        await until(lambda: len(browser.levels) >= 25, "0.5 s of speaker audio")
        assert browser.loudest(0) < QUIET, "the speaker must be silent before the assistant speaks"

        text = {"type": "input_text", "text": "Hello emulator"}
        browser.send(
            {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [text]}}
        )
        added = (await browser.expect("conversation.item.added"))["item"]
        assert added["id"] and added["role"] == "user"
        assert (await browser.expect("conversation.item.done"))["item"]["id"] == added["id"]

        browser.send({"type": "response.create"})
        response_id = (await browser.expect("response.created"))["response"]["id"]
        assert (await browser.expect("conversation.item.added"))["item"]["role"] == "assistant"
        await browser.expect("output_audio_buffer.started")
        started_at, deltas_from = browser.at, browser.cursor
        done = await browser.expect("response.output_audio_transcript.done")
        deltas = browser.passed(deltas_from, "response.output_audio_transcript.delta")
        assert len(deltas) > 5
        assert {(d["response_id"], d["item_id"]) for d in deltas} == {(response_id, done["item_id"])}
        assert "".join(d["delta"] for d in deltas) == done["transcript"]
        assert done["transcript"] == "You said: Hello emulator. This is the local emulator, not Azure."
        finished = (await browser.expect("response.done"))["response"]
        assert finished["status"] == "completed" and finished["usage"]["output_tokens"] > 0
        await browser.expect("output_audio_buffer.stopped")  # after response.done: the buffer drains last
        stopped_at = browser.at
        assert 2.5 < stopped_at - started_at < 4.5
        assert browser.loudest(started_at, stopped_at) > LOUD, "the reply must be audible"
        await browser.hear_silence_after(stopped_at)

        browser.send({"type": "response.create"})
        await browser.expect("output_audio_buffer.started")
        await until(lambda: browser.loudest(browser.at) > LOUD, "the second reply to be audible")
        cancel_from = browser.cursor
        browser.send({"type": "response.cancel"})
        assert (await browser.expect("response.done", timeout=1.0))["response"]["status"] == "cancelled"
        cut = browser.passed(cancel_from, "response.output_audio_transcript.done")
        assert len(cut) == 1 and "not Azure" not in cut[0]["transcript"], "closed with what was said so far"
        await browser.expect("output_audio_buffer.stopped", timeout=1.0)
        await browser.hear_silence_after(browser.at)

        browser.send({"type": "response.create"})
        await browser.expect("output_audio_buffer.started")
        await until(lambda: browser.loudest(browser.at) > LOUD, "the third reply to be audible")
        browser.send({"type": "output_audio_buffer.clear"})
        await browser.expect("output_audio_buffer.cleared", timeout=1.0)
        await browser.hear_silence_after(browser.at)
        cancel_from = browser.cursor
        browser.send({"type": "response.cancel"})
        assert (await browser.expect("response.done", timeout=1.0))["response"]["status"] == "cancelled"

        browser.send({"type": "response.cancel", "event_id": "evt_again"})
        error = (await browser.expect("error"))["error"]
        assert (error["code"], error["event_id"]) == ("response_cancel_not_active", "evt_again")
        assert "output_audio_buffer.stopped" not in browser.skipped(cancel_from), "already cleared"

    run_call(host, session, scenario, extra_candidates=lan_and_mdns)


def test_voice_turns_are_detected_answered_and_interruptible(host: PeerHost) -> None:
    async def scenario(browser: Browser) -> None:
        await browser.expect("session.created")
        peer = host.peers[-1]

        browser.mic.speaking = True
        speech = await browser.expect("input_audio_buffer.speech_started")
        assert peer.mic_frames > 0 and peer.mic_peak > SPEECH_LEVEL
        browser.mic.speaking = False
        assert (await browser.expect("input_audio_buffer.speech_stopped"))["item_id"] == speech["item_id"]
        assert (await browser.expect("input_audio_buffer.committed"))["item_id"] == speech["item_id"]
        user_item = (await browser.expect("conversation.item.added"))["item"]
        assert (user_item["id"], user_item["role"]) == (speech["item_id"], "user")
        transcript = (await browser.expect("conversation.item.input_audio_transcription.completed"))["transcript"]
        assert re.fullmatch(r"\(emulator heard \d+\.\d s of speech\)", transcript)
        await browser.expect("response.created")
        await browser.expect("output_audio_buffer.started")
        words = [(await browser.expect("response.output_audio_transcript.delta"))["delta"] for _ in range(3)]
        assert "".join(words) == "I heard you."

        browser.mic.speaking = True  # barge in
        await browser.expect("input_audio_buffer.speech_started")
        await browser.expect("output_audio_buffer.cleared")  # WebRTC: the service cuts the audio on barge-in
        interrupted = (await browser.expect("response.done"))["response"]
        assert (interrupted["status"], interrupted["status_details"]["reason"]) == ("cancelled", "turn_detected")
        browser.mic.speaking = False
        await browser.expect("input_audio_buffer.speech_stopped")
        await browser.expect("response.created")  # the interruption is a new turn

        await browser.hang_up()
        await until(lambda: peer.closed and not peer.channel_open, "the peer to notice the hang-up")

    run_call(host, {"type": "realtime", "model": "gpt-realtime"}, scenario)


def test_manual_turns_commit_without_vad(host: PeerHost) -> None:
    session = {"type": "realtime", "model": "gpt-realtime", "audio": {"input": {"turn_detection": None}}}

    async def scenario(browser: Browser) -> None:
        await browser.expect("session.created")
        peer = host.peers[-1]
        browser.send({"type": "input_audio_buffer.commit"})
        assert (await browser.expect("error"))["error"]["code"] == "input_audio_buffer_commit_empty"
        browser.mic.speaking = True
        await until(lambda: peer.mic_peak > SPEECH_LEVEL and peer.mic_frames > 25, "0.5 s of microphone tone")
        browser.send({"type": "input_audio_buffer.commit"})
        item_id = (await browser.expect("input_audio_buffer.committed"))["item_id"]
        assert (await browser.expect("conversation.item.input_audio_transcription.completed"))["item_id"] == item_id
        assert not any(e["type"].startswith("input_audio_buffer.speech_") for e in browser.events)

        frames = peer.mic_frames
        await until(lambda: peer.mic_frames >= frames + 10, "0.2 s more microphone tone")
        browser.send({"type": "input_audio_buffer.clear"})
        browser.send({"type": "input_audio_buffer.commit"})  # right after the clear: nothing left to commit
        await browser.expect("input_audio_buffer.cleared")
        assert (await browser.expect("error"))["error"]["code"] == "input_audio_buffer_commit_empty"

    run_call(host, session, scenario)


def test_bad_events_injected_errors_and_close(host: PeerHost, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(browser: Browser) -> None:
        await browser.expect("session.created")
        peer = host.peers[-1]

        browser.send("{not json")
        assert (await browser.expect("error"))["error"]["code"] == "invalid_json"
        browser.send({"type": "bogus.event", "event_id": "evt_1"})
        error = (await browser.expect("error"))["error"]
        assert (error["type"], error["code"], error["event_id"]) == ("invalid_request_error", "unknown_event", "evt_1")
        assert [e["type"] for e in peer.events_received] == ["bogus.event"]

        await asyncio.to_thread(host.inject_error, "rate_limit_exceeded", "Injected by the test")
        error = (await browser.expect("error"))["error"]
        assert (error["code"], error["message"]) == ("rate_limit_exceeded", "Injected by the test")

        browser.send({"type": "response.create"})
        await browser.expect("output_audio_buffer.started")  # close mid-reply: tasks must still wind down
        await asyncio.to_thread(host.close)
        assert peer.closed and not peer.channel_open
        await until(lambda: browser.channel.readyState == "closed", "the browser to see the channel close")

    run_call(host, {"type": "realtime", "model": "gpt-realtime"}, scenario)
    assert not any(t.name == "peer-host" for t in threading.enumerate())
    with pytest.raises(RuntimeError):
        host.answer("v=0\r\n", {})
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")], caplog.text


def test_a_call_that_never_connects_is_given_up(host: PeerHost, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emulator_peer, "CONNECT_DEADLINE_S", 0.2)

    async def scenario() -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("audio")
        pc.createDataChannel("oai-events")
        await pc.setLocalDescription(await pc.createOffer())
        # No candidates, as from a browser that does not wait for gathering, and the answer is never applied:
        # without the deadline the peer would wait for ICE checks forever.
        lines = pc.localDescription.sdp.splitlines()
        offer = "\r\n".join(line for line in lines if not line.startswith(("a=candidate:", "a=end-of-candidates")))
        await asyncio.to_thread(host.answer, offer + "\r\n", {"type": "realtime"})
        peer = host.peers[-1]
        await until(lambda: peer.closed, "the peer to give up", timeout=2.0)
        await pc.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("offer", ["", "hello", "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"])
def test_unusable_offer_is_a_value_error(host: PeerHost, offer: str) -> None:
    with pytest.raises(ValueError):
        host.answer(offer, {"type": "realtime"})
    assert host.peers == []


def test_session_update_refuses_what_the_service_refuses_and_applies_nothing(host: PeerHost) -> None:
    session = {
        "type": "realtime",
        "model": "gpt-realtime",
        "instructions": "Server.",
        "audio": {"output": {"voice": "marin"}},
    }

    async def scenario(browser: Browser) -> None:
        await browser.expect("session.created")
        refused = [  # (session, code, param) as the service answers them
            (
                {"type": "realtime", "instructions": "Browser.", "temperature": 0.6},
                "unknown_parameter",
                "session.temperature",
            ),
            (
                {"type": "realtime", "audio": {"output": {"voice": "marin", "pitch": 2}}},
                "unknown_parameter",
                "session.audio.output.pitch",
            ),
            ({"instructions": "Browser."}, "missing_required_parameter", "session.type"),
            (
                {"type": "realtime", "audio": {"output": {"voice": "nova"}}},
                "invalid_value",
                "session.audio.output.voice",
            ),
        ]
        for number, (update, code, param) in enumerate(refused):
            browser.send({"type": "session.update", "event_id": f"evt_{number}", "session": update})
            error = (await browser.expect("error"))["error"]
            assert (error["type"], error["code"], error["param"], error["event_id"]) == (
                "invalid_request_error",
                code,
                param,
                f"evt_{number}",
            )
        assert not [e for e in browser.events if e["type"] == "session.updated"], "a refused update changes nothing"

        browser.send({"type": "session.update", "session": {"type": "realtime", "tracing": "auto", "model": "other"}})
        accepted = (await browser.expect("session.updated"))["session"]
        assert (accepted["instructions"], accepted["model"]) == ("Server.", "gpt-realtime"), "the call keeps its model"

        browser.send({"type": "response.create"})
        await browser.expect("response.done", timeout=10.0)
        browser.send(
            {"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"voice": "cedar"}}}}
        )
        assert (await browser.expect("error"))["error"]["code"] == "cannot_update_voice"
        browser.send(
            {"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"voice": "marin"}}}}
        )
        assert (await browser.expect("session.updated"))["session"]["audio"]["output"]["voice"] == "marin"

    run_call(host, session, scenario)


def test_replies_send_the_service_event_set_in_order_also_when_cancelled(host: PeerHost) -> None:
    closing = [
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
        "output_audio_buffer.stopped",
    ]

    async def scenario(browser: Browser) -> None:
        await browser.expect("session.created")
        for cancel in (False, True):
            start = len(browser.events)
            browser.send({"type": "response.create"})
            await browser.expect("response.output_audio_transcript.delta")
            if cancel:
                browser.send({"type": "response.cancel"})
            await browser.expect("output_audio_buffer.stopped", timeout=10.0)
            types = [e["type"] for e in browser.events[start:] if not e["type"].endswith(".delta")]
            assert types == [
                "response.created",
                "response.output_item.added",
                "conversation.item.added",
                "response.content_part.added",
                "output_audio_buffer.started",
                *closing,
            ]
            events = {e["type"]: e for e in browser.events[start:]}
            item = events["response.output_item.done"]["item"]
            said = events["response.output_audio_transcript.done"]["transcript"]
            assert item["status"] == ("incomplete" if cancel else "completed")
            assert item["content"] == [{"type": "output_audio", "transcript": said}]
            assert events["response.content_part.done"]["part"] == {"type": "audio", "transcript": said}
            assert events["response.done"]["response"]["output"] == [item]
            assert ("not Azure" in said) is not cancel, "a cancelled reply is closed with what was said so far"

    run_call(host, {"type": "realtime", "model": "gpt-realtime"}, scenario)


def test_items_are_retrieved_with_their_transcript_and_deleted(host: PeerHost) -> None:
    session = {"type": "realtime", "model": "gpt-realtime", "audio": {"input": {"turn_detection": None}}}

    async def scenario(browser: Browser) -> None:
        await browser.expect("session.created")
        browser.mic.speaking = True
        peer = host.peers[-1]
        await until(lambda: peer.mic_frames > 25, "0.5 s of microphone tone")
        browser.send({"type": "input_audio_buffer.commit"})
        item_id = (await browser.expect("input_audio_buffer.committed"))["item_id"]
        heard = (await browser.expect("conversation.item.input_audio_transcription.completed"))["transcript"]

        browser.send({"type": "conversation.item.retrieve", "item_id": item_id})  # what the Agents SDK does here
        item = (await browser.expect("conversation.item.retrieved"))["item"]
        assert (item["id"], item["role"], item["content"][0]["transcript"]) == (item_id, "user", heard)

        browser.send({"type": "conversation.item.delete", "item_id": item_id})
        assert (await browser.expect("conversation.item.deleted"))["item_id"] == item_id
        browser.send({"type": "conversation.item.retrieve", "item_id": item_id, "event_id": "evt_gone"})
        error = (await browser.expect("error"))["error"]
        assert (error["code"], error["event_id"]) == ("item_retrieve_invalid_item_id", "evt_gone")
        assert item_id in error["message"]

    run_call(host, session, scenario)


def test_a_call_ends_by_hangup_by_the_session_limit_or_by_a_lost_network(host: PeerHost) -> None:
    """Hang-up and the service's limit close the channel at once (the limit says why first); a lost network says
    nothing."""
    session = {"type": "realtime", "model": "gpt-realtime"}

    async def hung_up(browser: Browser) -> None:
        await browser.expect("session.created")
        assert await asyncio.to_thread(host.hangup, host.peers[-1].call_id)
        await until(lambda: browser.channel.readyState == "closed", "the channel to close")
        assert not await asyncio.to_thread(host.hangup, host.peers[-1].call_id), "only a live call can be hung up"

    async def expired(browser: Browser) -> None:
        await browser.expect("session.created")
        assert await asyncio.to_thread(host.expire, host.peers[-1].call_id)
        assert (await browser.expect("error"))["error"]["code"] == "session_expired"
        await until(lambda: browser.channel.readyState == "closed", "the channel to close")

    async def dropped(browser: Browser) -> None:
        await browser.expect("session.created")
        peer = host.peers[-1]
        assert await asyncio.to_thread(host.drop, peer.call_id)
        assert peer.closed
        heard = len(browser.levels)
        await asyncio.sleep(0.5)
        assert browser.channel.readyState == "open", "no goodbye reaches the browser"
        assert len(browser.levels) <= heard + 2, "no more audio"

    for scenario in (hung_up, expired, dropped):
        run_call(host, session, scenario)
    assert not host.hangup("rtc_unknown")


def test_replayed_turns_restore_context_and_wrong_ones_are_refused(host: PeerHost) -> None:
    def said(role: str, kind: str, text: str) -> dict:
        return {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": role, "content": [{"type": kind, "text": text}]},
        }

    async def scenario(browser: Browser) -> None:
        await browser.expect("session.created")
        browser.send(said("user", "input_text", "My name is Ada."))
        await browser.expect("conversation.item.done")
        browser.send(said("assistant", "output_text", "Hello Ada."))
        item = (await browser.expect("conversation.item.done"))["item"]
        assert (item["role"], item["content"][0]["text"]) == ("assistant", "Hello Ada.")
        browser.send(said("assistant", "input_text", "wrong part type"))
        assert (await browser.expect("error"))["error"]["param"] == "item.content"
        browser.send(said("robot", "input_text", "wrong role"))
        assert (await browser.expect("error"))["error"]["param"] == "item.role"
        browser.send(said("user", "input_text", "What is my name?"))
        browser.send({"type": "response.create"})
        done = await browser.expect("response.output_audio_transcript.done")
        assert done["transcript"].startswith("You said: What is my name. I remember our conversation so far.")

    run_call(host, {"type": "realtime", "model": "gpt-realtime"}, scenario)
