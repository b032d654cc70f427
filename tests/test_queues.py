"""The local host runs Storage queue triggers and queue outputs as the Functions host does, against a real Azurite:
HTTP calls in over loopback, messages through Azurite's queue service, functions on the host's event loop."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
import requests
from azure.storage.queue.aio import QueueClient

from localdev.host import serve
from localdev.queues import QueueBindingError, QueueOptions
from tests.azurite import Storage
from tests.test_shared_limits import wait_for


@dataclass(frozen=True)
class Run:
    host: str
    id: str
    body: bytes
    dequeue_count: int
    started: float
    ended: float | None
    message: func.QueueMessage


class Seen:
    """What the test's queue function saw, in every host; the test waits on it."""

    def __init__(self) -> None:
        self.runs: list[Run] = []
        self.changed = threading.Condition()

    def record(self, run: Run) -> None:
        with self.changed:
            self.runs = [
                r for r in self.runs if (r.host, r.id, r.dequeue_count) != (run.host, run.id, run.dequeue_count)
            ]
            self.runs.append(run)
            self.changed.notify_all()

    def wait(self, condition: Callable[[list[Run]], object], what: str, timeout: float = 30.0) -> list[Run]:
        with self.changed:
            assert self.changed.wait_for(lambda: condition(self.runs), timeout), f"timed out waiting for {what}"
            return list(self.runs)


def build_app(seen: Seen, host: str, trigger: bool = True) -> func.FunctionApp:
    """An HTTP function that enqueues its body, and a queue function whose body says what it does: `fail`, `slow:S`
    (runs S seconds), `slow-first:S` (only on its first delivery), anything else returns at once."""
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.route(route="enqueue", methods=["POST"])
    @app.queue_output(arg_name="out", queue_name="%TEST_QUEUE%", connection="AzureWebJobsStorage")
    def enqueue(req: func.HttpRequest, out: func.Out[str]) -> func.HttpResponse:
        body = req.get_body().decode()
        if body:
            out.set(body)
        if body == "set-then-fail":
            raise RuntimeError("the function failed after setting its output")
        return func.HttpResponse(status_code=202)

    if trigger:

        @app.queue_trigger(arg_name="message", queue_name="%TEST_QUEUE%", connection="AzureWebJobsStorage")
        async def work(message: func.QueueMessage) -> None:
            def record(ended: float | None) -> None:
                count = message.dequeue_count or 0
                seen.record(Run(host, str(message.id), message.get_body(), count, started, ended, message))

            started = time.monotonic()
            record(None)
            text = message.get_body().decode()
            if text == "fail":
                raise RuntimeError("this message always fails")
            kind, _, seconds = text.partition(":")
            if kind == "slow" or (kind == "slow-first" and message.dequeue_count == 1):
                await asyncio.sleep(float(seconds))  # the function's own work, not the test waiting
            record(time.monotonic())

    return app


class Hosts:
    """Local hosts started by one test, each serving its own app on a loopback port."""

    def __init__(self, azurite: Storage, tmp_path: Path) -> None:
        self.azurite = azurite
        self.tmp_path = tmp_path
        self.queue = azurite.table("work")  # a queue name of this test's own
        self.seen = Seen()
        self.servers: list[Any] = []

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "AzureWebJobsStorage": self.azurite.connection_string,
            "TEST_QUEUE": self.queue,
            "LOCAL_QUEUE_POLL_SECONDS": "0.2",
            **extra,
        }

    def start(self, name: str = "a", queues: dict[str, Any] | None = None, trigger: bool = True, **env: str) -> str:
        host_json = self.tmp_path / f"host-{name}.json"
        host_json.write_text(
            json.dumps({"version": "2.0", "extensions": {"http": {"routePrefix": ""}, "queues": queues or {}}})
        )
        server = serve(build_app(self.seen, name, trigger), port=0, host_json=host_json, environ=self.env(**env))
        self.servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    def stop(self, url: str) -> None:
        server = next(s for s in self.servers if url.endswith(f":{s.server_port}"))
        self.servers.remove(server)
        server.shutdown()
        server.app.close()

    def messages(self, queue: str | None = None) -> list[str]:
        """The raw content of every message visible in the queue now (none if it does not exist)."""

        async def peek() -> list[str]:
            async with QueueClient.from_connection_string(
                self.azurite.connection_string, queue or self.queue
            ) as client:
                if not await _exists(client):
                    return []
                return [m.content async for m in client.receive_messages(visibility_timeout=1, max_messages=32)]

        return asyncio.run(peek())

    def remaining(self, queue: str | None = None) -> int:
        """Messages in the queue, visible or not."""

        async def count() -> int:
            async with QueueClient.from_connection_string(
                self.azurite.connection_string, queue or self.queue
            ) as client:
                if not await _exists(client):
                    return 0
                return (await client.get_queue_properties()).approximate_message_count or 0

        return asyncio.run(count())

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.app.close()


async def _exists(client: QueueClient) -> bool:
    try:
        await client.get_queue_properties()
    except Exception:
        return False
    return True


@pytest.fixture
def hosts(azurite: Storage, tmp_path: Path) -> Iterator[Hosts]:
    started = Hosts(azurite, tmp_path)
    yield started
    started.close()


def post(url: str, body: str) -> requests.Response:
    return requests.post(f"{url}/enqueue", data=body.encode(), timeout=10)


@pytest.mark.parametrize("encoding", ["base64", "none"])
def test_an_output_is_written_after_the_function_returns_in_host_json_encoding(hosts: Hosts, encoding: str) -> None:
    url = hosts.start(queues={"messageEncoding": encoding}, trigger=False)
    assert post(url, "").status_code == 202  # set nothing: nothing is sent (and no queue is made)
    assert post(url, "set-then-fail").status_code == 500  # set, then failed: nothing is sent
    assert hosts.remaining() == 0
    assert post(url, "héllo ✓").status_code == 202  # the queue did not exist: it is created
    expected = base64.b64encode("héllo ✓".encode()).decode() if encoding == "base64" else "héllo ✓"
    assert hosts.messages() == [expected]  # what the Functions host would write, so either can read the other's


def test_an_http_calls_message_reaches_the_trigger_decoded_and_is_deleted(hosts: Hosts) -> None:
    url = hosts.start()
    before = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=5)
    assert post(url, "call-1 ✓").status_code == 202
    runs = hosts.seen.wait(lambda runs: any(r.ended for r in runs), "the queue function to finish")
    assert [(r.body, r.dequeue_count) for r in runs] == [("call-1 ✓".encode(), 1)]
    message = runs[0].message
    assert message.id and message.pop_receipt
    assert message.insertion_time is not None and message.insertion_time > before
    assert message.expiration_time is not None and message.expiration_time > message.insertion_time
    wait_for(lambda: hosts.remaining() == 0, "the message to be deleted after success")


def test_a_failing_message_is_tried_five_times_then_moved_to_the_poison_queue(hosts: Hosts) -> None:
    hosts.start()
    url = hosts.start("b", trigger=False)  # the HTTP function of another instance enqueues it
    assert post(url, "fail").status_code == 202
    hosts.seen.wait(lambda runs: len(runs) == 5, "five deliveries")
    poison = f"{hosts.queue}-poison"
    wait_for(lambda: hosts.remaining(poison) == 1, "the message in the poison queue")
    assert [r.dequeue_count for r in hosts.seen.runs] == [1, 2, 3, 4, 5]
    assert len({r.id for r in hosts.seen.runs}) == 1
    assert hosts.messages(poison) == [base64.b64encode(b"fail").decode()]  # as it was, for a person to look at
    assert hosts.remaining() == 0


def test_a_message_running_longer_than_its_visibility_window_is_not_delivered_again(hosts: Hosts) -> None:
    url = hosts.start(LOCAL_QUEUE_VISIBILITY_SECONDS="2")  # renewed every second while it runs
    assert post(url, "slow:6").status_code == 202
    runs = hosts.seen.wait(lambda runs: any(r.ended for r in runs), "the slow function to finish", timeout=30)
    assert [(r.dequeue_count, r.ended is not None) for r in runs] == [(1, True)]
    assert runs[0].ended is not None and runs[0].ended - runs[0].started >= 6
    wait_for(lambda: hosts.remaining() == 0, "the message to be deleted")
    assert len(hosts.seen.runs) == 1  # and it was not run again between finishing and being deleted


def most_at_once(runs: list[Run]) -> int:
    edges = sorted([(r.started, 1) for r in runs] + [(r.ended or r.started, -1) for r in runs])
    running = [0]
    for _, step in edges:
        running.append(running[-1] + step)
    return max(running)


def test_two_hosts_on_one_queue_never_run_a_message_twice(hosts: Hosts) -> None:
    # Each host fetches 2 at a time and fetches again while no more than 1 runs: at most 3 at once, as on Azure.
    settings = {"batchSize": 2, "newBatchThreshold": 1}
    first = hosts.start("a", settings, LOCAL_QUEUE_VISIBILITY_SECONDS="2")
    hosts.start("b", settings, LOCAL_QUEUE_VISIBILITY_SECONDS="2")
    for _ in range(6):
        assert post(first, "slow:5").status_code == 202
    runs = hosts.seen.wait(lambda runs: sum(1 for r in runs if r.ended) == 6, "six slow runs", timeout=60)
    assert len(runs) == 6, [(r.host, r.id, r.dequeue_count) for r in runs]
    assert len({r.id for r in runs}) == 6
    assert all(r.dequeue_count == 1 for r in runs)
    assert {r.host for r in runs} == {"a", "b"}
    assert all(most_at_once([r for r in runs if r.host == host]) <= 3 for host in "ab")
    wait_for(lambda: hosts.remaining() == 0, "every message deleted")


def test_a_stopped_host_lets_its_running_message_be_delivered_again(hosts: Hosts) -> None:
    first = hosts.start("a")
    assert post(first, "slow-first:300").status_code == 202
    hosts.seen.wait(lambda runs: len(runs) == 1, "the first delivery to start")
    hosts.stop(first)  # as an instance recycled mid-call: its function is cancelled
    hosts.start("b")
    runs = hosts.seen.wait(lambda runs: any(r.host == "b" and r.ended for r in runs), "the second delivery")
    assert [(r.host, r.dequeue_count, r.ended is not None) for r in runs] == [("a", 1, False), ("b", 2, True)]


def test_queue_names_resolve_from_app_settings_or_the_host_refuses_to_start(hosts: Hosts) -> None:
    hosts.queue = hosts.queue.upper()  # the host lower-cases queue names
    url = hosts.start()
    assert post(url, "upper").status_code == 202
    hosts.seen.wait(lambda runs: any(r.ended for r in runs), "the message on the lower-cased queue")
    deadline = time.monotonic() + 10
    while hosts.remaining(hosts.queue.lower()):  # the host deletes a message once its function has returned
        assert time.monotonic() < deadline, "the message was never deleted"
        time.sleep(0.05)
    with pytest.raises(QueueBindingError, match="function enqueue: '%TEST_QUEUE%' does not resolve to a value"):
        hosts.start("b", TEST_QUEUE="")
    with pytest.raises(QueueBindingError, match="'bad_name' is not a valid queue name"):
        hosts.start("c", TEST_QUEUE="bad_name")


def test_without_storage_queue_functions_do_not_run_and_the_host_says_so_once(
    hosts: Hosts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    url = hosts.start(AzureWebJobsStorage="")
    assert post(url, "dropped").status_code == 202  # HTTP behaves as before
    notes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("No storage")]
    assert notes == [
        "No storage (AzureWebJobsStorage is not set): queue-triggered functions on it are not run (work), and what "
        "functions set on queue outputs to it is dropped."
    ]
    assert hosts.remaining() == 0


def test_the_apps_host_json_lets_one_instance_supervise_many_hour_long_calls() -> None:
    config = json.loads((Path(__file__).resolve().parent.parent / "host.json").read_text())
    options = QueueOptions.from_host_json(config)
    assert options.batch_size + options.new_batch_threshold >= 500  # issue 17's goal for one instance
    assert (options.max_dequeue_count, options.message_encoding) == (5, "base64")
    hours, minutes, _ = (int(part) for part in config["functionTimeout"].split(":"))
    assert 60 < hours * 60 + minutes <= 120  # past a 60-minute session, yet a stuck function still ends
