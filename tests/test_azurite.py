"""Azurite as the app will use it: azure-data-tables' async client over real loopback sockets, what a storage
outage looks like to that client, and `./dev run`'s choice of storage."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ServiceRequestError, ServiceResponseError
from azure.data.tables import TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient

import localdev.__main__ as localdev_main
from localdev.azurite import Azurite, AzuriteUnavailable
from tests.azurite import Storage, require_azurite

# What an app that must answer within its connect deadline would configure: fail fast, one retry at most.
FAST = {"connection_timeout": 2, "read_timeout": 2, "retry_total": 1, "retry_backoff_factor": 0.1}


def run(scenario: Callable[[TableServiceClient], Awaitable[None]], storage: Storage, **client_options: object) -> None:
    async def go() -> None:
        async with TableServiceClient.from_connection_string(storage.connection_string, **client_options) as service:
            await scenario(service)

    asyncio.run(go())


def refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def timed(operation: Awaitable[object]) -> tuple[BaseException | None, float]:
    """The exception an operation ends with (None if it succeeds) and the seconds it took."""
    began = time.monotonic()
    try:
        await operation
    except Exception as error:
        return error, time.monotonic() - began
    return None, time.monotonic() - began


def test_tables_entities_etags_and_transactions(azurite: Storage) -> None:
    async def scenario(service: TableServiceClient) -> None:
        table = await service.create_table(azurite.table("counters"))
        created = await table.create_entity({"PartitionKey": "app", "RowKey": "minute-1", "count": 1})
        await table.update_entity(
            {"PartitionKey": "app", "RowKey": "minute-1", "count": 2},
            mode=UpdateMode.REPLACE,
            etag=created["etag"],
            match_condition=MatchConditions.IfNotModified,
        )
        with pytest.raises(ResourceModifiedError) as stale:  # someone else's update came first
            await table.update_entity(
                {"PartitionKey": "app", "RowKey": "minute-1", "count": 2},
                mode=UpdateMode.REPLACE,
                etag=created["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        assert stale.value.status_code == 412
        assert (await table.get_entity("app", "minute-1"))["count"] == 2

        await table.submit_transaction(
            [
                ("create", {"PartitionKey": "calls", "RowKey": "call-a", "live": True}),
                ("upsert", {"PartitionKey": "calls", "RowKey": "client-1", "live": 1}),
            ]
        )
        assert [e["RowKey"] async for e in table.query_entities("PartitionKey eq 'calls'")] == ["call-a", "client-1"]
        with pytest.raises(TableTransactionError):  # all or nothing: call-a exists, so call-b is not written either
            await table.submit_transaction(
                [
                    ("create", {"PartitionKey": "calls", "RowKey": "call-b"}),
                    ("create", {"PartitionKey": "calls", "RowKey": "call-a"}),
                ]
            )
        assert [e["RowKey"] async for e in table.query_entities("PartitionKey eq 'calls'")] == ["call-a", "client-1"]

    run(scenario, azurite)


def test_storage_that_goes_away_fails_fast_and_comes_back_with_its_data(azurite: Storage) -> None:
    server = azurite.azurite

    async def scenario(service: TableServiceClient) -> None:
        table = await service.create_table(azurite.table("ledger"))
        await table.create_entity({"PartitionKey": "calls", "RowKey": "recorded-before", "client": "203.0.113.7"})

        server.stop()
        assert refuses_connections(server.port)
        error, seconds = await timed(table.get_entity("calls", "recorded-before"))
        assert isinstance(error, ServiceRequestError), repr(error)  # connection refused: nothing was sent
        assert seconds < 3, seconds
        error, seconds = await timed(table.create_entity({"PartitionKey": "calls", "RowKey": "during-outage"}))
        assert isinstance(error, ServiceRequestError) and seconds < 3, (error, seconds)

        server.start()  # same port, same folder: the same client, and its pooled connections, carry on
        assert (await table.get_entity("calls", "recorded-before"))["client"] == "203.0.113.7"
        await table.create_entity({"PartitionKey": "calls", "RowKey": "after-outage"})
        assert [e["RowKey"] async for e in table.list_entities()] == ["after-outage", "recorded-before"]

    run(scenario, azurite, **FAST)


def test_storage_that_hangs_times_out_instead_of_hanging_the_caller(azurite: Storage) -> None:
    """A stalled Azurite still accepts connections (the kernel does that) but never answers."""
    process = azurite.azurite.process
    assert process is not None

    async def scenario(service: TableServiceClient) -> None:
        table = await service.create_table(azurite.table("ledger"))
        os.kill(process.pid, signal.SIGSTOP)
        try:
            error, seconds = await timed(table.get_entity("calls", "any"))
        finally:
            os.kill(process.pid, signal.SIGCONT)
        assert isinstance(error, ServiceResponseError), repr(error)  # ServiceResponseTimeoutError: sent, no answer
        assert seconds < FAST["read_timeout"] * (FAST["retry_total"] + 1) + 2, seconds
        await table.create_entity({"PartitionKey": "calls", "RowKey": "after-stall"})  # and it recovers

    run(scenario, azurite, **FAST)


def test_one_azurite_per_folder(azurite: Storage) -> None:
    with pytest.raises(AzuriteUnavailable, match="another Azurite is using"):
        Azurite(azurite.azurite.folder).start()


def lock_free(folder: Path) -> bool:
    with open(folder / ".lock") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


CHILD = """
import sys
from pathlib import Path
from localdev.azurite import Azurite
azurite = Azurite(Path(sys.argv[1])).start()
print(azurite.port, azurite.connection_string, sep="\\n", flush=True)
sys.stdin.read()
"""


def test_azurite_saves_its_data_and_exits_when_the_process_that_started_it_is_killed(tmp_path: Path) -> None:
    require_azurite()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "data")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert child.stdout is not None
    port, connection_string = int(child.stdout.readline()), child.stdout.readline().strip()

    async def write() -> None:
        async with TableClient.from_connection_string(connection_string, "orphans") as table:
            await table.create_table()
            await table.create_entity({"PartitionKey": "p", "RowKey": "written-just-before"})

    asyncio.run(write())
    child.kill()  # no cleanup of its own runs: Azurite's stdin closes with it (azurite_stop_on_eof.cjs)
    child.wait()
    deadline = time.monotonic() + 15
    while not lock_free(tmp_path / "data"):  # Azurite holds its folder's lock until it has saved and exited
        assert time.monotonic() < deadline, "Azurite outlived the process that started it"
        time.sleep(0.05)
    with Azurite(tmp_path / "data", port) as again:

        async def read() -> None:
            async with TableClient.from_connection_string(again.connection_string, "orphans") as table:
                await table.get_entity("p", "written-just-before")

        asyncio.run(read())


@pytest.mark.parametrize("configured", ["", "UseDevelopmentStorage=true"])
def test_dev_run_starts_azurite_when_no_storage_account_is_set(
    configured: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    require_azurite()
    monkeypatch.setattr(localdev_main, "TOP", tmp_path)
    monkeypatch.setenv("AzureWebJobsStorage", configured)
    caplog.set_level(logging.INFO)
    storage = localdev_main.start_storage()
    assert storage is not None
    try:
        assert os.environ["AzureWebJobsStorage"] == storage.connection_string
        assert storage.folder == tmp_path / ".azurite"
        assert f"Storage: Azurite on 127.0.0.1:{storage.port}" in caplog.text
    finally:
        storage.stop()


def test_dev_run_leaves_a_real_storage_account_alone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(localdev_main, "TOP", tmp_path)
    account = "DefaultEndpointsProtocol=https;AccountName=prod;AccountKey=a2V5;EndpointSuffix=core.windows.net"
    monkeypatch.setenv("AzureWebJobsStorage", account)
    assert localdev_main.start_storage() is None
    assert os.environ["AzureWebJobsStorage"] == account
    monkeypatch.setenv("AzureWebJobsStorage", "")
    monkeypatch.setenv("AzureWebJobsStorage__accountName", "prod")
    assert localdev_main.start_storage() is None
    assert not (tmp_path / ".azurite").exists()


def test_dev_run_without_azurite_says_limits_are_per_instance(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require_azurite()  # otherwise it is "node is not installed" that says so
    monkeypatch.setattr(localdev_main, "TOP", tmp_path)
    monkeypatch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    (tmp_path / ".azurite").mkdir()
    with open(tmp_path / ".azurite" / ".lock", "w") as held:  # another ./dev run holds the folder
        fcntl.flock(held, fcntl.LOCK_EX)
        assert localdev_main.start_storage() is None
    assert "AzureWebJobsStorage" not in os.environ
    assert "No storage: limits are per instance (another Azurite is using" in caplog.text
