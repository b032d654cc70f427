"""The registered functions of function_app.py, called in-process and over HTTP through the local host, and the
local host itself answering as the Functions host and Python worker do."""

from __future__ import annotations

import asyncio
import importlib
import json
import socket
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import azure.functions as func
import pytest
import requests

from localdev.host import FunctionsHost, serve
from localdev.queues import Output
from tests.conftest import API_KEY, OFFER, LocalHost, multipart, offer_request, request


@pytest.fixture
def registered(fake, monkeypatch) -> dict:
    monkeypatch.setenv("AZURE_OPENAI_BASE_URL", fake.url)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", API_KEY)
    sys.modules.pop("function_app", None)
    module = importlib.import_module("function_app")
    return {f.get_function_name(): f for f in module.app.get_functions()}


def invoke(function, req: func.HttpRequest) -> func.HttpResponse:
    """Calls a registered function as the worker would, whether it is `def` or `async def`, with an output object
    for each output binding."""
    outputs = {
        binding["name"]: Output()
        for binding in (b.get_dict_repr() for b in function.get_bindings())
        if binding["type"] == "queue"
    }
    result = function.get_user_function()(req, **outputs)
    return asyncio.run(result) if asyncio.iscoroutine(result) else result


def trigger(function) -> dict:
    return next(b.get_dict_repr() for b in function.get_bindings() if b.get_dict_repr()["type"].endswith("Trigger"))


def test_routes_do_not_collide_with_host_reserved_prefixes(registered) -> None:
    routes = {name: trigger(f).get("route") for name, f in registered.items()}
    assert routes == {
        "connect": "connect",
        "connect_preflight": "connect",
        "config": "config",
        "static": "{*path}",
        "hang_up": "calls/{call_id}/hangup",
        "hang_up_preflight": "calls/{call_id}/hangup",
        "pause": "operator/pause",
        "resume": "operator/resume",
        "operator_calls": "operator/calls",
        "sweep": None,
        "supervise": None,
    }
    assert not any(route.startswith(("admin", "runtime")) for route in routes.values() if route)
    operator = ("pause", "resume", "operator_calls")
    assert {
        name: str(trigger(f)["authLevel"].value) for name, f in registered.items() if name in operator
    } == dict.fromkeys(operator, "admin"), (
        "the kill switch and the calls report need the admin key, never a key handed to pages"
    )
    supervise = trigger(registered["supervise"])
    assert (supervise["type"], supervise["queueName"], supervise["connection"]) == (
        "queueTrigger",
        "realtime-calls",
        "AzureWebJobsStorage",
    ), "one supervisor run per admitted call, from the queue /connect writes to"
    [output] = [b.get_dict_repr() for b in registered["connect"].get_bindings() if b.get_dict_repr()["type"] == "queue"]
    assert output["queueName"] == supervise["queueName"] and output["connection"] == "AzureWebJobsStorage"
    assert trigger(registered["sweep"])["schedule"] == "0 * * * * *", "the session-length sweep runs every minute"


def test_registered_connect_function_answers_an_offer(fake, registered) -> None:
    response = invoke(registered["connect"], offer_request({"voice": "verse"}))
    assert response.status_code == 201 and response.get_body().startswith(b"v=0")
    assert [r.endpoint for r in fake.requests] == ["client_secrets", "calls"]


def test_registered_static_and_config_functions(registered) -> None:
    page = invoke(registered["static"], request(method="GET", url="http://localhost:7071/", route_params={"path": ""}))
    assert page.status_code == 200 and b"<html" in page.get_body().lower()
    config = invoke(registered["config"], request(method="GET", url="http://localhost:7071/config"))
    assert config.status_code == 200 and b'"defaultVoice":"marin"' in config.get_body()


def test_connect_over_http_all_three_body_forms(live, fake) -> None:
    body, content_type = multipart({"sdp": OFFER, "voice": "coral"})
    forms = [
        requests.post(live.url + "/connect", data=body, headers={"Content-Type": content_type}, timeout=10),
        requests.post(live.url + "/connect", json={"sdp": OFFER, "voice": "coral"}, timeout=10),
        requests.post(
            live.url + "/connect?voice=coral", data=OFFER, headers={"Content-Type": "application/sdp"}, timeout=10
        ),
    ]
    for response in forms:
        assert response.status_code == 201
        assert response.headers["Content-Type"] == "application/sdp"
        assert response.text.startswith("v=0") and response.headers["Location"].startswith("/v1/realtime/calls/rtc_")
    assert [r.body for r in fake.calls_to("calls")] == [OFFER.encode()] * 3
    assert API_KEY not in live.log() and "ek_" not in live.log()


def test_errors_over_http_are_json_with_a_code(live, fake) -> None:
    response = requests.post(live.url + "/connect", data="hello", headers={"Content-Type": "text/plain"}, timeout=10)
    assert response.status_code == 415
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert fake.requests == []


def test_function_key_mode_over_http(fake) -> None:
    host = LocalHost(
        {
            "AZURE_OPENAI_BASE_URL": fake.url,
            "AZURE_OPENAI_API_KEY": API_KEY,
            "CONNECT_AUTH_LEVEL": "function",
            "LOCAL_FUNCTION_KEY": "local-function-key",
        }
    )
    try:
        body, content_type = multipart({"sdp": OFFER})

        def post(url, **kw):
            return requests.post(url, data=body, headers={"Content-Type": content_type, **kw}, timeout=10)

        assert post(host.url + "/connect").status_code == 401
        assert fake.requests == [], "a refused key never reaches upstream"
        assert post(host.url + "/connect?code=local-function-key").status_code == 201
        assert post(host.url + "/connect", **{"x-functions-key": "local-function-key"}).status_code == 201
        preflight = requests.options(host.url + "/connect", headers={"Origin": host.url}, timeout=5)
        assert preflight.status_code == 204, "a browser's preflight carries no key and must still pass"
        assert requests.get(host.url + "/", timeout=5).status_code == 200, "the page stays public"
        assert "local-function-key" not in host.log(), "the key in ?code= never reaches the access log"
    finally:
        host.close()


def test_unknown_paths_and_methods_answer_like_the_functions_host(live) -> None:
    assert requests.get(live.url + "/nope.html", timeout=5).json()["error"]["code"] == "not_found"
    for method, path, allow in [
        ("DELETE", "/connect", "OPTIONS, POST"),
        ("PUT", "/config", "GET"),
        ("POST", "/", "GET, HEAD"),
    ]:
        response = requests.request(method, live.url + path, timeout=5)
        assert response.status_code == 405 and response.headers["Allow"] == allow, (method, path)
        assert response.headers["Content-Type"] == "application/json"
        assert response.json()["error"]["code"] == "method_not_allowed" and response.json()["error"]["requestId"]
    # GET and HEAD on an API path reach the catch-all static function, as on Azure, which refuses them itself.
    for method, path in [("GET", "/connect"), ("HEAD", "/config")]:
        response = requests.request(method, live.url + path, timeout=5)
        assert response.status_code == 405 and response.headers["Allow"], (method, path)


def test_json_has_no_charset_parameter_over_http(live) -> None:
    """The worker adds `; charset=` to text/* only; a JSON client must see exactly application/json."""
    assert requests.get(live.url + "/config", timeout=5).headers["Content-Type"] == "application/json"
    refused = requests.post(live.url + "/connect", json={"sdp": ""}, timeout=5)
    assert refused.status_code == 400 and refused.headers["Content-Type"] == "application/json"
    assert requests.get(live.url + "/", timeout=5).headers["Content-Type"] == "text/html; charset=utf-8"


def test_a_body_shorter_than_its_content_length_is_a_bad_request(live, fake) -> None:
    host, port = live.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(
            b"POST /connect HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b'Content-Length: 500\r\nConnection: close\r\n\r\n{"sdp": "v=0'
        )
        client.shutdown(socket.SHUT_WR)  # the client hangs up before the promised 500 bytes
        answer = b"".join(iter(lambda: client.recv(65536), b""))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer
    assert b"Content-Type: application/json\r\n" in head
    assert json.loads(body)["error"]["code"] == "bad_request"
    assert fake.requests == [] and "Traceback" not in live.log()


class Probe:
    """A tiny function app with sync and async handlers, served by FunctionsHost as function_app.py is."""

    def __init__(self) -> None:
        self.app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
        self.released: asyncio.Event | None = None
        app = self.app

        @app.route(route="where", methods=["GET"])
        async def where(req: func.HttpRequest) -> func.HttpResponse:
            return func.HttpResponse(json.dumps(_place()), mimetype="application/json")

        @app.route(route="where-sync", methods=["GET"])
        def where_sync(req: func.HttpRequest) -> func.HttpResponse:
            return func.HttpResponse(json.dumps(_place()), mimetype="application/json")

        @app.route(route="wait", methods=["GET"])
        async def wait(req: func.HttpRequest) -> func.HttpResponse:
            self.released = asyncio.Event()
            await asyncio.wait_for(self.released.wait(), timeout=30)
            return func.HttpResponse("released")

        @app.route(route="release", methods=["POST"])
        async def release(req: func.HttpRequest) -> func.HttpResponse:
            if self.released is None:
                return func.HttpResponse(status_code=409)
            self.released.set()  # only works on the loop that /wait is waiting on
            return func.HttpResponse(status_code=204)

        @app.route(route="fail", methods=["POST"])
        def fail(req: func.HttpRequest) -> func.HttpResponse:
            raise RuntimeError("the handler broke")

        @app.route(route="fail-async", methods=["POST"])
        async def fail_async(req: func.HttpRequest) -> func.HttpResponse:
            raise RuntimeError("the async handler broke")


def _place() -> dict[str, object]:
    try:
        loop_id = id(asyncio.get_running_loop())
    except RuntimeError:
        loop_id = None
    return {"thread": threading.current_thread().name, "loop": loop_id}


@pytest.fixture
def probe() -> Iterator[tuple[Probe, str]]:
    app = Probe()
    server = serve(app.app, port=0)
    yield app, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    assert isinstance(server.app, FunctionsHost)
    server.app.close()


def test_async_handlers_share_one_long_lived_loop_sync_ones_do_not(probe) -> None:
    _app, url = probe
    first, second = (requests.get(url + "/where", timeout=10).json() for _ in range(2))
    assert first == second and first["loop"] is not None, "one event loop, on one thread, for every async call"
    sync = requests.get(url + "/where-sync", timeout=10)
    assert sync.json()["loop"] is None and sync.json()["thread"] != first["thread"]
    assert sync.headers["Content-Type"] == "application/json"


def test_async_handlers_run_concurrently_on_that_loop(probe) -> None:
    _app, url = probe
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(requests.get, url + "/wait", timeout=60)
        while (released := requests.post(url + "/release", timeout=10)).status_code == 409:
            assert not waiting.done(), waiting.result()
        assert released.status_code == 204
        assert waiting.result().text == "released"
        assert waiting.result().headers["Content-Type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize("path", ["/fail", "/fail-async"])
def test_a_failing_handler_is_a_json_500_with_a_request_id_in_the_log(probe, logs, path) -> None:
    _, url = probe
    response = requests.post(url + path, data="the caller's private words", timeout=10)
    assert response.status_code == 500 and response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "internal_error" and "broke" not in error["message"]
    assert response.headers["X-Request-Id"] == error["requestId"] and error["requestId"] in error["message"]
    assert "RuntimeError" in logs.text and error["requestId"] in logs.text, "the traceback, findable by request id"
    assert "private words" not in logs.text
