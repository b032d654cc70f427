"""`python -m localdev.lint` (`./dev lint`, and first in `./dev test`): the static checks, each run to the end.

ruff (lint, then format), mypy (its settings in pyproject.toml: --strict for the app, default checks elsewhere) and a
syntax check of the JavaScript the app serves and the tooling runs. Every check runs even after one fails, so one
run lists everything to fix; the exit status is 1 if any failed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
# The browser loads these as ES modules (<script type="module">, import); the local tooling's are CommonJS.
MODULES = sorted((TOP / "static").glob("*.js"))
SCRIPTS = sorted((TOP / "localdev").glob("*.cjs"))
INLINE_MODULE = re.compile(r"<script\s+type=\"module\">(.*?)</script>", re.S)


def python_checks() -> list[tuple[str, list[str]]]:
    return [
        ("ruff check", [sys.executable, "-m", "ruff", "check", "."]),
        ("ruff format --check", [sys.executable, "-m", "ruff", "format", "--check", "."]),
        ("mypy", [sys.executable, "-m", "mypy"]),
    ]


def _node_check(node: str, name: str, source: str, module: bool) -> str:
    """Node's syntax error for `source`, or "". Piped in, because `node --check file.js` decides by itself whether a
    file is a module and (Node 20) passes a broken ES module without a word."""
    mode = ["--input-type=module"] if module else []
    result = subprocess.run([node, *mode, "--check"], input=source, capture_output=True, text=True, timeout=60)
    return "" if result.returncode == 0 else f"{name}:\n{result.stderr.replace('[stdin]', name)}"


def javascript_sources() -> list[tuple[str, str, bool]]:
    """(name, source, is an ES module) of every file, and of each inline module script of static/*.html."""
    sources = [(str(p.relative_to(TOP)), p.read_text(encoding="utf-8"), True) for p in MODULES]
    sources += [(str(p.relative_to(TOP)), p.read_text(encoding="utf-8"), False) for p in SCRIPTS]
    for page in sorted((TOP / "static").glob("*.html")):
        for index, script in enumerate(INLINE_MODULE.findall(page.read_text(encoding="utf-8")), 1):
            sources.append((f"{page.relative_to(TOP)} (inline module {index})", script, True))
    return sources


def javascript_errors(sources: list[tuple[str, str, bool]]) -> list[str]:
    """The syntax error of each source that has one."""
    node = shutil.which("node")
    if node is None:
        return ["node is not installed, so the JavaScript was not checked: install Node.js 20 or later"]
    return [error for name, source, module in sources if (error := _node_check(node, name, source, module))]


def main() -> int:
    failed = []
    for name, command in python_checks():
        started = time.monotonic()
        print(f"--- {name}", flush=True)
        if subprocess.run(command, cwd=TOP).returncode:
            failed.append(name)
        print(f"    ({time.monotonic() - started:.1f} s)", flush=True)
    print("--- JavaScript syntax (node --check, as ES modules where the browser loads them so)", flush=True)
    sources = javascript_sources()
    errors = javascript_errors(sources)
    print("\n".join(errors) if errors else f"    {len(sources)} files and inline scripts parse", flush=True)
    if errors:
        failed.append("JavaScript syntax")
    print(f"Static checks failed: {', '.join(failed)}" if failed else "Static checks passed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
