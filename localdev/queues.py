"""Storage queue triggers and queue output bindings for the local Functions host, run as the Functions host's queue
extension (5.x) runs them, against Azurite or any storage account a connection string names.

- Names: `%NAME%` in a queue name is the app setting NAME (from the environment, as local.settings.json's Values
  are); a name that does not resolve, or is not a valid queue name, refuses to start, as the host refuses to index.
- Output (`@app.queue_output`): the function gets a `func.Out`; what it `set()` (a str, bytes, or a list of str) is
  enqueued once it has returned, nothing if it set nothing or failed; the queue is created if missing. A failed
  enqueue fails the invocation (an HTTP function answers 500). Listeners on that queue in this host poll at once.
- Trigger (`@app.queue_trigger`): each queue is polled with the host's randomized exponential back-off (0.1 s up to
  `maxPollingInterval`); a batch of `batchSize` is fetched whenever no more than `newBatchThreshold` messages are
  running, so at most their sum run at once, async functions on the host's one event loop and sync ones in threads.
  A message is fetched invisible for 10 minutes and made invisible again every 5 while its function runs (the
  host's QueueListener: the window renewed at half), so a long-running function is never delivered twice, here or
  to another instance. Success deletes it; failure makes it visible again after `visibilityTimeout`, and the
  failure of its `maxDequeueCount`-th delivery (or a base64 body that does not decode) moves it to `{queue}-poison`.
- close() cancels running functions and makes their messages visible again at once; a host that dies leaves them
  invisible until their window ends. Either way they are delivered again.

Settings are host.json's `extensions.queues` with the host's defaults. Local-only overrides for tests:
LOCAL_QUEUE_POLL_SECONDS caps the polling interval, LOCAL_QUEUE_VISIBILITY_SECONDS shortens the 10-minute window.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import inspect
import logging
import os
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func
from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from azure.functions.queue import QueueMessage as WorkerMessage  # the worker's, with the trigger's metadata
from azure.storage.queue import QueueMessage as StoredMessage
from azure.storage.queue.aio import QueueClient, QueueServiceClient

log = logging.getLogger(__name__)

MIN_POLL = 0.1  # QueuePollingIntervals.Minimum
WINDOW = 600  # seconds a fetched message stays invisible before its first renewal: the host's 10 minutes
QUEUE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?!-)){1,61}[a-z0-9]")
TIMESPAN = re.compile(r"(?:(\d+)\.)?(\d+):(\d+):(\d+(?:\.\d+)?)")


class QueueBindingError(ValueError):
    """A queue binding the host would refuse to index."""


def _timespan(value: object, setting: str) -> float:
    """Seconds in a .NET TimeSpan ("[d.]hh:mm:ss[.fff]"), as host.json spells durations."""
    match = TIMESPAN.fullmatch(str(value))
    if not match:
        raise QueueBindingError(f"host.json extensions.queues.{setting} is {value!r}, not a duration like '00:00:02'")
    days, hours, minutes, seconds = match.groups()
    return ((int(days or 0) * 24 + int(hours)) * 60 + int(minutes)) * 60 + float(seconds)


@dataclass(frozen=True)
class QueueOptions:
    """host.json `extensions.queues`, defaults as in the extension's QueuesOptions."""

    batch_size: int = 16
    new_batch_threshold: int = 8 * (os.cpu_count() or 1)  # batchSize / 2 * processors
    max_polling_interval: float = 60.0
    visibility_timeout: float = 0.0  # before a failed message is tried again
    max_dequeue_count: int = 5
    message_encoding: str = "base64"

    @classmethod
    def from_host_json(cls, config: Mapping[str, Any]) -> QueueOptions:
        queues = config.get("extensions", {}).get("queues", {})
        batch = int(queues.get("batchSize", cls.batch_size))
        options = cls(
            batch_size=batch,
            new_batch_threshold=int(queues.get("newBatchThreshold", batch // 2 * (os.cpu_count() or 1))),
            max_polling_interval=_timespan(queues.get("maxPollingInterval", "00:01:00"), "maxPollingInterval"),
            visibility_timeout=_timespan(queues.get("visibilityTimeout", "00:00:00"), "visibilityTimeout"),
            max_dequeue_count=int(queues.get("maxDequeueCount", cls.max_dequeue_count)),
            message_encoding=str(queues.get("messageEncoding", cls.message_encoding)).lower(),
        )
        if not 1 <= options.batch_size <= 32 or options.new_batch_threshold < 0 or options.max_dequeue_count < 1:
            raise QueueBindingError(f"host.json extensions.queues: {queues} (batchSize 1-32, maxDequeueCount >= 1)")
        if options.message_encoding not in ("base64", "none") or options.max_polling_interval < MIN_POLL:
            raise QueueBindingError(f"host.json extensions.queues: {queues} (messageEncoding base64 or none)")
        return options

    def encode(self, body: str | bytes) -> str:
        data = body.encode() if isinstance(body, str) else body
        return base64.b64encode(data).decode() if self.message_encoding == "base64" else data.decode()

    def decode(self, content: str) -> bytes:
        """The body the function gets; raises ValueError for base64 that does not decode."""
        return base64.b64decode(content, validate=True) if self.message_encoding == "base64" else content.encode()


@dataclass(frozen=True)
class _Queue:
    name: str
    connection: str  # the app setting holding the connection string


@dataclass(frozen=True)
class _Trigger:
    function: str
    handler: Callable[..., Any]
    argument: str
    queue: _Queue


def _resolve(value: str, environ: Mapping[str, str], function: str) -> str:
    def setting(match: re.Match[str]) -> str:
        resolved = environ.get(match.group(1), "").strip()
        if not resolved:
            raise QueueBindingError(f"function {function}: '{match.group(0)}' does not resolve to a value")
        return resolved

    name = re.sub(r"%([^%]+)%", setting, value).lower()  # the host lower-cases queue names
    if not QUEUE_NAME.fullmatch(name):
        raise QueueBindingError(f"function {function}: {name!r} is not a valid queue name (3-63 of a-z, 0-9, -)")
    return name


def _queue(binding: Mapping[str, Any], environ: Mapping[str, str], function: str) -> _Queue:
    return _Queue(_resolve(binding["queueName"], environ, function), binding.get("connection") or "AzureWebJobsStorage")


class Output(func.Out[Any]):
    """What the worker passes for an output binding: holds what the function sets."""

    def __init__(self) -> None:
        self.value: Any = None

    def set(self, val: Any) -> None:
        self.value = val

    def get(self) -> Any:
        return self.value


def _bodies(value: Any) -> list[str | bytes]:
    """The messages an output value stands for, as the worker's queue converter accepts them."""
    if isinstance(value, str | bytes):
        return [value]
    if isinstance(value, func.QueueMessage):
        return [value.get_body()]
    if isinstance(value, Iterable):
        return [body for item in value for body in _bodies(item)]
    raise TypeError(f"a queue output takes str, bytes, func.QueueMessage or a list of them, not {type(value).__name__}")


def _poison(queue: str) -> str | None:
    """The host's poison queue for `queue`: none for a poison queue itself, or when the suffix would not fit."""
    return None if queue.endswith("-poison") or len(queue) > 63 - len("-poison") else f"{queue}-poison"


def _seconds(environ: Mapping[str, str], name: str) -> float | None:
    value = environ.get(name, "").strip()
    return float(value) if value else None


class Queues:
    """The queue bindings of one FunctionApp: output bindings for every function, and a listener per trigger."""

    def __init__(
        self,
        functions: list[Any],
        options: QueueOptions,
        loop: asyncio.AbstractEventLoop,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self.options = options
        self.loop = loop
        self.outputs: dict[str, dict[str, _Queue]] = {}  # function name -> argument -> queue
        self.triggers: list[_Trigger] = []
        for function in functions:
            name = function.get_function_name()
            for binding in (b.get_dict_repr() for b in function.get_bindings()):
                if binding["type"] == "queue":
                    self.outputs.setdefault(name, {})[binding["name"]] = _queue(binding, environ, name)
                elif binding["type"] == "queueTrigger":
                    queue = _queue(binding, environ, name)
                    self.triggers.append(_Trigger(name, function.get_user_function(), binding["name"], queue))
        used = {q.connection for q in [*(t.queue for t in self.triggers), *self._all_outputs()]}
        self.connections = {name: environ[name] for name in used if environ.get(name, "").strip()}
        for missing in sorted(used - set(self.connections)):
            log.warning(
                "No storage (%s is not set): queue-triggered functions on it are not run (%s), and what functions "
                "set on queue outputs to it is dropped.",
                missing,
                ", ".join(t.function for t in self.triggers if t.queue.connection == missing) or "none",
            )
        self.poll_cap = _seconds(environ, "LOCAL_QUEUE_POLL_SECONDS")
        self.window = max(1, int(_seconds(environ, "LOCAL_QUEUE_VISIBILITY_SECONDS") or WINDOW))
        self._services: dict[str, QueueServiceClient] = {}
        self._wake: dict[str, asyncio.Event] = {}  # per queue: a message was just added by this host
        self._listeners: list[asyncio.Task[None]] = []
        self._running: set[asyncio.Task[None]] = set()

    def _all_outputs(self) -> list[_Queue]:
        return [queue for outputs in self.outputs.values() for queue in outputs.values()]

    def start(self) -> None:
        """Starts polling every queue with a trigger whose storage is configured."""
        for trigger in self.triggers:
            if trigger.queue.connection in self.connections:
                asyncio.run_coroutine_threadsafe(self._start(trigger), self.loop).result()

    async def _start(self, trigger: _Trigger) -> None:
        self._listeners.append(asyncio.create_task(self._listen(trigger), name=f"queue-listener-{trigger.function}"))

    def _client(self, queue: _Queue, name: str | None = None) -> QueueClient:
        service = self._services.get(queue.connection)
        if service is None:
            service = QueueServiceClient.from_connection_string(self.connections[queue.connection])
            self._services[queue.connection] = service
        return service.get_queue_client(name or queue.name)

    def _event(self, queue: str) -> asyncio.Event:
        return self._wake.setdefault(queue, asyncio.Event())

    # Output bindings

    def new_outputs(self, function: str) -> dict[str, Output]:
        return {argument: Output() for argument in self.outputs.get(function, {})}

    async def send(self, function: str, outputs: Mapping[str, Output]) -> None:
        """Enqueues what the function set, after it returned; raises if storage refuses (the invocation fails)."""
        for argument, output in outputs.items():
            queue = self.outputs[function][argument]
            if output.value is None or queue.connection not in self.connections:
                continue
            client = self._client(queue)
            for body in _bodies(output.value):
                await self._add(client, self.options.encode(body))
            self._event(queue.name).set()

    @staticmethod
    async def _add(client: QueueClient, content: str) -> None:
        """AddMessageAndCreateIfNotExistsAsync, as the host writes outputs and poison messages."""
        try:
            await client.send_message(content)
        except ResourceNotFoundError:
            with contextlib.suppress(HttpResponseError):  # someone else created it meanwhile
                await client.create_queue()
            await client.send_message(content)

    # Triggers

    async def _listen(self, trigger: _Trigger) -> None:
        client = self._client(trigger.queue)
        most = min(self.options.max_polling_interval, self.poll_cap or self.options.max_polling_interval)
        delay, unavailable = MIN_POLL, False
        log.info("Queue trigger %s listens on queue %s", trigger.function, trigger.queue.name)
        while True:
            try:
                pages = client.receive_messages(
                    messages_per_page=self.options.batch_size, visibility_timeout=self.window
                ).by_page()
                batch = [message async for message in await anext(pages)]
            except (StopAsyncIteration, ResourceNotFoundError):  # nothing there, or no queue yet
                batch = []
            except AzureError as error:
                if not unavailable:
                    log.warning("Queue %s cannot be read, retrying: %s", trigger.queue.name, error)
                unavailable, batch = True, []
            else:
                if unavailable:
                    log.info("Queue %s can be read again", trigger.queue.name)
                unavailable = False
            for message in batch:
                task = asyncio.create_task(self._process(trigger, client, message), name=trigger.function)
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            if batch:
                delay = MIN_POLL
                mine = [task for task in self._running if task.get_name() == trigger.function]
                while len(mine) > self.options.new_batch_threshold:
                    done, _ = await asyncio.wait(mine, return_when=asyncio.FIRST_COMPLETED)
                    mine = [task for task in mine if task not in done]
                continue
            wake = self._event(trigger.queue.name)
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, most)

    async def _process(self, trigger: _Trigger, client: QueueClient, stored: StoredMessage) -> None:
        message = _Delivery(stored)
        if message.count > self.options.max_dequeue_count:
            await self._to_poison(trigger, client, message, "it was dequeued more often than maxDequeueCount")
            return
        try:
            body = self.options.decode(stored.content)
        except (binascii.Error, ValueError):
            await self._to_poison(trigger, client, message, "its body is not base64 (host.json messageEncoding)")
            return
        done = asyncio.Event()
        renewal = asyncio.create_task(self._renew(client, message, done))
        try:
            await self._invoke(trigger, message.for_function(body))
        except asyncio.CancelledError:  # the host is stopping: let another instance have it at once
            done.set()
            await renewal
            await self._release(client, message, 0)
            raise
        except Exception:
            done.set()
            await renewal
            log.exception(
                "Queue function %s failed on message %s (delivery %d)", trigger.function, message.id, message.count
            )
            if message.count >= self.options.max_dequeue_count:
                await self._to_poison(trigger, client, message, f"delivery {message.count} failed")
            else:
                await self._release(client, message, self.options.visibility_timeout)
        else:
            done.set()
            await renewal
            await self._finish(client, message)

    async def _invoke(self, trigger: _Trigger, message: func.QueueMessage) -> None:
        outputs = self.new_outputs(trigger.function)
        arguments = {trigger.argument: message, **outputs}
        if inspect.iscoroutinefunction(trigger.handler):
            await trigger.handler(**arguments)
        else:
            await asyncio.to_thread(trigger.handler, **arguments)
        await self.send(trigger.function, outputs)

    async def _renew(self, client: QueueClient, message: _Delivery, done: asyncio.Event) -> None:
        """Keeps the message invisible while its function runs: a fresh window at each half window. Stops between
        updates, never within one, so the receipt that completes the message is the one storage holds."""
        every = self.window / 2
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), every)
                return
            try:
                updated = await client.update_message(message.id, message.receipt, visibility_timeout=self.window)
            except ResourceNotFoundError:
                log.warning("Message %s left queue %s while running: not renewed", message.id, client.queue_name)
                return
            except AzureError as error:
                log.warning("Could not renew message %s in queue %s: %s", message.id, client.queue_name, error)
                every = self.window / 4  # sooner, while the window lasts
            else:
                message.receipt, every = str(updated.pop_receipt), self.window / 2

    async def _finish(self, client: QueueClient, message: _Delivery) -> None:
        try:
            await client.delete_message(message.id, message.receipt)
        except AzureError as error:
            log.warning("Could not delete message %s from queue %s: %s", message.id, client.queue_name, error)

    async def _release(self, client: QueueClient, message: _Delivery, after: float) -> None:
        try:
            await client.update_message(message.id, message.receipt, visibility_timeout=int(after))
        except AzureError as error:
            log.warning("Could not release message %s in queue %s: %s", message.id, client.queue_name, error)

    async def _to_poison(self, trigger: _Trigger, client: QueueClient, message: _Delivery, why: str) -> None:
        poison = _poison(trigger.queue.name)
        if poison is None:  # the host leaves such a message invisible rather than loop on it
            log.error("Message %s in queue %s failed (%s) and has no poison queue", message.id, client.queue_name, why)
            return
        log.warning("Message %s moves from queue %s to %s: %s", message.id, client.queue_name, poison, why)
        try:
            await self._add(self._client(trigger.queue, poison), message.stored.content)
            await client.delete_message(message.id, message.receipt)
        except AzureError as error:
            log.warning("Could not move message %s to %s: %s", message.id, poison, error)

    async def aclose(self) -> None:
        """Stops polling, cancels running functions (their messages become visible again), closes the clients."""
        for task in self._listeners:
            task.cancel()
        running = [*self._running]
        for task in running:
            task.cancel()
        await asyncio.gather(*self._listeners, *running, return_exceptions=True)
        self._listeners.clear()
        for service in self._services.values():
            await service.close()
        self._services.clear()


@dataclass
class _Delivery:
    """One delivery of a stored message; its pop receipt changes with every renewal."""

    stored: StoredMessage
    receipt: str = field(init=False)

    def __post_init__(self) -> None:
        self.receipt = str(self.stored.pop_receipt)

    @property
    def id(self) -> str:
        return str(self.stored.id)

    @property
    def count(self) -> int:
        return int(self.stored.dequeue_count or 0)

    def for_function(self, body: bytes) -> func.QueueMessage:
        """As the worker builds it from the host's trigger metadata."""
        return WorkerMessage(
            id=self.id,
            body=body,
            dequeue_count=self.count,
            expiration_time=self.stored.expires_on,
            insertion_time=self.stored.inserted_on,
            time_next_visible=self.stored.next_visible_on,
            pop_receipt=self.receipt,
        )
