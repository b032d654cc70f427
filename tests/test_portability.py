"""Local development without Linux's extras, as on macOS and Windows: CI cannot run either, so the Linux-only pieces
are taken away here and the local host must still serve the page and a real call, with Azurite, on this machine.

Taken away: libc's prctl (macOS, Windows), fcntl's flock (Windows), and on PATH everything but node (no unshare, ip,
apt-get or sha256sum; macOS has `shasum -a 256` instead). Not tried here: a real macOS or Windows, bash 3.2,
Windows' console signals and its .cmd shims (Azurite is started as `node <script>`, so none stands in between).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests import tools
from tests.child_process import ChildProcess
from tests.conftest import ROOT, app_env

# `python -m localdev`, in a process where the Linux-only pieces do not exist.
WITHOUT_LINUX_EXTRAS = """
import ctypes, sys
from pathlib import Path

sys.modules["fcntl"] = None  # import fcntl fails, as on Windows

class WithoutPrctl(ctypes.CDLL):  # as on macOS and Windows
    def __getattr__(self, name):
        if name == "prctl":
            raise AttributeError(name)
        return super().__getattr__(name)

ctypes.CDLL = WithoutPrctl
import localdev.__main__ as local

local.TOP = Path(sys.argv[1])  # Azurite's data in the test's folder, not the checkout's
sys.argv = ["localdev", "--port", "0"]
local.main()
"""


def bin_with_only(tmp_path: Path, *commands: str) -> str:
    """A PATH holding just these commands."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for command in commands:
        found = shutil.which(command)
        assert found, f"{command} is needed to run this test"
        (folder / command).symlink_to(found)
    return str(folder)


def refuses_connections(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def host_without_linux_extras(tmp_path: Path) -> Iterator[ChildProcess]:
    tools.azurite.require()
    env = app_env(PATH=bin_with_only(tmp_path, "node"), AzureWebJobsStorage="UseDevelopmentStorage=true")
    child = ChildProcess(
        [sys.executable, "-c", WITHOUT_LINUX_EXTRAS, str(tmp_path)], ready="Serving on ", timeout=90, cwd=ROOT, env=env
    )
    yield child
    child.stop()


def test_the_local_host_serves_the_page_and_a_real_call_without_linux_extras(
    host_without_linux_extras: ChildProcess, tmp_path: Path
) -> None:
    host = host_without_linux_extras
    url = host.ready_line.split()[-1].rstrip("/")
    log = host.output()
    assert "No flock here: nothing stops a second Azurite from using the same folder." in log, log
    storage = re.search(r"Storage: Azurite on 127\.0\.0\.1:(\d+)", log)
    assert storage, log
    page = requests.get(url + "/", timeout=10)
    assert page.status_code == 200 and "<title>" in page.text
    call = subprocess.run(
        [sys.executable, "-m", "localdev.smoke", url], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert call.returncode == 0 and "PASS" in call.stdout, call.stdout + call.stderr

    host.process.kill()  # no cleanup of its own: Azurite's stdin closes with it, so it saves and exits
    host.process.wait()
    deadline = time.monotonic() + 15
    while not refuses_connections(int(storage.group(1))):
        assert time.monotonic() < deadline, "Azurite outlived the local host"
        time.sleep(0.05)
    assert (tmp_path / ".azurite" / "__azurite_db_table__.json").exists(), "Azurite saved its tables"


def test_dev_run_needs_no_linux_only_command(tmp_path: Path) -> None:
    """`./dev run` with what a Mac has on PATH (shasum, no sha256sum, unshare, ip or apt-get)."""
    path = bin_with_only(tmp_path, "bash", "cat", "cut", "dirname", "env", "id", "shasum", "node", "npm", "python3")
    child = ChildProcess(
        ["bash", str(ROOT / "dev"), "run", "--port", "0", "--no-storage"],
        ready="Serving on ",
        timeout=300,  # installs what changed since the last ./dev, as a first run would
        cwd=ROOT,
        env=app_env(PATH=path),
    )
    try:
        url = child.ready_line.split()[-1].rstrip("/")
        assert requests.get(url + "/config", timeout=10).json()["emulator"] is True
        assert "command not found" not in child.output(), child.output()
    finally:
        child.stop()
