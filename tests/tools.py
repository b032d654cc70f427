"""The tools outside the venv that tests need, and how `./dev test` installs each.

Where one is missing, the tests that need it skip, naming it and its install; a developer without a browser can
still run the rest. In CI (`.ci/run` sets REQUIRE_TEST_TOOLS=1) a missing tool fails the run before the first
test, and any skip that remains fails its test: a green CI means every test ran. The hooks at the end are the
suite's: tests/conftest.py imports them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from localdev.azurite import PACKAGE as AZURITE_PACKAGE
from tests.browser import CHROMIUM

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = os.environ.get("REQUIRE_TEST_TOOLS") == "1"


@dataclass(frozen=True)
class Tool:
    name: str
    found: Callable[[], bool]
    install: str  # how ./dev test installs it

    @property
    def missing(self) -> str:
        return f"{self.name} is missing: {self.install}"

    def require(self) -> None:
        """Skips the calling test (or fixture) where the tool is missing."""
        if not self.found():
            pytest.skip(self.missing)

    @property
    def needed(self) -> pytest.MarkDecorator:
        """A mark that skips a whole module where the tool is missing."""
        return pytest.mark.skipif(not self.found(), reason=self.missing)


def checkov_binary() -> Path | None:
    """./dev test sets CHECKOV after installing the pinned version; otherwise the one it installed before."""
    configured = os.environ.get("CHECKOV")
    local = ROOT / ".venv-tools" / "bin" / "checkov"
    return Path(configured) if configured else local if local.exists() else None


chromium = Tool(f"Debian's chromium ({CHROMIUM})", CHROMIUM.exists, "./dev test installs it (apt-get install chromium)")
firefox = Tool(
    "Debian's firefox-esr",
    lambda: shutil.which("firefox-esr") is not None,
    "./dev test installs it (apt-get install firefox-esr)",
)
node = Tool("node", lambda: shutil.which("node") is not None, "install Node.js 20 or later; ./dev does not")
azurite = Tool(
    "Azurite (localdev/azurite-npm/node_modules)",
    lambda: shutil.which("node") is not None and AZURITE_PACKAGE.exists(),
    "./dev test installs it (npm ci in localdev/azurite-npm; needs node and npm)",
)
agents_sdk = Tool(
    "tests/agents_sdk/node_modules (the Agents SDK and esbuild)",
    (ROOT / "tests" / "agents_sdk" / "node_modules" / ".bin" / "esbuild").exists,
    "./dev test installs them (npm ci in tests/agents_sdk; needs npm)",
)
checkov = Tool(
    "checkov",
    lambda: checkov_binary() is not None,
    "./dev test installs the pinned version into .venv-tools",
)
pycep = Tool(
    "pycep-parser",
    lambda: importlib.util.find_spec("pycep") is not None,
    "./dev installs requirements-dev.txt into .venv",
)
TOOLS = [chromium, firefox, node, azurite, agents_sdk, checkov, pycep]


def pytest_sessionstart(session: pytest.Session) -> None:
    """In CI, fail before the first test if any tool is missing, naming every one and its install."""
    absent = [tool.missing for tool in TOOLS if not tool.found()]
    if REQUIRED and absent:
        pytest.exit("REQUIRE_TEST_TOOLS=1 (CI), and tools are missing:\n  " + "\n  ".join(absent), returncode=1)


def _as_failure(report: pytest.CollectReport | pytest.TestReport) -> None:
    """In CI, a skip (of a test, or of a whole module while collecting) is a failure that keeps its reason."""
    if REQUIRED and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"Not run: {reason.removeprefix('Skipped: ')}. In CI (REQUIRE_TEST_TOOLS=1) a skip fails."


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[Any, Any, Any]:
    report = yield
    _as_failure(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[Any, Any, Any]:
    report = yield
    _as_failure(report)
    return report
