"""How the function app proves itself to the Azure OpenAI resource: an API key, or an Entra token.

One credential object lives per process so azure-identity's token cache is reused, and concurrent
connects share one token request (single flight): N first connects on a cold identity cost one request.
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import TYPE_CHECKING, Protocol

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


class Credentials(Protocol):
    kind: str

    async def headers(self) -> dict[str, str]:
        """Auth headers for the resource; raises ApiError when no credential can be had."""
        ...

    def warm(self) -> None:
        """Starts fetching what the first connect will need, without waiting for it."""
        ...

    async def aclose(self) -> None: ...


class ApiKeyCredentials:
    kind = "api-key"

    def __init__(self, key: str) -> None:
        self._key = key
        remember_secret(key)

    async def headers(self) -> dict[str, str]:
        return {"api-key": self._key}

    def warm(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


class EntraCredentials:
    """DefaultAzureCredential (async): service principal, workload identity, managed identity (user-assigned
    via AZURE_CLIENT_ID), then developer logins. Imported on first use so key-based apps never load it."""

    kind = "entra"

    def __init__(self, client_id: str | None, timeout: float) -> None:
        self._client_id = client_id
        self._timeout = timeout
        self._credential: AsyncTokenCredential | None = None
        self._flight: asyncio.Future[AccessToken] | None = None
        self._warming: asyncio.Task[None] | None = None
        self._creating = threading.Lock()

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
        """Fetch the first token in the background when the app loads inside the worker's event loop, so the
        first connect after a cold start does not also wait for the identity endpoint."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._warming = loop.create_task(self._warm())

    async def _warm(self) -> None:
        try:
            # Importing azure-identity takes a few hundred ms: done on a thread, so the worker serves meanwhile.
            await asyncio.get_running_loop().run_in_executor(None, self._get)
            await self.token()
        except ApiError as error:
            log.warning("credential warm-up failed: %s", error.code)

    async def _fetch(self) -> AccessToken:
        from azure.core.exceptions import AzureError

        try:
            async with asyncio.timeout(self._timeout):
                token = await self._get().get_token(SCOPE)
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
        remember_secret(token.token)
        return token

    async def aclose(self) -> None:
        if self._credential:
            await self._credential.close()

    def _get(self) -> AsyncTokenCredential:
        with self._creating:  # the warm-up thread and a first connect may both get here
            if self._credential is None:
                from azure.identity.aio import DefaultAzureCredential

                self._credential = DefaultAzureCredential(managed_identity_client_id=self._client_id)
            return self._credential


def credentials_for(api_key: str | None, client_id: str | None, timeout: float) -> Credentials:
    return ApiKeyCredentials(api_key) if api_key else EntraCredentials(client_id, timeout)
