"""A server the tests start as a child process, which says on its output when it is ready.

Waiting for that line by reading the pipe blocks for as long as the child stays silent, so a hung server would hang
the suite. Here a thread reads the output (all of it, for as long as the child lives, so a full pipe never blocks
the child either), and the wait gives up at its deadline: the child is killed and the error carries what it printed.
"""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any, Literal


class ChildProcess:
    """Starts `argv` and returns once a line of its `stream` contains `ready` (that line is `ready_line`); raises
    RuntimeError with the child's output if it exits first or stays silent for `timeout` seconds."""

    def __init__(
        self,
        argv: list[str],
        *,
        ready: str,
        timeout: float,
        stream: Literal["stdout", "stderr"] = "stdout",
        **popen: Any,
    ) -> None:
        if stream == "stdout":
            popen.setdefault("stderr", subprocess.STDOUT)
        popen[stream] = subprocess.PIPE
        self.process = subprocess.Popen(argv, text=True, **popen)
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self._ended = False
        output = getattr(self.process, stream)
        threading.Thread(target=self._read, args=(output,), name=f"{argv[0]} output", daemon=True).start()
        self.ready_line = self._wait_for(ready, timeout, argv)

    def _read(self, output: Any) -> None:
        for line in output:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()
        with self._seen:
            self._ended = True
            self._seen.notify_all()

    def _wait_for(self, ready: str, timeout: float, argv: list[str]) -> str:
        deadline = time.monotonic() + timeout
        with self._seen:
            while not (line := next((line for line in self.lines if ready in line), None)):
                left = deadline - time.monotonic()
                if self._ended or left <= 0:
                    break
                self._seen.wait(left)
        if line:
            return line
        try:  # when its output has ended, its exit follows
            exited: int | None = self.process.wait(5 if self._ended else 0)
        except subprocess.TimeoutExpired:
            exited = None
        self.stop()
        why = f"exited with status {exited}" if exited is not None else f"stayed silent for {timeout:g} s"
        raise RuntimeError(f"{' '.join(argv[:3])} {why} before printing {ready!r}; its output:\n{self.output()}")

    def output(self) -> str:
        with self._seen:
            return "".join(self.lines)

    def stop(self, timeout: float = 10.0) -> None:
        """Asks the child to end (SIGTERM), and kills it if it has not within `timeout`."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
