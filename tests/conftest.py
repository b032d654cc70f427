"""Real local servers for every test: a fake Azure OpenAI and a managed-identity endpoint on loopback."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import ClassVar, TypeVar

import azure.functions as func
import pytest
from requests_toolbelt import MultipartEncoder

from localdev.azurite import Azurite
from localdev.fake_openai import FakeAzureOpenAI
from realtime_proxy.service import RealtimeProxy
from tests.azurite import Storage, new_prefix, started
from tests.child_process import ChildProcess
from tests.contract import check
from tests.identity_endpoint import IdentityEndpoint

# The suite's rule for missing tools: a skip locally, a failed run in CI (REQUIRE_TEST_TOOLS=1).
from tests.tools import pytest_make_collect_report, pytest_runtest_makereport, pytest_sessionstart  # noqa: F401

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "test-key-5f2b9c0e8d7a41c3b6e0f9a2d4c8e1b7"
# A browser's offer as createOffer() makes it (audio and the data channel, ICE credentials, DTLS fingerprint):
# the emulator's real WebRTC peer answers it, as the service would.
_ICE = (
    "a=ice-ufrag:Vx3e\r\na=ice-pwd:ybGX2sHa9mJ1Qe1YvR8b2T4v\r\na=ice-options:trickle\r\na=fingerprint:sha-256 "
    "5F:2B:9C:0E:8D:7A:41:C3:B6:E0:F9:A2:D4:C8:E1:B7:5F:2B:9C:0E:8D:7A:41:C3:B6:E0:F9:A2:D4:C8:E1:B7\r\na=setup:actpass\r\n"
)
OFFER = (
    "v=0\r\no=- 7614219274584779017 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
    "a=msid-semantic: WMS\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n" + _ICE + "a=mid:0\r\n"
    "a=sendrecv\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n" + _ICE + "a=mid:1\r\n"
    "a=sctp-port:5000\r\na=max-message-size:262144\r\n"
)
CREDENTIAL_ENV = (
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_FEDERATED_TOKEN_FILE",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "AZURE_OPENAI_API_KEY",
    *(name for base in ("http_proxy", "https_proxy", "all_proxy", "no_proxy") for name in (base, base.upper())),
)


@pytest.fixture(autouse=True)
def clean_credential_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No credential or proxy setting from the developer's own shell may leak into a test."""
    for name in CREDENTIAL_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake() -> Iterator[FakeAzureOpenAI]:
    server = FakeAzureOpenAI(api_key=API_KEY)
    yield server
    server.close()


@pytest.fixture
def identity(fake: FakeAzureOpenAI, monkeypatch: pytest.MonkeyPatch) -> Iterator[IdentityEndpoint]:
    endpoint = IdentityEndpoint(on_token=fake.accepted_tokens.add)
    monkeypatch.setenv("IDENTITY_ENDPOINT", endpoint.url)
    monkeypatch.setenv("IDENTITY_HEADER", endpoint.header)
    yield endpoint
    endpoint.close()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


# One event loop thread for every in-process test, as the Functions worker runs one loop per process.
WORKER_LOOP = asyncio.new_event_loop()
threading.Thread(target=WORKER_LOOP.run_forever, name="worker-loop", daemon=True).start()


def in_flight(awaitable: Awaitable[T]) -> concurrent.futures.Future[T]:
    """Starts `awaitable` on the worker loop and returns at once, like a request the test has sent."""

    async def run() -> T:
        return await awaitable  # a handler promises an awaitable; the loop takes only a coroutine

    return asyncio.run_coroutine_threadsafe(run(), WORKER_LOOP)


def run_together(*awaitables: Awaitable[T]) -> list[T]:
    """Runs handlers concurrently on the worker's event loop, as simultaneous requests to one instance are."""

    async def together() -> list[T]:
        return list(await asyncio.gather(*awaitables))

    return in_flight(together()).result()


def on_worker_loop(
    handler: Callable[[func.HttpRequest], Awaitable[func.HttpResponse]],
) -> Callable[[func.HttpRequest], func.HttpResponse]:
    return lambda req: in_flight(handler(req)).result()


class Driven:
    """A RealtimeProxy whose async handlers tests call like functions; each runs on the worker loop."""

    made: ClassVar[list[RealtimeProxy]] = []

    def __init__(self, proxy: RealtimeProxy) -> None:
        Driven.made.append(proxy)
        self.proxy = proxy  # its async handlers, for tests that drive them on the worker loop themselves
        self.settings = proxy.settings
        self.limiter = proxy.limiter
        self.admission = proxy.admission
        self.ledger = proxy.ledger
        self.hang_up = on_worker_loop(proxy.hang_up)
        self.pause = on_worker_loop(proxy.pause)
        self.resume = on_worker_loop(proxy.resume)
        self.sweep = lambda: asyncio.run_coroutine_threadsafe(proxy.sweep(), WORKER_LOOP).result()
        self.connect = on_worker_loop(proxy.connect)
        self.preflight = on_worker_loop(proxy.preflight)
        self.config = on_worker_loop(proxy.config)
        self.static = on_worker_loop(proxy.static)


@pytest.fixture(autouse=True)
def close_proxies() -> Iterator[None]:
    """Each test's proxies release their upstream connections, as a worker does when it shuts down."""
    yield
    while Driven.made:
        asyncio.run_coroutine_threadsafe(Driven.made.pop().aclose(), WORKER_LOOP).result()


def driven(env: dict[str, str]) -> Driven:
    return Driven(RealtimeProxy.from_environ(env))


def make_proxy(fake: FakeAzureOpenAI, api_key: str | None = API_KEY, **env: str) -> Driven:
    settings = {"AZURE_OPENAI_BASE_URL": fake.url, **env}
    if api_key:
        settings["AZURE_OPENAI_API_KEY"] = api_key
    return driven(settings)


def multipart(fields: dict[str, str]) -> tuple[bytes, str]:
    encoder = MultipartEncoder(fields=fields)
    return encoder.to_string(), encoder.content_type


def request(
    body: bytes = b"",
    content_type: str | None = None,
    method: str = "POST",
    url: str = "http://localhost:7071/connect",
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    route_params: dict[str, str] | None = None,
) -> func.HttpRequest:
    all_headers = {"host": "localhost:7071", **(headers or {})}
    if content_type:
        all_headers["content-type"] = content_type
    return func.HttpRequest(
        method, url, headers=all_headers, params=params or {}, route_params=route_params or {}, body=body
    )


def offer_request(fields: dict[str, str] | None = None, **kwargs) -> func.HttpRequest:
    body, content_type = multipart({"sdp": OFFER, **(fields or {})})
    return request(body, content_type, **kwargs)


def error_of(response: func.HttpResponse, path: str | None = "/connect", method: str = "POST") -> dict[str, str]:
    """The error object of a refusal, after checking the response against openapi.json."""
    assert response.mimetype == "application/json", response.get_body()
    if path:
        check(path, method, response.status_code, response.mimetype, response.get_body())
    return json.loads(response.get_body())["error"]


def app_env(**env: str) -> dict[str, str]:
    """The environment of an app process a test starts: the developer's shell less any credential or Azure
    setting, plus `env`."""
    azure = ("AZURE_", "REALTIME_")
    return {**{k: v for k, v in os.environ.items() if k not in CREDENTIAL_ENV and not k.startswith(azure)}, **env}


class LocalHost:
    """`python -m localdev` in its own process: the real function_app.py, served over HTTP like `func start`."""

    # Importing the app takes about a second on a quiet machine; Azurite, when asked for, has 30 s of its own.
    START_TIMEOUT = 60.0

    def __init__(self, env: dict[str, str], start_timeout: float = START_TIMEOUT) -> None:
        storage = [] if "AzureWebJobsStorage" in env else ["--no-storage"]
        self.child = ChildProcess(
            [sys.executable, "-m", "localdev", "--port", "0", *storage],
            ready="Serving on ",
            timeout=start_timeout,
            cwd=ROOT,
            env=app_env(**env),
        )
        self.process = self.child.process
        self.url = self.child.ready_line.split()[-1].rstrip("/")

    def log(self) -> str:
        return self.child.output()

    def close(self) -> None:
        self.child.stop()


def emulated_host(emulator: FakeAzureOpenAI, **env: str) -> LocalHost:
    """The app in front of a test's emulator, as `./dev run` serves it, without the per-client connect rate (browser
    tests start many calls from one address)."""
    return LocalHost(
        {
            "AZURE_OPENAI_BASE_URL": emulator.url,
            "AZURE_OPENAI_API_KEY": API_KEY,
            "REALTIME_EMULATOR": "true",
            "RATE_LIMIT_PER_MINUTE": "0",
            **env,
        }
    )


@pytest.fixture
def live(fake: FakeAzureOpenAI) -> Iterator[LocalHost]:
    host = LocalHost({"AZURE_OPENAI_BASE_URL": fake.url + "/openai", "AZURE_OPENAI_API_KEY": API_KEY})
    yield host
    host.close()


@pytest.fixture(scope="module")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    server = started(tmp_path_factory.mktemp("azurite"))
    yield server
    server.stop()


@pytest.fixture
def azurite(azurite_server: Azurite) -> Iterator[Storage]:
    """Table Storage on a real Azurite over loopback, shared by the module, with table names of this test's own."""
    yield Storage(azurite_server, new_prefix())
    azurite_server.start()  # a test that took storage away leaves it running for the next
