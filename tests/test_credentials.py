"""Managed identity the way Azure Functions exposes it (IDENTITY_ENDPOINT/IDENTITY_HEADER), served from loopback."""

from __future__ import annotations

import json

from tests.conftest import error_of, make_proxy, offer_request


def test_managed_identity_token_is_fetched_once_and_reused(fake, identity, logs) -> None:
    proxy = make_proxy(fake, api_key=None)
    first, second = proxy.connect(offer_request()), proxy.connect(offer_request())
    assert (first.status_code, second.status_code) == (201, 201)
    assert len(identity.requests) == 1, "two connects must cost one identity request"
    assert identity.requests[0]["resource"].startswith("https://cognitiveservices.azure.com")
    token = next(iter(fake.accepted_tokens))
    secret_requests = fake.calls_to("client_secrets")
    assert [r.headers["authorization"] for r in secret_requests] == [f"Bearer {token}"] * 2
    assert all("api-key" not in r.headers for r in secret_requests)
    for response in (first, second):
        assert token not in response.get_body().decode()
    assert token not in logs.text


def test_user_assigned_identity_is_chosen_by_azure_client_id(fake, identity) -> None:
    proxy = make_proxy(fake, api_key=None, AZURE_CLIENT_ID="4c7f0c9e-0000-4000-8000-00000000beef")
    assert proxy.connect(offer_request()).status_code == 201
    assert identity.requests[0]["client_id"] == "4c7f0c9e-0000-4000-8000-00000000beef"


def test_an_identity_endpoint_failure_is_a_clear_503(fake, identity) -> None:
    identity.fail_with = 400
    response = make_proxy(fake, api_key=None).connect(offer_request())
    error = error_of(response)
    assert (response.status_code, error["code"]) == (503, "credential_unavailable")
    assert "Cognitive Services OpenAI User" in error["message"]
    assert fake.requests == []


def test_a_token_without_the_role_points_at_the_role(fake, identity) -> None:
    fake.accepted_tokens.clear()
    identity.on_token = lambda token: None  # the resource does not honour this identity
    response = make_proxy(fake, api_key=None).connect(offer_request())
    error = error_of(response)
    assert (response.status_code, error["code"]) == (502, "upstream_auth")
    assert "Cognitive Services OpenAI User" in error["message"]
    assert "Bearer" not in json.dumps(error)


def test_an_api_key_wins_over_managed_identity(fake, identity) -> None:
    assert make_proxy(fake).connect(offer_request()).status_code == 201
    assert identity.requests == []
    assert "api-key" in fake.requests[0].headers


IMPORT_WATCH = """
import asyncio, sys, threading
imported_on = []

class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "azure.identity":
            imported_on.append(threading.current_thread().name)
        return None

sys.meta_path.insert(0, Watch())

async def main():
    from realtime_proxy.service import RealtimeProxy
    env = {"AZURE_OPENAI_BASE_URL": sys.argv[1], "AzureWebJobsStorage__accountName": "acct"}
    proxy = RealtimeProxy.from_environ(env)  # the worker imports function_app.py inside its running loop
    loop_thread = threading.current_thread().name
    for _ in range(500):  # the loop keeps running while azure-identity loads
        await asyncio.sleep(0.01)
        if imported_on:
            break
    await asyncio.sleep(0.1)
    shared = proxy.table._client.credential is proxy.identity
    await proxy.aclose()
    print(imported_on, loop_thread, shared)

asyncio.run(main())
"""


def test_one_identity_serves_azure_openai_and_storage_and_loads_off_the_event_loop(fake) -> None:
    import subprocess
    import sys
    from pathlib import Path

    run = subprocess.run(
        [sys.executable, "-c", IMPORT_WATCH, fake.url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert run.returncode == 0, run.stderr
    imported_on, loop_thread, shared = run.stdout.strip().rsplit(" ", 2)
    assert imported_on.startswith("['identity-import"), f"azure.identity was imported on {imported_on}"
    assert loop_thread == "MainThread" and shared == "True", "storage uses the process's one credential"
