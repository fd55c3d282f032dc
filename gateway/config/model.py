"""The configuration as typed, validated values: what every other module reads."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..contracts import Dialect
from ..presets import AuthStyle, Capabilities, SamplingRule

NAME_RE = re.compile(r"^[A-Za-z0-9-]+$")
GLOB_CHARS = frozenset("*?[")


class ConfigError(Exception):
    """A configuration the gateway refuses to start with."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. `first_byte` runs until response headers and, for streams, until the commit."""

    connect: float = 5.0
    first_byte: float = 20.0
    idle: float = 60.0
    total: float = 600.0


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """After `failures` health failures within `window` seconds the connection is skipped for `cooldown`
    seconds, then half-open: one probe request decides. `failures: 0` turns the breaker off."""

    failures: int = 5
    window: float = 30.0
    cooldown: float = 30.0


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """Extra tries on the same connection after a 429 / 503 / overloaded answer (after its other keys),
    waiting what that answer's Retry-After says; a longer wait than `max_wait` falls back instead."""

    attempts: int = 0
    max_wait: float = 10.0


@dataclass(frozen=True, slots=True)
class Reliability:
    """`reliability:` holds the defaults; a connection's own keys of the same names override them."""

    breaker: BreakerSettings = BreakerSettings()
    retry: RetrySettings = RetrySettings()
    max_concurrent: int | None = None  # requests in flight at once; None: unlimited
    queue_timeout: float = 1.0  # how long a request waits for a slot before the connection counts as busy


@dataclass(slots=True)
class Connection:
    name: str
    provider: str
    dialect: Dialect
    auth: AuthStyle
    base_url: str | None
    api_keys: tuple[str, ...] = field(repr=False)  # used in turn (round robin)
    model: str | None
    models: dict[str, str]
    priority: float
    timeout: Timeouts
    headers: dict[str, str] = field(repr=False)
    order: int
    enabled: bool = True
    disabled_reason: str | None = None
    anthropic_version: str = "2023-06-01"
    max_tokens_default: int = 4096  # Anthropic requires max_tokens: sent when the client gave none
    responses_native: bool = False  # `responses: native`; else Responses requests are downgraded to Chat
    max_tokens_param: str = "max_tokens"  # or max_completion_tokens
    reasoning_tags: bool = False  # a leading <think>...</think> in the content is reasoning
    capabilities: Capabilities = field(default_factory=Capabilities)
    listing: bool = True  # GET {base}/models lists what it serves (the model catalog asks it)
    listed_models: tuple[str, ...] = ()  # curated: shown when it has no listing, or its listing fails
    reliability: Reliability = Reliability()

    @property
    def api_key(self) -> str | None:
        return self.api_keys[0] if self.api_keys else None

    def upstream_model(self, requested: str) -> str | None:
        """The model this connection sends for `requested`, or None when it does not serve it."""
        mapped = self.models.get(requested)
        if mapped is not None:
            return mapped
        if self.model:
            return self.model
        if self.models:  # a connection with only a mapping serves only the names it maps
            return None
        return requested


@dataclass(slots=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    max_body_bytes: int = 32 * 1024 * 1024
    deadline: float = 60.0
    drain_delay: float = 0.0  # after SIGTERM: keep accepting (readiness already 503) so endpoints update
    drain_timeout: float = 30.0  # then: how long in-flight requests and streams get to finish
    watch_interval: float = 2.0  # seconds between checks of the config file for changes; 0: only SIGHUP reloads
    keepalive_timeout: float = 75.0  # an idle keep-alive connection is closed after this (aiohttp's own: an hour)


@dataclass(slots=True)
class LimitsConfig:
    max_header_bytes: int = 32 * 1024  # a client's request line and headers, together
    max_stream_seconds: float = 3600.0  # a streamed answer, commit to last byte; a client that stops reading
    # cannot hold a stream (and its upstream) longer than this
    max_json_depth: int = 64  # nesting of a client's JSON body: deeper is a 400 before any translation
    # What one upstream answer may make the gateway hold (crossing one is bad_response, `too_large`):
    max_upstream_body_bytes: int = 64 * 1024 * 1024  # a body read whole, after decompression
    max_event_bytes: int = 4 * 1024 * 1024  # one SSE event
    max_held_bytes: int = 4 * 1024 * 1024  # a stream before its first content (the commit point)
    # The client side (gateway/server.py): what one connection may take before anything checks its key.
    header_timeout: float = 10.0  # the whole request head, from its first byte (or from the connect)
    body_timeout: float = 30.0  # the body, plus the time its declared length needs at body_min_rate
    body_min_rate: int = 64 * 1024  # bytes a second; a chunked body is given max_body_bytes at this rate
    max_header_count: int = 100
    max_header_line_bytes: int = 8 * 1024  # one header's name and value
    max_connections: int = 10_000  # open client connections on the server port; beyond: 503 and closed


@dataclass(slots=True)
class StoreConfig:
    """Stored Responses (previous_response_id): embedded SQLite, bounded by age and size."""

    path: str = "data/responses.db"  # default: {data_dir}/responses.db
    max_age_days: float = 30.0
    max_bytes: int = 1024 * 1024 * 1024


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "text")


@dataclass(slots=True)
class LoggingConfig:
    level: str = "info"
    format: str = "json"
    bodies: bool = False  # prompts and completions in the request log line


@dataclass(slots=True)
class AuthConfig:
    client_keys: tuple[str, ...] = field(default=(), repr=False)


@dataclass(slots=True)
class AdminConfig:
    """`/admin/*` endpoints need `Authorization: Bearer <token>`; without a token they are off."""

    token: str | None = field(default=None, repr=False)


@dataclass(slots=True)
class CatalogConfig:
    """The model catalog: per-connection lists cached for `ttl` seconds and refreshed in the background
    `refresh_ahead` seconds before they expire; one listing call waits at most `timeout`; a connection
    whose listing failed is not asked again for `cooldown` seconds (its last good list is served)."""

    ttl: float = 600.0
    refresh_ahead: float = 60.0
    timeout: float = 5.0
    cooldown: float = 60.0


DEFAULT_INTERCEPT = {
    "api.openai.com": "managed",
    "api.anthropic.com": "managed",
    "generativelanguage.googleapis.com": "managed",
}
PROXY_MODES = ("managed", "observe")
HOST_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


@dataclass(slots=True)
class ProxyConfig:
    """The HTTP(S) proxy listener (`gateway/proxy/`), off unless a `proxy:` section is configured."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 3128  # 0: any free port
    intercept: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_INTERCEPT))  # host -> managed | observe
    tunnel: frozenset[tuple[str, int]] = frozenset()  # (host, port) relayed blind
    allow_private: bool = False  # connect to loopback, link-local and private addresses
    auth: tuple[str, ...] = field(default=(), repr=False)  # Proxy-Authorization secrets
    upstream_ca_file: str | None = None  # observe mode verifies real hosts with this instead of the system store
    host_map: dict[str, tuple[str, int | None]] = field(default_factory=dict)  # real host -> where to connect
    ca_dir: str = "data/ca"
    max_connections: int = 10_000  # open proxy client connections, counted apart from limits.max_connections


@dataclass(slots=True)
class Config:
    data_dir: str
    master_key_file: str
    source: str
    server: ServerConfig
    auth: AuthConfig
    logging: LoggingConfig
    store: StoreConfig
    anthropic_sampling_rules: list[SamplingRule]
    connections: list[Connection]  # sorted: priority, then config order
    routes: dict[str, list[str]]  # requested model (exact or glob) -> connection names, in config order
    # alias -> (connection name, upstream model) in order; resolved before routes
    aliases: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    admin: AdminConfig = field(default_factory=AdminConfig)
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    reliability: Reliability = Reliability()
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    _by_name: dict[str, Connection] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name = {c.name: c for c in self.connections}

    def connection(self, name: str) -> Connection:
        return self._by_name[name]
