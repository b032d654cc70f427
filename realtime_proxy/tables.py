"""Where shared limits live: one partition of one table, in Azure Table Storage or in this process.

The limits (realtime_proxy/admission.py) need only atomic, conditional writes to rows of one partition:
create-if-absent, replace-if-unchanged (ETag), delete-if-unchanged, all-or-nothing in a transaction. Table
Storage gives exactly that across every instance of the app; `MemoryTable` gives the same semantics inside
one process, so the same algorithm runs when no storage is configured (per-instance limits).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

T = TypeVar("T")
PARTITION = "limits"
STORAGE_TIMEOUT_SECONDS = 3.0  # per storage call: a dead storage account must not eat the connect deadline


@dataclass
class Row:
    key: str
    props: dict[str, object]
    etag: str = ""


@dataclass(frozen=True)
class Op:
    kind: Literal["create", "replace", "delete", "upsert"]
    key: str
    props: Mapping[str, object] = field(default_factory=dict)
    etag: str = ""  # replace/delete: only if the row still has this ETag


class Conflict(Exception):
    """A transaction was refused because operation `index` found the row other than it expected."""

    def __init__(self, index: int) -> None:
        super().__init__(f"operation {index} conflicted")
        self.index = index


class Unavailable(Exception):
    """The storage could not be reached or did not answer in time."""


class Table(Protocol):
    shared: bool

    async def transact(self, ops: list[Op]) -> list[str]:
        """All or nothing; the new ETag of each op (empty for deletes); Conflict(index) when a condition fails."""
        ...

    async def get(self, key: str) -> Row | None: ...

    async def rows(self, prefix: str, below: str | None = None) -> list[Row]:
        """Rows whose key starts with `prefix` (and sorts below `below`, when given)."""
        ...

    async def aclose(self) -> None: ...


class MemoryTable:
    """The same semantics inside one process: limits hold per instance."""

    shared = False

    def __init__(self) -> None:
        self._rows: dict[str, Row] = {}
        self._etags = itertools.count(1)

    async def transact(self, ops: list[Op]) -> list[str]:
        for index, op in enumerate(ops):  # check every condition first: all or nothing
            row = self._rows.get(op.key)
            if (op.kind == "create" and row) or (op.kind in ("replace", "delete") and (not row or row.etag != op.etag)):
                raise Conflict(index)
        etags = []
        for op in ops:
            if op.kind == "delete":
                del self._rows[op.key]
                etags.append("")
                continue
            etag = f'W/"{next(self._etags)}"'
            self._rows[op.key] = Row(op.key, dict(op.props), etag)
            etags.append(etag)
        return etags

    async def get(self, key: str) -> Row | None:
        row = self._rows.get(key)
        return Row(row.key, dict(row.props), row.etag) if row else None

    async def rows(self, prefix: str, below: str | None = None) -> list[Row]:
        return [
            Row(row.key, dict(row.props), row.etag)
            for key, row in sorted(self._rows.items())
            if key.startswith(prefix) and (below is None or key < below)
        ]

    async def aclose(self) -> None:
        pass


class StorageTable:
    """One partition of a table in the app's storage account (azure-data-tables, async, aiohttp underneath)."""

    shared = True

    def __init__(
        self, table: str, connection: str | None = None, endpoint: str | None = None, credential: object = None
    ) -> None:
        """By connection string, or by the account's table endpoint and the process's identity."""
        from azure.data.tables.aio import TableClient

        options = {
            "retry_total": 1,
            "connection_timeout": STORAGE_TIMEOUT_SECONDS,
            "read_timeout": STORAGE_TIMEOUT_SECONDS,
        }
        if connection:
            self._client = TableClient.from_connection_string(connection, table, **options)
        else:
            self._client = TableClient(endpoint or "", table, credential=credential, **options)  # type: ignore[arg-type]
        self._created = False

    async def transact(self, ops: list[Op]) -> list[str]:
        from azure.core import MatchConditions
        from azure.data.tables import TableTransactionError, UpdateMode

        batch: list[tuple[Any, ...]] = []
        for op in ops:
            entity = {"PartitionKey": PARTITION, "RowKey": op.key, **op.props}
            condition = {"etag": op.etag, "match_condition": MatchConditions.IfNotModified}
            if op.kind == "replace":
                batch.append(("update", entity, {**condition, "mode": UpdateMode.REPLACE}))
            elif op.kind == "delete":
                batch.append(("delete", entity, condition))
            else:
                batch.append((op.kind, entity))
        try:
            results = await self._call(lambda: self._client.submit_transaction(batch))
        except TableTransactionError as error:
            if error.status_code in (409, 412, 404):
                raise Conflict(error.index) from None
            raise Unavailable(f"storage refused the transaction ({error.status_code})") from None
        return [str(result.get("etag") or "") for result in results]

    async def get(self, key: str) -> Row | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = await self._call(lambda: self._client.get_entity(PARTITION, key))
        except ResourceNotFoundError:
            return None
        return _row(entity)

    async def rows(self, prefix: str, below: str | None = None) -> list[Row]:
        upper = below if below is not None and below < prefix + "~" else prefix + "~"
        query = "PartitionKey eq @p and RowKey ge @low and RowKey lt @high"
        parameters = {"p": PARTITION, "low": prefix, "high": upper}

        async def collect() -> list[Row]:
            return [_row(entity) async for entity in self._client.query_entities(query, parameters=parameters)]

        return await self._call(collect)

    async def aclose(self) -> None:
        await self._client.close()

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Every storage call is bounded, and every way it can fail to answer is one exception type; a missing
        row and a refused transaction pass through for the caller to read."""
        from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
        from azure.data.tables import TableTransactionError

        try:
            async with asyncio.timeout(STORAGE_TIMEOUT_SECONDS * 2):
                await self._ensure_table()
                return await operation()
        except (ResourceNotFoundError, TableTransactionError):
            raise
        except HttpResponseError as error:
            raise Unavailable(f"storage answered {error.status_code}") from None
        except (AzureError, OSError, TimeoutError) as error:
            raise Unavailable(type(error).__name__) from None

    async def _ensure_table(self) -> None:
        if not self._created:
            from azure.core.exceptions import ResourceExistsError

            with contextlib.suppress(ResourceExistsError):
                await self._client.create_table()
            self._created = True


def _row(entity: Mapping[str, object]) -> Row:
    props = {key: value for key, value in entity.items() if key not in ("PartitionKey", "RowKey")}
    return Row(str(entity["RowKey"]), props, str(getattr(entity, "metadata", {}).get("etag", "")))
