"""How the function app proves itself to the Azure OpenAI resource: an API key, or an Entra token.

One credential object lives per process so azure-identity's token cache is reused: two `/connect`
calls cost one identity request, not two.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Protocol

from .errors import ApiError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

SCOPE = "https://cognitiveservices.azure.com/.default"
log = logging.getLogger(__name__)


class Credentials(Protocol):
    kind: str

    def headers(self) -> dict[str, str]:
        """Auth headers for the client-secret request; raises ApiError when no credential can be had."""
        ...


class ApiKeyCredentials:
    kind = "api-key"

    def __init__(self, key: str) -> None:
        self._key = key

    def headers(self) -> dict[str, str]:
        return {"api-key": self._key}


class EntraCredentials:
    """DefaultAzureCredential: service principal, workload identity, managed identity (user-assigned via
    AZURE_CLIENT_ID), then developer logins. Created on first use so key-based apps never import azure-identity."""

    kind = "entra"

    def __init__(self) -> None:
        self._credential: TokenCredential | None = None
        self._lock = threading.Lock()

    def headers(self) -> dict[str, str]:
        from azure.core.exceptions import ClientAuthenticationError

        try:
            token = self._get().get_token(SCOPE).token
        except ClientAuthenticationError as exc:
            log.warning("no Azure credential could be had: %s", type(exc).__name__)
            raise ApiError(
                503,
                "credential_unavailable",
                "No Azure credential is available to the function app: set AZURE_OPENAI_API_KEY, or enable a "
                "managed identity and grant it the 'Cognitive Services OpenAI User' role on the resource.",
            ) from None
        return {"Authorization": f"Bearer {token}"}

    def _get(self) -> TokenCredential:
        with self._lock:
            if self._credential is None:
                from azure.identity import DefaultAzureCredential

                client_id = os.environ.get("AZURE_CLIENT_ID") or None
                self._credential = DefaultAzureCredential(managed_identity_client_id=client_id)
            return self._credential


def credentials_for(api_key: str | None) -> Credentials:
    return ApiKeyCredentials(api_key) if api_key else EntraCredentials()
