"""Settings: every spelling of the base URL means the same resource; bad values are named, not echoed."""

from __future__ import annotations

import pytest

from realtime_proxy.settings import VOICES, load_settings, normalize_base_url
from tests.conftest import make_proxy, offer_request

VARIANTS = ["", "/", "/openai", "/openai/", "/openai/v1", "/openai/v1/"]


@pytest.mark.parametrize("suffix", VARIANTS)
def test_every_base_url_variant_reaches_the_same_endpoints(fake, suffix: str) -> None:
    response = make_proxy(fake, AZURE_OPENAI_BASE_URL=fake.url + suffix).connect(offer_request())
    assert response.status_code == 201
    assert [r.endpoint for r in fake.requests] == ["client_secrets", "calls"]


@pytest.mark.parametrize("suffix", VARIANTS)
def test_azure_resource_urls_normalise(suffix: str) -> None:
    assert normalize_base_url("https://my-res.openai.azure.com" + suffix) == "https://my-res.openai.azure.com"


@pytest.mark.parametrize(
    "url",
    [
        "my-res.openai.azure.com",
        "http://my-res.openai.azure.com",
        "ftp://x",
        "https://",
        "https://x?api-version=1",
        "https://user:pw@x.openai.azure.com",
    ],
)
def test_bad_base_urls_are_reported_by_name(url: str) -> None:
    settings = load_settings({"AZURE_OPENAI_BASE_URL": url})
    assert not settings.configured
    assert any(problem.startswith("AZURE_OPENAI_BASE_URL") for problem in settings.problems)
    assert all("pw" not in problem for problem in settings.problems)


def test_defaults_are_safe() -> None:
    settings = load_settings({"AZURE_OPENAI_BASE_URL": "https://r.openai.azure.com/"})
    assert settings.configured and settings.deployment == "gpt-realtime" and settings.api_key is None
    assert settings.policy.allowed_voices == VOICES and settings.policy.default_voice == "marin"
    assert settings.policy.instructions_mode == "append" and settings.policy.secret_ttl_seconds == 600
    assert settings.allowed_origins == () and not settings.emulator
    assert settings.limits.deadline_seconds < 30


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REALTIME_ALLOWED_VOICES", "alloy,nova"),
        ("REALTIME_DEFAULT_VOICE", "ash"),
        ("REALTIME_SESSION_TTL_SECONDS", "5"),
        ("REALTIME_INSTRUCTIONS_MODE", "shout"),
        ("CONNECT_AUTH_LEVEL", "functon"),
        ("REALTIME_TURN_DETECTION", "magic"),
        ("MAX_BODY_BYTES", "lots"),
    ],
)
def test_invalid_policy_settings_are_named(name: str, value: str) -> None:
    env = {"AZURE_OPENAI_BASE_URL": "https://r.openai.azure.com", "REALTIME_ALLOWED_VOICES": "alloy,echo", name: value}
    settings = load_settings(env)
    assert any(problem.startswith(name) for problem in settings.problems)
    assert all(value not in problem for problem in settings.problems)


def test_deployment_name_is_sent_as_model(fake) -> None:
    fake.deployments.add("my-realtime")
    assert make_proxy(fake, AZURE_OPENAI_DEPLOYMENT="my-realtime").connect(offer_request()).status_code == 201
    assert b'"model": "my-realtime"' in fake.requests[0].body
