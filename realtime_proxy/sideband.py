"""The sideband: a server-side WebSocket into a live call's event stream (realtime-api.md §4, §5 and §6).

It carries JSON events only, no audio, so one process holds many. The URL is the resource's own, by the call's
kind: `wss://{resource}/openai/v1/realtime?call_id=…` for realtime and reasoning calls, and
`wss://{resource}/openai/v1/live/sessions/{id}/attach` for GPT-Live sessions (`ws://` only for a loopback `http://`
resource, as the fakes are). The credentials are the app's (a token fetched again on every attach: an Entra token
may have expired during an hour-long call), redirects are refused and frames are bounded, as for every other
upstream call.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

import aiohttp
from yarl import URL

from .credentials import Credentials
from .logs import logger
from .upstream import Upstream

log = logger(__name__)
MAX_EVENT_BYTES = 1024 * 1024  # a session.updated with the longest instructions is well under this
HEARTBEAT_SECONDS = 30.0  # pings find a dead connection that would otherwise look like a quiet call
ATTACH_TIMEOUT_SECONDS = 10.0
NORMAL_CLOSE = 1000  # the service closes the sideband this way when the call ends
_TARGET: ContextVar[URL | None] = ContextVar("sideband_target", default=None)  # what the attach being made asked for


class Refused(Exception):
    """The service would not open the sideband: `gone` (404: the call is over), or not allowed (401/403), or
    trouble worth retrying (anything else, including no answer)."""

    def __init__(self, status: int | None, what: str) -> None:
        super().__init__(what)
        self.status = status

    @property
    def gone(self) -> bool:
        return self.status == 404

    @property
    def forbidden(self) -> bool:
        return self.status in (401, 403)


class Line:
    """One open sideband: JSON events in, JSON events out."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse, call_id: str) -> None:
        self._socket = socket
        self.call_id = call_id
        self.ignored = 0  # frames that were not a JSON object (counted, logged once)
        self.close_code: int | None = None

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Server events until the socket closes; `close_code` then says how (1000: the call ended)."""
        async for message in self._socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                self._ignore("a binary frame" if message.type == aiohttp.WSMsgType.BINARY else message.type.name)
                continue
            try:
                event = json.loads(message.data)
            except (ValueError, RecursionError):
                event = None
            if isinstance(event, dict) and isinstance(event.get("type"), str):
                yield event
            else:
                self._ignore("a frame that is not a JSON event")
        self.close_code = self._socket.close_code

    async def send(self, event: dict[str, Any]) -> None:
        await self._socket.send_str(json.dumps(event, separators=(",", ":")))

    async def close(self) -> None:
        await self._socket.close()

    @property
    def closed(self) -> bool:
        return self._socket.closed

    def _ignore(self, what: str) -> None:
        if not self.ignored:
            log.warning("call %s: sideband: ignoring %s (further ones are counted, not logged)", self.call_id, what)
        self.ignored += 1


class Sideband:
    """Opens sidebands with the upstream's credentials, proxy and TLS settings, on a session of its own (a
    sideband lives for the whole call, so the upstream's per-request read timeout must not apply)."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        base = upstream.settings.endpoint("")[: -len("/realtime/")]  # {resource}/openai/v1
        self.base = "wss" + base[5:] if base.startswith("https") else "ws" + base[4:]
        self._session: aiohttp.ClientSession | None = None

    @property
    def credentials(self) -> Credentials:
        return self.upstream.credentials

    def url(self, call_id: str, kind: str) -> URL:
        """Where a call of this kind is joined (`call_id` is a checked id: upstream.CALL_ID)."""
        if kind == "live":
            return URL(f"{self.base}/live/sessions/{call_id}/attach")
        return URL(f"{self.base}/realtime").with_query(call_id=call_id)

    async def attach(self, call_id: str, kind: str = "realtime") -> Line:
        url = self.url(call_id, kind)
        target = _TARGET.set(url)
        try:
            async with asyncio.timeout(ATTACH_TIMEOUT_SECONDS):
                headers = await self.credentials.headers()
                socket = await self._http().ws_connect(
                    url,
                    headers=headers,
                    proxy=self.upstream.proxy,
                    heartbeat=HEARTBEAT_SECONDS,
                    max_msg_size=MAX_EVENT_BYTES,
                    autoping=True,
                )
        except aiohttp.WSServerHandshakeError as error:
            raise Refused(error.status, f"the service answered {error.status}") from None
        except TimeoutError:
            raise Refused(None, "no answer in time") from None
        except aiohttp.ClientError as error:
            raise Refused(None, f"could not connect ({type(error).__name__})") from None
        finally:
            _TARGET.reset(target)
        return Line(socket, call_id)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                # No pool limit: each open sideband holds its connection for the whole call, and aiohttp's default
                # of 100 would leave the 101st call of this instance waiting, then unsupervised (bench supervisor).
                connector=aiohttp.TCPConnector(ssl=self.upstream.ssl, limit=0),
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": "azure-functions-realtime-proxy/1.0"},
                middlewares=(self._no_redirects,),
            )
        return self._session

    async def _no_redirects(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        """ws_connect follows redirects and cannot be told not to; every hop passes here, so a hop anywhere but
        the URL the attach asked for (a redirect) is refused before the credentials travel with it."""
        target = _TARGET.get()
        if target is None or request.url.with_query(None) != target.with_query(None):
            raise Refused(None, "a redirect, which is not followed")
        return await handler(request)

    async def aclose(self) -> None:
        if self._session:
            await self._session.close()
