"""Debian's Firefox ESR driven over WebDriver BiDi, which it speaks natively (no geckodriver, no Playwright Firefox).

A small synchronous client for pytest: navigate, evaluate script, trusted clicks and key presses. It runs its
websocket on a loop thread of its own, as the emulator's PeerHost does, so tests stay plain functions.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.child_process import ChildProcess

FIREFOX = shutil.which("firefox-esr")
PROFILE_PREFS = Path(__file__).with_name("firefox-user.js")
KEYS = {"Space": " ", "Enter": "\ue007"}


class BidiError(RuntimeError):
    """A BiDi command failed, or a script threw."""


class Firefox:
    """One headless Firefox with a fresh profile; `page` is its single tab."""

    def __init__(self, launch_timeout: float = 60.0) -> None:
        if not FIREFOX:
            raise RuntimeError("firefox-esr is not installed")
        self._profile = tempfile.mkdtemp(prefix="firefox-profile-")
        shutil.copy(PROFILE_PREFS, Path(self._profile) / "user.js")
        with socket.socket() as probe:  # a free port; Firefox has no "pick one and tell me" for BiDi
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {**os.environ, "MOZ_DISABLE_NONLOCAL_CONNECTIONS": "1", "MOZ_CRASHREPORTER_DISABLE": "1"}
        argv = [FIREFOX, "--headless", "--no-remote", "--profile", self._profile, "--remote-debugging-port", str(port)]
        self._child = ChildProcess(
            [*argv, "about:blank"],
            ready=f"WebDriver BiDi listening on ws://127.0.0.1:{port}",
            timeout=launch_timeout,
            stream="stderr",
            env=env,
            stdout=subprocess.DEVNULL,
        )
        self._ids = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="firefox-bidi", daemon=True).start()
        self._run(self._open(port))
        self.send("session.new", {"capabilities": {}})
        self.context = self.send("browsingContext.getTree", {})["contexts"][0]["context"]

    async def _open(self, port: int) -> None:
        self._http = aiohttp.ClientSession()
        self._socket = await self._http.ws_connect(f"ws://127.0.0.1:{port}/session", max_msg_size=0)
        self._pending: dict[int, asyncio.Future] = {}
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self._socket:
            data = json.loads(message.data)
            future = self._pending.pop(data.get("id"), None)  # events (no id) are not used
            if future is not None and not future.done():
                future.set_result(data)

    async def _command(self, method: str, params: dict) -> dict:
        command_id = next(self._ids)
        future = self._pending[command_id] = asyncio.get_running_loop().create_future()
        await self._socket.send_str(json.dumps({"id": command_id, "method": method, "params": params}))
        return await future

    def _run(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def send(self, method: str, params: dict, timeout: float = 60.0) -> dict:
        answer = self._run(self._command(method, params), timeout)
        if answer.get("type") == "error":
            raise BidiError(f"{method}: {answer.get('error')}: {answer.get('message')}")
        return answer["result"]

    # --- what tests use ---

    def goto(self, url: str) -> None:
        self.send("browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"})

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited if a promise), through JSON."""
        result = self.send(
            "script.evaluate",
            {
                "expression": f"(async () => JSON.stringify(await ({expression})))()",
                "target": {"context": self.context},
                "awaitPromise": True,
                "resultOwnership": "none",
            },
        )
        if result["type"] == "exception":
            raise BidiError(result["exceptionDetails"].get("text", "script error"))
        value = result["result"].get("value")
        return None if value is None else json.loads(value)

    def wait_for(self, expression: str, timeout: float = 30.0, what: str | None = None) -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or expression}")
            time.sleep(0.05)

    def click(self, selector: str) -> None:
        """A trusted click in the middle of the element, as a user's."""
        nodes = self.send(
            "browsingContext.locateNodes", {"context": self.context, "locator": {"type": "css", "value": selector}}
        )["nodes"]
        if not nodes:
            raise BidiError(f"no element matches {selector!r}")
        element = {"type": "element", "element": {"sharedId": nodes[0]["sharedId"]}}
        self.send(
            "input.performActions",
            {
                "context": self.context,
                "actions": [
                    {
                        "type": "pointer",
                        "id": "mouse",
                        "parameters": {"pointerType": "mouse"},
                        "actions": [
                            {"type": "pointerMove", "x": 0, "y": 0, "origin": element},
                            {"type": "pointerDown", "button": 0},
                            {"type": "pointerUp", "button": 0},
                        ],
                    }
                ],
            },
        )

    def type(self, selector: str, text: str) -> None:
        """Click into a field and type, key by key."""
        self.click(selector)
        keys = [{"type": kind, "value": char} for char in text for kind in ("keyDown", "keyUp")]
        self.send(
            "input.performActions",
            {"context": self.context, "actions": [{"type": "key", "id": "keyboard", "actions": keys}]},
        )

    def press(self, key: str) -> None:
        value = KEYS.get(key, key)
        self.send(
            "input.performActions",
            {
                "context": self.context,
                "actions": [
                    {
                        "type": "key",
                        "id": "keyboard",
                        "actions": [{"type": "keyDown", "value": value}, {"type": "keyUp", "value": value}],
                    }
                ],
            },
        )

    def close(self) -> None:
        """Close the browser (politely, then for sure) and remove its profile."""
        try:
            if hasattr(self, "_socket"):
                self._run(self._command("browser.close", {}), timeout=10)
        except Exception:
            pass
        if hasattr(self, "_socket"):
            self._run(self._shutdown(), timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._child.stop()
        shutil.rmtree(self._profile, ignore_errors=True)

    async def _shutdown(self) -> None:
        await self._socket.close()
        await self._http.close()
        self._reader.cancel()
