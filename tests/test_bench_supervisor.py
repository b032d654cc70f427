"""SMOKE TEST of a benchmark, not a measurement: `./dev bench supervisor` with a handful of calls for a few seconds,
so the benchmark cannot rot unnoticed. Its figures mean nothing at this size; docs/benchmarks.md has the real ones."""

from __future__ import annotations

import subprocess
import sys

from tests.azurite import require_azurite
from tests.conftest import ROOT

TINY = ["--calls", "5", "--window", "2", "--probes", "5", "--connects", "3", "--gap", "0.3", "-n", "6", "--rounds", "2"]


def test_the_supervisor_bench_runs_and_prints_its_three_tables() -> None:
    require_azurite()
    done = subprocess.run(
        [sys.executable, "-m", "bench", "supervisor", *TINY],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    [held] = [line for line in lines if line.startswith("| 5 |")]
    assert held.split("|")[6].strip() == "0" and held.split("|")[9].strip() == "0", "no probe missed, no call lost"
    assert sum(line.startswith(("| same host", "| another instance")) for line in lines) == 2
    assert "goal: no extra upstream round trip (met), one queue write (met)" in lines, done.stdout
