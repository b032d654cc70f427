"""Azurite's table service on loopback: the Azure Table Storage that `./dev run` and the tests use locally.

Azurite keeps tables in memory and saves them to `folder` every 5 s and when it shuts down on SIGINT, so
`stop()` asks it to shut down (a SIGKILL loses the last seconds of writes) and `start()` again on the same
port and folder brings back everything written before the stop: storage goes away and returns, as a storage
outage looks to the app. Only one Azurite may use a folder at a time (two would overwrite each other's saves),
so the folder is locked for as long as the process lives.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent / "tools" / "azurite"
EXECUTABLE = TOOLS / "node_modules" / ".bin" / "azurite-table"
ACCOUNT = "devstoreaccount1"
# Azurite's published development account key (the same for every Azurite): not a secret.
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
STARTED = "successfully started"  # "Azurite Table service successfully started on HOST:PORT": it is listening
PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child may only call it, not load libc


class AzuriteUnavailable(RuntimeError):
    """Azurite cannot run here: node or the npm package is missing, the folder is in use, or it did not start."""


def _die_with_parent() -> None:
    """Runs in the child before exec: if the process that started Azurite dies (even by SIGKILL), the kernel
    sends Azurite SIGINT, so it saves its data and exits instead of outliving a test run or `./dev run`."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGINT)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Azurite:
    """One Azurite table service on 127.0.0.1, its data in `folder`. Start it from the main thread: the kernel
    signals the child when the *thread* that started it ends."""

    def __init__(self, folder: Path, port: int = 0, start_timeout: float = 30.0) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"TableEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT};"
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> Azurite:
        """Starts Azurite and returns once it accepts requests; raises AzuriteUnavailable (with its output) if it
        cannot run or is not listening within `start_timeout`."""
        if self.running:
            return self
        if not shutil.which("node"):
            raise AzuriteUnavailable("node is not installed")
        if not EXECUTABLE.exists():
            raise AzuriteUnavailable("tools/azurite is not installed: `./dev` installs it with npm ci")
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            raise AzuriteUnavailable(f"another Azurite is using {self.folder}") from None
        log = self.folder / "azurite.log"
        try:
            # Output goes to a file, not a pipe: Azurite prints as it shuts down, and a pipe whose reader has died
            # would crash it (EPIPE) before it saves. The child inherits the lock, which so lasts until both have
            # closed it: the folder stays locked while Azurite saves on its way out, even if we are already gone.
            with log.open("w") as output:
                self.process = subprocess.Popen(
                    [
                        str(EXECUTABLE),
                        "--tableHost",
                        "127.0.0.1",
                        "--tablePort",
                        str(self.port),
                        "--location",
                        str(self.folder),
                        "--silent",  # no access log line per request
                        "--disableTelemetry",  # Azurite 3.x reports usage to Microsoft unless told not to
                        # The SDK's API version may be newer than this Azurite knows (it is pinned for Node 20).
                        "--skipApiVersionCheck",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    pass_fds=(lock,),
                    preexec_fn=_die_with_parent,
                    # Ctrl-C reaches only us, and stop() sends one SIGINT: a second one cuts Azurite's save short.
                    start_new_session=True,
                )
        finally:
            os.close(lock)
        deadline = time.monotonic() + self.start_timeout
        while STARTED not in log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AzuriteUnavailable(f"Azurite did not start on 127.0.0.1:{self.port}:\n{log.read_text()}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Shuts Azurite down as Ctrl-C does, so it saves what it holds; the port refuses connections at once.
        Killed only if it has not exited within `timeout`."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
