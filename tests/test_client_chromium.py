"""The browser client's newer behaviours in a real Chromium against the emulator: calls that end (and why), reconnection
with context, time limits, microphones, push-to-talk, keeping the transcript, and audio a browser refuses to play.

Fixtures and helpers come from test_browser_e2e (one app, one emulator, one Chromium per module); every wait is for
something the page or the emulator shows.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page

from localdev.emulator import EmulatedPeer, PeerHost
from localdev.fake_openai import FakeAzureOpenAI
from tests import tools
from tests.conftest import API_KEY, LocalHost, emulated_host
from tests.test_browser_e2e import (  # noqa: F401  (fixtures)
    ASSISTANT_LINES,
    CONNECT_TIMEOUT_MS,
    REPLY_END,
    USER_LINES,
    browser,
    embed_origin,
    eventually,
    peers,
    start,
)

pytestmark = [pytest.mark.browser, tools.chromium.needed]
RECONNECT_TIMEOUT_MS = 45_000  # drop noticed (ICE disconnected + 3 s grace) plus a new call on a loaded machine
NOTICE = "#call-notice-text"


@pytest.fixture(scope="module")
def emulator(peers: PeerHost) -> Iterator[FakeAzureOpenAI]:  # noqa: F811
    service = FakeAzureOpenAI(api_key=API_KEY, answerer=peers.answer)
    yield service
    service.close()


@pytest.fixture(scope="module")
def app(emulator: FakeAzureOpenAI) -> Iterator[LocalHost]:
    host = emulated_host(emulator, REALTIME_TURN_DETECTION_CHOOSABLE="true")
    yield host
    host.close()


def open_page(browser, app: LocalHost, config: dict | None = None, init_script: str | None = None) -> Page:  # noqa: F811
    """The app page in a fresh context; `config` is merged into the server's /config answer."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=app.url)
    if init_script:
        context.add_init_script(init_script)
    page = context.new_page()
    if config:

        def merged(route) -> None:
            response = route.fetch()
            route.fulfill(response=response, json={**response.json(), **config})

        page.route("**/config", merged)
    page.goto(app.url + "/")
    page.wait_for_function("document.querySelectorAll('#voice option').length >= 10")
    return page


@pytest.fixture
def page(browser, app: LocalHost) -> Iterator[Page]:  # noqa: F811
    page = open_page(browser, app)
    yield page
    page.context.close()


def say(page: Page, text: str) -> None:
    """Type a message and wait for the whole reply to it."""
    page.fill("#message", text)
    page.press("#message", "Enter")
    reply = page.locator(ASSISTANT_LINES, has_text=f"You said: {text.rstrip('.!?')}")
    reply.wait_for()
    eventually(lambda: REPLY_END in reply.inner_text(), what=f"the reply to {text!r}")


def new_peer(peers: PeerHost, after: EmulatedPeer) -> EmulatedPeer:  # noqa: F811
    """The next call's peer as soon as the emulator has answered it, before any of its audio arrives."""
    return eventually(lambda: peers.peers[-1] is not after and peers.peers[-1], timeout=45, what="a new call")


def next_peer(peers: PeerHost, after: EmulatedPeer) -> EmulatedPeer:  # noqa: F811
    peer = new_peer(peers, after)
    eventually(lambda: peer.channel_open, what="the new call's data channel")
    return peer


SILENT = 0.01  # the emulator's peak level of a muted microphone's frames; the live fake microphone is near full scale


class MicWatch:
    """The loudest a call's microphone reaches at the emulator while this watches, frame by frame.

    The peer's `mic_peak` is the loudest of its last 25 frames (0.5 s of audio), so reading it every 10 ms sees every
    frame that arrives; a thread reads it while the test drives the page."""

    def __init__(self, peer: EmulatedPeer) -> None:
        self.peer = peer
        self.loudest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            self.loudest = max(self.loudest, self.peer.mic_peak)

    def over(self, frames: int) -> float:
        """The loudest until `frames` more frames have arrived (20 ms each), however long a loaded machine takes."""
        target = self.peer.mic_frames + frames
        eventually(lambda: self.peer.mic_frames >= target, timeout=45, what=f"{frames} more microphone frames")
        self._stop.set()
        self._thread.join(timeout=5)
        return max(self.loudest, self.peer.mic_peak)


RECORD_NOTICES = """() => {
    // Reconnecting lasts about a second: keep every status and notice the page shows, so none is missed.
    const shown = (window.shown = { statuses: [], notices: [] });
    const status = document.getElementById("status");
    const notice = document.getElementById("call-notice-text");
    new MutationObserver(() => shown.statuses.push(status.dataset.status))
        .observe(status, { attributeFilter: ["data-status"] });
    new MutationObserver(() => shown.notices.push(notice.textContent))
        .observe(notice, { childList: true, characterData: true, subtree: true });
}"""


def replayed(peer: EmulatedPeer) -> list[tuple[str, str]]:
    """The (role, text) items a new call was given before anything else was asked of it. The page sends them as
    the data channel opens, so callers wait for them to arrive rather than read them at once."""
    items = []
    for event in peer.events_received:
        if event["type"] != "conversation.item.create":
            break
        item = event["item"]
        items.append((item["role"], item["content"][0]["text"]))
    return items


def test_a_lost_connection_reconnects_and_the_assistant_remembers(page: Page, peers: PeerHost) -> None:  # noqa: F811
    first = start(page, peers)
    say(page, "My name is Ada.")
    heard = page.locator(USER_LINES).count()
    page.evaluate(RECORD_NOTICES)
    peers.drop(first.call_id)

    second = next_peer(peers, first)
    page.wait_for_function(
        "document.getElementById('call-notice-text').textContent.startsWith('Reconnected')",
        timeout=RECONNECT_TIMEOUT_MS,
    )
    assert "reconnecting" in page.evaluate("window.shown.statuses")
    assert any(
        n.startswith("The connection was lost. Reconnecting: attempt 1 of 6")
        for n in page.evaluate("window.shown.notices")
    )

    def both_turns() -> bool:
        history = replayed(second)
        return ("user", "My name is Ada.") in history and any(
            role == "assistant" and text.startswith("You said: My name is Ada") for role, text in history
        )

    eventually(both_turns, what="the user's and the assistant's replayed turns to arrive")

    # The microphone's turn opens again on the new call; a message typed before that would be cut by it.
    page.wait_for_function(f"document.querySelectorAll({USER_LINES!r}).length > {heard}")
    page.fill("#message", "What is my name?")
    page.press("#message", "Enter")
    page.locator(ASSISTANT_LINES, has_text="I remember our conversation so far").wait_for()
    page.click("#stop")
    page.wait_for_selector("#status[data-status='disconnected']")
    assert page.inner_text(NOTICE) == "You ended the conversation."
    eventually(lambda: second.closed, what="the reconnected call to end")


def test_the_service_limit_reconnects_at_once(page: Page, peers: PeerHost) -> None:  # noqa: F811
    first = start(page, peers)
    say(page, "Remember the number seven.")
    peers.expire(first.call_id)
    second = next_peer(peers, first)
    eventually(lambda: ("user", "Remember the number seven.") in replayed(second), what="the replayed turn to arrive")
    page.wait_for_selector("#status[data-status='listening']")
    assert page.is_hidden("#error"), "the service's limit is not the user's error"


def test_a_server_hang_up_says_so_and_does_not_reconnect(page: Page, peers: PeerHost) -> None:  # noqa: F811
    peer = start(page, peers)
    calls = len(peers.peers)
    page.evaluate(RECORD_NOTICES)
    peers.hangup(peer.call_id)
    # The page decides at the end whether to reconnect: a reconnection shows "Reconnecting" at once and keeps Start
    # disabled until it is over, so Start enabled with no "Reconnecting" ever shown proves none began.
    page.wait_for_selector("#start:enabled")
    statuses = page.evaluate("window.shown.statuses")
    assert statuses[-1] == "disconnected" and "reconnecting" not in statuses, statuses
    assert page.inner_text(NOTICE) == "The conversation was ended by the server."
    assert len(peers.peers) == calls, "no new call after the server hung up"


def test_you_ended_it_is_not_it_ended(page: Page, peers: PeerHost) -> None:  # noqa: F811
    start(page, peers)
    page.click("#stop")
    page.wait_for_selector("#status[data-status='disconnected']")
    assert page.inner_text(NOTICE) == "You ended the conversation."
    assert page.is_hidden("#continue")


def test_the_time_limit_is_shown_ends_the_call_and_a_new_one_keeps_the_context(browser, app, peers) -> None:  # noqa: F811
    page = open_page(browser, app, config={"session": {"maxSeconds": 12}})
    first = start(page, peers)
    left = re.fullmatch(r"Time left: 0:(\d\d)", page.inner_text("#time-left"))
    assert left and 0 < int(left[1]) <= 12, page.inner_text("#time-left")
    assert page.get_attribute("#time-left", "data-warn") == "true"
    assert page.inner_text(NOTICE).startswith("Less than a minute left")
    say(page, "Let us plan a trip.")
    page.evaluate(RECORD_NOTICES)
    page.wait_for_selector("#continue:visible", timeout=30_000)
    assert page.inner_text(NOTICE).startswith("The conversation reached its time limit.")
    assert "reconnecting" not in page.evaluate("window.shown.statuses"), "no reconnection after the time limit"
    eventually(lambda: first.closed, what="the call to end at the emulator")
    assert peers.peers[-1] is first
    page.click("#continue")
    second = next_peer(peers, first)
    eventually(lambda: ("user", "Let us plan a trip.") in replayed(second), what="the replayed turn to arrive")
    page.context.close()


def test_the_microphone_can_be_changed_during_a_call_and_is_remembered(page: Page, peers: PeerHost) -> None:  # noqa: F811
    peer = start(page, peers)
    options = page.eval_on_selector_all("#microphone option", "os => os.map(o => [o.value, o.textContent])")
    assert options[0] == ["", "Default microphone"] and any("Fake Audio Input 1" in label for _, label in options)
    chosen = next(value for value, label in options if "Fake Audio Input 1" in label)
    page.select_option("#microphone", chosen)
    page.wait_for_function(
        f"window.realtimeApp.session.localStream.getAudioTracks()[0].getSettings().deviceId === {chosen!r}"
    )
    sent = page.evaluate("window.realtimeApp.session.pc.getSenders()[0].track.getSettings().deviceId")
    assert sent == chosen, "the call sends the new microphone"
    frames = peer.mic_frames
    eventually(lambda: peer.mic_frames > frames + 50 and peer.mic_peak > 0.1, what="the new microphone heard")
    assert peers.peers[-1] is peer, "no reconnection"

    page.reload()
    page.wait_for_function(f"document.getElementById('microphone').value === {chosen!r}")


def test_the_microphone_picker_lists_each_device_once(page: Page, peers: PeerHost) -> None:  # noqa: F811
    start(page, peers)  # labels are known once the microphone is allowed
    page.wait_for_function("document.getElementById('microphone').textContent.includes('Fake Audio Input')")
    options = page.eval_on_selector_all("#microphone option", "os => os.map(o => [o.value, o.textContent])")
    inputs = page.evaluate(
        "navigator.mediaDevices.enumerateDevices()"
        ".then(ds => ds.filter(d => d.kind === 'audioinput').map(d => d.deviceId))"
    )
    assert "default" in inputs, "Chromium lists the default device under an id of its own as well"
    assert options[0] == ["", "Default microphone"]
    assert [value for value, _ in options[1:]] == [i for i in inputs if i not in ("default", "communications")]
    labels = [label for _, label in options]
    assert len(labels) == len(set(labels)), f"a device is listed twice: {labels}"


UNPLUGGABLE = """
// Fake devices cannot be unplugged, so the test hides one from the device list and announces the change,
// as the browser does when a USB microphone goes.
const list = navigator.mediaDevices.enumerateDevices.bind(navigator.mediaDevices);
window.unplugged = new Set();
navigator.mediaDevices.enumerateDevices = async () => (await list()).filter((d) => !window.unplugged.has(d.deviceId));
window.unplug = (id) => { window.unplugged.add(id); navigator.mediaDevices.dispatchEvent(new Event("devicechange")); };
"""


def test_an_unplugged_microphone_falls_back_to_the_default(browser, app, peers) -> None:  # noqa: F811
    page = open_page(browser, app, init_script=UNPLUGGABLE)
    peer = start(page, peers)
    chosen = page.eval_on_selector_all(
        "#microphone option", "os => os.find(o => o.textContent.includes('Input 2')).value"
    )
    page.select_option("#microphone", chosen)
    page.wait_for_function(
        f"window.realtimeApp.session.localStream.getAudioTracks()[0].getSettings().deviceId === {chosen!r}"
    )
    page.evaluate(f"window.unplug({chosen!r})")
    page.wait_for_function("document.getElementById('microphone-notice').textContent.includes('disconnected')")
    assert page.input_value("#microphone") == ""
    page.wait_for_function(
        f"window.realtimeApp.session.localStream.getAudioTracks()[0].getSettings().deviceId !== {chosen!r}"
    )
    frames = peer.mic_frames
    eventually(lambda: peer.mic_frames > frames + 50 and peer.mic_peak > 0.1, what="the default microphone heard")
    page.context.close()


def test_push_to_talk_sends_a_turn_only_while_held(browser, app, peers) -> None:  # noqa: F811
    page = open_page(browser, app)
    page.check("input[name=turns][value=manual]")
    known = len(peers.peers)
    page.click("#start")
    page.wait_for_selector("#status[data-status='listening']", timeout=CONNECT_TIMEOUT_MS)
    peer = eventually(lambda: len(peers.peers) > known and peers.peers[-1], what="the call")
    eventually(lambda: any(e["type"] == "session.update" for e in peer.events_received), what="turn detection off")
    update = next(e for e in peer.events_received if e["type"] == "session.update")
    assert update["session"]["audio"]["input"]["turn_detection"] is None
    eventually(lambda: peer.mic_frames > 50, what="microphone frames")
    assert peer.mic_peak < 0.01, "silent while the button is up"
    assert page.locator(USER_LINES).count() == 0

    page.focus("#talk")
    page.keyboard.down("Space")
    assert page.get_attribute("#talk", "aria-pressed") == "true"
    eventually(lambda: peer.mic_peak > 0.1, what="the voice while held")
    frames = peer.mic_frames
    eventually(lambda: peer.mic_frames > frames + 25, what="half a second of talking")
    page.keyboard.up("Space")
    page.locator(USER_LINES, has_text="emulator heard").wait_for()
    page.locator(ASSISTANT_LINES, has_text="I heard you").wait_for()
    types = [e["type"] for e in peer.events_received]
    assert types.index("input_audio_buffer.commit") < types.index("response.create")
    eventually(lambda: peer.mic_peak < 0.01, what="silence after release")
    page.context.close()


def test_the_transcript_can_be_downloaded_and_copied(page: Page, peers: PeerHost) -> None:  # noqa: F811
    start(page, peers)
    say(page, "Keep this line.")
    with page.expect_download() as markdown:
        page.click("#download-markdown")
    text = Path(markdown.value.path()).read_text(encoding="utf-8")
    assert markdown.value.suggested_filename.endswith(".md")
    assert "**You**" in text and "Keep this line." in text and "**Assistant**" in text

    with page.expect_download() as json_file:
        page.click("#download-json")
    lines = json.loads(Path(json_file.value.path()).read_text(encoding="utf-8"))["lines"]
    assert {"role": "user", "text": "Keep this line."}.items() <= lines[0].items() or any(
        line["role"] == "user" and line["text"] == "Keep this line." for line in lines
    )
    assert all(line["at"].endswith("Z") for line in lines)

    page.click("#copy")
    page.wait_for_selector("#keep-status:has-text('copied')")
    assert "Keep this line." in page.evaluate("navigator.clipboard.readText()")


BLOCKED_AUTOPLAY = """
// As iOS may do with a stream that arrives after the click: no autoplay, a new source stops playback, and play() is
// refused unless a click is under way.
addEventListener("DOMContentLoaded", () => {
  for (const element of document.querySelectorAll("[autoplay]")) element.removeAttribute("autoplay");
});
const play = HTMLMediaElement.prototype.play;
const source = Object.getOwnPropertyDescriptor(HTMLMediaElement.prototype, "srcObject");
let clicking = false;
addEventListener("click", () => { clicking = true; setTimeout(() => { clicking = false; }); }, true);
HTMLMediaElement.prototype.play = function () {
  return clicking ? play.call(this)
    : Promise.reject(new DOMException("play() needs a user gesture", "NotAllowedError"));
};
Object.defineProperty(HTMLMediaElement.prototype, "srcObject", {
  get() { return source.get.call(this); },
  set(stream) { source.set.call(this, stream); this.pause(); },
});
"""


def test_blocked_audio_offers_a_button_that_starts_it(browser, app, peers) -> None:  # noqa: F811
    page = open_page(browser, app, init_script=BLOCKED_AUTOPLAY)
    start(page, peers)
    page.wait_for_selector("#enable-audio:visible")
    assert page.evaluate("document.getElementById('remote-audio').paused")
    page.click("#enable-audio")
    page.wait_for_selector("#enable-audio", state="hidden")
    assert not page.evaluate("document.getElementById('remote-audio').paused")
    page.context.close()


def test_the_web_component_reconnects_and_says_why_a_call_ended(browser, app, peers) -> None:  # noqa: F811
    page = browser.new_context().new_page()
    page.goto(f"{app.url}/embed-example.html")
    shadow = "document.querySelector('realtime-voice').shadowRoot"
    known = len(peers.peers)
    page.locator("realtime-voice button.toggle").click()
    page.wait_for_function(f"{shadow}.querySelector('.status').textContent === 'Listening'", timeout=CONNECT_TIMEOUT_MS)
    first = eventually(lambda: len(peers.peers) > known and peers.peers[-1], what="the call")
    eventually(lambda: first.channel_open and first.mic_peak > 0.1, what="the data channel and the microphone")
    page.locator("realtime-voice button.mute").click()
    eventually(lambda: first.mic_peak < SILENT, what="silence after mute")
    peers.drop(first.call_id)
    second = new_peer(peers, first)
    heard = MicWatch(second)
    page.wait_for_function(
        f"{shadow}.querySelector('.notice').textContent === 'Reconnected.'", timeout=RECONNECT_TIMEOUT_MS
    )
    assert heard.over(100) < SILENT, "the component sent its microphone on the reconnected call though muted"
    assert page.locator("realtime-voice button.mute").get_attribute("aria-pressed") == "true"
    peers.hangup(second.call_id)
    page.wait_for_function(
        f"{shadow}.querySelector('.notice').textContent === 'The conversation was ended by the server.'"
    )
    assert page.locator("realtime-voice button.toggle").inner_text() == "Start conversation"
    page.context.close()


def mute_and_wait_for_silence(page: Page, peer: EmulatedPeer) -> None:
    eventually(lambda: peer.mic_peak > 0.1, what="the live microphone at the emulator")
    page.click("#mute")
    eventually(lambda: peer.mic_peak < SILENT, what="silence after mute")


def unmute_and_hear(page: Page, peer: EmulatedPeer) -> None:
    """Unmuting is heard at once: the silence measured before was the mute, not a dead microphone."""
    assert page.get_attribute("#mute", "aria-pressed") == "true" and page.is_visible("#mic-muted")
    page.click("#mute")
    eventually(lambda: peer.mic_peak > 0.1, what="the microphone heard after unmute")


def test_mute_holds_across_a_reconnection(page: Page, peers: PeerHost) -> None:  # noqa: F811
    first = start(page, peers)
    mute_and_wait_for_silence(page, first)
    peers.drop(first.call_id)
    second = new_peer(peers, first)
    heard = MicWatch(second)
    assert heard.over(100) < SILENT, "a muted page sent its microphone on the reconnected call"
    page.wait_for_function(
        "document.getElementById('call-notice-text').textContent.startsWith('Reconnected')",
        timeout=RECONNECT_TIMEOUT_MS,
    )
    unmute_and_hear(page, second)


def test_mute_holds_into_a_continued_conversation(browser, app, peers) -> None:  # noqa: F811
    page = open_page(browser, app, config={"session": {"maxSeconds": 12}})
    first = start(page, peers)
    say(page, "Let us plan a trip.")
    mute_and_wait_for_silence(page, first)
    page.wait_for_selector("#continue:visible", timeout=30_000)
    page.click("#continue")
    second = new_peer(peers, first)
    heard = MicWatch(second)
    assert heard.over(100) < SILENT, "a muted page sent its microphone on the continued call"
    page.wait_for_selector("#status[data-status='listening']")
    unmute_and_hear(page, second)
    page.context.close()


def test_mute_holds_across_a_microphone_switch(page: Page, peers: PeerHost) -> None:  # noqa: F811
    peer = start(page, peers)
    mute_and_wait_for_silence(page, peer)
    current = page.evaluate("window.realtimeApp.session.localStream.getAudioTracks()[0].getSettings().deviceId")
    other = page.eval_on_selector_all(
        "#microphone option", "(os, current) => os.find(o => o.value && o.value !== current).value", current
    )
    heard = MicWatch(peer)
    page.select_option("#microphone", other)
    page.wait_for_function(f"window.realtimeApp.session.pc.getSenders()[0].track.getSettings().deviceId === {other!r}")
    assert heard.over(100) < SILENT, "a muted page sent the new microphone"
    assert peers.peers[-1] is peer, "no reconnection"
    unmute_and_hear(page, peer)
