"""`python -m localdev`: run the function app locally, as `func start` would, on the same URLs.

With no Azure settings (environment or local.settings.json) it starts the local realtime emulator and
points the app at it, so the whole loop works on a fresh machine; with Azure settings it never does.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import threading
from pathlib import Path

log = logging.getLogger("localdev")
TOP = Path(__file__).resolve().parent.parent


def load_local_settings(path: Path) -> None:
    """Like `func start`: Values from local.settings.json, without overriding the real environment."""
    if path.is_file():
        for name, value in json.loads(path.read_text()).get("Values", {}).items():
            os.environ.setdefault(name, str(value))


def start_emulator() -> None:
    from .fake_openai import FakeAzureOpenAI
    from .emulator import PeerHost

    key = secrets.token_urlsafe(24)
    emulator = FakeAzureOpenAI(api_key=key, answerer=PeerHost().answer)
    os.environ.update(AZURE_OPENAI_BASE_URL=emulator.url, AZURE_OPENAI_API_KEY=key, REALTIME_EMULATOR="true")
    os.environ.pop("AZURE_OPENAI_DEPLOYMENT", None)
    log.warning("No AZURE_OPENAI_BASE_URL set: using the local emulator at %s, not Azure.", emulator.url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "7071")))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    load_local_settings(TOP / "local.settings.json")
    if not os.environ.get("AZURE_OPENAI_BASE_URL", "").strip():
        start_emulator()

    from function_app import app, proxy

    if proxy.settings.problems:
        log.warning("Not configured; /connect answers 503 not_configured until fixed: %s.", "; ".join(proxy.settings.problems))
    elif not proxy.settings.emulator:
        log.info("Using Azure OpenAI at %s", proxy.settings.resource_url)

    from .host import serve

    server = serve(app, args.host, args.port, os.environ.get("LOCAL_FUNCTION_KEY") or None)
    print(f"Serving on http://{args.host}:{server.server_port}/", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
