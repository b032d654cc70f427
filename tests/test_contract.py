"""openapi.json is served, lists every error code the code can raise, and matches real responses over HTTP."""
from __future__ import annotations

import ast
from pathlib import Path

import requests

from localdev.fake_openai import Fault
from tests.conftest import OFFER, multipart
from tests.contract import SPEC, check

ROOT = Path(__file__).resolve().parent.parent


def raised_codes() -> set[str]:
    codes = set()
    for source in (ROOT / "realtime_proxy").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ApiError":
                codes.add(node.args[1].value)
    return codes


def test_every_error_code_in_the_code_is_documented() -> None:
    documented = set(SPEC["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"])
    assert raised_codes() - documented == set()
    assert "rate_limited" in raised_codes() and "not_configured" in raised_codes()


def test_real_responses_match_the_contract(live, fake) -> None:
    url = live.url + "/connect"
    body, content_type = multipart({"sdp": OFFER, "voice": "echo"})
    sent = [
        ("POST", requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=10)),
        ("POST", requests.post(url, json={"sdp": OFFER}, timeout=10)),
        ("POST", requests.post(url, data=OFFER, headers={"Content-Type": "application/sdp"}, timeout=10)),
        ("POST", requests.post(url, json={"sdp": OFFER, "voice": "nova"}, timeout=10)),
        ("POST", requests.post(url, data=b"x", headers={"Content-Type": "text/plain"}, timeout=10)),
        ("POST", requests.post(url, json={"sdp": OFFER}, headers={"Origin": "https://evil.example"}, timeout=10)),
        ("OPTIONS", requests.options(url, headers={"Origin": "https://evil.example"}, timeout=10)),
    ]
    fake.fail_next("client_secrets", Fault(status=429, headers={"Retry-After": "3"}))
    sent.append(("POST", requests.post(url, json={"sdp": OFFER}, timeout=10)))
    assert sorted({r.status_code for _, r in sent}) == [201, 400, 403, 415, 429]
    for method, response in sent:
        check("/connect", method, response.status_code, response.headers.get("Content-Type", ""), response.content)
    config = requests.get(live.url + "/config", timeout=10)
    check("/config", "GET", config.status_code, config.headers["Content-Type"], config.content)
    served = requests.get(live.url + "/openapi.json", timeout=10)
    assert served.status_code == 200 and served.json() == SPEC
