"""App settings, read and validated once per process.

A bad setting must not stop the app from starting (the page still serves), so problems are collected
and `/connect` reports them as `not_configured`, naming the setting but never its value.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

VOICES: tuple[str, ...] = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
INSTRUCTION_MODES: tuple[str, ...] = ("append", "replace", "ignore")
TURN_DETECTION_TYPES: tuple[str, ...] = ("server_vad", "semantic_vad", "none")
MODEL_KINDS: tuple[str, ...] = ("realtime", "reasoning", "live")
REASONING_EFFORTS: tuple[str, ...] = ("minimal", "low", "medium", "high")
DEFAULT_INSTRUCTIONS = "You are a helpful, friendly voice assistant. Keep answers short and conversational."
_NOT_A_TOKEN = re.compile(r"[\s\x00-\x1f\x7f]")
_PLACEHOLDER = re.compile(r"<[^<>]*>")
_DEPLOYMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # what Azure accepts as a deployment name


@dataclass(frozen=True)
class Deployment:
    """A deployment the owner offers (REALTIME_DEPLOYMENTS): `realtime`, `reasoning` (takes
    `session.reasoning.effort`) or `live` (GPT-Live, whose sessions only the server creates)."""

    name: str
    kind: str = "realtime"

    @property
    def efforts(self) -> tuple[str, ...] | None:
        return REASONING_EFFORTS if self.kind == "reasoning" else None


@dataclass(frozen=True)
class SessionPolicy:
    """What the server decides about every session, whatever the caller asks for."""

    default_voice: str = "marin"
    allowed_voices: tuple[str, ...] = VOICES
    instructions: str = DEFAULT_INSTRUCTIONS
    instructions_mode: str = "append"
    max_instructions_chars: int = 4000
    transcription_model: str | None = "whisper-1"
    turn_detection: str = "server_vad"
    turn_detection_choosable: bool = False  # the page may offer push-to-talk (manual turns) instead
    secret_ttl_seconds: int = 600


@dataclass(frozen=True)
class Limits:
    """Bounds on what a request may carry and how long a `/connect` may take."""

    max_body_bytes: int = 64 * 1024
    max_header_bytes: int = 16 * 1024
    max_sdp_bytes: int = 32 * 1024
    connect_timeout: float = 3.05
    read_timeout: float = 10.0
    deadline_seconds: float = 25.0
    rate_limit_per_minute: float = 30.0
    rate_limit_burst: int = 10


@dataclass(frozen=True)
class SharedLimits:
    """Limits for the whole app, kept in its own storage account (see realtime_proxy/admission.py)."""

    storage: str | None = field(default=None, repr=False)  # AzureWebJobsStorage connection string
    storage_endpoint: str | None = None  # identity-based: the account's table endpoint
    table: str = "realtimelimits"  # two apps sharing one storage account need two names
    app_rate_per_minute: int = 0
    max_active_sessions: int = 0
    max_active_sessions_per_client: int = 0
    max_session_seconds: int = 0  # 0: the service's own limit (60 minutes)
    fail_mode: str = "closed"


@dataclass(frozen=True)
class Supervision:
    """The server's part in a live call after `/connect` answers (realtime_proxy/supervisor.py)."""

    mode: str = "off"  # off | observe | enforce; the default is enforce when the app has a storage account
    queue: str = "realtime-calls"  # the Storage queue that hands each admitted call to a supervisor
    strikes: int = 3  # enforce: the violation that hangs the call up instead of restoring the session
    warning_seconds: int = 30  # how long before the planned end the call is told it is ending
    prices: dict[str, dict[str, float]] | None = None  # REALTIME_PRICES; None: usage.EXAMPLE_PRICES


@dataclass(frozen=True)
class ToolSettings:
    """Server-run function tools (docs/tools.md): which are enabled and the bounds on every call of one."""

    enabled: tuple[str, ...] | None = None  # REALTIME_TOOLS; None: every registered tool
    timeout_seconds: float = 10.0
    output_max_chars: int = 4000
    max_calls: int = 20  # per live call; per response at most min(this, MAX_CALLS_PER_RESPONSE in toolcalls.py)
    search_endpoint: str | None = None  # Azure AI Search instead of the embedded index of knowledge/
    search_index: str | None = None
    live_delegate: str | None = None  # REALTIME_LIVE_DELEGATE_MODEL: the Responses deployment GPT-Live delegates to


@dataclass(frozen=True)
class TranscriptStore:
    """Where each call's transcript goes (realtime_proxy/transcripts.py): nowhere unless the owner says `blob`."""

    mode: str = "off"  # off | blob
    container: str = "transcripts"
    storage: str | None = field(default=None, repr=False)  # AzureWebJobsStorage connection string
    endpoint: str | None = None  # identity-based: the account's blob endpoint


@dataclass(frozen=True)
class Settings:
    resource_url: str | None = None
    deployment: str = "gpt-realtime"
    deployments: tuple[Deployment, ...] = (Deployment("gpt-realtime"),)
    default_model: str = "gpt-realtime"
    api_key: str | None = field(default=None, repr=False)
    managed_identity_client_id: str | None = None
    webrtc_filter: bool = False
    connect_auth_level: str = "anonymous"
    allowed_origins: tuple[str, ...] = ()
    emulator: bool = False
    proxy: str | None = None  # the proxy to the resource, chosen once as `requests` would (proxy_for)
    ca_bundle: str | None = None  # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE: the CA file for TLS to the resource
    policy: SessionPolicy = SessionPolicy()
    limits: Limits = Limits()
    shared: SharedLimits = SharedLimits()
    supervision: Supervision = Supervision()
    tools: ToolSettings = ToolSettings()
    transcripts: TranscriptStore = TranscriptStore()
    problems: tuple[str, ...] = ()

    @property
    def configured(self) -> bool:
        return not self.problems

    def endpoint(self, name: str, api: str = "realtime") -> str:
        return f"{self.resource_url}/openai/v1/{api}/{name}"

    def model(self, name: str) -> Deployment | None:
        return next((d for d in self.deployments if d.name == name), None)


def normalize_base_url(raw: str) -> str:
    """Reduce every spelling users paste (`…/openai`, `…/openai/v1/`, trailing slash) to the bare resource URL."""
    parts = urlsplit(raw.strip())
    loopback = _is_loopback(parts.hostname)
    if parts.scheme not in ("https", "http") or not parts.hostname or (parts.scheme == "http" and not loopback):
        raise ValueError("must be an https:// URL such as https://my-resource.openai.azure.com")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or parts.netloc.endswith(":"):
        raise ValueError("has a port that is not a number from 1 to 65535")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("must not carry a query, fragment or credentials")
    path = parts.path.rstrip("/")
    for suffix in ("/openai/v1", "/openai"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    return f"{parts.scheme}://{parts.netloc}{path}"


def proxy_for(url: str, env: Mapping[str, str]) -> str | None:
    """The proxy `requests` would choose for this URL (HTTPS_PROXY/HTTP_PROXY/ALL_PROXY, NO_PROXY with host
    suffixes and CIDR ranges), read once at start-up: the resource URL is fixed, so per-request scans of
    the environment would only cost time. Names as urllib reads them: any case, a lowercase one wins."""
    proxies: dict[str, str] = {}
    for name, value in env.items():
        if value and name.lower().endswith("_proxy"):
            proxies[name.lower()[:-6]] = value
    for name, value in env.items():
        if name.endswith("_proxy") and name == name.lower():
            proxies[name[:-6]] = value
    proxies = {scheme: value for scheme, value in proxies.items() if value}
    parts = urlsplit(url)
    host = parts.hostname or ""
    no_proxy = [entry.strip() for entry in proxies.get("no", "").split(",") if entry.strip()]
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]  # in CPython; typeshed omits it
    if bypass(host, proxies) or _in_cidr(host, no_proxy):
        return None
    return proxies.get(parts.scheme) or proxies.get("all")


def _in_cidr(host: str, entries: list[str]) -> bool:
    try:
        address = ipaddress.ip_address(host)
        return any("/" in entry and address in ipaddress.ip_network(entry, strict=False) for entry in entries)
    except ValueError:
        return False


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _plain(number: float) -> str:
    return str(int(number)) if number == int(number) else str(number)


class _Reader:
    """Reads typed values from the environment, noting each bad one by name."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.env.get(name, "").strip()
        return value or default

    def token(self, name: str, default: str | None = None) -> str | None:
        """A one-line value (URL, key, name): a pasted newline or the example file's `<placeholder>` is a
        problem named here, before it can reach an HTTP header or a log line."""
        value = self.text(name)
        return default if value is None or self._not_a_token(name, value) else value

    def _not_a_token(self, name: str, value: str) -> bool:
        if _PLACEHOLDER.search(value):
            self.problems.append(f"{name} still holds the placeholder from local.settings.json.example")
        elif _NOT_A_TOKEN.search(value):
            self.problems.append(f"{name} must be one line without spaces or control characters")
        else:
            return False
        return True

    def number(self, name: str, default: float, low: float, high: float, off: float | None = None) -> float:
        """A finite number in [low, high], or exactly `off` (the value that turns a feature off)."""
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if value == off:
            return value
        if not low <= value <= high:
            either = f"{_plain(off)}, or " if off is not None else ""
            self.problems.append(f"{name} must be {either}a number from {_plain(low)} to {_plain(high)}")
            return default
        return value

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = (self.text(name) or default).lower()
        if value not in allowed:
            self.problems.append(f"{name} must be one of: {', '.join(allowed)}")
            return default
        return value

    def flag(self, name: str) -> bool:
        return self.choice(name, "false", ("true", "false", "1", "0", "yes", "no")) in ("true", "1", "yes")

    def items(self, name: str) -> tuple[str, ...]:
        items = tuple(item.strip() for item in (self.text(name) or "").split(",") if item.strip())
        return () if any(self._not_a_token(name, item) for item in items) else items


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    read = _Reader(os.environ if env is None else env)
    resource_url = None
    raw_url = read.token("AZURE_OPENAI_BASE_URL")
    if read.text("AZURE_OPENAI_BASE_URL") is None:
        read.problems.append("AZURE_OPENAI_BASE_URL is not set")
    elif raw_url is not None:
        try:
            resource_url = normalize_base_url(raw_url)
        except ValueError as exc:
            read.problems.append(f"AZURE_OPENAI_BASE_URL {exc}")
    shared = _read_shared(read)
    supervision = _read_supervision(read, bool(shared.storage or shared.storage_endpoint))
    transcripts = _read_transcripts(read, shared)
    if transcripts.mode != "off" and supervision.mode == "off":
        read.problems.append(
            "REALTIME_SERVER_TRANSCRIPTS=blob needs a supervisor (REALTIME_SUPERVISOR observe or enforce)"
        )
    deployment = read.token("AZURE_OPENAI_DEPLOYMENT", "gpt-realtime") or "gpt-realtime"
    deployments = _read_deployments(read, deployment)
    names = [d.name for d in deployments]
    return Settings(
        resource_url=resource_url,
        deployment=deployment,
        deployments=deployments,
        default_model=deployment if deployment in names else names[0],
        api_key=read.token("AZURE_OPENAI_API_KEY"),
        managed_identity_client_id=read.token("AZURE_CLIENT_ID"),
        webrtc_filter=read.flag("REALTIME_WEBRTC_FILTER"),
        connect_auth_level=read.choice("CONNECT_AUTH_LEVEL", "anonymous", ("anonymous", "function")),
        allowed_origins=tuple(origin.rstrip("/").lower() for origin in read.items("ALLOWED_ORIGINS")),
        emulator=read.flag("REALTIME_EMULATOR"),
        proxy=proxy_for(resource_url, read.env) if resource_url else None,
        ca_bundle=read.text("REQUESTS_CA_BUNDLE") or read.text("CURL_CA_BUNDLE"),
        policy=_read_policy(read),
        limits=_read_limits(read),
        shared=shared,
        supervision=supervision,
        tools=_read_tools(read),
        transcripts=transcripts,
        problems=tuple(read.problems),
    )


def _read_deployments(read: _Reader, deployment: str) -> tuple[Deployment, ...]:
    """REALTIME_DEPLOYMENTS: `name` or `name:kind`, comma-separated; unset, AZURE_OPENAI_DEPLOYMENT alone. A bad
    entry is named by its position, never quoted (a pasted key is one line of letters and digits too)."""
    offered: list[Deployment] = []
    for number, item in enumerate(read.items("REALTIME_DEPLOYMENTS"), 1):
        name, colon, kind = item.partition(":")
        kind = kind.lower() if colon else "realtime"
        if not _DEPLOYMENT_NAME.fullmatch(name):
            read.problems.append(
                f"REALTIME_DEPLOYMENTS entry {number} is not a deployment name (1-64 letters, digits, '.', '_', '-')"
            )
        elif kind not in MODEL_KINDS:
            kinds = ", ".join(MODEL_KINDS)
            read.problems.append(f"REALTIME_DEPLOYMENTS entry {number} must have no kind or one of: {kinds}")
        elif any(d.name == name for d in offered):
            read.problems.append(f"REALTIME_DEPLOYMENTS entry {number} repeats an earlier deployment")
        else:
            offered.append(Deployment(name, kind))
    return tuple(offered) or (Deployment(deployment),)


def _read_policy(read: _Reader) -> SessionPolicy:
    voices = tuple(v.lower() for v in read.items("REALTIME_ALLOWED_VOICES")) or VOICES
    unknown = [v for v in voices if v not in VOICES]
    if unknown:
        read.problems.append(f"REALTIME_ALLOWED_VOICES may only name: {', '.join(VOICES)}")
        voices = VOICES
    default_voice = read.choice("REALTIME_DEFAULT_VOICE", "marin" if "marin" in voices else voices[0], voices)
    transcription = read.token("REALTIME_TRANSCRIPTION_MODEL", "whisper-1")
    return SessionPolicy(
        default_voice=default_voice,
        allowed_voices=voices,
        instructions=read.text("REALTIME_INSTRUCTIONS", DEFAULT_INSTRUCTIONS) or DEFAULT_INSTRUCTIONS,
        instructions_mode=read.choice("REALTIME_INSTRUCTIONS_MODE", "append", INSTRUCTION_MODES),
        max_instructions_chars=int(read.number("REALTIME_MAX_INSTRUCTIONS_CHARS", 4000, 0, 32000)),
        transcription_model=None if transcription and transcription.lower() == "none" else transcription,
        turn_detection=read.choice("REALTIME_TURN_DETECTION", "server_vad", TURN_DETECTION_TYPES),
        turn_detection_choosable=read.flag("REALTIME_TURN_DETECTION_CHOOSABLE"),
        secret_ttl_seconds=int(read.number("REALTIME_SESSION_TTL_SECONDS", 600, 10, 7200)),
    )


def _read_limits(read: _Reader) -> Limits:
    return Limits(
        max_body_bytes=int(read.number("MAX_BODY_BYTES", 64 * 1024, 1024, 1024 * 1024)),
        max_sdp_bytes=int(read.number("MAX_SDP_BYTES", 32 * 1024, 1024, 512 * 1024)),
        max_header_bytes=int(read.number("MAX_HEADER_BYTES", 16 * 1024, 1024, 64 * 1024)),
        connect_timeout=read.number("UPSTREAM_CONNECT_TIMEOUT_SECONDS", 3.05, 0.1, 10),
        read_timeout=read.number("UPSTREAM_READ_TIMEOUT_SECONDS", 10.0, 0.1, 25),
        deadline_seconds=read.number("CONNECT_DEADLINE_SECONDS", 25.0, 1, 28),
        rate_limit_per_minute=read.number("RATE_LIMIT_PER_MINUTE", 30, 1, 100000, off=0),
        rate_limit_burst=int(read.number("RATE_LIMIT_BURST", 10, 1, 100000)),
    )


def _read_shared(read: _Reader) -> SharedLimits:
    """AzureWebJobsStorage as the Functions host reads it: a connection string (UseDevelopmentStorage=true is
    Azurite), or identity-based `__accountName` / `__tableServiceUri`."""
    storage = _storage_connection(read)
    account = read.token("AzureWebJobsStorage__accountName")
    endpoint = read.token("AzureWebJobsStorage__tableServiceUri") or (
        f"https://{account}.table.core.windows.net" if account else None
    )
    return SharedLimits(
        storage=storage,
        storage_endpoint=None if storage else endpoint,
        table=_table_name(read),
        app_rate_per_minute=int(read.number("APP_RATE_LIMIT_PER_MINUTE", 0, 1, 1_000_000, off=0)),
        max_active_sessions=int(read.number("MAX_ACTIVE_SESSIONS", 0, 1, 100_000, off=0)),
        max_active_sessions_per_client=int(read.number("MAX_ACTIVE_SESSIONS_PER_CLIENT", 0, 1, 1000, off=0)),
        max_session_seconds=int(read.number("REALTIME_MAX_SESSION_SECONDS", 0, 10, 3600, off=0)),
        fail_mode=read.choice("LIMITS_FAIL_MODE", "closed", ("closed", "open")),
    )


def _read_supervision(read: _Reader, storage: bool) -> Supervision:
    """Supervision needs the queue and the ledger in the app's storage account: without one it is off, and asking
    for it is a problem named at /connect rather than calls nobody supervises."""
    mode = read.choice("REALTIME_SUPERVISOR", "enforce" if storage else "off", ("off", "observe", "enforce"))
    if mode != "off" and not storage:
        read.problems.append(f"REALTIME_SUPERVISOR={mode} needs a storage account (AzureWebJobsStorage)")
        mode = "off"
    queue = read.token("REALTIME_SUPERVISOR_QUEUE", "realtime-calls") or "realtime-calls"
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?!-)){1,61}[a-z0-9]", queue):
        read.problems.append("REALTIME_SUPERVISOR_QUEUE must be 3-63 lowercase letters, digits and single hyphens")
        queue = "realtime-calls"
    return Supervision(
        mode=mode,
        queue=queue,
        strikes=int(read.number("REALTIME_POLICY_STRIKES", 3, 1, 100)),
        warning_seconds=int(read.number("REALTIME_END_WARNING_SECONDS", 30, 0, 600)),
        prices=_prices(read),
    )


PRICE_KINDS = ("textIn", "cachedTextIn", "audioIn", "cachedAudioIn", "textOut", "audioOut")


def _prices(read: _Reader) -> dict[str, dict[str, float]] | None:
    """REALTIME_PRICES: USD per 1M tokens per deployment, `{"my-deployment": {"textIn": 4, …}}` with every kind."""
    raw = read.text("REALTIME_PRICES")
    if raw is None:
        return None
    try:
        table = json.loads(raw)
    except ValueError:
        table = None
    if isinstance(table, dict) and all(
        isinstance(prices, dict)
        and set(prices) == set(PRICE_KINDS)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1e6 for v in prices.values())
        for prices in table.values()
    ):
        return {str(name): {kind: float(v) for kind, v in prices.items()} for name, prices in table.items()}
    read.problems.append(
        "REALTIME_PRICES must be JSON naming deployments, each with " + ", ".join(PRICE_KINDS) + " (USD per 1M tokens)"
    )
    return None


def _read_tools(read: _Reader) -> ToolSettings:
    """Whether REALTIME_TOOLS names registered tools is checked where the registry is known (Registry.select)."""
    named = read.items("REALTIME_TOOLS")
    endpoint, index = read.token("AZURE_SEARCH_ENDPOINT"), read.token("AZURE_SEARCH_INDEX")
    if endpoint is not None:
        try:
            endpoint = normalize_base_url(endpoint)
        except ValueError:
            read.problems.append(
                "AZURE_SEARCH_ENDPOINT must be an https:// URL such as https://my-search.search.windows.net"
            )
            endpoint = index = None
    if (endpoint is None) != (index is None):
        read.problems.append("AZURE_SEARCH_ENDPOINT and AZURE_SEARCH_INDEX are set together or not at all")
    delegate = read.token("REALTIME_LIVE_DELEGATE_MODEL")
    if delegate is not None and not _DEPLOYMENT_NAME.fullmatch(delegate):
        read.problems.append(
            "REALTIME_LIVE_DELEGATE_MODEL is not a deployment name (1-64 letters, digits, '.', '_', '-')"
        )
        delegate = None
    return ToolSettings(
        enabled=None if not named else () if [name.lower() for name in named] == ["none"] else named,
        timeout_seconds=read.number("REALTIME_TOOL_TIMEOUT_SECONDS", 10, 0.1, 60),
        output_max_chars=int(read.number("REALTIME_TOOL_OUTPUT_MAX_CHARS", 4000, 100, 100_000)),
        max_calls=int(read.number("REALTIME_MAX_TOOL_CALLS", 20, 1, 1000)),
        search_endpoint=endpoint if index else None,
        search_index=index if endpoint else None,
        live_delegate=delegate,
    )


def _storage_connection(read: _Reader) -> str | None:
    """A connection string the storage SDK can use, checked here so a malformed one is `not_configured` like any
    other setting instead of an error at import that would take the whole app (the page included) down."""
    value = read.token("AzureWebJobsStorage")
    if value is None or value.rstrip(";").lower() == "usedevelopmentstorage=true":
        return value
    pairs = dict(part.split("=", 1) for part in value.split(";") if "=" in part)
    keyed = pairs.get("AccountName") and re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", pairs.get("AccountKey", ""))
    signed = pairs.get("SharedAccessSignature") and (pairs.get("AccountName") or pairs.get("TableEndpoint"))
    if all("=" in part for part in value.split(";") if part) and (keyed or signed):
        return value
    read.problems.append(
        "AzureWebJobsStorage is not a storage connection string (AccountName and AccountKey, a SharedAccessSignature, "
        "or UseDevelopmentStorage=true)"
    )
    return None


def _table_name(read: _Reader) -> str:
    name = read.token("LIMITS_TABLE", "realtimelimits") or "realtimelimits"
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{2,62}", name):
        read.problems.append("LIMITS_TABLE must be 3-63 letters and digits, starting with a letter")
        return "realtimelimits"
    return name


def _read_transcripts(read: _Reader, shared: SharedLimits) -> TranscriptStore:
    """The blob endpoint as the Functions host reads AzureWebJobsStorage (`__blobServiceUri` or `__accountName`);
    asking for transcripts without a storage account is a problem named at /connect, not transcripts lost quietly."""
    mode = read.choice("REALTIME_SERVER_TRANSCRIPTS", "off", ("off", "blob"))
    endpoint = None
    if mode == "blob" and not shared.storage:
        account = read.token("AzureWebJobsStorage__accountName")
        endpoint = read.token("AzureWebJobsStorage__blobServiceUri") or (
            f"https://{account}.blob.core.windows.net" if account else None
        )
        if endpoint is None:
            read.problems.append("REALTIME_SERVER_TRANSCRIPTS=blob needs a storage account (AzureWebJobsStorage)")
            mode = "off"
    container = read.token("REALTIME_TRANSCRIPTS_CONTAINER", "transcripts") or "transcripts"
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?!-)){1,61}[a-z0-9]", container):
        read.problems.append(
            "REALTIME_TRANSCRIPTS_CONTAINER must be 3-63 lowercase letters, digits and single hyphens, "
            "starting and ending with a letter or digit"
        )
        container = "transcripts"
    return TranscriptStore(
        mode=mode,
        container=container,
        storage=shared.storage if mode == "blob" else None,
        endpoint=endpoint if mode == "blob" else None,
    )
