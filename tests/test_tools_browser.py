"""The server's tools as a user meets them, in a real Chromium through the real loop: the app on the local host with
Azurite, so its supervisor joins the emulator's call over the sideband; the emulator calls `get_current_time` when a
typed message mentions "time", the supervisor runs it and answers, and the emulator speaks the output.

Without the filter the page shows the call ("Looking up: …", then "Looked up …: summary"). With
`REALTIME_WEBRTC_FILTER=true` the service hides the response events the page draws a call from, so the page shows
nothing of the tools, though it still gets the conversation's items and the spoken answer (docs/tools.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from localdev.azurite import Azurite
from localdev.emulator import PeerHost
from localdev.fake_openai import FakeAzureOpenAI
from tests import tools
from tests.conftest import LocalHost
from tests.test_browser_e2e import ASSISTANT_LINES, browser, peers  # noqa: F401  (fixtures)
from tests.test_supervised_browser import (  # noqa: F401  (fixtures)
    app,
    emulator,
    end,
    now,
    open_page,
    reported,
    say,
    start,
    supervised_host,
)

pytestmark = [pytest.mark.browser, tools.chromium.needed]
TOOL_LINE = '#transcript [data-role="tool"]'
ANSWER_TIMEOUT_MS = 20_000  # the queue's poll, the tool's round trip over the sideband and the spoken reply


@pytest.fixture(scope="module")
def filtered_app(emulator: FakeAzureOpenAI, azurite_server: Azurite) -> Iterator[LocalHost]:  # noqa: F811
    host = supervised_host(emulator, azurite_server, REALTIME_WEBRTC_FILTER="true")
    yield host
    host.close()


def watch_tool_lines(page: Page) -> None:
    """Keep every text a tool line has shown in `window.toolTexts`, so a line that changed is still known."""
    page.evaluate("""() => {
        window.toolTexts = [];
        new MutationObserver(() => document.querySelectorAll('#transcript [data-role="tool"]')
            .forEach((line) => window.toolTexts.push(line.textContent)))
            .observe(document.getElementById('transcript'), { subtree: true, childList: true, characterData: true });
    }""")


def outputs_sent(emulator: FakeAzureOpenAI, call_id: str) -> int:  # noqa: F811
    """How many tool outputs the server sent over the call's sideband."""
    return sum(
        event["type"] == "conversation.item.create" and event["item"]["type"] == "function_call_output"
        for event in emulator.call(call_id).received
    )


def test_a_typed_question_shows_the_tool_call_then_its_result_and_the_answer_is_spoken(
    browser: Browser,  # noqa: F811
    peers: PeerHost,  # noqa: F811
    emulator: FakeAzureOpenAI,  # noqa: F811
    app: LocalHost,  # noqa: F811
) -> None:
    since = now()
    page = open_page(browser, app)
    try:
        peer = start(page, peers, emulator)
        watch_tool_lines(page)
        say(page, "What time is it?")
        result = page.locator(TOOL_LINE)
        expect(result).to_have_text(
            re.compile(r"^Looked up get_current_time: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$"),
            timeout=ANSWER_TIMEOUT_MS,
        )
        assert "Looking up: get_current_time…" in page.evaluate("window.toolTexts"), "the call showed while it ran"
        expect(result).to_have_attribute("aria-busy", "false")
        hhmm = result.inner_text().split("T")[1][:5]
        answer = page.locator(ASSISTANT_LINES).last
        expect(answer).to_have_attribute("aria-busy", "false", timeout=ANSWER_TIMEOUT_MS)
        assert f"It is {hhmm} in Europe/Paris." in answer.inner_text()
        # A tool that fails: its line says so in a few words, and the model speaks from the error.
        say(page, "What time is it in Mars/Olympus?")
        failed = page.locator(TOOL_LINE).nth(1)
        expect(failed).to_have_text(
            re.compile(r"^Looked up get_current_time: failed: Unknown time zone\b"), timeout=ANSWER_TIMEOUT_MS
        )
        spoken = page.locator(ASSISTANT_LINES).last
        expect(spoken).to_contain_text("The lookup failed: Unknown time zone", timeout=ANSWER_TIMEOUT_MS)
        sent = page.evaluate("window.sentEvents.map((event) => event.item?.type ?? event.type)")
        assert "function_call_output" not in sent, "the page never answers a call itself"
        assert outputs_sent(emulator, peer.call_id) == 2, "the server answered over the sideband"
        end(page)
        call = reported(app, peer.call_id, since)
        assert call["endReason"] == "user", call
    finally:
        page.context.close()


def test_with_the_webrtc_filter_the_answer_is_spoken_and_no_tool_shows(
    browser: Browser,  # noqa: F811
    peers: PeerHost,  # noqa: F811
    emulator: FakeAzureOpenAI,  # noqa: F811
    filtered_app: LocalHost,
) -> None:
    since = now()
    page = open_page(browser, filtered_app)
    try:
        peer = start(page, peers, emulator)
        say(page, "What time is it?")
        answer = page.locator(ASSISTANT_LINES).last
        expect(answer).to_have_text(re.compile(r"It is \d\d:\d\d in Europe/Paris\."), timeout=ANSWER_TIMEOUT_MS)
        expect(answer).to_have_attribute("aria-busy", "false")
        expect(page.locator(TOOL_LINE)).to_have_count(0)
        seen = page.evaluate("window.seen.map(({ event }) => event.item?.type ?? event.type)")
        assert "function_call_output" in seen, "the filter passes the conversation's items: the page chose not to draw"
        assert not {"session.created", "response.output_item.added", "response.done"} & set(seen), "filtered"
        assert outputs_sent(emulator, peer.call_id) == 1, "the server ran the tool all the same"
        expect(page.locator("#error")).to_be_hidden()
        end(page)
        call = reported(filtered_app, peer.call_id, since)
        assert call["endReason"] == "user", call
    finally:
        page.context.close()
