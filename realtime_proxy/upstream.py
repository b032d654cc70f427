"""The two calls to Azure OpenAI (mint a client secret, exchange the SDP offer) and what their failures mean.

One pooled `requests.Session` per process keeps a warm TLS connection to the resource; every call is
bounded by explicit timeouts and a per-`/connect` deadline, and every failure becomes an ApiError
whose message carries the upstream's reason with any secret scrubbed out.
"""
from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import requests
from requests.adapters import HTTPAdapter

from .credentials import Credentials
from .errors import ApiError
from .settings import Limits, Settings

log = logging.getLogger(__name__)
_RETRY_BACKOFF_SECONDS = 0.25
_SECRET_PATTERNS = re.compile(r"(ek_[A-Za-z0-9_-]+|Bearer\s+\S+|eyJ[A-Za-z0-9_.-]{20,})")


@dataclass(frozen=True)
class Call:
    answer_sdp: str
    location: str | None

    @property
    def call_id(self) -> str | None:
        if not self.location:
            return None
        parts = urlsplit(self.location)
        return parse_qs(parts.query).get("call_id", [None])[0] or parts.path.rstrip("/").rsplit("/", 1)[-1] or None


class Deadline:
    """Shrinks each request's timeouts so that a whole `/connect` ends in bounded time."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.ends = time.monotonic() + limits.deadline_seconds

    def remaining(self) -> float:
        return self.ends - time.monotonic()

    def timeouts(self) -> tuple[float, float]:
        left = self.remaining()
        if left <= 0.05:
            raise ApiError(504, "upstream_timeout", "Azure OpenAI did not answer in time.")
        return min(self.limits.connect_timeout, left), min(self.limits.read_timeout, left)


def pooled_session(pool_size: int | None = None) -> requests.Session:
    """Sized to the Functions worker thread pool so concurrent connects never wait for a socket.

    Proxy and CA-bundle environment settings are read once here rather than on every request
    (requests scans the whole environment per call when `trust_env` is on).
    """
    size = pool_size or int(os.environ.get("PYTHON_THREADPOOL_THREAD_COUNT") or min(32, (os.cpu_count() or 1) + 4))
    session = requests.Session()
    session.proxies = requests.utils.get_environ_proxies("https://openai.azure.com")
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    session.trust_env = False
    session.mount("https://", HTTPAdapter(pool_connections=1, pool_maxsize=size, max_retries=0))
    session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=size, max_retries=0))
    session.headers["User-Agent"] = "azure-functions-realtime-proxy/1.0"
    return session


class Upstream:
    def __init__(self, settings: Settings, credentials: Credentials, session: requests.Session) -> None:
        self.settings = settings
        self.credentials = credentials
        self.http = session

    def mint_secret(self, session_config: dict, deadline: Deadline) -> str:
        """POST /realtime/client_secrets; retried once on a dropped connection or a 502/503, never more."""
        body = {
            "expires_after": {"anchor": "created_at", "seconds": self.settings.policy.secret_ttl_seconds},
            "session": session_config,
        }
        auth = self.credentials.headers()
        for attempt in (1, 2):
            try:
                response = self._post("client_secrets", deadline, json=body, headers=auth)
            except ApiError as error:
                if attempt == 1 and error.code == "upstream_unreachable" and self._backoff(deadline):
                    continue
                raise
            if attempt == 1 and response.status_code in (502, 503) and self._backoff(deadline):
                log.info("client_secrets answered %s; retrying once", response.status_code)
                continue
            break
        if response.status_code != 200:
            raise self._failure(response, "client_secrets", [auth])
        try:
            value = response.json()["value"]
        except (ValueError, KeyError, TypeError):
            value = None
        if not isinstance(value, str) or not value:
            raise ApiError(502, "upstream_error", "Azure OpenAI answered the client-secret request without a secret.")
        return value

    def create_call(self, offer_sdp: str, ephemeral_key: str, deadline: Deadline) -> Call:
        """POST /realtime/calls with the offer byte for byte; never retried, the offer may have been consumed."""
        response = self._post(
            "calls",
            deadline,
            data=offer_sdp.encode("utf-8"),
            headers={"Authorization": f"Bearer {ephemeral_key}", "Content-Type": "application/sdp"},
            params={"webrtcfilter": "on"} if self.settings.webrtc_filter else None,
        )
        if not 200 <= response.status_code < 300:
            raise self._failure(response, "calls", [{"key": ephemeral_key}])
        answer = response.content.decode("utf-8", "replace")
        if not answer.lstrip().startswith("v=0"):
            raise ApiError(502, "upstream_error", "Azure OpenAI answered the offer without an SDP answer.")
        return Call(answer, response.headers.get("Location"))

    def _backoff(self, deadline: Deadline) -> bool:
        """Waits before the one retry; False when the deadline leaves no room for it."""
        if deadline.remaining() < _RETRY_BACKOFF_SECONDS + self.settings.limits.connect_timeout:
            return False
        time.sleep(_RETRY_BACKOFF_SECONDS)
        return True

    def _post(self, name: str, deadline: Deadline, **kwargs) -> requests.Response:
        try:
            return self.http.post(self.settings.endpoint(name), timeout=deadline.timeouts(), **kwargs)
        except requests.Timeout:
            log.warning("%s: timed out", name)
            raise ApiError(504, "upstream_timeout", "Azure OpenAI did not answer in time.") from None
        except requests.ConnectionError:
            log.warning("%s: could not connect", name)
            raise ApiError(
                502, "upstream_unreachable", "Could not reach the Azure OpenAI resource; check AZURE_OPENAI_BASE_URL."
            ) from None

    def _failure(self, response: requests.Response, stage: str, secrets: list[dict[str, str]]) -> ApiError:
        reason = _scrub(_upstream_reason(response), secrets)
        status = response.status_code
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
                f"Azure OpenAI has no realtime deployment named '{self.settings.deployment}' at this resource; "
                f"check AZURE_OPENAI_DEPLOYMENT and AZURE_OPENAI_BASE_URL.{detail}",
            )
        if status == 429:
            retry_after = _retry_after(response)
            return ApiError(
                429,
                "upstream_rate_limited",
                f"Azure OpenAI is rate limiting this resource; try again later.{detail}",
                {"Retry-After": retry_after} if retry_after else None,
            )
        if status == 400:
            return ApiError(502, "upstream_rejected", f"Azure OpenAI rejected the {stage} request.{detail}")
        return ApiError(502, "upstream_error", f"Azure OpenAI failed ({status}).{detail}")


def _upstream_reason(response: requests.Response) -> str:
    """The service's own message when it sent JSON; gateway HTML pages are not worth repeating."""
    try:
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        return ""
    return " ".join(str(message).split())[:300] if message else ""


def _scrub(text: str, secrets: list[dict[str, str]]) -> str:
    for headers in secrets:
        for value in headers.values():
            token = value.removeprefix("Bearer ")
            if len(token) >= 4:
                text = text.replace(token, "[redacted]")
    return _SECRET_PATTERNS.sub("[redacted]", text)


def _retry_after(response: requests.Response) -> str | None:
    seconds = response.headers.get("Retry-After")
    if seconds and seconds.strip().isdigit():
        return seconds.strip()
    try:
        milliseconds = float(response.headers.get("retry-after-ms", ""))
    except ValueError:
        return None
    return str(max(1, math.ceil(milliseconds / 1000)))

