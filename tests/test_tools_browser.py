"""The page shows a server-run tool call as the data channel shows it, in a real Chromium against the emulator.

Until the sideband supervisor lands (issue 17) no server answers tool calls in a local call, so the events are
made with what the emulator does today: it adds any `conversation.item.create` item to the conversation and emits
`conversation.item.added`/`.done` for it over the data channel, as the service does for a function call the model
makes and for the output the server sends over the sideband. The page only listens: it never answers a call.
"""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import Page, expect

from localdev.emulator import PeerHost
from tests import tools
from tests.test_browser_e2e import browser, peers, start  # noqa: F401  (fixtures)
from tests.test_client_chromium import app, emulator, open_page  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, tools.chromium.needed]
TOOL_LINE = '#transcript [data-role="tool"]'


def add_item(page: Page, item: dict) -> None:
    page.evaluate("(item) => window.realtimeApp.session.send({ type: 'conversation.item.create', item })", item)


def test_a_tool_call_shows_looking_up_then_a_short_result(browser, app, peers: PeerHost) -> None:  # noqa: F811
    page = open_page(browser, app)
    try:
        peer = start(page, peers)
        call = {"type": "function_call", "call_id": "call_tokyo", "name": "get_current_time", "arguments": "{}"}
        add_item(page, call)
        line = page.locator(TOOL_LINE)
        expect(line).to_have_text("Looking up: get_current_time…")
        expect(line).to_have_attribute("aria-busy", "true")
        output = json.dumps({"timezone": "Asia/Tokyo", "time": "2026-12-07T03:13:24+09:00", "weekday": "Monday"})
        add_item(page, {"type": "function_call_output", "call_id": "call_tokyo", "output": output})
        expect(line).to_have_text("Looked up get_current_time: 2026-12-07T03:13:24+09:00")
        expect(line).to_have_attribute("aria-busy", "false")
        failed = {"type": "function_call_output", "call_id": "call_docs", "output": '{"error": "The tool failed."}'}
        add_item(page, {**call, "call_id": "call_docs", "name": "search_knowledge"})
        add_item(page, failed)
        expect(page.locator(TOOL_LINE).nth(1)).to_have_text("Looked up search_knowledge: failed: The tool failed.")
        outputs = [
            e["item"]["call_id"]
            for e in peer.events_received
            if e["type"] == "conversation.item.create" and e["item"]["type"] == "function_call_output"
        ]
        assert outputs == ["call_tokyo", "call_docs"], "the page never answers a call itself"
        expect(page.locator("#error")).to_be_hidden()
    finally:
        page.context.close()
