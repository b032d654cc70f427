"""Search over the owner's documents: an embedded SQLite FTS5 index of a folder, or an Azure AI Search index.

The embedded index is Python's own `sqlite3` (FTS5, BM25 ranking, Porter stemming so "deploying" finds "deploy"),
built in memory on first use from the folder's `.md` and `.txt` files; it is rebuilt only by a new process (a deploy
restarts the app). The query never reaches the file system: it is cut to words, each quoted, so FTS syntax, quotes
and paths (`../../etc/passwd`) are plain words that match or not, never an error and never a file read. Only regular
files inside the folder are indexed; a link pointing out of it is skipped.

Azure AI Search (`azure-search-documents`, imported only when configured: ~130 ms, docs/tools.md) is queried with
the app's identity, the same words, simple syntax. Its index needs a searchable `content` field and, for the hit's
name, a `path` or `title` field.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

MAX_HITS = 5
MAX_QUERY_WORDS = 16
MAX_QUERY_CHARS = 1000
MAX_FILE_BYTES = 1024 * 1024  # a knowledge file is a page or two; a larger one is indexed up to here
SNIPPET_WORDS = 48  # enough for a step or two the assistant can read out
SUFFIXES = (".md", ".txt")
_WORD = re.compile(r"\w+")
# A spoken question ("how do I deploy this?") is mostly words every page has; ranking on them buries the one that
# matters. Dropped unless nothing else is left.
_STOP = (
    "a an and are can do does for from how i in is it me my of on or the this to what when where which who why with you"
)
STOP_WORDS = frozenset(_STOP.split())


def words(query: str) -> list[str]:
    """The query's words, at most MAX_QUERY_WORDS of them, without duplicates: the only part of it ever used."""
    found = list(dict.fromkeys(word[:64] for word in _WORD.findall(query[:MAX_QUERY_CHARS].lower())))
    return ([word for word in found if word not in STOP_WORDS] or found)[:MAX_QUERY_WORDS]


class LocalKnowledge:
    """The FTS5 index of one folder; safe to share between concurrent calls (queries run on worker threads)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def search(self, query: str) -> list[dict[str, str]]:
        terms = words(query)
        if not terms:
            return []
        return await asyncio.to_thread(self._search, " OR ".join(f'"{term}"' for term in terms))

    def _search(self, match: str) -> list[dict[str, str]]:
        with self._lock:
            db = self._db or self._build()
            rows = db.execute(
                "SELECT path, snippet(docs, 1, '', '', '…', ?) FROM docs WHERE docs MATCH ? ORDER BY bm25(docs) "
                "LIMIT ?",
                (SNIPPET_WORDS, match, MAX_HITS),
            ).fetchall()
        return [{"path": path, "snippet": " ".join(snippet.split())} for path, snippet in rows]

    def _build(self) -> sqlite3.Connection:
        db = sqlite3.connect(":memory:", check_same_thread=False)
        db.execute("CREATE VIRTUAL TABLE docs USING fts5(path UNINDEXED, body, tokenize='porter unicode61')")
        db.executemany("INSERT INTO docs (path, body) VALUES (?, ?)", self._documents())
        db.commit()
        self._db = db
        return db

    def _documents(self) -> list[tuple[str, str]]:
        root = self.folder.resolve()
        documents = []
        for path in sorted(root.rglob("*")):
            real = path.resolve()
            if path.suffix.lower() in SUFFIXES and real.is_file() and real.is_relative_to(root):
                with real.open("rb") as file:
                    text = file.read(MAX_FILE_BYTES).decode("utf-8", errors="replace")
                documents.append((path.relative_to(root).as_posix(), text))
        return documents


class AzureKnowledge:
    """An Azure AI Search index, queried with the app's identity (role: Search Index Data Reader)."""

    def __init__(self, endpoint: str, index: str, credential: AsyncTokenCredential) -> None:
        self.endpoint = endpoint
        self.index = index
        self.credential = credential

    async def search(self, query: str) -> list[dict[str, str]]:
        terms = words(query)
        if not terms:
            return []
        from azure.search.documents.aio import SearchClient

        # http only reaches here for a loopback endpoint (settings.py), as in the tests' fake of the service.
        options: dict[str, Any] = {} if self.endpoint.startswith("https://") else {"enforce_https": False}
        async with SearchClient(self.endpoint, self.index, self.credential) as client:
            results = await client.search(" ".join(terms), top=MAX_HITS, search_mode="any", **options)
            return [_hit(document) async for document in results]


def _hit(document: dict[str, Any]) -> dict[str, str]:
    name = document.get("path") or document.get("title") or document.get("id") or ""
    text = " ".join(str(document.get("content") or "").split())
    snippet = " ".join(text.split(" ")[:SNIPPET_WORDS])
    return {"path": str(name), "snippet": snippet + ("…" if snippet != text else "")}
