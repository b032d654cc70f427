"""Each call's transcript on the server, off by default: `REALTIME_SERVER_TRANSCRIPTS=blob` (docs/transcripts.md).

The supervisor sees every server event of a call and hands each to its call's `Recorder`, which keeps the user's
and the assistant's words and writes them as JSON lines to the append blob `{container}/{yyyy}/{mm}/{dd}/{call}.jsonl`
in the app's storage account.

Written in batches as the call goes (BATCH_LINES lines, or BATCH_SECONDS after the first unwritten one, and the
rest at the end), not once at the end: a call lasts up to an hour, and an instance that dies mid-call (scale-in,
recycle, crash) then loses at most one batch, not the whole transcript; the supervisor that re-attaches elsewhere
appends to the same blob. An append blob takes each batch as one block: one request per batch, nothing rewritten.
Per line, one request would be ~1 write per turn per call for nothing a reader needs sooner.

Storage never slows the call: `observe` parses and buffers only; writes run as tasks beside the event loop's other
work, one at a time per call, each bounded by WRITE_TIMEOUT_SECONDS and never retried by the SDK (an append is not
idempotent). A batch that fails stays buffered and goes with the next attempt, so a short outage loses nothing;
a write whose answer was lost may leave its batch twice (`role` with `itemId` tells). Log lines name the call,
never its words.

azure-storage-blob is imported only when transcripts are on, as the process starts (`open_transcripts`). Its import,
measured 2026-12-06 (`time.perf_counter()` around `import azure.storage.blob.aio` in 9 fresh processes, median, load
average 1.5 on 2 cores): 0.11 s after the app's own imports (aiohttp, azure-core, azure-data-tables), 0.29 s alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from .credentials import Identity
from .logs import logger
from .settings import TranscriptStore
from .upstream import CALL_ID

log = logger(__name__)
BATCH_LINES = 20
BATCH_SECONDS = 10.0
WRITE_TIMEOUT_SECONDS = 5.0  # per append; `close` waits for at most the one in flight and one more
MAX_LINES = 2000  # per call: about 16 turns a minute for two hours
MAX_CHARS = 400_000  # per call, of JSON lines: an hour of two people talking is about 100k characters of words
# The events that carry a finished turn's words (realtime-api.md §3): type -> (role, the field with the words).
WORDS = {
    "conversation.item.input_audio_transcription.completed": ("user", "transcript"),
    "response.output_audio_transcript.done": ("assistant", "transcript"),
    "response.output_text.done": ("assistant", "text"),
}


class BlobContainer:
    """The container in the app's storage account (azure-storage-blob, async, aiohttp underneath)."""

    def __init__(self, store: TranscriptStore, credential: object = None) -> None:
        """By connection string, or by the account's blob endpoint and the process's identity."""
        from azure.storage.blob.aio import ContainerClient

        options: dict[str, Any] = {
            "retry_total": 0,  # a retried append could write its block twice; the recorder retries with the next
            "connection_timeout": WRITE_TIMEOUT_SECONDS,
            "read_timeout": WRITE_TIMEOUT_SECONDS,
        }
        if store.storage:
            self._client = ContainerClient.from_connection_string(store.storage, store.container, **options)
        else:
            self._client = ContainerClient(store.endpoint or "", store.container, credential=credential, **options)  # type: ignore[arg-type]

    async def append(self, name: str, data: bytes) -> None:
        """Appends one block; makes the blob (and the container) the first time, never replacing one that exists:
        a supervisor re-attaching to a call continues its transcript."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        blob = self._client.get_blob_client(name)
        try:
            await blob.append_block(data)
            return
        except ResourceNotFoundError as error:
            if getattr(error, "error_code", None) == "ContainerNotFound":
                with contextlib.suppress(ResourceExistsError):
                    await self._client.create_container()
        with contextlib.suppress(ResourceExistsError):
            await blob.create_append_blob(match_condition=MatchConditions.IfMissing)
        await blob.append_block(data)

    async def aclose(self) -> None:
        await self._client.close()


class Recorder:
    """One call's transcript: lines in the order their events arrived, written in batches off the event path."""

    def __init__(self, container: BlobContainer, call_id: str, started_at: float, open_calls: set[Recorder]) -> None:
        self.container = container
        self.call_id = call_id
        self.name = f"{datetime.fromtimestamp(started_at, UTC):%Y/%m/%d}/{call_id}.jsonl"
        self.lines = 0  # kept (written or waiting)
        self.chars = 0
        self.dropped = 0  # past the cap
        self._open = open_calls
        self._pending: list[str] = []
        self._writing: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._failing = False
        self._closing: asyncio.Task[None] | None = None

    def observe(self, event: Mapping[str, Any]) -> None:
        """Keeps the words of a finished turn; ignores every other event. No I/O: at most it starts a write."""
        words = _words(event)
        if words is None or self._closing is not None:
            return
        role, item_id, text = words
        line = json.dumps({"at": _now(), "role": role, "itemId": item_id, "text": text}, ensure_ascii=False)
        if self.lines >= MAX_LINES or self.chars + len(line) > MAX_CHARS:
            if not self.dropped:
                log.warning(
                    "call %s: transcript at its cap (%d lines, %d characters); later lines are not kept",
                    self.call_id,
                    MAX_LINES,
                    MAX_CHARS,
                )
            self.dropped += 1
            return
        self.lines += 1
        self.chars += len(line)
        self._pending.append(line)
        if len(self._pending) >= BATCH_LINES and not self._failing:
            self._write()
        elif self._timer is None and self._writing is None:
            self._timer = asyncio.get_running_loop().call_later(BATCH_SECONDS, self._write)

    async def close(self) -> None:
        """The call is over: writes what is left. Waits for at most two bounded writes (the one in flight and the
        rest); never raises. Safe to call more than once."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._finish())
        await asyncio.shield(self._closing)

    async def _finish(self) -> None:
        self._cancel_timer()
        if self._writing is not None:
            await self._writing
        if self._pending:
            await self._flush()
        if self._pending:
            log.warning(
                "call %s: %d transcript lines could not be written and are lost", self.call_id, len(self._pending)
            )
        if self.dropped:
            log.warning("call %s: %d transcript lines past the cap were not kept", self.call_id, self.dropped)
        self._open.discard(self)

    def _write(self) -> None:
        """Starts writing what waits, unless a write is under way (which then takes the rest in turn)."""
        self._cancel_timer()
        if self._writing is None and self._pending:
            self._writing = asyncio.ensure_future(self._flush())
            self._writing.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writing = None
        if self._pending and self._closing is None:
            if len(self._pending) >= BATCH_LINES and not self._failing:
                self._write()
            elif self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(BATCH_SECONDS, self._write)

    async def _flush(self) -> None:
        batch = list(self._pending)
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
                await self.container.append(self.name, "".join(line + "\n" for line in batch).encode())
        except Exception as error:  # storage down, slow or refusing: kept for the next attempt
            if not self._failing:
                log.warning(
                    "call %s: transcript not written (%s); %d lines kept for the next attempt",
                    self.call_id,
                    _reason(error),
                    len(batch),
                )
            self._failing = True
            return
        del self._pending[: len(batch)]
        if self._failing:
            log.info("call %s: transcript written again", self.call_id)
            self._failing = False

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Transcripts:
    """One per process when transcripts are on: the container, shared by every call's recorder."""

    def __init__(self, container: BlobContainer) -> None:
        self.container = container
        self._open: set[Recorder] = set()

    def for_call(self, call_id: str, started_at: float) -> Recorder:
        """`started_at`: the call's start (seconds since the epoch, UTC), which names the blob's day folder."""
        if not CALL_ID.fullmatch(call_id):
            raise ValueError("not a call id")
        recorder = Recorder(self.container, call_id, started_at, self._open)
        self._open.add(recorder)
        return recorder

    async def aclose(self) -> None:
        """Shutting down: every open call's transcript written (bounded), then the client closed."""
        await asyncio.gather(*(recorder.close() for recorder in list(self._open)))
        await self.container.aclose()


class NoRecorder:
    def observe(self, event: Mapping[str, Any]) -> None:
        pass

    async def close(self) -> None:
        pass


class NoTranscripts:
    """Transcripts off (the default): nothing kept, nothing imported."""

    _recorder = NoRecorder()

    def for_call(self, call_id: str, started_at: float) -> NoRecorder:
        return self._recorder

    async def aclose(self) -> None:
        pass


NO_TRANSCRIPTS = NoTranscripts()


def open_transcripts(store: TranscriptStore, identity: Identity) -> Transcripts | NoTranscripts:
    """What the composition root keeps: by connection string (Azurite locally), else by the app's identity."""
    if store.mode != "blob":
        return NO_TRANSCRIPTS
    if not store.storage:
        identity.load()
    return Transcripts(BlobContainer(store, credential=None if store.storage else identity))


def _words(event: Mapping[str, Any]) -> tuple[str, str, str] | None:
    kind = event.get("type")
    picked = WORDS.get(kind) if isinstance(kind, str) else None
    if picked is None:
        return None
    role, field = picked
    text, item_id = event.get(field), event.get("item_id")
    if not isinstance(text, str) or not text.strip() or not isinstance(item_id, str):
        return None
    return role, item_id, text


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _reason(error: BaseException) -> str:
    """The kind of failure and the storage's status code, never its message (which may quote the request)."""
    status = getattr(error, "status_code", None)
    return f"{type(error).__name__} {status}" if status else type(error).__name__
