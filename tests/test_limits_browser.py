"""The server's limits as a user meets them, in a real Chromium through the app under the local host: the
session-length sweep ends the call and the page says why, even when the page does not cooperate; End frees
the caller's session slot at once, and Start waits for it, however slow the hang-up; a Start refused by the
session cap for a few seconds more is tried once more, a longer refusal is shown."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, Response

from localdev.emulator import PeerHost
from localdev.fake_openai import FakeAzureOpenAI, Fault
from tests import tools
from tests.conftest import API_KEY, LocalHost, emulated_host
from tests.test_browser_e2e import browser, eventually, page, peers, start  # noqa: F401  (fixtures; page uses this module's app)

pytestmark = [pytest.mark.browser, tools.chromium.needed]
LIMIT_SECONDS = 10
NOTICE = "#call-notice-text"
SLOW_HANG_UP_SECONDS = 2.0


@pytest.fixture(scope="module")
def emulator(peers: PeerHost) -> Iterator[FakeAzureOpenAI]:  # noqa: F811
    service = FakeAzureOpenAI(api_key=API_KEY, answerer=peers.answer, hangup=peers.hangup)
    yield service
    service.close()


def one_slot_app(emulator: FakeAzureOpenAI, session_seconds: int) -> LocalHost:
    """The app with one session slot in all, calls limited to `session_seconds`, and the sweep every second."""
    return emulated_host(
        emulator,
        MAX_ACTIVE_SESSIONS="1",
        REALTIME_MAX_SESSION_SECONDS=str(session_seconds),
        LOCAL_TIMER_INTERVAL_SECONDS="1",
    )


@pytest.fixture(scope="module")
def app(emulator: FakeAzureOpenAI) -> Iterator[LocalHost]:
    host = one_slot_app(emulator, LIMIT_SECONDS)
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


def test_start_waits_until_end_has_freed_the_slot_however_slow_the_hang_up(page: Page, peers, emulator) -> None:  # noqa: F811
    first = start(page, peers)
    page.evaluate("""() => {
        const button = document.getElementById("start");
        window.startEnabledAt = [];
        new MutationObserver(() => { if (!button.disabled) window.startEnabledAt.push(performance.now()); })
            .observe(button, { attributeFilter: ["disabled"] });
        document.getElementById("stop").addEventListener("click", () => { window.endClickedAt = performance.now(); });
    }""")
    emulator.fail_next("hangup", Fault(status=None, delay=SLOW_HANG_UP_SECONDS))
    page.click("#stop")
    page.wait_for_selector("#status[data-status='disconnected']")
    page.wait_for_selector("#start:enabled", timeout=30_000)
    # The server answers the hang-up only after the upstream one, which the fault holds back: Start waited for it.
    waited_ms = page.evaluate("window.startEnabledAt[0] - window.endClickedAt")
    assert waited_ms >= SLOW_HANG_UP_SECONDS * 1000, f"Start was enabled {waited_ms:.0f} ms after End"
    second = start(page, peers)  # at once: MAX_ACTIVE_SESSIONS=1, so an unanswered hang-up would be too_many_sessions
    assert second is not first and page.is_hidden("#error")
    assert emulator.calls.get(first.call_id) == "ended"
    page.click("#stop")


@pytest.fixture
def long_limit_app(emulator: FakeAzureOpenAI) -> Iterator[LocalHost]:
    """A slot held long enough for another visitor to be refused first for long, then briefly."""
    host = one_slot_app(emulator, 20)
    yield host
    host.close()


RECORD = """() => {
    const notice = document.getElementById("call-notice-text");
    window.notices = [];
    new MutationObserver(() => window.notices.push(notice.textContent))
        .observe(notice, { childList: true, characterData: true, subtree: true });
}"""


def visitor(browser, url: str) -> tuple[Page, list[tuple[float, int, str | None]]]:  # noqa: F811 (fixture name)
    """The app page in a context of its own, and every answer to its connects: (when, status, Retry-After)."""
    visit = browser.new_context().new_page()
    answers: list[tuple[float, int, str | None]] = []

    def answered(response: Response) -> None:
        if response.url.endswith("/connect"):
            answers.append((time.monotonic(), response.status, response.headers.get("retry-after")))

    visit.on("response", answered)
    visit.goto(url + "/")
    visit.wait_for_function("document.querySelectorAll('#voice option').length >= 10")
    visit.evaluate(RECORD)
    return visit, answers


def test_a_start_refused_by_the_session_cap_is_tried_once_more_after_a_short_retry_after(
    browser,  # noqa: F811
    long_limit_app: LocalHost,
    peers,  # noqa: F811
) -> None:
    holder, _ = visitor(browser, long_limit_app.url)
    start(holder, peers)  # the only slot, for 20 s
    other, answers = visitor(browser, long_limit_app.url)

    other.click("#start")  # refused for most of 20 s: too long to wait, so the page says so
    other.wait_for_selector("#error:not([hidden])")
    assert other.inner_text("#error .error-code") == "too_many_sessions"
    [(refused_at, status, retry_after)] = answers
    assert status == 429 and retry_after is not None and 5 < int(retry_after) <= 20
    assert other.is_enabled("#start")

    # Click again when about 4 s of the slot are left (Retry-After rounds up): short enough to wait out once.
    again_at = refused_at + int(retry_after) - 4
    eventually(lambda: time.monotonic() >= again_at, timeout=25, what="the slot's last seconds")
    other.click("#start")
    other.wait_for_selector("#status[data-status='listening']", timeout=30_000)
    assert [status for _, status, _ in answers] == [429, 429, 201]
    waited, retry_after = answers[2][0] - answers[1][0], answers[1][2]
    assert retry_after is not None, "a too_many_sessions refusal says when to retry"
    assert waited >= int(retry_after) - 0.5, f"tried again {waited:.1f} s after a Retry-After of {answers[1][2]}"
    assert other.is_hidden("#error")
    assert any(
        n.startswith("Every conversation the server allows is in use; trying again in")
        for n in other.evaluate("window.notices")
    )
    for visit in (holder, other):
        visit.context.close()
