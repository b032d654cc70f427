"""`search_knowledge`: the embedded SQLite FTS5 index of knowledge/, hostile queries, and Azure AI Search through
`azure-search-documents` against a fake of its REST contract on a real socket, signed in with the app's identity
as Azure Functions provides it (IDENTITY_ENDPOINT). Never run against Azure AI Search itself."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from realtime_proxy.credentials import Identity
from realtime_proxy.knowledge import LocalKnowledge
from realtime_proxy.settings import ToolSettings
from realtime_proxy.toolcalls import Toolbox
from realtime_proxy.toolkit import REGISTRY
from tests.fake_search import FakeSearch
from tests.identity_endpoint import IdentityEndpoint
from tools.knowledge import FOLDER

DEFAULTS = ToolSettings()
SHIPPED = {path.name for path in FOLDER.glob("*.md")}


async def ask(query: object, settings: ToolSettings = DEFAULTS, credential: Any = None) -> dict[str, Any]:
    """The tool's output for one call of it through the loop, parsed."""
    box = Toolbox(REGISTRY.select(["search_knowledge"]), settings, credential)
    event = {
        "type": "response.done",
        "response": {
            "status": "completed",
            "output": [
                {
                    "type": "function_call",
                    "call_id": "fc_1",
                    "name": "search_knowledge",
                    "arguments": json.dumps({"query": query}),
                }
            ],
        },
    }
    events = await box.for_call("rtc").answer(event)
    return dict(json.loads(events[0]["item"]["output"]))


def search(query: object) -> dict[str, Any]:
    return asyncio.run(ask(query))


def test_the_shipped_knowledge_is_a_few_short_files_about_this_app() -> None:
    assert 3 <= len(SHIPPED) <= 5
    assert all(len((FOLDER / name).read_text(encoding="utf-8")) < 4000 for name in SHIPPED)


def test_how_do_i_deploy_this_finds_the_deploying_page_with_a_snippet() -> None:
    hits = search("how do I deploy this?")["hits"]
    assert hits[0]["path"] == "deploying.md"
    assert "azd" in " ".join(hit["snippet"] for hit in hits if hit["path"] == "deploying.md")
    assert search("session length limit")["hits"][0]["path"] == "limits.md"
    assert search("zebra crossing")["hits"] == [], "no match is an empty result"


@pytest.mark.parametrize(
    "query",
    [
        '"',
        'deploy" OR body:* NEAR(a b',
        "deploy AND NOT OR ^ * : ( ) {}",
        "'; DROP TABLE docs; --",
        "../../etc/passwd",
        "/etc/passwd",
        "..\\..\\windows\\win.ini",
        "file:///etc/passwd",
        "",
        "   ",
        "*",
        "\x00\x01",
        "deploy " * 4000,
        "日本語 العربية 🚀 e\u0301 ﷽",
    ],
)
def test_hostile_queries_never_error_and_never_find_anything_outside_knowledge(query: str) -> None:
    result = search(query)
    assert set(result) == {"hits"}, result
    assert {hit["path"] for hit in result["hits"]} <= SHIPPED
    assert "root:" not in json.dumps(result)


def test_a_query_too_long_to_be_arguments_is_an_error_output() -> None:
    assert search("x" * 40_000) == {"error": "The arguments are longer than 32000 characters."}
    assert search(["deploy"]) == {"error": "Invalid arguments: query must be string."}


def test_only_files_inside_the_folder_are_indexed(tmp_path: Path) -> None:
    folder = tmp_path / "knowledge"
    (folder / "nested").mkdir(parents=True)
    (folder / "nested" / "inside.md").write_text("The lighthouse keeper's notes.", encoding="utf-8")
    (folder / "ignored.pdf").write_text("lighthouse in a pdf", encoding="utf-8")
    (tmp_path / "outside.md").write_text("The lighthouse secret outside the folder.", encoding="utf-8")
    (folder / "link.md").symlink_to(tmp_path / "outside.md")
    (folder / "dir-link").symlink_to(tmp_path, target_is_directory=True)
    hits = asyncio.run(LocalKnowledge(folder).search("lighthouse secret"))
    assert [hit["path"] for hit in hits] == ["nested/inside.md"]


@pytest.fixture
def azure_search(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeSearch, IdentityEndpoint]]:
    service = FakeSearch(
        "handbook",
        [
            {"id": "1", "path": "ops/deploy.md", "content": "Deploy with azd up, then run the smoke test. " * 10},
            {"id": "2", "title": "Limits", "content": "Sessions last at most sixty minutes."},
        ],
    )
    identity = IdentityEndpoint(on_token=service.accepted_tokens.add)
    monkeypatch.setenv("IDENTITY_ENDPOINT", identity.url)
    monkeypatch.setenv("IDENTITY_HEADER", identity.header)
    yield service, identity
    identity.close()
    service.close()


def with_identity(service: FakeSearch, query: str, index: str = "handbook") -> dict[str, Any]:
    settings = ToolSettings(search_endpoint=service.url, search_index=index)

    async def run() -> dict[str, Any]:
        identity = Identity(None)
        try:
            return await ask(query, settings, identity)
        finally:
            await identity.close()

    return asyncio.run(run())


def test_with_azure_search_configured_the_index_is_queried_with_the_apps_identity(azure_search) -> None:
    service, identity = azure_search
    result = with_identity(service, 'deploy "azd" ../../etc')
    assert result["hits"][0]["path"] == "ops/deploy.md"
    assert result["hits"][0]["snippet"].startswith("Deploy with azd up") and result["hits"][0]["snippet"].endswith("…")
    (request,) = service.requests
    assert request.body["search"] == "deploy azd etc" and request.body["top"] == 5
    assert request.body["searchMode"] == "any"
    assert request.headers["Authorization"].removeprefix("Bearer ") in service.accepted_tokens
    assert identity.requests[0]["resource"] == "https://search.azure.com"
    assert with_identity(service, "sixty minutes")["hits"] == [
        {"path": "Limits", "snippet": "Sessions last at most sixty minutes."}
    ]


def test_an_azure_search_failure_is_an_error_output(azure_search) -> None:
    service, _ = azure_search
    assert with_identity(service, "deploy", index="missing") == {"error": "The tool failed."}
