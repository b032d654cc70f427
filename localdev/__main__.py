"""`python -m localdev`: run the function app locally, as `func start` would, on the same URLs.

With no Azure settings (environment or local.settings.json) it starts the local realtime emulator and
points the app at it, so the whole loop works on a fresh machine; with Azure settings it never does.
With no storage account (AzureWebJobsStorage empty or `UseDevelopmentStorage=true`) it starts Azurite, data in
`.azurite/`, so limits are shared as on Azure; without node or Azurite it runs with limits per instance.
Queue-triggered functions run against that storage as on Azure (docs/local-development.md); without it they
do not run, and the host says so once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .azurite import Azurite, AzuriteUnavailable

if TYPE_CHECKING:
    from realtime_proxy.static_files import StaticFiles

log = logging.getLogger("localdev")
TOP = Path(__file__).resolve().parent.parent
EMULATED_MODELS = "gpt-realtime, gpt-realtime-mini, gpt-realtime-2:reasoning, gpt-live-1:live"  # docs/models.md


def load_local_settings(path: Path) -> None:
    """Like `func start`: Values from local.settings.json, without overriding the real environment."""
    if path.is_file():
        for name, value in json.loads(path.read_text()).get("Values", {}).items():
            os.environ.setdefault(name, str(value))


def start_emulator() -> None:
    from .emulator import PeerHost
    from .fake_openai import FakeAzureOpenAI

    key = secrets.token_urlsafe(24)
    peers = PeerHost()
    emulator = FakeAzureOpenAI(
        api_key=key,
        deployments=("gpt-realtime", "gpt-realtime-mini"),
        peers=peers,  # the peers answer (GPT-Live sessions too), hang up, and share calls with sidebands
    )
    os.environ.update(AZURE_OPENAI_BASE_URL=emulator.url, AZURE_OPENAI_API_KEY=key, REALTIME_EMULATOR="true")
    os.environ.setdefault("REALTIME_DEPLOYMENTS", EMULATED_MODELS)
    os.environ.pop("AZURE_OPENAI_DEPLOYMENT", None)
    log.warning("No AZURE_OPENAI_BASE_URL set: using the local emulator at %s, not Azure.", emulator.url)


def start_storage() -> Azurite | None:
    """`UseDevelopmentStorage=true` means Azurite to `func start`; here, an Azurite of our own whose exact
    connection string the app gets. A real account (connection string or identity-based) is left alone."""
    configured = os.environ.get("AzureWebJobsStorage", "").strip()
    identity_based = any(name.startswith("AzureWebJobsStorage__") for name in os.environ)
    if identity_based or configured not in ("", "UseDevelopmentStorage=true"):
        return None
    try:
        azurite = Azurite(TOP / ".azurite").start()
    except AzuriteUnavailable as problem:
        os.environ.pop("AzureWebJobsStorage", None)
        log.warning("No storage: limits are per instance (%s).", problem)
        return None
    os.environ["AzureWebJobsStorage"] = azurite.connection_string
    log.info("Storage: Azurite on 127.0.0.1:%d, data in %s", azurite.port, azurite.folder)
    return azurite


def watch_static(files: StaticFiles, every: float = 1.0) -> None:
    """The app reads static/ once, as a deployed instance should; while developing, a changed file is served at
    once: the index is read again whenever a file's modification time or the set of files changes."""

    def state() -> list[tuple[str, int]]:
        return sorted((str(path), path.stat().st_mtime_ns) for path in files.root.rglob("*") if path.is_file())

    seen = state()
    while True:
        time.sleep(every)
        now = state()
        if now != seen:
            seen = now
            files.refresh()
            log.info("static/ changed: serving the new files")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "7071")))
    parser.add_argument("--no-storage", action="store_true", help="start no Azurite: limits per instance")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    load_local_settings(TOP / "local.settings.json")
    if not os.environ.get("AZURE_OPENAI_BASE_URL", "").strip():
        start_emulator()
    if args.no_storage and os.environ.get("AzureWebJobsStorage", "").strip() in ("", "UseDevelopmentStorage=true"):
        os.environ.pop("AzureWebJobsStorage", None)  # nothing would answer for it: limits per instance
    storage = None if args.no_storage else start_storage()

    from function_app import app, proxy

    if proxy.settings.problems:
        log.warning(
            "Not configured; /connect answers 503 not_configured until fixed: %s.", "; ".join(proxy.settings.problems)
        )
    elif not proxy.settings.emulator:
        log.info("Using Azure OpenAI at %s", proxy.settings.resource_url)

    from .host import serve

    keys = (os.environ.get("LOCAL_FUNCTION_KEY") or None, os.environ.get("LOCAL_ADMIN_KEY") or None)
    server = serve(app, args.host, args.port, *keys)
    print(f"Serving on http://{args.host}:{server.server_port}/", flush=True)
    threading.Thread(target=watch_static, args=(proxy.files,), name="static-watch", daemon=True).start()
    try:
        while True:
            time.sleep(3600)  # Ctrl-C interrupts a sleep on every OS; on Windows it cannot interrupt Event.wait()
    except KeyboardInterrupt:
        server.shutdown()
        server.app.close(proxy.aclose())  # type: ignore[attr-defined]
    finally:
        if storage:
            storage.stop()


if __name__ == "__main__":
    main()
