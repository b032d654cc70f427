"""The JavaScript syntax check of `./dev lint`: it reads ES modules as modules, names the file, and passes the tree."""

from __future__ import annotations

from localdev.lint import javascript_errors, javascript_sources


def test_a_broken_es_module_is_reported_with_its_name() -> None:
    sources = [
        ("fine.js", "import { a } from './a.js';\nexport const b = await a;\n", True),  # only valid as a module
        ("broken.js", "import { a } from './a.js';\nexport const b = ;\n", True),
        ("script.cjs", "const a = require('a');\nmodule.exports = a;\n", False),
    ]
    (error,) = javascript_errors(sources)
    assert error.startswith("broken.js:") and "SyntaxError" in error and "fine.js" not in error


def test_every_shipped_script_and_inline_module_parses() -> None:
    sources = javascript_sources()
    names = [name for name, _, _ in sources]
    assert "static/app.js" in names and "static/embed-example.html (inline module 1)" in names
    assert javascript_errors(sources) == []
