"""The libraries' own log lines (the Azure SDK, aiohttp) pass the same redaction as the app's, at DEBUG too."""

from __future__ import annotations

import logging

import pytest

from localdev.azurite import ACCOUNT_KEY
from tests.conftest import API_KEY, make_proxy, offer_request
from tests.test_shared_limits import hang_up_request
from tests.test_storage_faults import storage_env

# The app quiets the Azure SDK's per-request HTTP log (realtime_proxy/logs.py); an owner chasing a problem opens it.
LIBRARIES = ("azure", "azure.core.pipeline.policies.http_logging_policy", "aiohttp", "asyncio", "urllib3")


@pytest.fixture
def everything(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every logger of the process at DEBUG, the libraries' included, as an owner chasing a problem sets them."""
    caplog.set_level(logging.DEBUG)
    for name in LIBRARIES:
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def text_of(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


def test_no_secret_in_play_reaches_any_log_line_at_debug(fake, identity, azurite, everything) -> None:
    tokens: list[str] = []

    def issued(token: str) -> None:
        tokens.append(token)
        fake.accepted_tokens.add(token)

    identity.on_token = issued
    keyed = make_proxy(fake, **storage_env(azurite, "keyed"))
    by_identity = make_proxy(fake, api_key=None, **storage_env(azurite, "identity"))
    answers = [keyed.connect(offer_request()), by_identity.connect(offer_request())]
    assert [answer.status_code for answer in answers] == [201, 201]
    assert keyed.hang_up(hang_up_request(answers[0])).status_code == 200
    logged = text_of(everything)
    assert any(record.name.startswith("azure.") for record in everything.records), "the SDK's DEBUG lines are there"
    capabilities = [answer.headers["X-Call-Token"].split(".")[1] for answer in answers]
    for secret in (API_KEY, ACCOUNT_KEY, *tokens, *fake.secrets, *capabilities):
        assert secret not in logged, f"a secret ({secret[:6]}…) reached the log"


@pytest.mark.parametrize("name", ["azure.core.pipeline.policies.http_logging_policy", "aiohttp.client", "azure"])
def test_a_secret_a_library_logs_is_redacted_on_every_logger_of_the_process(fake, everything, name: str) -> None:
    make_proxy(fake)  # the app is loaded: its redaction covers the process
    logging.getLogger(name).debug("request headers: api-key=%s Authorization: Bearer %s", API_KEY, "eyJ" + "a" * 40)
    logged = text_of(everything)
    assert "request headers" in logged and API_KEY not in logged and "eyJ" + "a" * 40 not in logged


def test_the_sdks_per_request_http_log_is_quiet_by_default(caplog: pytest.LogCaptureFixture) -> None:
    """Every lease renewal and heartbeat is a storage request: at INFO, their headers would fill the log."""
    caplog.set_level(logging.INFO)  # the app's own lines at INFO, as host.json's "Function": "Information" has them
    quiet = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
    assert not quiet.isEnabledFor(logging.INFO) and quiet.isEnabledFor(logging.WARNING)
    assert logging.getLogger("azure.data.tables").isEnabledFor(logging.INFO), "only the per-request log is quieted"
