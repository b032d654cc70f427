"""The core conversation in Firefox ESR (over WebDriver BiDi) against the emulator: connect, audio both ways, a typed
message, End releasing the microphone, and reconnecting after a lost connection with the conversation replayed.

One Firefox per module (it takes seconds to start); each test opens the page afresh. Fixtures for the app and the
emulator come from test_browser_e2e.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from localdev.emulator import EmulatedPeer, PeerHost
from tests import tools
from tests.firefox import Firefox
from tests.test_browser_e2e import REPLY_END, app, embed_origin, emulator, eventually, peers  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, tools.firefox.needed]
USER_LINES = "document.querySelectorAll(\"#transcript [data-role='user']\").length"
STATUS = "document.getElementById('status').dataset.status"


@pytest.fixture(scope="module")
def firefox() -> Iterator[Firefox]:
    browser = Firefox()
    yield browser
    browser.close()


@pytest.fixture
def page(firefox: Firefox, app, emulator) -> Firefox:  # noqa: F811
    emulator.reset()
    firefox.goto(app.url + "/")
    firefox.wait_for("document.querySelectorAll('#voice option').length >= 10", what="the voices")
    return firefox


def start(page: Firefox, peers: PeerHost) -> EmulatedPeer:  # noqa: F811
    """Start a session; return its peer once the page shows it hears the user (Firefox's fake microphone is a tone)."""
    known = len(peers.peers)
    heard = page.evaluate(USER_LINES)
    page.click("#start")
    page.wait_for(f"{USER_LINES} > {heard}", what="the page to hear the user")
    assert page.evaluate(STATUS) == "listening"
    peer = eventually(lambda: len(peers.peers) > known and peers.peers[-1], what="the emulator to answer")
    eventually(lambda: peer.channel_open, what="the data channel to open")
    return peer


def say(page: Firefox, text: str) -> None:
    page.type("#message", text)
    page.press("Enter")
    lines = "[...document.querySelectorAll(\"#transcript [data-role='assistant']\")]"
    reply = f"{lines}.find(l => l.textContent.includes({text.rstrip('.?')!r}))"
    page.wait_for(f"{reply}?.textContent.includes({REPLY_END!r})", what=f"the whole reply to {text!r}")


def test_a_conversation_with_audio_both_ways(page: Firefox, peers: PeerHost) -> None:  # noqa: F811
    peer = start(page, peers)
    eventually(lambda: peer.mic_frames > 50 and peer.mic_peak > 0.1, what="Firefox's microphone at the emulator")
    say(page, "Hello from Firefox")
    # Headless Firefox on a machine without a sound device never starts an AudioContext (the level meters stay at
    # zero here), so the assistant's audio is proven by what arrives and plays, not by the meter.
    received = """(async () => { let bytes = 0; (await window.realtimeApp.session.pc.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'audio') bytes += s.bytesReceived; }); return bytes; })()"""
    assert page.evaluate(received) > 1000
    assert page.evaluate("!document.getElementById('remote-audio').paused"), "the assistant's audio plays"
    assert any(e["type"] == "conversation.item.create" for e in peer.events_received)


def test_end_releases_the_microphone(page: Firefox, peers: PeerHost) -> None:  # noqa: F811
    peer = start(page, peers)
    page.evaluate(
        "(window.held = window.realtimeApp.session.localStream.getTracks(), "
        "window.heldPc = window.realtimeApp.session.pc, true)"
    )
    page.click("#stop")
    page.wait_for(f"{STATUS} === 'disconnected'", what="the end")
    assert page.evaluate("window.held.length > 0 && window.held.every((t) => t.readyState === 'ended')")
    page.wait_for("window.heldPc.connectionState === 'closed'", what="the connection closed after the hang-up")
    assert page.evaluate("document.getElementById('call-notice-text').textContent") == "You ended the conversation."
    eventually(lambda: peer.closed, what="the emulator to see the hang-up")


def test_a_lost_connection_reconnects_with_the_conversation(page: Firefox, peers: PeerHost) -> None:  # noqa: F811
    first = start(page, peers)
    say(page, "My name is Ada.")
    page.evaluate("""(() => { const status = document.getElementById('status'); window.statuses = [];
        new MutationObserver(() => window.statuses.push(status.dataset.status))
            .observe(status, { attributeFilter: ['data-status'] }); return true; })()""")  # reconnecting is brief
    peers.drop(first.call_id)
    second = eventually(lambda: peers.peers[-1] is not first and peers.peers[-1], timeout=45, what="a new call")
    page.wait_for("document.getElementById('call-notice-text').textContent.startsWith('Reconnected')", timeout=45)
    assert "reconnecting" in page.evaluate("window.statuses")

    def replayed() -> list[str]:
        return [
            e["item"]["content"][0]["text"] for e in second.events_received if e["type"] == "conversation.item.create"
        ]

    # Sent as the new call's channel opens, so they may still be on their way when the page says "Reconnected".
    eventually(lambda: "My name is Ada." in replayed(), what="the replayed turn to arrive")
