"""Schemathesis fuzzes the running local host from openapi.json with all its checks: spec and code agree.

This module is also the `st` process's hooks module (SCHEMATHESIS_HOOKS), so the raw-SDP form is fuzzed too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import schemathesis

from tests.conftest import API_KEY, LocalHost

ST = Path(sys.executable).with_name("st")
ROOT = Path(__file__).resolve().parent.parent
schemathesis.serializer.alias("application/sdp", "text/plain")  # the offer is sent as the body, as text


@schemathesis.hook
def before_load_schema(context: schemathesis.HookContext, raw_schema: dict) -> None:
    """The models a caller may pick are configuration, stated by /config as the allowed voices are: this run's app
    offers only its default deployment, which takes no reasoning effort, so the fuzzed schema says just that
    (tests/test_models.py covers choosing among several)."""
    schemas = raw_schema["components"]["schemas"]
    schemas["ModelChoice"] = {"enum": ["", "gpt-realtime"]}
    schemas["ReasoningChoice"] = {"enum": [""]}


# A schema-violating request must get one of the refusals /connect documents (Schemathesis' default list
# lacks 413 and 431, and admits statuses this API never uses for bad input).
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 413, 415, 429, 431]
"""


@pytest.mark.timeout(660)  # its run has 600 s of its own, and says more when it overruns
def test_schemathesis_finds_no_failure(fake, tmp_path: Path) -> None:
    host = LocalHost({"AZURE_OPENAI_BASE_URL": fake.url, "AZURE_OPENAI_API_KEY": API_KEY, "RATE_LIMIT_PER_MINUTE": "0"})
    config, har = tmp_path / "schemathesis.toml", tmp_path / "run.har"
    config.write_text(CONFIG)
    try:
        run = subprocess.run(
            [
                str(ST),
                "--config-file",
                str(config),
                "run",
                f"{host.url}/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                "40",
                "--generation-deterministic",
                "--workers",
                "1",
                "--no-color",
                "--request-timeout",
                "30",
                "--report",
                "har",
                "--report-har-path",
                str(har),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,  # its crash cache stays out of the repo
            env={**os.environ, "SCHEMATHESIS_HOOKS": __name__, "PYTHONPATH": str(ROOT)},
        )
    finally:
        host.close()
    assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-4000:]
    entries = json.loads(har.read_text())["log"]["entries"]
    statuses = {(e["request"]["method"], e["response"]["status"]) for e in entries}
    created = [e for e in entries if (e["request"]["method"], e["response"]["status"]) == ("POST", 201)]
    forms = {
        next(h["value"].split(";")[0] for h in e["request"]["headers"] if h["name"].lower() == "content-type")
        for e in created
    }
    assert forms == {"multipart/form-data", "application/json", "application/sdp"}, f"sessions made only with {forms}"
    assert len(created) >= 10, f"only {len(created)} of {len(entries)} requests made a session: {sorted(statuses)}"
    assert {("POST", 400), ("PUT", 405)} <= statuses, "bad offers and undeclared methods were tried"
    assert len(fake.calls_to("calls")) == len(created), "only the accepted offers reached Azure OpenAI"
