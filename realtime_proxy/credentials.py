"""How the function app proves itself to Azure: an API key for Azure OpenAI, or the process's one Entra identity.

`Identity` is the single azure-identity credential of the process (DefaultAzureCredential, async), shared by
every Azure client the app builds (Azure OpenAI tokens, Table Storage): one token cache, one set of sockets,
closed once. azure-identity takes a few hundred ms to import, so it is imported on a worker thread and the
event loop only ever awaits that import; it never blocks on it. Concurrent connects share one Azure OpenAI
token request (single flight): N first connects on a cold identity cost one request.
"""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ApiError
from .logs import logger, remember_secret

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken
    from azure.core.credentials_async import AsyncTokenCredential

SCOPE = "https://cognitiveservices.azure.com/.default"
PLAIN_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{8,8192}")
log = logger(__name__)
_UNAVAILABLE = (
    "No Azure credential is available to the function app: set AZURE_OPENAI_API_KEY, or enable a "
    "managed identity and grant it the 'Cognitive Services OpenAI User' role on the resource."
)


class Identity:
    """The process's Entra identity: service principal, workload identity, managed identity (user-assigned via
    AZURE_CLIENT_ID), then developer logins. It is also an `AsyncTokenCredential`, so Azure SDK clients take
    it as their credential and share its cache."""

    def __init__(self, client_id: str | None) -> None:
        self._client_id = client_id
        self._loading: Future[AsyncTokenCredential] | None = None
        self._executor: ThreadPoolExecutor | None = None

    def load(self) -> None:
        """Starts importing azure-identity on a thread (once); callable from any thread, loop or none."""
        if self._loading is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="identity-import")
            self._loading = self._executor.submit(self._create)
            self._executor.shutdown(wait=False)

    def _create(self) -> AsyncTokenCredential:
        from azure.identity.aio import DefaultAzureCredential

        return DefaultAzureCredential(managed_identity_client_id=self._client_id)

    async def credential(self) -> AsyncTokenCredential:
        self.load()
        assert self._loading is not None
        return await asyncio.wrap_future(self._loading)

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        """The `AsyncTokenCredential` protocol, for Azure SDK clients (Table Storage)."""
        token = await (await self.credential()).get_token(*scopes, **kwargs)
        remember_secret(token.token)
        return token

    async def close(self) -> None:
        if self._loading is not None and self._loading.done() and not self._loading.exception():
            await self._loading.result().close()

    async def __aenter__(self) -> Identity:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Azure SDK clients enter and exit their credential with themselves; the process owns this one."""


class Credentials(Protocol):
    kind: str

    async def headers(self) -> dict[str, str]:
        """Auth headers for the Azure OpenAI resource; raises ApiError when no credential can be had."""
        ...

    def warm(self) -> None:
        """Starts fetching what the first connect will need, without waiting for it."""
        ...


class ApiKeyCredentials:
    kind = "api-key"

    def __init__(self, key: str) -> None:
        self._key = key
        remember_secret(key)

    async def headers(self) -> dict[str, str]:
        return {"api-key": self._key}

    def warm(self) -> None:
        pass


class EntraCredentials:
    """Bearer tokens for Azure OpenAI from the process's `Identity`."""

    kind = "entra"

    def __init__(self, identity: Identity, timeout: float) -> None:
        self._identity = identity
        self._timeout = timeout
        self._flight: asyncio.Future[AccessToken] | None = None
        self._warming: asyncio.Task[None] | None = None

    async def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.token()}"}

    async def token(self) -> str:
        """One token request in flight at a time; a caller that gives up (its deadline) does not cancel it."""
        flight = self._flight
        if flight is None or flight.done():
            flight = self._flight = asyncio.ensure_future(self._fetch())
            flight.add_done_callback(lambda done: done.cancelled() or done.exception())
        return (await asyncio.shield(flight)).token

    def warm(self) -> None:
        """Starts the import at once and, when the app loads inside the worker's event loop, fetches the first
        token in the background, so the first connect after a cold start waits for neither."""
        self._identity.load()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._warming = loop.create_task(self._warm())

    async def _warm(self) -> None:
        try:
            await self.token()
        except ApiError as error:
            log.warning("credential warm-up failed: %s", error.code)

    async def _fetch(self) -> AccessToken:
        from azure.core.exceptions import AzureError

        try:
            async with asyncio.timeout(self._timeout):
                token = await self._identity.get_token(SCOPE)
        except TimeoutError:
            log.warning("the identity endpoint did not answer within %.1f s", self._timeout)
            raise ApiError(
                503, "credential_unavailable", "The managed identity endpoint did not answer in time."
            ) from None
        except AzureError as exc:
            log.warning("no Azure credential could be had: %s", type(exc).__name__)
            raise ApiError(503, "credential_unavailable", _UNAVAILABLE) from None
        if not PLAIN_TOKEN.fullmatch(token.token):
            log.warning("the identity endpoint returned a token that is not a plain token")
            raise ApiError(503, "credential_unavailable", "The identity endpoint returned a malformed token.")
        return token
