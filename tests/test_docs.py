"""The documentation holds together: README.md stays a short front door, every page under docs/ is reachable from it,
and every link to a local file or heading resolves (a page moved or a heading renamed breaks a test, not a reader)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
README_MAX_LINES = 150  # about two screens: what it is, the picture, the two commands, quick start, the way in
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(path: Path) -> str:
    """The Markdown outside code blocks and code spans, where a link is a link."""
    return CODE_SPAN.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))


def anchors(path: Path) -> set[str]:
    """The heading anchors GitHub generates: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors on its text
        slug = re.sub(r"[^\w\- ]", "", text.replace("`", "").strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def local_links(path: Path) -> list[str]:
    return [target for target in LINK.findall(prose(path)) if not re.match(r"[a-z][a-z0-9+.-]*:", target, re.I)]


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_local_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in local_links(page):
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / unquote(file_part)).resolve() if file_part else page
        if not linked.exists() or not linked.is_relative_to(ROOT):
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and unquote(anchor) not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(ROOT).as_posix()}")
    assert not broken, f"{page.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)


def test_the_readme_is_a_short_front_door_to_every_page() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into a page under docs/"
    linked = {(ROOT / unquote(target.partition("#")[0])).resolve() for target in local_links(README)}
    unlinked = [page.relative_to(ROOT).as_posix() for page in PAGES if page.resolve() not in linked]
    assert not unlinked, f"README.md's Documentation table does not link {unlinked}"


def test_the_readme_gives_the_two_commands_ci_runs() -> None:
    commands = README.read_text(encoding="utf-8")
    assert re.search(r"^\./dev run\b", commands, re.M) and re.search(r"^\./dev test\b", commands, re.M)
    assert re.search(r"^REQUIRE_TEST_TOOLS=1 \./dev test\b", (ROOT / ".ci" / "run").read_text(encoding="utf-8"), re.M)


def test_the_link_checker_catches_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## Kill switch\n\n## Kill switch\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#kill-switch-1) [gone](missing.md) `[code](missing.md)` [web](https://example.com)\n"
        "```\n[fenced](missing.md)\n```\n",
        encoding="utf-8",
    )
    assert local_links(page) == ["other.md#kill-switch-1", "missing.md"]
    assert anchors(tmp_path / "other.md") == {"other-page", "kill-switch", "kill-switch-1"}
