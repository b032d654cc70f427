"""CI's rules for the suite, tried for real: a missing tool fails the run before any test, a skip fails its test, and a
server that never says it is ready fails in bounded time with what it printed.

The rules are pytest hooks, so they are tried on a small suite of their own in a pytest child process, with the
suite's hooks (tests/tools.py) as its conftest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localdev.azurite import Azurite, AzuriteUnavailable
from tests.azurite import require_azurite
from tests.child_process import ChildProcess
from tests.conftest import ROOT, LocalHost

# The suite's hooks, with the list of tools the suite needs replaced (this machine may lack some of the real ones).
HOOKS = """
from tests import tools
from tests.tools import pytest_make_collect_report, pytest_runtest_makereport, pytest_sessionstart
tools.TOOLS[:] = []
"""
MISSING_TOOL = """
tools.TOOLS[:] = [tools.Tool("a unicorn", lambda: False, "./dev test installs it (apt-get install unicorn)")]
"""
SUITE = """
import pytest
from pathlib import Path

def test_runs():
    Path("ran").write_text("yes")

def test_needs_a_unicorn():
    pytest.skip("a unicorn is missing: ./dev test installs it")
"""


def run_suite(folder: Path, conftest: str, required: bool) -> subprocess.CompletedProcess[str]:
    (folder / "conftest.py").write_text(conftest)
    (folder / "test_suite.py").write_text(SUITE)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REQUIRE_TEST_TOOLS": "1" if required else ""}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "-p", "no:timeout", "test_suite.py"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_in_ci_a_missing_tool_fails_the_run_before_any_test(tmp_path: Path) -> None:
    result = run_suite(tmp_path, HOOKS + MISSING_TOOL, required=True)
    assert result.returncode == 1, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "a unicorn is missing: ./dev test installs it (apt-get install unicorn)" in output
    assert not (tmp_path / "ran").exists(), "no test ran"


def test_in_ci_a_skip_fails_its_test_and_says_why(tmp_path: Path) -> None:
    result = run_suite(tmp_path, HOOKS, required=True)
    assert result.returncode == 1, result.stdout
    assert "1 failed, 1 passed" in result.stdout
    reason = "Not run: a unicorn is missing: ./dev test installs it. In CI (REQUIRE_TEST_TOOLS=1) a skip fails."
    assert reason in result.stdout


def test_outside_ci_a_missing_tool_skips_and_says_why(tmp_path: Path) -> None:
    result = run_suite(tmp_path, HOOKS + MISSING_TOOL, required=False)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 1 skipped" in result.stdout
    assert "a unicorn is missing: ./dev test installs it" in result.stdout


def test_every_test_has_a_time_limit_in_the_project_configuration(tmp_path: Path) -> None:
    """pytest-timeout reads it from pyproject.toml, so plain `pytest` has it too; a test past it fails, and the run
    goes on to the next test."""
    hangs = "import time\n\ndef test_hangs():\n    time.sleep(600)\n\ndef test_next():\n    pass\n"
    (tmp_path / "test_hangs.py").write_text(hangs)
    pytest_here = [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path)]
    header = subprocess.run([*pytest_here, "--collect-only", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert "timeout: 300.0s" in header.stdout, header.stdout
    started = time.monotonic()
    run = subprocess.run([*pytest_here, "-o", "timeout=2", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 60
    assert "Timeout (>2.0s" in run.stdout and "1 failed, 1 passed" in run.stdout, run.stdout


SILENT_SERVER = "import sys, time; print('loading the app...', flush=True); time.sleep(600)"


def test_a_server_that_never_says_it_is_ready_fails_in_bounded_time_with_its_output() -> None:
    started = time.monotonic()
    with pytest.raises(RuntimeError) as failure:
        ChildProcess([sys.executable, "-c", SILENT_SERVER], ready="Serving on ", timeout=2)
    assert time.monotonic() - started < 15
    assert "stayed silent for 2 s before printing 'Serving on '" in str(failure.value)
    assert "loading the app..." in str(failure.value), "its output is in the error"


def test_a_server_that_dies_before_it_is_ready_fails_at_once_with_its_output() -> None:
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"exited with status 3 before printing 'Serving on '[\s\S]*no port"):
        ChildProcess([sys.executable, "-c", "print('no port'); raise SystemExit(3)"], ready="Serving on ", timeout=60)
    assert time.monotonic() - started < 30, "it did not wait out its timeout"


def test_the_local_host_that_cannot_start_fails_with_its_log() -> None:
    """The real `python -m localdev`, with a setting it cannot read: it exits, and LocalHost shows why."""
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"exited with status 1[\s\S]*could not convert string to float: 'soon'"):
        LocalHost({"LOCAL_TIMER_INTERVAL_SECONDS": "soon"}).close()
    assert time.monotonic() - started < 30, "it did not wait out its timeout"


def test_an_azurite_that_does_not_start_in_time_is_stopped_and_its_log_reported(tmp_path: Path) -> None:
    require_azurite()
    azurite = Azurite(tmp_path / "data", start_timeout=0)
    with pytest.raises(AzuriteUnavailable, match=r"Azurite did not start on 127\.0\.0\.1"):
        azurite.start()
    assert azurite.process is None, "stopped, not left running"
