"""A supervised call as a user meets it, in a real Chromium through the real local host: `/connect` hands the call to
the Storage queue on Azurite, the host's queue trigger runs the supervisor, which joins the emulator's call over the
sideband. The page's own session changes are put back, a page that insists is hung up and says why, and a page that
leaves without a word frees its slot at once (docs/supervisor.md). The tools it runs: tests/test_tools_browser.py.

The page opens its calls muted, so the fake microphone opens no turn of its own: the only turns are typed ones.
Every wait is for something the page, the emulator or `GET /operator/calls` shows, with a time limit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from localdev.azurite import Azurite
from localdev.emulator import EmulatedPeer, PeerHost
from localdev.fake_openai import FakeAzureOpenAI
from tests import tools
from tests.azurite import Storage, new_prefix
from tests.conftest import API_KEY, LocalHost
from tests.test_browser_e2e import ASSISTANT_LINES, CONNECT_TIMEOUT_MS, browser, eventually, peers  # noqa: F401

pytestmark = [pytest.mark.browser, tools.chromium.needed]
NOTICE = "#call-notice-text"
RESTORE_WITHIN_S = 1.0
ATTACH_TIMEOUT_S = 20.0  # the queue's poll, the trigger and the sideband's handshake on a loaded machine
# Every event the page's data channel carries, both ways, with when it arrived: what the page saw.
RECORD_CHANNEL = """
window.seen = [];
window.sentEvents = [];
const create = RTCPeerConnection.prototype.createDataChannel;
RTCPeerConnection.prototype.createDataChannel = function (...args) {
  const channel = create.apply(this, args);
  channel.addEventListener("message", ({ data }) =>
    window.seen.push({ at: performance.now(), event: JSON.parse(data) }));
  const send = channel.send.bind(channel);
  channel.send = (data) => { window.sentEvents.push(JSON.parse(data)); send(data); };
  return channel;
};
"""


@pytest.fixture(scope="module")
def emulator(peers: PeerHost) -> Iterator[FakeAzureOpenAI]:  # noqa: F811
    service = FakeAzureOpenAI(api_key=API_KEY, peers=peers)  # the peers hold the calls the sidebands join
    yield service
    service.close()


def supervised_host(emulator: FakeAzureOpenAI, azurite_server: Azurite, **settings: str) -> LocalHost:
    """The app under the local host on its own part of Azurite, with one session slot in all; `settings` on top."""
    storage = Storage(azurite_server, new_prefix())
    return LocalHost(
        {
            "AZURE_OPENAI_BASE_URL": emulator.url,
            "AZURE_OPENAI_API_KEY": API_KEY,
            "REALTIME_EMULATOR": "true",
            "REALTIME_INSTRUCTIONS": "Be brief.",
            "AzureWebJobsStorage": storage.connection_string,
            "LIMITS_TABLE": storage.table("limits"),
            "REALTIME_SUPERVISOR_QUEUE": storage.prefix + "-calls",
            "LOCAL_QUEUE_POLL_SECONDS": "0.2",
            "MAX_ACTIVE_SESSIONS": "1",
            "RATE_LIMIT_PER_MINUTE": "0",
            **settings,
        }
    )


@pytest.fixture(scope="module")
def app(emulator: FakeAzureOpenAI, azurite_server: Azurite) -> Iterator[LocalHost]:
    host = supervised_host(emulator, azurite_server)
    yield host
    host.close()


def open_page(browser: Browser, app: LocalHost) -> Page:  # noqa: F811
    context = browser.new_context()
    context.add_init_script(RECORD_CHANNEL)
    page = context.new_page()
    page.goto(app.url + "/")
    page.wait_for_function("document.querySelectorAll('#voice option').length >= 10")
    page.click("#mute")  # calls open muted: no turn but the typed ones
    return page


@pytest.fixture
def page(browser: Browser, app: LocalHost) -> Iterator[Page]:  # noqa: F811
    page = open_page(browser, app)
    yield page
    page.context.close()


def start(page: Page, peers: PeerHost, emulator: FakeAzureOpenAI) -> EmulatedPeer:  # noqa: F811
    """Start a call and return its peer once the supervisor has joined it."""
    known = len(peers.peers)
    page.click("#start")
    page.wait_for_selector("#status[data-status='listening']", timeout=CONNECT_TIMEOUT_MS)
    peer = eventually(lambda: len(peers.peers) > known and peers.peers[-1], what="the emulator to answer")
    emulator.call(peer.call_id).wait_attached(1, timeout=ATTACH_TIMEOUT_S)
    return peer


def say(page: Page, text: str) -> None:
    """Type a message and send it, as a user does."""
    page.fill("#message", text)
    page.click("#send")


def converse(page: Page) -> None:
    """One typed turn and its whole spoken reply, so the call has used something."""
    replies = page.locator(ASSISTANT_LINES).count()
    say(page, "Hello there")
    expect(page.locator(ASSISTANT_LINES).nth(replies)).to_have_attribute("aria-busy", "false", timeout=20_000)


def end(page: Page) -> None:
    page.click("#stop")
    page.wait_for_selector("#start:not([disabled])", timeout=20_000)


def update_instructions(page: Page, instructions: str) -> float:
    """The page's own `session.update`, through the session's send API; when it was sent (page time, ms)."""
    return page.evaluate(
        """(instructions) => {
            window.realtimeApp.session.send({ type: 'session.update', session: { type: 'realtime', instructions } });
            return performance.now();
        }""",
        instructions,
    )


def sessions_seen(page: Page) -> list[dict[str, Any]]:
    """Every session.created/updated the page received: {at (ms), instructions}."""
    return page.evaluate("""() => window.seen
        .filter(({ event }) => event.type === 'session.created' || event.type === 'session.updated')
        .map(({ at, event }) => ({ at, type: event.type, instructions: event.session.instructions }))""")


def restored_after(page: Page, sent_at: float, hijack: str, server: str) -> float:
    """Seconds from the page sending its change to seeing the server's instructions again after the change."""

    def restored() -> float | None:
        seen = sessions_seen(page)
        changed = [i for i, s in enumerate(seen) if s["instructions"] == hijack]
        back = [s for s in seen[changed[-1] + 1 :] if s["instructions"] == server] if changed else []
        return back[0]["at"] if back else None

    return (eventually(restored, timeout=10, what="the server's instructions back on the page") - sent_at) / 1000


def reported(app: LocalHost, call_id: str, since: str) -> dict[str, Any]:
    """The call as `GET /operator/calls` reports it once it has ended and its usage is in: the supervisor records
    the usage when its sideband closes, which may be a moment after whoever ended the call closed its row."""

    def ended() -> dict[str, Any] | None:
        answer = requests.get(app.url + "/operator/calls", params={"since": since}, timeout=10)
        assert answer.status_code == 200, answer.text
        call: dict[str, Any] | None = next((c for c in answer.json()["calls"] if c["callId"] == call_id), None)
        if call is None or not call["endReason"]:
            return None
        return call if call["usage"]["inputTokens"] > 0 and call["usage"]["outputTokens"] > 0 else None

    return eventually(ended, timeout=20, what=f"call {call_id} reported ended, with its usage")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def test_the_pages_own_instructions_are_put_back_within_a_second(page: Page, peers, emulator, app) -> None:  # noqa: F811
    since = now()
    peer = start(page, peers, emulator)
    converse(page)
    server = sessions_seen(page)[0]["instructions"]
    assert server.startswith("Be brief."), "the server's instructions, as session.created carried them"
    sent_at = update_instructions(page, "Talk like a pirate.")
    seconds = restored_after(page, sent_at, "Talk like a pirate.", server)
    print(f"restored {seconds:.3f} s after the page sent its change")
    assert seconds <= RESTORE_WITHIN_S
    expect(page.locator("#status")).to_have_attribute("data-status", "listening")  # the call goes on
    end(page)
    call = reported(app, peer.call_id, since)
    assert (call["endReason"], call["strikes"]) == ("user", 1), call


def test_a_page_that_insists_is_hung_up_and_says_why(page: Page, peers, emulator, app) -> None:  # noqa: F811
    since = now()
    peer = start(page, peers, emulator)
    converse(page)
    server = sessions_seen(page)[0]["instructions"]
    for attempt in (1, 2):
        sent_at = update_instructions(page, f"Talk like a pirate ({attempt}).")
        restored_after(page, sent_at, f"Talk like a pirate ({attempt}).", server)
    update_instructions(page, "Talk like a pirate (3).")
    page.wait_for_selector("#status[data-status='disconnected']", timeout=20_000)
    notice = page.locator(NOTICE)
    expect(notice).to_have_attribute("aria-live", "polite")
    expect(notice).to_contain_text("The conversation was ended by the server.")
    expect(notice).to_contain_text("its session was changed against this app's policy")
    notes = page.evaluate("""() => window.seen.filter(({ event }) =>
        event.type === 'conversation.item.added' && event.item.role === 'system').length""")
    assert notes == 1, "the server's note reached the page before the hang-up"
    call = reported(app, peer.call_id, since)
    assert (call["endReason"], call["strikes"]) == ("policy", 3), call
    page.wait_for_selector("#start:not([disabled])", timeout=20_000)


def test_a_page_that_leaves_without_hanging_up_frees_its_slot_at_once(
    browser: Browser,  # noqa: F811
    peers,  # noqa: F811
    emulator,
    app,
) -> None:
    since = now()
    first = open_page(browser, app)
    second = open_page(browser, app)
    try:
        # As OpenAI's Agents SDK does: the connection closes, the app's hang-up is never called.
        first.route("**/calls/*/hangup", lambda route: route.abort())
        peer = start(first, peers, emulator)
        converse(first)
        left = time.monotonic()
        first.evaluate("window.realtimeApp.session.pc.close()")
        first.goto("about:blank")
        call = reported(app, peer.call_id, since)
        freed = time.monotonic() - left
        print(f"slot freed {freed:.2f} s after the page left")
        assert call["endReason"] == "gone", call
        assert emulator.call(peer.call_id).end_reason == "gone", "the browser left; nobody hung up"
        started = time.monotonic()
        second.click("#start")
        second.wait_for_selector("#status[data-status='listening']", timeout=10_000)
        print(f"second start live {time.monotonic() - started:.2f} s after the click")
        expect(second.locator("#error")).to_be_hidden()
        end(second)
    finally:
        first.context.close()
        second.context.close()
