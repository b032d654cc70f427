"""The server's limits as a user meets them, in a real Chromium through the app under the local host: the
session-length sweep ends the call and the page says why, even when the page does not cooperate; End frees
the caller's session slot at once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page

from localdev.emulator import PeerHost
from localdev.fake_openai import FakeAzureOpenAI
from tests import tools
from tests.conftest import API_KEY, LocalHost
from tests.test_browser_e2e import browser, eventually, page, peers, start  # noqa: F401  (fixtures; page uses this module's app)

pytestmark = [pytest.mark.browser, tools.chromium.needed]
LIMIT_SECONDS = 10
NOTICE = "#call-notice-text"


@pytest.fixture(scope="module")
def emulator(peers: PeerHost) -> Iterator[FakeAzureOpenAI]:  # noqa: F811
    service = FakeAzureOpenAI(api_key=API_KEY, answerer=peers.answer, hangup=peers.hangup)
    yield service
    service.close()


@pytest.fixture(scope="module")
def app(emulator: FakeAzureOpenAI) -> Iterator[LocalHost]:
    host = LocalHost(
        {
            "AZURE_OPENAI_BASE_URL": emulator.url,
            "AZURE_OPENAI_API_KEY": API_KEY,
            "REALTIME_EMULATOR": "true",
            "RATE_LIMIT_PER_MINUTE": "0",
            "MAX_ACTIVE_SESSIONS": "1",
            "REALTIME_MAX_SESSION_SECONDS": str(LIMIT_SECONDS),
            "LOCAL_TIMER_INTERVAL_SECONDS": "1",
        }
    )
    yield host
    host.close()


def server_hang_ups(emulator: FakeAzureOpenAI, call_id: str) -> list:
    return [r for r in emulator.calls_to("hangup") if "api-key" in r.headers and emulator.calls.get(call_id) == "ended"]


def test_the_server_ends_a_call_at_its_limit_even_if_the_page_does_not(page: Page, peers, emulator, app) -> None:  # noqa: F811
    # A page that neither knows the limit nor reports its own End: only the server's sweep can end this call.
    page.route(
        "**/config",
        lambda route: route.fulfill(response=(r := route.fetch()), json={**r.json(), "session": {"maxSeconds": None}}),
    )
    page.route("**/calls/*/hangup", lambda route: route.abort())
    page.reload()
    page.wait_for_function("document.querySelectorAll('#voice option').length >= 10")
    peer = start(page, peers)
    page.wait_for_selector("#status[data-status='disconnected']", timeout=(LIMIT_SECONDS + 30) * 1000)
    assert page.inner_text(NOTICE) == "The conversation was ended by the server."
    eventually(lambda: server_hang_ups(emulator, peer.call_id), what="the app's sweep to hang the call up")
    assert peer.closed


def test_the_page_shows_the_limit_and_says_why_the_call_ended(page: Page, peers, emulator) -> None:  # noqa: F811
    peer = start(page, peers)
    assert page.inner_text("#time-left").startswith("Time left: 0:")
    page.wait_for_selector("#status[data-status='disconnected']", timeout=(LIMIT_SECONDS + 30) * 1000)
    assert page.inner_text(NOTICE).startswith("The conversation reached its time limit.")
    eventually(lambda: emulator.calls.get(peer.call_id) == "ended", what="the call to be hung up upstream")


def test_end_frees_the_session_slot_at_once(page: Page, peers, emulator) -> None:  # noqa: F811
    first = start(page, peers)
    page.click("#stop")
    page.wait_for_selector("#status[data-status='disconnected']")
    eventually(lambda: emulator.calls.get(first.call_id) == "ended", what="End to hang the call up at the server")
    second = start(page, peers)  # MAX_ACTIVE_SESSIONS=1: without the hang-up this would be too_many_sessions
    assert second is not first and page.is_hidden("#error")
    page.click("#stop")
