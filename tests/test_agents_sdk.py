"""The clients people already use, cross-origin: OpenAI's Agents SDK in a real Chromium, and the request headers
of OpenAI-style WebRTC clients, against the app under the local host.

The SDK page is bundled here from the npm package (`tests/agents_sdk`, installed by `./dev test`; no CDN) and
served from a second origin listed in ALLOWED_ORIGINS. The emulator answers as Azure would, so what the SDK
reports as an error is what a user of it would see.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from localdev.emulator import PeerHost
from localdev.fake_openai import FakeAzureOpenAI
from tests import tools
from tests.browser import serve_folder
from tests.conftest import API_KEY, OFFER, LocalHost, emulated_host
from tests.test_browser_e2e import browser, emulator, eventually, peers  # noqa: F401  (shared fixtures)

SDK_DIR = Path(__file__).resolve().parent / "agents_sdk"
ESBUILD = SDK_DIR / "node_modules" / ".bin" / "esbuild"
# What a page hands the SDK as its "ephemeral key": the SDK insists on an `ek_` key in browsers and sends it as
# `Authorization: Bearer …` with the SDP. The app mints its own secret; this one must go nowhere.
PAGE_KEY = "ek_page_placeholder_3f9c2b7e61d04a58"
STEP_MS = 30_000  # any single step, on a loaded machine
# Request headers of each client's SDP POST (besides Content-Type: application/sdp).
CLIENTS = {
    "agents-sdk": {"Authorization": f"Bearer {PAGE_KEY}", "X-OpenAI-Agents-SDK": "openai-agents-sdk.0.20.0"},
    "openai-webrtc-example": {"Authorization": f"Bearer {PAGE_KEY}"},  # OpenAI's WebRTC guide: fetch with these
}
LONG_MESSAGE = "Once upon a time " + "a page on another origin called a peer on loopback and they talked. " * 10


def never_forwarded(secret: str, fake: FakeAzureOpenAI, host: LocalHost) -> None:
    """`secret` appears in no upstream request (headers, query or body) and nowhere in the app's log."""
    assert fake.requests, "the app did call upstream"
    for recorded in fake.requests:
        assert secret not in repr(recorded.headers) + repr(recorded.query) + recorded.body.decode("utf-8", "replace")
    assert fake.calls_to("client_secrets")[-1].headers["api-key"] == API_KEY, "the app's own credential went up"
    assert secret not in host.log()


# --- request headers of OpenAI-style clients, over HTTP -------------------------------------------------------------


@pytest.fixture
def cors_app(fake: FakeAzureOpenAI) -> Iterator[tuple[LocalHost, str]]:
    origin = "http://app.example.test:8443"
    host = LocalHost({"AZURE_OPENAI_BASE_URL": fake.url, "AZURE_OPENAI_API_KEY": API_KEY, "ALLOWED_ORIGINS": origin})
    yield host, origin
    host.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_an_allowed_origin_may_send_what_the_client_sends(client: str, cors_app, fake: FakeAzureOpenAI) -> None:
    host, origin = cors_app
    sent = {**CLIENTS[client], "Content-Type": "application/sdp"}
    requested = ",".join(sorted(name.lower() for name in sent))  # as Chromium lists them
    preflight = requests.options(
        f"{host.url}/connect?voice=cedar",
        timeout=10,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": requested,
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == origin
    allowed = {name.strip().lower() for name in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert set(requested.split(",")) <= allowed, f"the browser would block the POST: {requested} vs {allowed}"

    answer = requests.post(
        f"{host.url}/connect?voice=cedar", data=OFFER, timeout=20, headers={**sent, "Origin": origin}
    )
    assert answer.status_code == 201, answer.text
    assert answer.headers["Content-Type"].startswith("application/sdp")
    assert answer.headers["Access-Control-Allow-Origin"] == origin
    never_forwarded(PAGE_KEY, fake, host)


def test_a_refused_origin_is_still_refused_whatever_it_sends(cors_app, fake: FakeAzureOpenAI) -> None:
    host, _ = cors_app
    headers = {**CLIENTS["agents-sdk"], "Origin": "http://elsewhere.example.test", "Content-Type": "application/sdp"}
    refused = requests.post(f"{host.url}/connect", data=OFFER, timeout=10, headers=headers)
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "origin_not_allowed")
    assert fake.requests == []


# --- the Agents SDK in Chromium, from another origin ----------------------------------------------------------------


@pytest.fixture(scope="module")
def sdk_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The SDK page, bundled from the npm package, served from its own origin."""
    tools.agents_sdk.require()
    site = tmp_path_factory.mktemp("agents-sdk-site")
    shutil.copy(SDK_DIR / "index.html", site)
    subprocess.run(
        [str(ESBUILD), "page.js", "--bundle", "--format=esm", f"--outfile={site / 'page.js'}", "--log-level=warning"],
        cwd=SDK_DIR,
        check=True,
        timeout=300,
    )
    server, url = serve_folder(site)
    yield url
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def sdk_app(emulator: FakeAzureOpenAI, sdk_origin: str) -> Iterator[LocalHost]:  # noqa: F811
    host = emulated_host(emulator, ALLOWED_ORIGINS=sdk_origin)
    yield host
    host.close()


def test_an_agents_sdk_page_on_another_origin_talks_listens_interrupts_and_closes(
    browser,  # noqa: F811
    sdk_origin: str,
    sdk_app: LocalHost,
    emulator: FakeAzureOpenAI,  # noqa: F811
    peers: PeerHost,  # noqa: F811
) -> None:
    emulator.reset()
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{sdk_origin}/index.html")
        page.wait_for_function("window.sdk !== undefined", timeout=STEP_MS)
        known = len(peers.peers)
        page.evaluate(
            "([url, key]) => window.sdk.connect(url, key, 'gpt-realtime')",
            [f"{sdk_app.url}/connect?voice=cedar", PAGE_KEY],
        )  # resolves on session.updated
        assert page.evaluate("window.sdk.status()") == "connected"
        peer = eventually(lambda: len(peers.peers) > known and peers.peers[-1], what="the emulator's call")
        never_forwarded(PAGE_KEY, emulator, sdk_app)
        updated = [e["session"] for e in page.evaluate("window.sdk.serverEvents") if e["type"] == "session.updated"]
        assert updated[0]["audio"]["output"]["voice"] == "cedar", "the voice chosen in the SDP URL holds"
        assert updated[0]["audio"]["input"]["transcription"] == {"model": "whisper-1"}, "the docs' SDK config applies"
        assert updated[0]["instructions"] == "You are the Agents SDK test agent.", (
            "the SDK's session.update replaces the server's instructions (docs/security.md)"
        )

        page.evaluate("window.sdk.send('Hello from the Agents SDK')")
        page.wait_for_function(
            """window.sdk.history().some((item) => item.role === 'assistant'
            && item.status === 'completed' && item.text.includes('You said: Hello from the Agents SDK'))""",
            timeout=STEP_MS,
        )
        page.wait_for_function("window.sdk.sdkEvents.includes('audio_stopped')", timeout=STEP_MS)

        page.evaluate("window.sdk.speak(true)")
        page.wait_for_function(
            "window.sdk.serverEvents.some((e) => e.type === 'input_audio_buffer.speech_started')", timeout=STEP_MS
        )
        frames = peer.mic_frames
        eventually(lambda: peer.mic_frames > frames + 50, what="a second of speech at the emulator")
        page.evaluate("window.sdk.speak(false)")
        page.wait_for_function(
            """window.sdk.history().some((item) => item.role === 'user'
            && /emulator heard \\d+\\.\\d s of speech/.test(item.text))""",
            timeout=STEP_MS,
        )
        page.wait_for_function(
            "window.sdk.serverEvents.some((e) => e.type === 'conversation.item.retrieved')", timeout=STEP_MS
        )  # the SDK asks for each transcribed turn; the service answers

        # Interrupt a reply long enough (~15 s) that the interrupt lands mid-reply however slow the machine is.
        page.wait_for_function(
            "window.sdk.serverEvents.filter((e) => e.type === 'response.done').length >= 2", timeout=STEP_MS
        )  # the spoken turn was answered
        page.evaluate("(text) => window.sdk.send(text)", LONG_MESSAGE)
        page.wait_for_function(
            "window.sdk.serverEvents.filter((e) => e.type === 'output_audio_buffer.started').length >= 3",
            timeout=STEP_MS,
        )
        page.evaluate("window.sdk.interrupt()")
        page.wait_for_function(
            "window.sdk.history().filter((item) => item.role === 'assistant').length === 3"
            " && window.sdk.history().at(-1).status === 'incomplete'",
            timeout=STEP_MS,
        )
        sent = [e["type"] for e in peer.events_received]
        assert "response.cancel" in sent and "output_audio_buffer.clear" in sent
        assert "not Azure" not in page.evaluate("window.sdk.history().at(-1).text"), "the reply stopped part-way"

        assert page.evaluate("window.sdk.errors") == []
        assert "error" not in [e["type"] for e in page.evaluate("window.sdk.serverEvents")]

        page.evaluate("window.sdk.close()")
        assert page.evaluate("window.sdk.status()") == "disconnected"
        eventually(lambda: peer.closed, what="the emulator to see the hang-up")
    finally:
        context.close()
