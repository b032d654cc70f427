"""The registered functions of function_app.py, called in-process and over HTTP through the local host."""
from __future__ import annotations

import importlib
import sys

import azure.functions as func
import pytest
import requests

from tests.conftest import API_KEY, OFFER, LocalHost, multipart, offer_request, request


@pytest.fixture
def registered(fake, monkeypatch) -> dict:
    monkeypatch.setenv("AZURE_OPENAI_BASE_URL", fake.url)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", API_KEY)
    sys.modules.pop("function_app", None)
    module = importlib.import_module("function_app")
    return {f.get_function_name(): f for f in module.app.get_functions()}


def trigger(function) -> dict:
    return next(b.get_dict_repr() for b in function.get_bindings() if b.get_dict_repr()["type"] == "httpTrigger")


def test_routes_do_not_collide_with_host_reserved_prefixes(registered) -> None:
    routes = {name: trigger(f)["route"] for name, f in registered.items()}
    assert routes == {"connect": "connect", "connect_preflight": "connect", "config": "config", "static": "{*path}"}
    assert not any(route.startswith(("admin", "runtime")) for route in routes.values())


def test_registered_connect_function_answers_an_offer(fake, registered) -> None:
    response = registered["connect"].get_user_function()(offer_request({"voice": "verse"}))
    assert response.status_code == 201 and response.get_body().startswith(b"v=0")
    assert [r.endpoint for r in fake.requests] == ["client_secrets", "calls"]


def test_registered_static_and_config_functions(registered) -> None:
    page = registered["static"].get_user_function()(request(method="GET", url="http://localhost:7071/", route_params={"path": ""}))
    assert page.status_code == 200 and b"<html" in page.get_body().lower()
    config = registered["config"].get_user_function()(request(method="GET", url="http://localhost:7071/config"))
    assert config.status_code == 200 and b'"defaultVoice":"marin"' in config.get_body()


def test_connect_over_http_all_three_body_forms(live, fake) -> None:
    body, content_type = multipart({"sdp": OFFER, "voice": "coral"})
    forms = [
        requests.post(live.url + "/connect", data=body, headers={"Content-Type": content_type}, timeout=10),
        requests.post(live.url + "/connect", json={"sdp": OFFER, "voice": "coral"}, timeout=10),
        requests.post(live.url + "/connect?voice=coral", data=OFFER, headers={"Content-Type": "application/sdp"}, timeout=10),
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
    host = LocalHost({"AZURE_OPENAI_BASE_URL": fake.url, "AZURE_OPENAI_API_KEY": API_KEY,
                      "CONNECT_AUTH_LEVEL": "function", "LOCAL_FUNCTION_KEY": "local-function-key"})
    try:
        body, content_type = multipart({"sdp": OFFER})
        post = lambda url, **kw: requests.post(url, data=body, headers={"Content-Type": content_type, **kw}, timeout=10)
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


def test_unknown_methods_and_paths(live) -> None:
    assert requests.delete(live.url + "/connect", timeout=5).status_code in (404, 405)
    assert requests.get(live.url + "/nope.html", timeout=5).json()["error"]["code"] == "not_found"
