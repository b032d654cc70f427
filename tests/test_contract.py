"""openapi.json is served, lists every error code the code can raise, and matches real responses over HTTP."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import requests
from hypothesis import example, given, settings
from hypothesis import strategies as st

from localdev.fake_openai import Fault
from realtime_proxy.errors import ApiError
from realtime_proxy.offer import _validated
from realtime_proxy.settings import Settings
from tests.conftest import OFFER, multipart
from tests.contract import SPEC, check, resolve

ROOT = Path(__file__).resolve().parent.parent


Function = ast.FunctionDef | ast.AsyncFunctionDef


def _callee(call: ast.Call) -> str | None:
    return getattr(call.func, "id", None) or getattr(call.func, "attr", None)


def _argument(call: ast.Call, position: int, name: str) -> ast.expr | None:
    """The expression passed for a parameter, by position or by keyword."""
    if len(call.args) > position:
        return call.args[position]
    return next((keyword.value for keyword in call.keywords if keyword.arg == name), None)


def _parameters(function: Function) -> list[str]:
    names = [a.arg for a in (*function.args.posonlyargs, *function.args.args)]
    return names[1:] if names[:1] in (["self"], ["cls"]) else names


def _bound(call: ast.Call, function: Function, parameter: str) -> ast.expr | None:
    """What a call of `function` passes for `parameter`, its default included."""
    positional = _parameters(function)
    defaults = dict(zip(reversed([a.arg for a in function.args.args]), reversed(function.args.defaults), strict=False))
    defaults.update(
        (a.arg, d) for a, d in zip(function.args.kwonlyargs, function.args.kw_defaults, strict=False) if d is not None
    )
    position = positional.index(parameter) if parameter in positional else len(call.args)
    return _argument(call, position, parameter) or defaults.get(parameter)


def _literal(status: ast.expr | None, code: ast.expr | None) -> tuple[int, str] | None:
    """(status, code) when both are written out as an int and a string."""
    status_value = status.value if isinstance(status, ast.Constant) else None
    code_value = code.value if isinstance(code, ast.Constant) else None
    if isinstance(status_value, int) and isinstance(code_value, str):
        return status_value, code_value
    return None


def raised_errors(package: Path = ROOT / "realtime_proxy") -> tuple[set[tuple[int, str]], list[str]]:
    """(status, code) of every ApiError the package constructs, given as literals (positionally or by
    keyword) or through a helper function's parameters; and where a status or code could not be told."""
    calls: list[tuple[str, ast.Call, Function | None]] = []
    for source in sorted(package.rglob("*.py")):
        tree = ast.parse(source.read_text())
        owner: dict[ast.Call, Function] = {}
        for definition in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            owner.update(
                (node, definition) for node in ast.walk(definition) if isinstance(node, ast.Call)
            )  # innermost wins
        calls += [(f"{source.name}:{n.lineno}", n, owner.get(n)) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    found: set[tuple[int, str]] = set()
    unresolved: list[str] = []
    helpers: dict[str, tuple[Function, ast.expr | None, ast.expr | None]] = {}
    for where, call, function in calls:
        if _callee(call) != "ApiError":
            continue
        status, code = _argument(call, 0, "status"), _argument(call, 1, "code")
        if literal := _literal(status, code):
            found.add(literal)
        elif function and any(isinstance(e, ast.Name) and e.id in _parameters(function) for e in (status, code)):
            helpers[function.name] = (function, status, code)
        else:
            unresolved.append(where)
    for where, call, _ in calls:
        name = _callee(call)
        if name is None or name not in helpers:
            continue
        helper, status, code = helpers[name]
        status, code = (_bound(call, helper, e.id) if isinstance(e, ast.Name) else e for e in (status, code))
        if literal := _literal(status, code):
            found.add(literal)
        else:
            unresolved.append(where)
    return found, unresolved


def documented_errors() -> set[tuple[int, str]]:
    """(status, code) pairs the documented operations may answer."""
    pairs: set[tuple[int, str]] = set()
    for operations in SPEC["paths"].values():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                schema = resolve(response).get("content", {}).get("application/json", {}).get("schema", {})
                for part in schema.get("allOf", []):
                    codes = (
                        part.get("properties", {})
                        .get("error", {})
                        .get("properties", {})
                        .get("code", {})
                        .get("enum", [])
                    )
                    pairs.update((int(status), code) for code in codes)
    return pairs


# Answered only outside the documented operations: unknown static files, and methods a path does not take.
UNDOCUMENTED_ROUTES = {(404, "not_found"), (405, "method_not_allowed")}


def test_every_error_the_code_raises_is_documented_with_its_status() -> None:
    raised, unresolved = raised_errors()
    assert unresolved == [], "ApiError with a status or code this test cannot read; pass literals"
    assert {(429, "rate_limited"), (503, "not_configured"), (400, "invalid_sdp")} <= raised
    assert raised - documented_errors() - UNDOCUMENTED_ROUTES == set()
    every_code = set(SPEC["components"]["schemas"]["ErrorCode"]["enum"])
    assert {code for _, code in raised | documented_errors()} <= every_code
    assert "internal_error" in every_code and (500, "internal_error") in documented_errors()


def test_the_error_walk_reads_keywords_and_helpers(tmp_path: Path) -> None:
    """The walk above must not miss a code because of how it is passed."""
    source = """
def refuse(message, code="invalid_sdp", status=400):
    return ApiError(status, code, message)
class Reader:
    def fail(self, code):
        raise ApiError(status=502, code=code, message="m")
    def read(self):
        self.fail("upstream_error")
        refuse("m")
        refuse("m", code="missing_sdp")
        raise ApiError(413, code="payload_too_large", message="m")
"""
    (tmp_path / "probe.py").write_text(source)
    raised, unresolved = raised_errors(tmp_path)
    assert {(400, "invalid_sdp"), (400, "missing_sdp"), (502, "upstream_error"), (413, "payload_too_large")} <= raised
    assert unresolved == []


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


SDP_LINES = st.sampled_from(
    [
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=ice-ufrag:Vx3e",
        "a=ice-pwd:ybGX2sHa9mJ1Qe1YvR8b2T4v",
        "a=ice-ufrag:",
        "a=ice-pwd: x",
        "a=mid:0",
        "c=IN IP4 0.0.0.0",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "",
        "a=ice-ufrag:\u00e9",
        "a=x\ty",
        "m=audio\x00",
    ]
)


@settings(max_examples=400, deadline=None)
@example(
    lines=["a=ice-ufrag:Vx3e", "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=ice-pwd:ybGX2sHa9mJ1Qe1YvR8b2T4v"],
    newline="\r\n",
    first="v=0",
)
@given(
    lines=st.lists(SDP_LINES, max_size=8),
    newline=st.sampled_from(["\r\n", "\n"]),
    first=st.sampled_from(["v=0", "v=1"]),
)
def test_the_published_offer_pattern_accepts_exactly_the_offers_the_app_accepts(
    lines: list[str], newline: str, first: str
) -> None:
    """openapi.json's pattern for an offer and the app's own checks (shape, an audio section, ICE credentials)
    agree on every offer, so a schema-valid offer is never refused and a refused one is never schema-valid."""
    offer = newline.join([first, *lines]) + newline
    schema = resolve(SPEC["paths"]["/connect"]["post"]["requestBody"]["content"]["application/sdp"]["schema"])
    published = re.fullmatch(schema["pattern"].removeprefix("^").removesuffix("$"), offer) is not None
    try:
        _validated({"sdp": offer}, Settings())
        accepted = True
    except ApiError as error:
        assert error.code == "invalid_sdp"
        accepted = False
    assert published == accepted, offer
