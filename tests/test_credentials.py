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
