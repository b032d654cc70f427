"""Real clicks in a real page: headless Chromium does real WebRTC with the emulator through the function app.

Everything stays on 127.0.0.1: the app runs under the local host in its own process, the emulator (fake
service + aiortc peer) runs here so each test can inspect the call's peer or inject a fault.

Tests must hold on a loaded machine, where any step may take a second or more: they wait for what the page or the
emulator keeps showing (a transcript line, a recorded event), never for a state that lasts only as long as a reply.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from localdev.emulator import EmulatedPeer, PeerHost
from localdev.fake_openai import FakeAzureOpenAI, Fault
from tests import tools
from tests.browser import CHROMIUM, launch_args, serve_folder, speech_like_wav
from tests.conftest import API_KEY, LocalHost, emulated_host

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, tools.chromium.needed]
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CONNECT_TIMEOUT_MS = 30_000  # the page itself gives up after 20 s
# The emulator echoes a typed message before its canned line, at one word per 120 ms: this asks for ~20 s of reply,
# so an interrupt lands mid-reply however slowly the machine clicks.
LONG_REQUEST = "Tell me a long story. " + "Once upon a time a browser called a peer on loopback and they talked. " * 12
REPLY_END = "This is the local emulator, not Azure."
USER_LINES = "#transcript [data-role='user']"
ASSISTANT_LINES = "#transcript [data-role='assistant']"


def eventually(check: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> Any:
    """The first truthy result of `check` (Any: checks are often `condition and value`, typed as a union)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def peers() -> Iterator[PeerHost]:
    host = PeerHost()
    yield host
    host.close()


@pytest.fixture(scope="module")
def emulator(peers: PeerHost) -> Iterator[FakeAzureOpenAI]:
    service = FakeAzureOpenAI(api_key=API_KEY, answerer=peers.answer)
    yield service
    service.close()


@pytest.fixture(scope="module")
def embed_origin() -> Iterator[str]:
    """A second origin (another port) serving the example page that embeds <realtime-voice>."""
    server, url = serve_folder(ROOT / "static")
    yield url
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def app(emulator: FakeAzureOpenAI, embed_origin: str) -> Iterator[LocalHost]:
    host = emulated_host(emulator, ALLOWED_ORIGINS=embed_origin)
    yield host
    host.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    from playwright.sync_api import sync_playwright

    microphone = speech_like_wav(tmp_path_factory.mktemp("mic") / "speech.wav")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=launch_args(microphone))
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, app: LocalHost, emulator: FakeAzureOpenAI):
    emulator.reset()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(app.url + "/")
    page.wait_for_function("document.querySelectorAll('#voice option').length >= 10")
    yield page
    context.close()


def start(page: Page, peers: PeerHost) -> EmulatedPeer:
    """Start a session and return its peer once the page shows that it hears the user.

    The fake microphone talks nonstop, so the emulator's VAD opens one long user turn ~200 ms into the call. A
    message typed before that would have its reply cut at once by that turn's barge-in; waiting for the page's
    "You: …" line puts the turn's start behind us.
    """
    known = len(peers.peers)
    heard = page.locator(USER_LINES).count()
    page.click("#start")
    page.wait_for_function(f"document.querySelectorAll({USER_LINES!r}).length > {heard}", timeout=CONNECT_TIMEOUT_MS)
    assert page.get_attribute("#status", "data-status") == "listening"
    peer = eventually(lambda: len(peers.peers) > known and peers.peers[-1], what="the emulator to answer")
    eventually(lambda: peer.channel_open, what="the data channel to open")
    return peer


def record_what_the_page_shows(page: Page) -> None:
    """From now on, keep every status the page shows and the loudest its assistant meter reads in `window.shown`.

    "Speaking" and a moving meter last only as long as a reply's audio, which a loaded machine can let pass
    before a test looks; the record keeps what the user saw.
    """
    page.evaluate("""() => {
        const shown = (window.shown = { statuses: [], loudest: 0 });
        const status = document.getElementById("status");
        const meter = document.getElementById("assistant-level");
        new MutationObserver(() => shown.statuses.push(status.dataset.status))
            .observe(status, { attributeFilter: ["data-status"] });
        new MutationObserver(() => { shown.loudest = Math.max(shown.loudest, meter.value); })
            .observe(meter, { attributeFilter: ["value"] });
    }""")


def inbound_audio_bytes(page: Page) -> int:
    return page.evaluate("""async () => {
        let bytes = 0;
        (await window.realtimeApp.session.pc.getStats()).forEach((s) => {
            if (s.type === 'inbound-rtp' && s.kind === 'audio') bytes += s.bytesReceived; });
        return bytes; }""")


def test_a_conversation_end_to_end(page, peers: PeerHost) -> None:
    assert page.is_visible("#emulator-notice"), "the page says it is the local emulator, not Azure"
    page.select_option("#voice", "cedar")
    peer = start(page, peers)
    assert peer.events_received == [] or all("type" in event for event in peer.events_received)
    assert page.is_disabled("#voice") and page.is_disabled("#instructions"), "locked while a session runs"
    eventually(lambda: inbound_audio_bytes(page) > 1000, what="remote audio bytes")
    eventually(lambda: peer.mic_frames > 50 and peer.mic_peak > 0.1, what="microphone audio at the emulator")

    record_what_the_page_shows(page)
    page.fill("#message", "Hello from the browser test")
    page.press("#message", "Enter")
    user_line = page.locator(USER_LINES, has_text="Hello from the browser test")
    user_line.wait_for()
    assistant = page.locator(ASSISTANT_LINES).last
    assistant.wait_for()
    page.wait_for_function("window.shown.statuses.includes('speaking')")
    page.wait_for_function("window.shown.loudest > 0.05")  # the reply was audible
    eventually(lambda: "You said: Hello from the browser test" in assistant.inner_text(), what="streamed transcript")
    assert any(e["type"] == "conversation.item.create" for e in peer.events_received)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "live-conversation.png"), full_page=True)
    eventually(lambda: REPLY_END in assistant.inner_text(), what="the whole reply")


def test_mute_stops_outgoing_audio(page: Page, peers: PeerHost) -> None:
    peer = start(page, peers)
    eventually(lambda: peer.mic_peak > 0.1, what="microphone audio")
    page.click("#mute")
    assert page.get_attribute("#mute", "aria-pressed") == "true"
    eventually(lambda: peer.mic_peak < 0.01, what="silence after mute")
    page.click("#mute")
    eventually(lambda: peer.mic_peak > 0.1, what="audio again after unmute")


def test_interrupt_cancels_the_reply(page: Page, peers: PeerHost) -> None:
    peer = start(page, peers)
    page.fill("#message", LONG_REQUEST)
    page.click("#send")
    first = page.locator(ASSISTANT_LINES).last
    eventually(lambda: "You said:" in first.inner_text(), what="the reply to begin")
    reply = f"{ASSISTANT_LINES}[data-item-id='{first.get_attribute('data-item-id')}']"
    page.wait_for_selector("#status[data-status='speaking']")
    page.click("#interrupt")

    def types():
        return [e["type"] for e in peer.events_received]

    eventually(lambda: "response.cancel" in types() and "output_audio_buffer.clear" in types(), what="cancel events")
    page.wait_for_selector("#status[data-status='listening']")
    page.wait_for_selector("#assistant-speaking[data-active='false']")  # the voice fell quiet
    page.wait_for_selector(f"{reply}[aria-busy='false']")  # the cut reply's line is closed
    cut = page.inner_text(f"{reply} .said")
    whole = f"You said: {LONG_REQUEST.rstrip('. ')}. {REPLY_END}"
    assert whole.startswith(cut) and REPLY_END not in cut, f"not cut short: {cut!r}"

    # The conversation goes on; while the next reply plays out, the interrupted one gains no words.
    page.fill("#message", "What happened next?")
    page.click("#send")
    next_reply = page.locator(ASSISTANT_LINES, has_text="You said: What happened next")
    next_reply.wait_for()
    eventually(lambda: REPLY_END in next_reply.inner_text(), what="the next reply, whole")
    assert page.inner_text(f"{reply} .said") == cut, "no more words after interrupt"


def test_end_releases_the_microphone_and_start_works_again(page, peers: PeerHost) -> None:
    peer = start(page, peers)
    page.evaluate(
        "window.__tracks = window.realtimeApp.session.localStream.getTracks();"
        "window.__pc = window.realtimeApp.session.pc"
    )
    page.click("#stop")
    page.wait_for_selector("#status[data-status='disconnected']")
    assert page.evaluate("window.__tracks.length > 0 && window.__tracks.every(t => t.readyState === 'ended')")
    page.wait_for_function("window.__pc.connectionState === 'closed'")  # once the server answered the hang-up
    assert page.evaluate("window.realtimeApp.session") is None
    eventually(lambda: peer.closed, what="the emulator to see the hang-up")
    again = start(page, peers)
    assert again is not peer and again.channel_open


@pytest.mark.parametrize(
    ("fault", "code", "says"),
    [
        (Fault(status=429, headers={"Retry-After": "7"}), "upstream_rate_limited", "7"),
        (Fault(status=401), "upstream_auth", "AZURE_OPENAI_API_KEY"),
    ],
)
def test_a_failed_connect_is_explained_and_leaves_nothing_open(page, peers, emulator, fault, code, says) -> None:
    known = len(peers.peers)
    emulator.fail_next("client_secrets", fault)
    page.click("#start")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error .error-code") == code
    assert says in page.inner_text("#error")
    assert page.get_attribute("#status", "data-status") == "error"
    assert page.evaluate("window.realtimeApp.session") is None
    assert page.is_enabled("#start") and len(peers.peers) == known
    start(page, peers)  # and the next try works


def test_a_service_error_event_is_shown(page, peers: PeerHost) -> None:
    start(page, peers)
    peers.inject_error("server_error_test", "The emulator was told to fail.")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error .error-code") == "server_error_test"
    assert "told to fail" in page.inner_text("#error")


def test_embedding_from_an_allowed_origin(browser, app, embed_origin, peers) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{embed_origin}/embed-example.html?app={app.url}")
    toggle = page.locator("realtime-voice button.toggle")
    toggle.click()
    page.wait_for_function(
        "document.querySelector('realtime-voice').shadowRoot.querySelector('.status').textContent === 'Listening'",
        timeout=CONNECT_TIMEOUT_MS,
    )
    eventually(lambda: peers.peers[-1].channel_open, what="the emulator's end of the data channel")
    context.close()


@pytest.mark.parametrize(
    ("settings", "code", "says"),
    [
        # The app refuses the origin itself, with an answer the page may read.
        ({}, "origin_not_allowed", ["ALLOWED_ORIGINS"]),
        # The Functions host refuses a connect without its key before the app runs, with no CORS headers: the page
        # gets no readable answer, as behind any front end that refuses its origin so; it says what to check.
        (
            {"CONNECT_AUTH_LEVEL": "function", "LOCAL_FUNCTION_KEY": "a-key-this-page-does-not-have"},
            "cross_origin_blocked",
            ["this site ({origin}) may not be allowed to use this endpoint", "ALLOWED_ORIGINS", "{app}/config"],
        ),
    ],
    ids=["readable", "unreadable"],
)
def test_embedding_from_a_refused_origin(browser, emulator, embed_origin, settings, code, says) -> None:
    strict = LocalHost({"AZURE_OPENAI_BASE_URL": emulator.url, "AZURE_OPENAI_API_KEY": API_KEY, **settings})
    try:
        known = len(emulator.requests)
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{embed_origin}/embed-example.html?app={strict.url}")
        page.locator("realtime-voice button.toggle").click()
        error = page.locator("realtime-voice .error")
        error.wait_for()
        assert error.locator(".error-code").inner_text() == code
        shown = error.inner_text()
        for text in says:
            assert text.format(origin=embed_origin, app=strict.url) in shown, shown
        assert "Failed to fetch" not in shown
        assert len(emulator.requests) == known, "a refused origin never reaches upstream"
        context.close()
    finally:
        strict.close()
