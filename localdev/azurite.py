"""Azurite on loopback: the Azure Storage (tables, queues and blobs, each on a port of its own) that `./dev run` and
the tests use locally, what `UseDevelopmentStorage=true` means to `func start`.

Azurite keeps tables in memory and saves them to `folder` every 5 s and when it shuts down, so `stop()` asks it to
shut down (killing it loses the last seconds of writes) and `start()` again on the same port and folder brings back
everything written before the stop: storage goes away and returns, as a storage outage looks to the app.

It is asked through its stdin, not by a signal: `azurite_stop_on_eof.cjs`, preloaded into it, shuts it down when
stdin ends, which is when `stop()` closes it or when this process dies in any way (the OS closes the pipe). So it
works alike on Linux, macOS and Windows, and Azurite never outlives a test run or `./dev run`.

Only one Azurite may use a folder at a time (two would overwrite each other's saves), so where the OS has flock
(Linux, macOS) the folder is locked for as long as Azurite lives; on Windows it is not, and that is logged.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)
TOOLS = Path(__file__).resolve().parent.parent / "tools" / "azurite"
PACKAGE = TOOLS / "node_modules" / "azurite"
STOP_ON_EOF = Path(__file__).resolve().parent / "azurite_stop_on_eof.cjs"
ACCOUNT = "devstoreaccount1"
# Azurite's published development account key (the same for every Azurite): not a secret.
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# Azurite starts blob, queue and table in that order; once the table service says so, all three are listening.
STARTED = "Azurite Table service is successfully listening"


class AzuriteUnavailable(RuntimeError):
    """Azurite cannot run here: node or the npm package is missing, the folder is in use, or it did not start."""


def _services() -> Path:
    """The script npm's `azurite` command runs, run here with node itself: no shell or .cmd shim in between."""
    return PACKAGE / json.loads((PACKAGE / "package.json").read_text())["bin"]["azurite"]


def _lock(fd: int) -> bool | None:
    """Locks the open lock file without waiting: True, or False if another process holds it. Where there is no
    flock (Windows), says so and returns None: unlocked."""
    try:
        import fcntl
    except ImportError:
        log.warning("No flock here: nothing stops a second Azurite from using the same folder.")
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Azurite:
    """One Azurite on 127.0.0.1, its data in `folder`: the table service on `port`, queues on `queue_port`, blobs on
    `blob_port`."""

    def __init__(self, folder: Path, port: int = 0, start_timeout: float = 30.0) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.queue_port = free_port()
        self.blob_port = free_port()
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.blob_port}/{ACCOUNT};"
            f"QueueEndpoint=http://127.0.0.1:{self.queue_port}/{ACCOUNT};"
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
        node = shutil.which("node")
        if not node:
            raise AzuriteUnavailable("node is not installed")
        if not PACKAGE.exists():
            raise AzuriteUnavailable("tools/azurite is not installed: `./dev` installs it with npm ci")
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        locked = _lock(lock)
        if locked is False:
            os.close(lock)
            raise AzuriteUnavailable(f"another Azurite is using {self.folder}")
        log = self.folder / "azurite.log"
        try:
            # Output goes to a file, not a pipe: Azurite prints as it shuts down, and a pipe whose reader has died
            # would crash it (EPIPE) before it saves. The child inherits the lock (POSIX), which so lasts until both
            # have closed it: the folder stays locked while Azurite saves on its way out, even if we are gone.
            with log.open("w") as output:
                self.process = subprocess.Popen(
                    [
                        node,
                        "--require",
                        str(STOP_ON_EOF),
                        str(_services()),
                        *("--blobHost", "127.0.0.1", "--blobPort", str(self.blob_port)),
                        *("--queueHost", "127.0.0.1", "--queuePort", str(self.queue_port)),
                        *("--tableHost", "127.0.0.1", "--tablePort", str(self.port)),
                        "--location",
                        str(self.folder),
                        "--silent",  # no access log line per request
                        "--disableTelemetry",  # Azurite 3.x reports usage to Microsoft unless told not to
                        # The SDK's API version may be newer than this Azurite knows (it is pinned for Node 20).
                        "--skipApiVersionCheck",
                    ],
                    stdin=subprocess.PIPE,  # closing it stops Azurite (azurite_stop_on_eof.cjs)
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    pass_fds=(lock,) if locked else (),
                    # Ctrl-C reaches only us (we then stop Azurite): a second shutdown would cut its save short.
                    start_new_session=True,  # POSIX
                    creationflags=getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0),  # Windows
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
        if self.process.stdin is not None:
            self.process.stdin.close()  # azurite_stop_on_eof.cjs shuts it down
        if self.process.poll() is None:
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
