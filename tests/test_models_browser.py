"""Picking a model in a real Chromium, and a GPT-Live conversation end to end: page → /connect (the local host) →
the emulator's GPT-Live mode (a real WebRTC peer), and the realtime path beside it, unchanged (issue 19).

Every wait is for something the page or the emulator shows; nothing sleeps for a moment.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page

from localdev.emulator import EmulatedPeer, PeerHost
from localdev.emulator.live import LiveConversation
from localdev.fake_openai import FakeAzureOpenAI
from tests import tools
from tests.conftest import API_KEY, LocalHost, emulated_host
from tests.test_browser_e2e import (  # noqa: F401  (fixtures)
    ASSISTANT_LINES,
    CONNECT_TIMEOUT_MS,
    REPLY_END,
    USER_LINES,
    browser,
    eventually,
    peers,
)

pytestmark = [pytest.mark.browser, tools.chromium.needed]
OFFERED = "gpt-realtime, gpt-realtime-mini, gpt-realtime-2:reasoning, gpt-live-1:live"
LIVE_REPLY_END = "This is the local emulator in GPT-Live mode, not Azure."


@pytest.fixture(scope="module")
def emulator(peers: PeerHost) -> Iterator[FakeAzureOpenAI]:  # noqa: F811
    service = FakeAzureOpenAI(
        api_key=API_KEY,
        deployments=("gpt-realtime", "gpt-realtime-mini"),
        answerer=peers.answer,
        live_answerer=peers.answer_live,
        hangup=peers.hangup,
    )
    yield service
    service.close()


@pytest.fixture(scope="module")
def app(emulator: FakeAzureOpenAI) -> Iterator[LocalHost]:
    host = emulated_host(emulator, REALTIME_DEPLOYMENTS=OFFERED, REALTIME_TURN_DETECTION_CHOOSABLE="true")
    yield host
    host.close()


@pytest.fixture
def page(browser, app: LocalHost, emulator: FakeAzureOpenAI) -> Iterator[Page]:  # noqa: F811
    emulator.reset()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(app.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length === 4")
    yield page
    context.close()


def started(page: Page, peers: PeerHost, known: int) -> EmulatedPeer:  # noqa: F811
    page.click("#start")
    page.locator(USER_LINES).first.wait_for(timeout=CONNECT_TIMEOUT_MS)
    peer = eventually(lambda: len(peers.peers) > known and peers.peers[-1], what="the emulator to answer")
    eventually(lambda: peer.channel_open, what="the data channel to open")
    return peer


def test_the_pickers_follow_the_chosen_model(page: Page) -> None:
    assert page.is_visible("#model") and page.input_value("#model") == "gpt-realtime"
    assert page.is_hidden("#reasoning-field") and page.is_visible("#interrupt")
    page.focus("#model")
    page.select_option("#model", "gpt-realtime-2")
    assert page.is_visible("#reasoning")
    assert page.eval_on_selector_all("#reasoning option", "options => options.map(o => o.value)") == [
        "",
        "minimal",
        "low",
        "medium",
        "high",
    ]
    assert page.get_attribute("label[for=reasoning]", "for") == "reasoning", "the effort picker is labelled"
    page.select_option("#model", "gpt-live-1")
    assert page.is_hidden("#reasoning-field") and page.is_hidden("#interrupt") and page.is_hidden("#turns-field")
    assert "full duplex" in page.inner_text("#model-hint")


def test_a_gpt_live_conversation_through_connect(page: Page, peers: PeerHost, emulator: FakeAzureOpenAI) -> None:  # noqa: F811
    page.select_option("#model", "gpt-live-1")
    page.select_option("#voice", "cedar")
    peer = started(page, peers, len(peers.peers))
    assert isinstance(peer.conversation, LiveConversation), "the emulator answered in GPT-Live mode"
    [created] = emulator.calls_to("live_sessions")
    assert json.loads(created.body)["session"]["audio"] == {"output": {"voice": "cedar"}}
    assert emulator.calls_to("client_secrets") == [], "GPT-Live issues no client secrets"

    # Full duplex: the fake microphone never pauses, yet the assistant answers while the user is still speaking.
    page.locator(ASSISTANT_LINES, has_text=LIVE_REPLY_END).first.wait_for(timeout=CONNECT_TIMEOUT_MS)
    assert "(emulator heard" in page.locator(USER_LINES).first.inner_text()
    assert page.get_attribute("#status", "data-status") in ("listening", "speaking")

    page.fill("#message", "Hello live")
    page.press("#message", "Enter")
    page.locator(USER_LINES, has_text="Hello live").wait_for()
    page.locator(ASSISTANT_LINES, has_text='I read: "The user typed: Hello live"').wait_for()
    appended = eventually(
        lambda: [e for e in peer.events_received if e["type"] == "session.instructions.append"],
        what="the typed message at the emulator",
    )
    assert appended[0]["content"] == "The user typed: Hello live" and appended[0]["delegation_id"] is None
    assert not [e for e in peer.events_received if e["type"].startswith(("response.", "conversation."))]

    # The session is immutable: the emulator refuses what the service refuses, and the page shows it.
    page.evaluate("window.realtimeApp.session.send({type: 'session.update', session: {instructions: 'Obey me.'}})")
    page.locator("#error .error-code", has_text="immutable_parameter").wait_for()

    exported = page.evaluate("window.realtimeApp.transcript.toJSON().lines")
    assert any(line["role"] == "user" and line["text"] == "Hello live" for line in exported)
    assert any(line["role"] == "assistant" and LIVE_REPLY_END in line["text"] for line in exported)
    assert "Hello live" in page.evaluate("window.realtimeApp.transcript.toMarkdown()")

    page.click("#stop")
    page.wait_for_function("document.getElementById('start').disabled === false")
    eventually(lambda: peer.closed, what="the browser's connection to close")


def test_the_reason_gpt_live_gives_for_closing_is_shown(page: Page, peers: PeerHost) -> None:  # noqa: F811
    page.select_option("#model", "gpt-live-1")
    peer = started(page, peers, len(peers.peers))
    assert peers.close_live(peer.call_id)  # what `session.close` on the attach socket does
    notice = page.locator("#call-notice-text", has_text="GPT-Live closed the session: the server closed it")
    notice.wait_for(timeout=CONNECT_TIMEOUT_MS)


def test_a_realtime_model_picked_beside_gpt_live_keeps_the_realtime_path(
    page: Page,
    peers: PeerHost,  # noqa: F811
    emulator: FakeAzureOpenAI,
) -> None:
    page.select_option("#model", "gpt-realtime-mini")
    peer = started(page, peers, len(peers.peers))
    assert not isinstance(peer.conversation, LiveConversation)
    page.fill("#message", "Hi mini")
    page.press("#message", "Enter")
    page.locator(ASSISTANT_LINES, has_text="You said: Hi mini").wait_for()
    [minted] = emulator.calls_to("client_secrets")
    assert json.loads(minted.body)["session"]["model"] == "gpt-realtime-mini"
    assert page.is_visible("#interrupt") and page.is_enabled("#interrupt")
    page.click("#stop")


def test_the_component_offers_the_models_and_holds_a_gpt_live_call(browser, app: LocalHost, peers: PeerHost) -> None:  # noqa: F811
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(app.url + "/embed-example.html")
        voice = page.locator("realtime-voice")
        voice.locator("select.model option").nth(3).wait_for(state="attached")
        voice.locator("select.model").select_option("gpt-live-1")
        assert "full duplex" in voice.locator(".model-hint").inner_text()
        known = len(peers.peers)
        voice.locator("button.toggle").click()
        voice.locator(".line[data-role='assistant']", has_text=LIVE_REPLY_END).first.wait_for(
            timeout=CONNECT_TIMEOUT_MS
        )
        peer = eventually(lambda: len(peers.peers) > known and peers.peers[-1], what="the emulator's peer")
        assert isinstance(peer.conversation, LiveConversation)
        assert voice.locator("select.model").is_disabled()
        voice.locator("button.toggle").click()
        eventually(lambda: peer.closed, what="the component's call to end")
    finally:
        context.close()
