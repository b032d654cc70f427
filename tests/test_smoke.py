"""`./dev smoke URL` and `python -m localdev.smoke URL` against `./dev run`'s app: a real WebRTC call (aiortc) through
/connect to the emulator, a typed message, the assistant's transcript, the hang-up; and clear FAIL lines when the
app cannot be reached, refuses the call, or the call never connects."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
import yaml

from localdev.emulator import PeerHost
from localdev.fake_openai import FakeAzureOpenAI
from tests.conftest import API_KEY, ROOT, LocalHost

STEPS = ["config", "offer", "connect", "channel", "reply", "hangup"]


def smoke(*args: str, command: tuple[str, ...] = (sys.executable, "-m", "localdev.smoke"), **env: str):
    return subprocess.run(
        [*command, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def passed_every_step(output: str) -> None:
    assert [line.split()[1] for line in output.splitlines() if line.startswith("  ok ")] == STEPS, output
    assert output.splitlines()[-1].startswith("PASS  a real call through "), output


@pytest.fixture(scope="module")
def dev_run() -> Iterator[LocalHost]:
    """What `./dev run` serves on a machine with no Azure settings: the app, with the emulator behind it."""
    host = LocalHost({})
    yield host
    host.close()


def test_dev_smoke_makes_a_real_call_and_says_pass(dev_run: LocalHost) -> None:
    result = smoke(dev_run.url + "/", command=("bash", str(ROOT / "dev"), "smoke"))
    assert result.returncode == 0, result.stdout + result.stderr
    passed_every_step(result.stdout)
    assert "GET /config: the local emulator, not Azure" in result.stdout
    assert "You said: Smoke test of a new deployment" in result.stdout, "the assistant's transcript is shown"
    request_id = re.search(r"\(request id (\w+)\)$", result.stdout.strip())
    assert request_id, result.stdout
    assert f"[request_id={request_id.group(1)}]" in dev_run.log(), "the printed request id leads to the app's log"
    call_id = re.search(r"call (rtc_\w+)", result.stdout)
    assert call_id and f"call {call_id.group(1)} ended (user)" in dev_run.log(), "it hung up with its token"


def test_nothing_secret_is_printed(dev_run: LocalHost) -> None:
    """The call token (X-Call-Token) is a capability: only request ids and the call id may show up."""
    result = smoke(dev_run.url, "--voice", "cedar")
    assert result.returncode == 0, result.stdout + result.stderr
    long_words = set(re.findall(r"[A-Za-z0-9_-]{20,}", result.stdout))
    ids = set(re.findall(r"request id (\w+)", result.stdout)) | set(re.findall(r"rtc_\w+", result.stdout))
    assert long_words <= ids, long_words - ids


@pytest.fixture(scope="module")
def keyed_app() -> Iterator[LocalHost]:
    """The app with CONNECT_AUTH_LEVEL=function, as deployed with a Functions key."""
    host = LocalHost({"CONNECT_AUTH_LEVEL": "function", "LOCAL_FUNCTION_KEY": "functions-key-5c1d9e"})
    yield host
    host.close()


def test_a_functions_key_is_sent_and_never_printed(keyed_app: LocalHost) -> None:
    refused = smoke(keyed_app.url)
    assert refused.returncode == 1
    assert "FAIL  at connect: POST /connect answered 401" in refused.stdout, refused.stdout
    accepted = smoke(keyed_app.url, FUNCTION_KEY="functions-key-5c1d9e")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    passed_every_step(accepted.stdout)
    given_in_the_url = smoke(keyed_app.url + "/connect?code=functions-key-5c1d9e")
    assert given_in_the_url.returncode == 0, given_in_the_url.stdout
    for result in (accepted, given_in_the_url):
        assert "functions-key-5c1d9e" not in result.stdout + result.stderr


def test_an_app_that_cannot_be_reached_is_a_clear_fail() -> None:
    result = smoke("http://127.0.0.1:9/")
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1].startswith("FAIL  at config: "), result.stdout
    assert "Cannot connect to host 127.0.0.1:9" in result.stdout and "Traceback" not in result.stderr


def test_an_unusable_answer_is_a_clear_fail_and_the_call_is_hung_up(live: LocalHost, fake: FakeAzureOpenAI) -> None:
    """The fake Azure OpenAI answers with SDP that no WebRTC peer can use."""
    result = smoke(live.url)
    assert result.returncode == 1
    assert "FAIL  at connect: the SDP answer cannot be used: " in result.stdout, result.stdout
    assert fake.calls_to("hangup"), "the call it made was ended, not left holding a session"


@pytest.fixture
def vanishing_service() -> Iterator[FakeAzureOpenAI]:
    """A service that answers each call, then loses it, as a broken network would: nothing ever connects."""
    peers = PeerHost()

    def answer_then_vanish(offer: str, session: dict, call_id: str, webrtc_filter: bool = False) -> str:
        answer = peers.answer(offer, session, call_id, webrtc_filter)
        peers.drop(call_id)
        return answer

    service = FakeAzureOpenAI(api_key=API_KEY, answerer=answer_then_vanish)
    yield service
    service.close()
    peers.close()


def test_a_call_that_never_connects_is_a_clear_fail(vanishing_service: FakeAzureOpenAI) -> None:
    host = LocalHost({"AZURE_OPENAI_BASE_URL": vanishing_service.url, "AZURE_OPENAI_API_KEY": API_KEY})
    try:
        result = smoke(host.url, "--timeout", "5")
    finally:
        host.close()
    assert result.returncode == 1
    assert [line.split()[1] for line in result.stdout.splitlines() if line.startswith("  ok ")] == STEPS[:3]
    assert "FAIL  at channel: the media and data channel did not open within 5 s" in result.stdout, result.stdout
    assert vanishing_service.calls_to("hangup"), "the call it made was ended, not left holding a session"


def test_azd_prints_the_smoke_command_after_provisioning_and_deploying() -> None:
    """Each hook's POSIX script is run as azd would run it; PowerShell is not installed here, so its text is read."""
    hooks = yaml.safe_load((ROOT / "azure.yaml").read_text())["hooks"]
    url = "https://realtime-demo.azurewebsites.net/"
    for event in ("postprovision", "postdeploy"):
        posix, windows = hooks[event]["posix"], hooks[event]["windows"]
        assert (posix["shell"], windows["shell"]) == ("sh", "pwsh")
        printed = subprocess.run(["sh", "-c", posix["run"]], env={"PAGE_URL": url}, capture_output=True, text=True)
        assert f"./dev smoke {url}\n" in printed.stdout and f"python -m localdev.smoke {url};" in printed.stdout
        assert "py -m localdev.smoke $env:PAGE_URL" in windows["run"]
