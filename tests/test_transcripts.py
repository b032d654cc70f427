"""Call transcripts in a real Azurite blob service over loopback: the lines a call's events make, in its day's blob;
the caps; storage stopping or hanging mid-call without holding up the supervisor; the settings; nothing imported
while transcripts are off."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from realtime_proxy import transcripts
from realtime_proxy.credentials import Identity
from realtime_proxy.settings import TranscriptStore, load_settings
from realtime_proxy.transcripts import BATCH_LINES, MAX_CHARS, MAX_LINES, Recorder, Transcripts, open_transcripts
from tests.azurite import Storage
from tests.conftest import ROOT

STARTED = datetime(2026, 12, 6, 23, 59, 30, tzinfo=UTC).timestamp()  # a call started just before midnight
BLOB = "2026/12/06/{}.jsonl"  # ...is filed under the day it started, whenever its lines come


def user(item: str, words: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.input_audio_transcription.completed",
        "event_id": "event_u" + item,
        "item_id": item,
        "content_index": 0,
        "transcript": words,
    }


def assistant(item: str, words: str, kind: str = "response.output_audio_transcript.done") -> dict[str, Any]:
    field = "text" if kind == "response.output_text.done" else "transcript"
    return {
        "type": kind,
        "event_id": "event_a" + item,
        "response_id": "resp_" + item,
        "item_id": item,
        "output_index": 0,
        "content_index": 0,
        field: words,
    }


def settings_env(**env: str) -> dict[str, str]:
    return {"AZURE_OPENAI_BASE_URL": "https://example.openai.azure.com", "AZURE_OPENAI_API_KEY": "k" * 32, **env}


def blob_store(connection: str, container: str) -> TranscriptStore:
    """The store as the app reads it from its settings."""
    settings = load_settings(
        settings_env(
            AzureWebJobsStorage=connection,
            REALTIME_SERVER_TRANSCRIPTS="blob",
            REALTIME_TRANSCRIPTS_CONTAINER=container,
        )
    )
    assert settings.problems == ()
    return settings.transcripts


@pytest.fixture
def store(azurite: Storage) -> TranscriptStore:
    return blob_store(azurite.connection_string, azurite.prefix + "-transcripts")


@pytest.fixture
def words_logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO, logger="realtime_proxy.transcripts")
    yield caplog


def on(store: TranscriptStore) -> Transcripts:
    opened = open_transcripts(store, Identity(None))
    assert isinstance(opened, Transcripts)
    return opened


async def blob_lines(store: TranscriptStore, name: str) -> list[dict[str, Any]]:
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.blob.aio import ContainerClient

    assert store.storage
    async with ContainerClient.from_connection_string(store.storage, store.container) as client:
        try:
            data = await (await client.download_blob(name)).readall()
        except ResourceNotFoundError:
            return []
    return [json.loads(line) for line in data.decode().splitlines()]


async def blob_names(store: TranscriptStore) -> list[str]:
    from azure.storage.blob.aio import ContainerClient

    assert store.storage
    async with ContainerClient.from_connection_string(store.storage, store.container) as client:
        return [blob.name async for blob in client.list_blobs()]


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.05)


def observe_all(recorder: Recorder, events: list[dict[str, Any]]) -> float:
    """What the supervisor does with each event; returns the slowest single call, in seconds."""
    slowest = 0.0
    for event in events:
        started = time.perf_counter()
        recorder.observe(event)
        slowest = max(slowest, time.perf_counter() - started)
    return slowest


def test_a_calls_words_land_in_its_days_blob_in_order_with_roles(store: TranscriptStore) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], list[str]]:
        kept = on(store)
        recorder = kept.for_call("rtc_call1", STARTED)
        recorder.observe({"type": "session.updated", "session": {"instructions": "secret plans"}})
        recorder.observe({"type": "input_audio_buffer.speech_started", "item_id": "item_1", "audio_start_ms": 0})
        recorder.observe({"type": "conversation.item.input_audio_transcription.delta", "item_id": "i1", "delta": "Hel"})
        recorder.observe(user("item_1", "Hello, what's the weather?"))
        recorder.observe({"type": "response.output_audio_transcript.delta", "item_id": "item_2", "delta": "Sunny"})
        recorder.observe(assistant("item_2", "Sunny and mild — 18 °C."))
        recorder.observe({"type": "response.done", "response": {"usage": {"input_tokens": 10}}})
        recorder.observe(user("item_3", "   "))  # nothing said: no line
        recorder.observe({**user("item_4", "no item id"), "item_id": None})
        recorder.observe(assistant("item_5", "Typed answer.", kind="response.output_text.done"))
        recorder.observe(assistant("item_6", "beta name", kind="response.audio_transcript.done"))
        recorder.observe(user("item_7", "Thanks!"))
        await recorder.close()
        await kept.aclose()
        return await blob_lines(store, BLOB.format("rtc_call1")), await blob_names(store)

    lines, names = asyncio.run(scenario())
    assert names == [BLOB.format("rtc_call1")]
    assert [(line["role"], line["itemId"], line["text"]) for line in lines] == [
        ("user", "item_1", "Hello, what's the weather?"),
        ("assistant", "item_2", "Sunny and mild — 18 °C."),
        ("assistant", "item_5", "Typed answer."),
        ("user", "item_7", "Thanks!"),
    ]
    assert all(set(line) == {"at", "role", "itemId", "text"} for line in lines)
    times = [datetime.fromisoformat(line["at"]) for line in lines]
    assert times == sorted(times) and all(at.tzinfo is not None for at in times)


def test_lines_are_written_during_the_call_and_a_second_supervisor_continues_the_blob(store: TranscriptStore) -> None:
    name = BLOB.format("rtc_call2")

    async def scenario() -> list[dict[str, Any]]:
        kept = on(store)
        first = kept.for_call("rtc_call2", STARTED)
        observe_all(first, [user(f"item_{n}", f"line {n}") for n in range(BATCH_LINES)])

        async def batch_written() -> bool:
            return len(await blob_lines(store, name)) == BATCH_LINES

        await until(batch_written)  # a full batch goes out while the call goes on, before any close
        # The instance dies here (the recorder is never closed); a redelivered message re-attaches elsewhere.
        second = on(store)
        again = second.for_call("rtc_call2", STARTED)
        again.observe(assistant("item_last", "after the re-attach"))
        await again.close()
        await second.aclose()
        await kept.container.aclose()
        return await blob_lines(store, name)

    lines = asyncio.run(scenario())
    assert [line["text"] for line in lines] == [f"line {n}" for n in range(BATCH_LINES)] + ["after the re-attach"]


def test_caps_bound_a_calls_lines_and_characters_and_are_logged_once_without_words(
    store: TranscriptStore, words_logged: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        kept = on(store)
        many = kept.for_call("rtc_many", STARTED)
        observe_all(many, [user(f"i{n}", f"word{n}") for n in range(MAX_LINES + 50)])
        long = kept.for_call("rtc_long", STARTED)
        observe_all(long, [assistant(f"i{n}", "secretword " * 1000) for n in range(60)])
        await kept.aclose()  # shutting down closes every open call's recorder
        return await blob_lines(store, BLOB.format("rtc_many")), await blob_lines(store, BLOB.format("rtc_long"))

    many, long = asyncio.run(scenario())
    assert len(many) == MAX_LINES
    assert many[-1]["text"] == f"word{MAX_LINES - 1}"
    kept_chars = sum(len(json.dumps(line, ensure_ascii=False)) for line in long)
    line_chars = kept_chars // len(long)
    assert kept_chars <= MAX_CHARS < kept_chars + line_chars, "as many long lines as fit, and no more"
    messages = [record.getMessage() for record in words_logged.records]
    assert sum("rtc_many" in m and "cap" in m and "later lines are not kept" in m for m in messages) == 1
    assert any("rtc_many" in m and "50 transcript lines past the cap" in m for m in messages)
    assert any("rtc_long" in m and "cap" in m for m in messages)
    assert not any("word" in m for m in messages), "a log line carried transcript text"


def test_storage_stopped_mid_call_never_holds_up_the_supervisor_and_loses_nothing_it_can_keep(
    azurite: Storage, store: TranscriptStore, words_logged: pytest.LogCaptureFixture
) -> None:
    name = BLOB.format("rtc_outage")

    async def scenario() -> tuple[float, float, list[dict[str, Any]]]:
        kept = on(store)
        recorder = kept.for_call("rtc_outage", STARTED)
        observe_all(recorder, [user(f"before{n}", f"before {n}") for n in range(BATCH_LINES)])

        async def first_batch_written() -> bool:
            return len(await blob_lines(store, name)) == BATCH_LINES

        await until(first_batch_written)
        azurite.azurite.stop()
        slowest = observe_all(recorder, [user(f"during{n}", f"during {n}") for n in range(3 * BATCH_LINES)])

        async def failure_logged() -> bool:
            return any("rtc_outage" in r.getMessage() and "not written" in r.getMessage() for r in words_logged.records)

        await until(failure_logged)
        azurite.azurite.start()
        started = time.monotonic()
        await recorder.close()  # the call ends once storage is back: what waited is written now
        closing = time.monotonic() - started
        await kept.aclose()
        return slowest, closing, await blob_lines(store, name)

    slowest, closing, lines = asyncio.run(scenario())
    assert slowest < 0.05, f"observe took {slowest:.3f} s with storage down"
    assert closing < 2 * transcripts.WRITE_TIMEOUT_SECONDS
    texts = [line["text"] for line in lines]
    assert texts == [f"before {n}" for n in range(BATCH_LINES)] + [f"during {n}" for n in range(3 * BATCH_LINES)]
    messages = [record.getMessage() for record in words_logged.records]
    assert sum("not written" in m for m in messages) == 1, "one line per outage, not one per attempt"
    assert any("rtc_outage" in m and "written again" in m for m in messages)
    assert not any("before " in m or "during " in m for m in messages), "a log line carried transcript text"


def test_storage_down_when_the_call_ends_costs_the_supervisor_little_and_says_what_was_lost(
    azurite: Storage, store: TranscriptStore, words_logged: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> float:
        kept = on(store)
        recorder = kept.for_call("rtc_down", STARTED)
        azurite.azurite.stop()
        observe_all(recorder, [user(f"i{n}", f"lost {n}") for n in range(5)])
        started = time.monotonic()
        await recorder.close()
        await kept.aclose()
        return time.monotonic() - started

    closing = asyncio.run(scenario())
    assert closing < transcripts.WRITE_TIMEOUT_SECONDS
    messages = [record.getMessage() for record in words_logged.records]
    assert any("rtc_down" in m and "5 transcript lines could not be written" in m for m in messages)
    assert not any("lost " in m for m in messages)


def test_storage_that_accepts_and_never_answers_is_given_up_on_within_the_bound(
    words_logged: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as silent:  # a real listener that never answers: a hung storage front end
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        connection = (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
        )
        store = blob_store(connection, "transcripts")

        async def scenario() -> tuple[float, float]:
            kept = on(store)
            recorder = kept.for_call("rtc_hung", STARTED)
            slowest = observe_all(recorder, [user(f"i{n}", f"said {n}") for n in range(BATCH_LINES + 3)])
            started = time.monotonic()
            await recorder.close()  # one write in flight, then one more for the rest: each bounded
            closing = time.monotonic() - started
            await kept.aclose()
            return slowest, closing

        slowest, closing = asyncio.run(scenario())
    assert slowest < 0.05
    assert closing < 2 * transcripts.WRITE_TIMEOUT_SECONDS + 1.0
    messages = [record.getMessage() for record in words_logged.records]
    assert any("rtc_hung" in m and "not written (TimeoutError)" in m for m in messages)
    assert any("rtc_hung" in m and f"{BATCH_LINES + 3} transcript lines could not be written" in m for m in messages)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"REALTIME_SERVER_TRANSCRIPTS": "blob"}, "REALTIME_SERVER_TRANSCRIPTS=blob needs a storage account"),
        ({"REALTIME_SERVER_TRANSCRIPTS": "files"}, "REALTIME_SERVER_TRANSCRIPTS must be one of: off, blob"),
        ({"REALTIME_TRANSCRIPTS_CONTAINER": "Transcripts"}, "REALTIME_TRANSCRIPTS_CONTAINER must be 3-63"),
        ({"REALTIME_TRANSCRIPTS_CONTAINER": "call--logs"}, "REALTIME_TRANSCRIPTS_CONTAINER must be 3-63"),
        ({"REALTIME_TRANSCRIPTS_CONTAINER": "tx"}, "REALTIME_TRANSCRIPTS_CONTAINER must be 3-63"),
        ({"REALTIME_TRANSCRIPTS_CONTAINER": "logs-"}, "REALTIME_TRANSCRIPTS_CONTAINER must be 3-63"),
        ({"REALTIME_TRANSCRIPTS_CONTAINER": "$logs"}, "REALTIME_TRANSCRIPTS_CONTAINER must be 3-63"),
    ],
)
def test_bad_transcript_settings_are_not_configured_naming_the_setting(env: dict[str, str], problem: str) -> None:
    settings = load_settings(settings_env(**env))
    assert not settings.configured
    assert [p for p in settings.problems if p.startswith(problem)], settings.problems
    assert settings.transcripts.mode == "off"
    assert not any(value in p for p in settings.problems for value in env.values() if value != "blob")


def test_transcript_settings_default_off_and_follow_azurewebjobsstorage() -> None:
    assert load_settings(settings_env()).transcripts == TranscriptStore()
    connection = load_settings(
        settings_env(AzureWebJobsStorage="UseDevelopmentStorage=true", REALTIME_SERVER_TRANSCRIPTS="BLOB")
    )
    assert connection.problems == ()
    assert connection.transcripts == TranscriptStore("blob", "transcripts", storage="UseDevelopmentStorage=true")
    by_name = load_settings(
        settings_env(AzureWebJobsStorage__accountName="stabc123", REALTIME_SERVER_TRANSCRIPTS="blob")
    ).transcripts
    assert by_name == TranscriptStore("blob", "transcripts", endpoint="https://stabc123.blob.core.windows.net")
    by_uri = load_settings(
        settings_env(
            AzureWebJobsStorage__blobServiceUri="https://blobs.example.net",
            AzureWebJobsStorage__accountName="stabc123",
            REALTIME_SERVER_TRANSCRIPTS="blob",
            REALTIME_TRANSCRIPTS_CONTAINER="call-transcripts-2",
        )
    ).transcripts
    assert by_uri == TranscriptStore("blob", "call-transcripts-2", endpoint="https://blobs.example.net")
    off = load_settings(settings_env(AzureWebJobsStorage="UseDevelopmentStorage=true")).transcripts
    assert off == TranscriptStore(), "off unless asked for, even with a storage account"


def imported_after(env: dict[str, str]) -> bool:
    """Whether a fresh process that sets transcripts up from `env` and records a call imported the blob SDK."""
    script = f"""
import asyncio, sys
from realtime_proxy.credentials import Identity
from realtime_proxy.settings import load_settings
from realtime_proxy.transcripts import open_transcripts

async def call():
    kept = open_transcripts(load_settings({env!r}).transcripts, Identity(None))
    recorder = kept.for_call("rtc_quiet", 0)
    recorder.observe({user("item_1", "hello")!r})
    await recorder.close()
    await kept.aclose()

asyncio.run(call())
print("azure.storage.blob" in sys.modules)
"""
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout.split()[-1] == "True"


def test_transcripts_off_import_nothing_of_the_blob_sdk(azurite: Storage) -> None:
    storage = {"AzureWebJobsStorage": azurite.connection_string}
    assert not imported_after(settings_env(**storage))
    assert imported_after(settings_env(REALTIME_SERVER_TRANSCRIPTS="blob", **storage)), "the check can see it"
