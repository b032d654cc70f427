"""`python -m localdev.smoke URL` (`./dev smoke URL`): proves a deployment with one real call, as a browser makes it.

A headless WebRTC peer (aiortc) asks `GET /config`, posts its offer to `/connect`, opens the media and the
`oai-events` data channel, types a message (`conversation.item.create` + `response.create`), waits for the
assistant's transcript and audio, and hangs up with `POST /calls/{id}/hangup` and the answer's `X-Call-Token`.
Each step prints its time and outcome, the HTTP ones their request id (X-Request-Id, which leads to the app's
log lines); then a PASS or FAIL verdict, and the exit status 0 or 1. The Functions key and the call token are
never printed.

URL is the app (`https://<app>.azurewebsites.net`, azd's PAGE_URL or FUNCTION_APP_URL; its /connect also does).
With CONNECT_AUTH_LEVEL=function, give the key with --key or, kept out of the shell history, FUNCTION_KEY.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import aioice.ice
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack

MESSAGE = "Smoke test of a new deployment: please say hello in one short sentence."
CALL_TOKEN = "X-Call-Token"


class StepFailed(Exception):
    """A step did not do what it should; the message says what happened instead."""


@dataclass
class Smoke:
    """One smoke call against `base` (the app's URL with no trailing slash), printing as it goes."""

    base: str
    key: str | None = None
    voice: str | None = None
    step_timeout: float = 30.0
    secrets: list[str] = field(default_factory=list)  # scrubbed from anything printed
    request_id: str | None = None  # of the /connect that made the call
    call_id: str | None = None
    _token: str | None = None
    _events: list[dict[str, Any]] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _audio_frames: int = 0
    _audio_seconds: float = 0.0
    _listener: asyncio.Future[None] | None = None

    def _print(self, text: str) -> None:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        print(text, flush=True)  # each step as it ends, also into a pipe

    def _headers(self, **more: str) -> dict[str, str]:
        return {**({"x-functions-key": self.key} if self.key else {}), **more}

    async def run(self) -> bool:
        """The whole call; True when every step passed. Hangs up whatever happened once a call exists."""
        self._print(f"Smoke test of {self.base}/connect")
        started = time.monotonic()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # host candidates only, as the browser page offers
        channel = pc.createDataChannel("oai-events")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.step_timeout)) as http:
            steps: list[tuple[str, Callable[[], Awaitable[tuple[str, str | None]]]]] = [
                ("config", lambda: self._config(http)),
                ("offer", lambda: self._offer(pc, channel)),
                ("connect", lambda: self._connect(http, pc)),
                ("channel", lambda: self._channel_open(channel)),
                ("reply", lambda: self._reply(channel)),
                ("hangup", lambda: self._hang_up(http)),
            ]
            try:
                for name, step in steps:
                    step_started = time.monotonic()
                    try:
                        outcome, request_id = await step()
                    except Exception as error:  # whatever broke: a FAIL line that says what, never a traceback
                        why = str(error) if isinstance(error, StepFailed) else f"{type(error).__name__}: {error}"
                        self._line("FAIL", name, step_started, why)
                        call = f"  (request id of the call: {self.request_id})" if self.request_id else ""
                        self._print(f"FAIL  at {name}: {why}{call}")
                        await self._hang_up_quietly(http)
                        return False
                    self._line("ok", name, step_started, outcome, request_id)
            finally:
                await pc.close()
        total = f"{time.monotonic() - started:.1f} s in all"
        self._print(f"PASS  a real call through {self.base}/connect, {total}  (request id {self.request_id})")
        return True

    def _line(self, status: str, step: str, started: float, outcome: str, request_id: str | None = None) -> None:
        ms = (time.monotonic() - started) * 1000
        where = f"  [request id {request_id}]" if request_id else ""
        self._print(f"  {status:<5} {step:<8}{ms:7.0f} ms  {outcome}{where}")

    async def _config(self, http: aiohttp.ClientSession) -> tuple[str, str | None]:
        async with http.get(f"{self.base}/config") as response:
            request_id = response.headers.get("X-Request-Id")
            if response.status != 200:
                raise StepFailed(f"GET /config answered {response.status}: {(await response.text())[:300]}")
            config = await response.json()
        service = "the local emulator, not Azure" if config.get("emulator") else "Azure OpenAI"
        voice = self.voice or config.get("defaultVoice") or "the default voice"
        return f"GET /config: {service}, voice {voice}", request_id

    async def _offer(self, pc: RTCPeerConnection, channel: RTCDataChannel) -> tuple[str, str | None]:
        pc.addTrack(AudioStreamTrack())  # a silent microphone: the call has audio both ways, as a browser's
        channel.on("message", self._on_event)
        pc.on("track", self._on_track)
        await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers its candidates here
        return "WebRTC offer: audio both ways and the oai-events data channel", None

    async def _connect(self, http: aiohttp.ClientSession, pc: RTCPeerConnection) -> tuple[str, str | None]:
        offer = {"sdp": pc.localDescription.sdp, **({"voice": self.voice} if self.voice else {})}
        async with http.post(f"{self.base}/connect", json=offer, headers=self._headers()) as response:
            self.request_id = response.headers.get("X-Request-Id")
            body = await response.text()
            if response.status != 201:
                raise StepFailed(f"POST /connect answered {response.status}: {_error_text(body)}")
            self.call_id = response.headers.get("Location", "").rstrip("/").rsplit("/", 1)[-1] or None
            self._token = response.headers.get(CALL_TOKEN)
        if self._token:
            self.secrets.append(self._token)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        except Exception as error:  # aiortc raises assorted types for an unusable SDP
            raise StepFailed(f"the SDP answer cannot be used: {error}") from error
        return f"POST /connect: 201, call {self.call_id or '(no id in Location)'}", self.request_id

    async def _channel_open(self, channel: RTCDataChannel) -> tuple[str, str | None]:
        opened = asyncio.Event()
        channel.on("open", opened.set)
        if channel.readyState != "open":
            try:
                await asyncio.wait_for(opened.wait(), self.step_timeout)
            except TimeoutError:
                raise StepFailed(f"the media and data channel did not open within {self.step_timeout:g} s") from None
        return "ICE, DTLS and the data channel are up", None

    async def _reply(self, channel: RTCDataChannel) -> tuple[str, str | None]:
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": MESSAGE}]}
        channel.send(json.dumps({"type": "conversation.item.create", "item": item}))
        channel.send(json.dumps({"type": "response.create"}))
        done = await self._next_event(
            lambda e: (
                e["type"] in ("response.output_audio_transcript.done", "error")
                or (e["type"] == "response.done" and e.get("response", {}).get("status") != "completed")
            )
        )
        if done["type"] != "response.output_audio_transcript.done":
            raise StepFailed(f"the service answered {json.dumps(done)[:400]}")
        transcript = done.get("transcript") or "".join(
            e.get("delta", "") for e in self._events if e["type"] == "response.output_audio_transcript.delta"
        )
        if not transcript.strip():
            raise StepFailed("the reply's transcript was empty")
        if not self._audio_frames:
            raise StepFailed(f"no audio arrived with the reply {transcript!r}")
        shown = transcript if len(transcript) <= 120 else transcript[:117] + "..."
        return f"{shown!r}, with {self._audio_seconds:.1f} s of audio so far", None

    async def _hang_up(self, http: aiohttp.ClientSession) -> tuple[str, str | None]:
        if not (self.call_id and self._token):
            raise StepFailed("the answer carried no call id in Location or no X-Call-Token, so it cannot be ended")
        url = f"{self.base}/calls/{self.call_id}/hangup"
        async with http.post(url, headers=self._headers(**{CALL_TOKEN: self._token})) as response:
            request_id = response.headers.get("X-Request-Id")
            if response.status != 200:
                body = _error_text(await response.text())
                raise StepFailed(f"POST /calls/{self.call_id}/hangup answered {response.status}: {body}")
        self._token = None  # ended: nothing left to clean up
        return f"POST /calls/{self.call_id}/hangup: 200", request_id

    async def _hang_up_quietly(self, http: aiohttp.ClientSession) -> None:
        """After a failure, end the call if one was made, so it does not hold a session slot until it times out."""
        if self.call_id and self._token:
            try:
                await self._hang_up(http)
            except Exception as error:
                self._print(f"        (hanging up after the failure did not work either: {error})")

    def _on_event(self, message: str | bytes) -> None:
        try:
            event = json.loads(message)
        except ValueError:
            event = {"type": "(not JSON)", "raw": str(message)[:200]}
        self._events.append(event if isinstance(event, dict) else {"type": "(not an object)"})
        self._arrived.set()

    async def _next_event(self, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + self.step_timeout
        seen = 0
        while True:
            for event in self._events[seen:]:
                if wanted(event):
                    return event
            seen = len(self._events)
            self._arrived.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                kinds = [e["type"] for e in self._events][-8:]
                raise StepFailed(f"no reply within {self.step_timeout:g} s; the last events were {kinds}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._listener = asyncio.ensure_future(self._listen(track))  # ends with the track, when the call closes

    async def _listen(self, track: MediaStreamTrack) -> None:
        """Counts the assistant's audio as it arrives (a voice call that brings no audio has failed)."""
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self._audio_frames += 1
            self._audio_seconds += float(getattr(frame, "samples", 0)) / float(getattr(frame, "sample_rate", 48000))


def _error_text(body: str) -> str:
    """`code: message` from the app's JSON error, else the start of the body."""
    try:
        error = json.loads(body)["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return body[:300] or "(empty body)"


def app_url(url: str) -> tuple[str, str | None]:
    """The app's base URL (no query, no trailing /connect or slash), and a Functions key given as ?code=."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {parts.scheme}://{parts.netloc}{parts.path}")
    path = parts.path.rstrip("/").removesuffix("/connect").rstrip("/")
    code = next((v for k, _, v in (p.partition("=") for p in parts.query.split("&")) if k == "code" and v), None)
    return f"{parts.scheme}://{parts.netloc}{path}", code


def _on_this_machine(base: str) -> bool:
    host = urlsplit(base).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _gather_loopback_only() -> None:
    """aioice leaves 127.0.0.1 out when gathering; a call to an app on this machine (`./dev run`, whose emulator
    takes loopback candidates only) needs exactly that address, and nothing else."""
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localdev.smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the app, e.g. https://<app>.azurewebsites.net (azd's PAGE_URL)")
    parser.add_argument("--key", help="a Functions key, for CONNECT_AUTH_LEVEL=function (default: $FUNCTION_KEY)")
    parser.add_argument("--voice", help="the voice to ask for (default: the app's)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds each step may take (default 30)")
    args = parser.parse_args(argv)
    try:
        base, code = app_url(args.url)
    except ValueError as error:
        parser.error(str(error))
    key = args.key or code or os.environ.get("FUNCTION_KEY") or None
    if _on_this_machine(base):
        _gather_loopback_only()
    smoke = Smoke(base, key=key, voice=args.voice, step_timeout=args.timeout, secrets=[key] if key else [])
    return 0 if asyncio.run(smoke.run()) else 1


if __name__ == "__main__":
    sys.exit(main())
