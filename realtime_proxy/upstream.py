"""Requests to Azure OpenAI (mint a client secret, exchange the SDP offer, hang up) and what their failures mean.

One pooled aiohttp session per event loop keeps warm connections to the resource. Nothing the resource
answers is trusted further than it must be: redirects are refused (a credential or an offer goes nowhere
but the configured resource), no cookies are kept, bodies are read up to a bound, and every failure
becomes an ApiError whose message carries the upstream's reason with every secret in play scrubbed out.
The caller bounds each call by the connect deadline. `post` and `failure` are the shared pieces other ways of
creating a call (GPT-Live, realtime_proxy/live.py) use too.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDictProxy

from .credentials import PLAIN_TOKEN, Credentials
from .errors import ApiError
from .logs import logger, redact
from .settings import Settings

log = logger(__name__)
MAX_ANSWER_BYTES = 64 * 1024  # a real SDP answer is a few KiB; a real client-secret answer about one
MAX_CONNECTIONS = 256  # per process; connections are reused, so this bounds sockets, not throughput
_RETRY_BACKOFF_SECONDS = 0.25
CALL_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


@dataclass(frozen=True)
class Call:
    answer_sdp: str
    call_id: str | None
    kind: str = "realtime"  # the deployment's kind: how the call is ended later (the ledger keeps it)
    session: dict[str, Any] = field(default_factory=dict, compare=False)  # what the server decided for it

    @property
    def location(self) -> str | None:
        if not self.call_id:
            return None
        return f"/v1/live/sessions/{self.call_id}" if self.kind == "live" else f"/v1/realtime/calls/{self.call_id}"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> object:
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):
            return None


class Upstream:
    def __init__(
        self, settings: Settings, credentials: Credentials, on_answer: Callable[[Answer], object] = lambda answer: None
    ) -> None:
        self.settings = settings
        self.credentials = credentials
        self.on_answer = on_answer  # every answer's status, retries included (telemetry)
        self.proxy = settings.proxy
        self.ssl: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=settings.ca_bundle) if settings.ca_bundle else True
        )
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _http(self) -> aiohttp.ClientSession:
        """Created inside the running loop, as aiohttp requires; the worker has one loop per process."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop:
            self._loop, limits = loop, self.settings.limits
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, ssl=self.ssl),
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(sock_connect=limits.connect_timeout, sock_read=limits.read_timeout),
                headers={"User-Agent": "azure-functions-realtime-proxy/1.0"},
            )
        return self._session

    async def aclose(self) -> None:
        if self._session:
            await self._session.close()

    async def mint_secret(self, session_config: dict[str, Any], auth: dict[str, str], deadline: float) -> str:
        """POST /realtime/client_secrets; retried once on a dropped connection or a 502/503, never more."""
        body = {
            "expires_after": {"anchor": "created_at", "seconds": self.settings.policy.secret_ttl_seconds},
            "session": session_config,
        }
        for attempt in (1, 2):
            try:
                answer = await self.post("client_secrets", json=body, headers=auth)
            except ApiError as error:
                if attempt == 1 and error.code == "upstream_unreachable" and await self._backoff(deadline):
                    continue
                raise
            if attempt == 1 and answer.status in (502, 503) and await self._backoff(deadline):
                log.info("client_secrets answered %s; retrying once", answer.status)
                continue
            break
        if answer.status != 200:
            raise self.failure(answer, "client_secrets", tuple(auth.values()), session_config.get("model"))
        payload = answer.json()
        value = payload.get("value") if isinstance(payload, dict) else None
        if not isinstance(value, str) or not value:
            raise ApiError(502, "upstream_error", "Azure OpenAI answered the client-secret request without a secret.")
        if not PLAIN_TOKEN.fullmatch(value):
            raise ApiError(
                502, "upstream_error", "Azure OpenAI answered the client-secret request with a malformed secret."
            )
        return value

    async def create_call(self, offer_sdp: str, ephemeral_key: str) -> Call:
        """POST /realtime/calls with the offer byte for byte; never retried, the offer may have been consumed."""
        answer = await self.post(
            "calls",
            data=offer_sdp.encode("utf-8"),
            headers={"Authorization": f"Bearer {ephemeral_key}", "Content-Type": "application/sdp"},
            params={"webrtcfilter": "on"} if self.settings.webrtc_filter else None,
        )
        if not 200 <= answer.status < 300:
            raise self.failure(answer, "calls", (ephemeral_key,))
        try:
            sdp = answer.body.decode("utf-8")
        except UnicodeDecodeError:
            sdp = ""
        if not sdp.lstrip().startswith("v=0"):
            raise ApiError(502, "upstream_error", "Azure OpenAI answered the offer without an SDP answer.")
        return Call(sdp, _call_id(answer.headers.get("Location")))

    async def hangup(self, call_id: str) -> None:
        """POST /realtime/calls/{id}/hangup with the resource's own credentials (realtime-api.md §4), within
        the connect deadline; a call the service no longer knows is already over."""
        try:
            async with asyncio.timeout(self.settings.limits.deadline_seconds):
                auth = await self.credentials.headers()
                answer = await self.post(f"calls/{call_id}/hangup", headers=auth)
        except TimeoutError:
            raise ApiError(504, "upstream_timeout", "Azure OpenAI did not answer the hang-up in time.") from None
        if answer.status != 404 and not 200 <= answer.status < 300:
            raise self.failure(answer, "hangup", tuple(auth.values()))

    async def _backoff(self, deadline: float) -> bool:
        """Waits before the one retry; False when the deadline leaves no room for it."""
        left = deadline - asyncio.get_running_loop().time()
        if left < _RETRY_BACKOFF_SECONDS + self.settings.limits.connect_timeout:
            return False
        await asyncio.sleep(_RETRY_BACKOFF_SECONDS)
        return True

    async def post(self, name: str, api: str = "realtime", **kwargs: object) -> Answer:
        """POST `{resource}/openai/v1/{api}/{name}`: no redirects, the body bounded, transport failures as ApiError."""
        try:
            async with self._http().post(
                self.settings.endpoint(name, api),
                allow_redirects=False,
                proxy=self.proxy,
                **kwargs,  # type: ignore[arg-type]
            ) as response:
                answer = Answer(response.status, response.headers, await _bounded_body(response))
        except TimeoutError:
            log.warning("%s: timed out", name)
            raise ApiError(504, "upstream_timeout", "Azure OpenAI did not answer in time.") from None
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            log.warning("%s: could not connect (%s)", name, type(exc).__name__)
            raise ApiError(
                502, "upstream_unreachable", "Could not reach the Azure OpenAI resource; check AZURE_OPENAI_BASE_URL."
            ) from None
        except aiohttp.ClientError as exc:
            log.warning("%s: the answer broke off (%s)", name, type(exc).__name__)
            raise ApiError(502, "upstream_error", "Azure OpenAI's answer broke off or was malformed; retry.") from None
        self.on_answer(answer)
        return answer

    def failure(self, answer: Answer, stage: str, secrets: tuple[str, ...], model: object = None) -> ApiError:
        """An answer that is not a success, as the caller's error; `model` names the deployment a 404 means."""
        status = answer.status
        if 300 <= status < 400:
            where = redact(_without_query(answer.headers.get("Location", "")), secrets)
            log.warning("%s: Azure OpenAI answered %s, a redirect to %s", stage, status, where or "nowhere")
            return ApiError(
                502,
                "upstream_error",
                f"Azure OpenAI answered {status}, a redirect to {where or 'nowhere'}; redirects are not followed.",
            )
        reason = said(answer, secrets)
        log.warning("%s: Azure OpenAI answered %s: %s", stage, status, reason)
        detail = f" Azure OpenAI said: {reason}" if reason else ""
        if status in (401, 403):
            hint = (
                "check AZURE_OPENAI_API_KEY"
                if self.credentials.kind == "api-key"
                else "grant the function app's identity the 'Cognitive Services OpenAI User' role on the resource"
            )
            return ApiError(502, "upstream_auth", f"Azure OpenAI refused the credentials ({status}): {hint}.{detail}")
        if status == 404:
            return ApiError(
                502,
                "deployment_not_found",
                f"Azure OpenAI has no deployment named '{model or self.settings.deployment}' at this resource; "
                f"check AZURE_OPENAI_DEPLOYMENT, REALTIME_DEPLOYMENTS and AZURE_OPENAI_BASE_URL.{detail}",
            )
        if status == 429:
            retry_after = _retry_after(answer.headers)
            return ApiError(
                429,
                "upstream_rate_limited",
                f"Azure OpenAI is rate limiting this resource; try again later.{detail}",
                {"Retry-After": retry_after} if retry_after else None,
            )
        if status == 400:
            return ApiError(502, "upstream_rejected", f"Azure OpenAI rejected the {stage} request.{detail}")
        return ApiError(502, "upstream_error", f"Azure OpenAI failed ({status}).{detail}")


async def _bounded_body(response: aiohttp.ClientResponse) -> bytes:
    """Reads at most MAX_ANSWER_BYTES; anything larger is not an answer this app relays or parses."""
    body = bytearray()
    while chunk := await response.content.read(MAX_ANSWER_BYTES + 1 - len(body)):
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise aiohttp.ClientPayloadError(f"answer larger than {MAX_ANSWER_BYTES} bytes")
    return bytes(body)


def _call_id(location: str | None) -> str | None:
    """The call id is the last path segment of Location (or its `call_id` query parameter). A Location
    that yields none is logged, not fatal: the call exists and the browser still needs its answer."""
    if not location:
        return None
    try:
        parts = urlsplit(location)
    except ValueError:
        parts = urlsplit("")
    query = dict(pair.partition("=")[::2] for pair in parts.query.split("&") if pair)
    call_id = query.get("call_id") or parts.path.rsplit("/", 1)[-1]
    if CALL_ID.fullmatch(call_id):
        return call_id
    log.warning("calls: Azure OpenAI answered with a Location that holds no call id: %r", _shorten(location))
    return None


def said(answer: Answer, secrets: tuple[str, ...]) -> str:
    """The upstream's own reason, fit to log and to quote to the caller: secrets scrubbed, then shortened."""
    return _shorten(redact(_upstream_reason(answer), secrets))


def _upstream_reason(answer: Answer) -> str:
    """The service's own message when it sent JSON; gateway HTML pages are not worth repeating."""
    payload = answer.json()
    error = payload.get("error") if isinstance(payload, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return " ".join(str(message).split()) if message else ""


def _shorten(text: str, limit: int = 300) -> str:
    """Truncates only text that is already redacted, so no secret survives as a prefix at the cut."""
    text = "".join(char if char.isprintable() else " " for char in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _without_query(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return _shorten(url.split("?", 1)[0], 200)
    return _shorten(f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.netloc else parts.path, 200)


def _retry_after(headers: CIMultiDictProxy[str]) -> str | None:
    """Whole seconds from Retry-After or retry-after-ms, clamped to an hour; nonsense is dropped."""
    seconds = headers.get("Retry-After", "").strip()
    if seconds.isascii() and seconds.isdigit():
        return str(min(3600, max(1, int(seconds) if len(seconds) <= 5 else 3600)))
    try:
        milliseconds = float(headers.get("retry-after-ms", ""))
    except ValueError:
        return None
    if math.isnan(milliseconds) or milliseconds < 0:
        return None
    return str(max(1, math.ceil(min(milliseconds / 1000, 3600))))
