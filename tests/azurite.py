"""Azurite for tests: one per module (it takes seconds to start), and tables of its own for each test."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from localdev.azurite import Azurite
from tests import tools


def require_azurite() -> None:
    """Skips the test only where `./dev` could not install Azurite (no node or npm): any other failure fails it."""
    tools.azurite.require()


def started(folder: Path) -> Azurite:
    """A running Azurite with its data in `folder`."""
    require_azurite()
    return Azurite(folder).start()


@dataclass
class Storage:
    """The module's Azurite as one test sees it. Every table the test makes starts with `prefix`, so tests that
    share an Azurite never share a table. `azurite.stop()` / `start()` take storage away and bring it back."""

    azurite: Azurite
    prefix: str

    @property
    def connection_string(self) -> str:
        return self.azurite.connection_string

    def table(self, name: str) -> str:
        """A table name of this test's own (letters and digits, 3-63 characters, as Table Storage requires)."""
        return self.prefix + name


def new_prefix() -> str:
    return "t" + secrets.token_hex(4)
