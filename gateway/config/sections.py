"""Each section of the YAML file -> its typed config, and `parse_config` putting them together."""

from __future__ import annotations

import difflib
import ipaddress
import logging
import re
import ssl
from pathlib import Path
from typing import Any

from ..presets import DEFAULT_SAMPLING_RULES, PRESETS, SAMPLERS, Capabilities, Preset, SamplingRule
from .model import (
    GLOB_CHARS,
    HOST_RE,
    LOG_FORMATS,
    LOG_LEVELS,
    NAME_RE,
    PROXY_MODES,
    AdminConfig,
    AuthConfig,
    BreakerSettings,
    CatalogConfig,
    Config,
    ConfigError,
    Connection,
    LimitsConfig,
    LoggingConfig,
    ProxyConfig,
    Reliability,
    RetrySettings,
    ServerConfig,
    StoreConfig,
    Timeouts,
)
from .reader import Reader, kind_of
from .secrets import References, resolve_secrets

log = logging.getLogger("gateway.config")

def _server(source: str, data: Any) -> ServerConfig:
    r = Reader(source, "server", data)
    d = ServerConfig()
    server = ServerConfig(
        host=r.string("host", d.host) or d.host,
        port=r.number("port", d.port, integer=True),
        max_body_bytes=r.number("max_body_bytes", d.max_body_bytes, integer=True),
        deadline=float(r.number("deadline", d.deadline)),
        drain_delay=float(r.number("drain_delay", d.drain_delay, positive=False)),
        drain_timeout=float(r.number("drain_timeout", d.drain_timeout, positive=False)),
        watch_interval=float(r.number("watch_interval", d.watch_interval, positive=False)),
        keepalive_timeout=float(r.number("keepalive_timeout", d.keepalive_timeout)),
    )
    for key in ("drain_delay", "drain_timeout", "watch_interval"):
        if getattr(server, key) < 0:
            r.fail(f"must not be negative, got {getattr(server, key)}", f"e.g. `{key}: 5`", key)
    if server.port > 65535:
        r.fail(f"must be a TCP port (1-65535), got {server.port}", "e.g. `port: 8080`", "port")
    r.finish()
    return server


def _auth(source: str, data: Any, refs: References) -> AuthConfig:
    r = Reader(source, "auth", data)
    raw = r.get("client_keys") or []
    if not isinstance(raw, list) or not all(isinstance(k, str) and k for k in raw):
        r.fail("must be a list of strings", "write `client_keys: [env:GATEWAY_CLIENT_KEY]`", "client_keys")
    keys = resolve_secrets(refs, raw, "auth.client_keys")
    r.finish()
    return AuthConfig(client_keys=tuple(keys))


def _host_port(r: Reader, key: str, text: Any, default_port: int | None) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]:port`: a lowercase host name or IP address, and a port."""
    fix = "write a host name or address, optionally with a port: `example.com` or `10.0.0.5:8443`"
    if not isinstance(text, str) or not text:
        r.fail(f"must be a host name, got {kind_of(text)}", fix, key)
    host, port_text = text.lower(), None
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else (None if not rest else "x")
    elif host.count(":") == 1:
        host, port_text = host.split(":")
    port = default_port
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            r.fail(f"{text!r} has no valid port (1-65535)", fix, key)
        port = int(port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not HOST_RE.match(host):
            r.fail(f"{text!r} is not a host name", fix, key)
    return host, port


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _proxy(source: str, data: Any, refs: References, server: ServerConfig) -> ProxyConfig:
    default_ca_dir = str(refs.data_dir / "ca")
    if data is None:
        return ProxyConfig(ca_dir=default_ca_dir)
    r = Reader(source, "proxy", data)
    d = ProxyConfig()
    host = r.string("host", d.host) or d.host
    port = r.number("port", d.port, integer=True, positive=False)
    if not 0 <= port <= 65535:
        r.fail(f"must be a TCP port (1-65535, or 0 for any free port), got {port}", "e.g. `port: 3128`", "port")
    if port and port == server.port:
        r.fail(f"is also server.port ({port})", "give the proxy its own port, e.g. `port: 3128`", "port")
    intercept: dict[str, str] = dict(d.intercept)
    if r.get("intercept") is not None:
        raw = r.string_map("intercept")
        intercept = {}
        for name, mode in raw.items():
            if mode not in PROXY_MODES:
                r.fail(f"unknown mode {mode!r}", "use `managed` or `observe`", f"intercept.{name}")
            target, target_port = _host_port(r, f"intercept.{name}", name, None)
            if target_port is not None or not HOST_RE.match(target) or _is_address(target):
                r.fail(f"{name!r} is not a host name", "write a host name alone (port 443 is intercepted)", "intercept")
            intercept[target] = mode
    raw_tunnel = r.get("tunnel") or []
    if not isinstance(raw_tunnel, list):
        r.fail("must be a list of hosts", "write `tunnel: [example.com, other.example:8443]`", "tunnel")
    tunnel: set[tuple[str, int]] = set()
    for i, item in enumerate(raw_tunnel):
        target, target_port = _host_port(r, f"tunnel[{i}]", item, 443)
        assert target_port is not None
        if target_port == 443 and target in intercept:
            r.fail(f"{target} is also under intercept", "keep it in one of intercept or tunnel", f"tunnel[{i}]")
        tunnel.add((target, target_port))
    allow_private = r.boolean("allow_private", d.allow_private)
    host_map: dict[str, tuple[str, int | None]] = {}
    for name, where in r.string_map("host_map").items():
        key = f"host_map.{name}"
        real, _ = _host_port(r, key, name, None)
        if real not in intercept and real not in {t[0] for t in tunnel}:
            r.fail(f"{real} is neither intercepted nor tunnelled, so it is never connected to", "remove it", key)
        target, target_port = _host_port(r, key, where, None)
        try:
            address = ipaddress.ip_address(target)
        except ValueError:
            address = None
        if address is not None and not address.is_global and not allow_private:
            r.fail(
                f"{where} is a private or loopback address, which the proxy never connects to",
                "set `proxy.allow_private: true` (only for addresses you control)",
                key,
            )
        host_map[real] = (target, target_port)
    raw_auth = r.get("auth") or []
    if not isinstance(raw_auth, list) or not all(isinstance(k, str) and k for k in raw_auth):
        r.fail("must be a list of secret references", "write `auth: [env:GATEWAY_PROXY_KEY]`", "auth")
    if not raw_auth and not _is_loopback_host(host):
        r.fail(
            f"the proxy listens on {host}, beyond loopback, without proxy authentication",
            "add `auth: [env:GATEWAY_PROXY_KEY]`, or listen on `host: 127.0.0.1`",
            "auth",
        )
    secrets = resolve_secrets(refs, raw_auth, "proxy.auth")
    if raw_auth and not secrets:
        r.fail("none of its secrets can be resolved, so no client could use the proxy", "set them", "auth")
    upstream_ca_file = r.string("upstream_ca_file")
    if upstream_ca_file is not None:
        try:
            ssl.create_default_context(cafile=upstream_ca_file)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            fix = "point it at a PEM file of CA certificates"
            r.fail(f"cannot load {upstream_ca_file} ({reason})", fix, "upstream_ca_file")
    out = ProxyConfig(
        enabled=r.boolean("enabled", True),
        host=host,
        port=port,
        intercept=intercept,
        tunnel=frozenset(tunnel),
        allow_private=allow_private,
        auth=tuple(secrets),
        upstream_ca_file=upstream_ca_file,
        host_map=host_map,
        ca_dir=r.string("ca_dir") or default_ca_dir,
        max_connections=r.number("max_connections", d.max_connections, integer=True),
    )
    r.finish()
    return out


def _admin(source: str, data: Any, refs: References) -> AdminConfig:
    r = Reader(source, "admin", data)
    ref = r.string("token", fix="write `token: env:GATEWAY_ADMIN_TOKEN`")
    token = None
    if ref is not None:
        token, missing = refs.resolve(ref)
        if missing:
            log.warning("admin.token: %s; the admin endpoints are off", missing)
    r.finish()
    return AdminConfig(token=token or None)


# Byte caps under `limits:`; below 1 KiB even an ordinary request head or answer would not fit.
_BYTE_LIMITS = ("max_header_bytes", "max_upstream_body_bytes", "max_event_bytes", "max_held_bytes")


def _limits(source: str, data: Any) -> LimitsConfig:
    r = Reader(source, "limits", data)
    d = LimitsConfig()
    sizes = {key: r.number(key, getattr(d, key), integer=True) for key in _BYTE_LIMITS}
    for key, value in sizes.items():
        if value < 1024:
            r.fail(f"must be at least 1024 (bytes), got {value}", f"e.g. `{key}: {getattr(d, key)}`", key)
    out = LimitsConfig(
        max_stream_seconds=float(r.number("max_stream_seconds", d.max_stream_seconds)),
        max_json_depth=r.number("max_json_depth", d.max_json_depth, integer=True),
        header_timeout=float(r.number("header_timeout", d.header_timeout)),
        body_timeout=float(r.number("body_timeout", d.body_timeout)),
        body_min_rate=r.number("body_min_rate", d.body_min_rate, integer=True),
        max_header_count=r.number("max_header_count", d.max_header_count, integer=True),
        max_header_line_bytes=r.number("max_header_line_bytes", d.max_header_line_bytes, integer=True),
        max_connections=r.number("max_connections", d.max_connections, integer=True),
        **sizes,
    )
    if not 2 <= out.max_json_depth <= 200:
        fix = "e.g. `max_json_depth: 64` (client SDKs nest a handful of levels; tool schemas a few more)"
        r.fail(f"must be from 2 to 200, got {out.max_json_depth}", fix, "max_json_depth")
    # Below these the official SDKs' own requests would be refused.
    for key, least, example in (("max_header_count", 32, 100), ("max_header_line_bytes", 1024, 8192)):
        if getattr(out, key) < least:
            r.fail(f"must be at least {least}, got {getattr(out, key)}", f"e.g. `{key}: {example}`", key)
    r.finish()
    return out


def _reliability(r: Reader, d: Reliability) -> Reliability:
    """The reliability keys of `r` (the `reliability:` section, or a connection), over the defaults `d`."""
    b = Reader(r.source, r.key("breaker"), r.get("breaker"))
    breaker = BreakerSettings(
        failures=b.number("failures", d.breaker.failures, integer=True, positive=False),
        window=float(b.number("window", d.breaker.window)),
        cooldown=float(b.number("cooldown", d.breaker.cooldown)),
    )
    if breaker.failures < 0:
        b.fail("must not be negative", "e.g. `failures: 5` (0 turns the breaker off)", "failures")
    b.finish()
    t = Reader(r.source, r.key("retry"), r.get("retry"))
    retry = RetrySettings(
        attempts=t.number("attempts", d.retry.attempts, integer=True, positive=False),
        max_wait=float(t.number("max_wait", d.retry.max_wait, positive=False)),
    )
    if retry.attempts < 0 or retry.max_wait < 0:
        key = "attempts" if retry.attempts < 0 else "max_wait"
        t.fail("must not be negative", f"e.g. `{key}: {getattr(RetrySettings(), key)}`", key)
    t.finish()
    max_concurrent = r.get("max_concurrent")
    if max_concurrent is not None:
        max_concurrent = r.number("max_concurrent", 16, integer=True)
    return Reliability(
        breaker=breaker,
        retry=retry,
        max_concurrent=max_concurrent if max_concurrent is not None else d.max_concurrent,
        queue_timeout=_not_negative(r, "queue_timeout", d.queue_timeout),
    )


def _not_negative(r: Reader, key: str, default: float) -> float:
    value = float(r.number(key, default, positive=False))
    if value < 0:
        r.fail(f"must not be negative, got {value:g}", f"e.g. `{key}: {default:g}`", key)
    return value


def _catalog(source: str, data: Any) -> CatalogConfig:
    r = Reader(source, "catalog", data)
    d = CatalogConfig()
    out = CatalogConfig(
        ttl=float(r.number("ttl", d.ttl)),
        refresh_ahead=float(r.number("refresh_ahead", d.refresh_ahead, positive=False)),
        timeout=float(r.number("timeout", d.timeout)),
        cooldown=float(r.number("cooldown", d.cooldown)),
    )
    if out.refresh_ahead < 0:
        r.fail("must not be negative", "e.g. `refresh_ahead: 60`", "refresh_ahead")
    r.finish()
    return out


def _logging(source: str, data: Any) -> LoggingConfig:
    r = Reader(source, "logging", data)
    d = LoggingConfig()
    level = (r.string("level", d.level) or d.level).lower()
    if level not in LOG_LEVELS:
        r.fail(f"unknown level {level!r}", f"use one of: {', '.join(LOG_LEVELS)}", "level")
    fmt = r.string("format", d.format) or d.format
    if fmt not in LOG_FORMATS:
        r.fail(f"unknown format {fmt!r}", f"use one of: {', '.join(LOG_FORMATS)}", "format")
    out = LoggingConfig(level=level, format=fmt, bodies=r.boolean("bodies", d.bodies))
    r.finish()
    return out


def _sampling_rules(source: str, data: Any) -> list[SamplingRule]:
    if data is None:
        return list(DEFAULT_SAMPLING_RULES)
    if not isinstance(data, list):
        raise ConfigError(
            f"{source}: anthropic_sampling_rules: must be a list. "
            "Fix: write `- {prefix: claude-3, samplers: [temperature, top_p]}` items."
        )
    rules = []
    for i, item in enumerate(data):
        r = Reader(source, f"anthropic_sampling_rules[{i}]", item)
        prefix, version = r.string("prefix"), r.string("anthropic_version")
        if (prefix is None) == (version is None):
            r.fail("needs exactly one of `prefix` or `anthropic_version`", "name a model prefix or an API version")
        samplers = r.get("samplers") or []
        if not isinstance(samplers, list) or not set(samplers) <= set(SAMPLERS):
            r.fail(f"must be a list of {', '.join(SAMPLERS)}", "e.g. `samplers: [temperature, top_p]`", "samplers")
        thinking = _choice(r, "thinking", {"adaptive": "adaptive", "budget": "budget"}, "adaptive")
        rules.append(SamplingRule(prefix, version, frozenset(samplers), r.boolean("one_of", False), thinking))
        r.finish()
    return rules


def _store(source: str, data: Any, data_dir: Path) -> StoreConfig:
    r = Reader(source, "store", data)
    d = StoreConfig()
    out = StoreConfig(
        path=r.string("path") or str(data_dir / "responses.db"),
        max_age_days=float(r.number("max_age_days", d.max_age_days)),
        max_bytes=r.number("max_bytes", d.max_bytes, integer=True),
    )
    r.finish()
    return out


def _timeouts(r: Reader) -> Timeouts:
    value = r.get("timeout")
    d = Timeouts()
    if value is None:
        return d
    if not isinstance(value, dict):
        # a scalar sets first_byte only: the common knob ("how long before I give up on this one")
        return Timeouts(first_byte=float(r.number("timeout", d.first_byte)))
    t = Reader(r.source, r.key("timeout"), value)
    out = Timeouts(
        connect=float(t.number("connect", d.connect)),
        first_byte=float(t.number("first_byte", d.first_byte)),
        idle=float(t.number("idle", d.idle)),
        total=float(t.number("total", d.total)),
    )
    t.finish()
    return out


def _key_references(r: Reader) -> list[str]:
    """`api_key: REF` or `api_keys: [REF, ...]` (several keys used in turn), not both."""
    single, several = r.get("api_key"), r.get("api_keys")
    if single is not None and several is not None:
        r.fail("is given together with api_keys", "keep one of them (api_keys: [a, b] holds several)", "api_key")
    if several is not None:
        if not isinstance(several, list) or not several or not all(isinstance(k, str) and k for k in several):
            r.fail(
                "must be a non-empty list of key references", "write `api_keys: [env:KEY_1, stored:name_2]`", "api_keys"
            )
        return list(several)
    return [r.string("api_key")] if single is not None else []


def _connection(
    source: str, index: int, data: Any, names: set[str], refs: References, reliability: Reliability
) -> Connection:
    r = Reader(source, f"connections[{index}]", data)
    name = r.string("name", required=True, fix="give it a name of letters, digits and hyphens, e.g. `name: groq-main`")
    assert name is not None
    if not NAME_RE.match(name):
        r.fail(f"{name!r} may hold only letters, digits and hyphens", "rename it, e.g. `groq-main`", "name")
    if name in names:
        r.fail(f"{name!r} is used by another connection", "give every connection its own name", "name")
    provider = r.string("provider", required=True, fix=f"set one of: {', '.join(PRESETS)}")
    assert provider is not None
    preset: Preset | None = PRESETS.get(provider)
    if preset is None:
        close = difflib.get_close_matches(provider, list(PRESETS), n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        r.fail(f"unknown provider {provider!r}", f"{hint}use one of: {', '.join(PRESETS)}", "provider")

    disabled: list[str] = []
    base_ref = r.string("base_url")
    if base_ref is None and preset.base_url is None:
        r.fail(f"provider {provider} needs a base URL", "add `base_url: https://host/v1`", "base_url")
    base_url: str | None
    if base_ref is not None:
        for param, _ in preset.url_params:
            if r.get(param) is not None:
                r.fail("has no effect next to base_url", "write it into base_url, or remove base_url", param)
        base_url, missing = refs.resolve(base_ref)
        if missing:
            disabled.append(missing)
        elif base_url is not None:
            base_url = _normalise_base_url(r, base_url, preset)
    else:
        base_url = preset.base_url
        params = {
            name: r.string(name, default, required=default is None, fix=f"add `{name}:` (part of the {provider} URL)")
            for name, default in preset.url_params
        }
        if base_url and params:
            base_url = base_url.format(**params)

    key_refs = _key_references(r)
    if not key_refs and preset.needs_key:
        r.fail(
            f"provider {provider} needs an API key",
            f"add `api_key: env:{provider.upper().replace('-', '_')}_API_KEY` and set that variable",
            "api_key",
        )
    api_keys: list[str] = []
    problems: list[str] = []
    for ref in key_refs:
        value, missing = refs.resolve(ref)
        if missing:
            problems.append(missing)
        elif value:
            api_keys.append(value)
    if key_refs and not api_keys:
        disabled.append("; ".join(problems))
    elif problems:
        log.warning("connection %s: %d of its keys cannot be used: %s", name, len(problems), "; ".join(problems))

    headers = {}
    configured = r.string_map("headers")
    for header, ref in configured.items():
        value, missing = refs.resolve(ref)
        if missing:
            disabled.append(f"header {header}: {missing}")
        else:
            headers[header] = value or ""
    lowered = {h.lower() for h in configured}  # an unresolved reference disables, it is not missing
    for needed in preset.required_headers:
        if needed not in lowered:
            r.fail(f"provider {provider} requires the {needed} header", f"add `headers: {{{needed}: ...}}`", "headers")

    enabled = r.boolean("enabled", True)
    if not enabled:
        disabled.insert(0, "enabled: false in the config")
    connection = Connection(
        name=name,
        provider=provider,
        dialect=preset.dialect,
        auth=preset.auth,
        base_url=base_url,
        api_keys=tuple(api_keys),
        model=r.string("model"),
        models=r.string_map("models"),
        priority=r.number("priority", 100, positive=False),
        timeout=_timeouts(r),
        headers=headers,
        order=index,
        enabled=not disabled,
        disabled_reason="; ".join(disabled) or None,
        responses_native=_choice(r, "responses", {"native": True, "downgrade": False}, preset.responses_native),
        max_tokens_param=_choice(
            r,
            "max_tokens_param",
            {"max_tokens": "max_tokens", "max_completion_tokens": "max_completion_tokens"},
            preset.max_tokens_param,
        ),
        reasoning_tags=r.boolean("reasoning_tags", False),
        anthropic_version=r.string("anthropic_version", "2023-06-01") or "2023-06-01",
        max_tokens_default=r.number("max_tokens_default", 4096, integer=True),
        capabilities=_capabilities(r, preset.capabilities),
        **_listing(r, preset),
        reliability=_reliability(r, reliability),
    )
    r.finish()
    if disabled and enabled:
        log.warning("connection %s is disabled: %s", name, connection.disabled_reason)
    return connection


def _listing(r: Reader, preset: Preset) -> dict[str, Any]:
    """`listed_models: [ids]` curates what the catalog shows for a connection instead of its live list."""
    listed = r.get("listed_models")
    if listed is None:
        return {"listing": preset.listing, "listed_models": preset.curated}
    if not isinstance(listed, list) or not all(isinstance(m, str) and m for m in listed):
        r.fail("must be a list of model ids", "write `listed_models: [model-a, model-b]`", "listed_models")
    return {"listing": False, "listed_models": tuple(listed)}


def _capabilities(parent: Reader, default: Capabilities) -> Capabilities:
    r = Reader(parent.source, parent.key("capabilities"), parent.get("capabilities"))
    max_context = r.get("max_context")
    if max_context is not None:
        max_context = r.number("max_context", 128000, integer=True)
    out = Capabilities(
        tools=r.boolean("tools", default.tools),
        vision=r.boolean("vision", default.vision),
        json_schema=r.boolean("json_schema", default.json_schema),
        reasoning=r.boolean("reasoning", default.reasoning),
        max_context=max_context if max_context is not None else default.max_context,
    )
    r.finish()
    return out


def _choice(r: Reader, key: str, choices: dict[str, Any], default: Any) -> Any:
    value = r.get(key)
    if value is None:
        return default
    if value not in choices:
        r.fail(f"must be one of {', '.join(choices)}, got {value!r}", f"write `{key}: {next(iter(choices))}`", key)
    return choices[value]


def _normalise_base_url(r: Reader, url: str, preset: Preset) -> str:
    if not re.match(r"^https?://[^/\s]+", url):
        r.fail(f"{url!r} is not an http(s) URL", "write e.g. `base_url: https://host/v1`", "base_url")
    url = url.rstrip("/")
    if preset.api_path and not url.endswith(preset.api_path):
        url += preset.api_path
    return url


def _routes(source: str, data: Any, names: set[str]) -> dict[str, list[str]]:
    r = Reader(source, "routes", data)
    routes: dict[str, list[str]] = {}
    for pattern, targets in r.data.items():
        r.seen.add(pattern)
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            r.fail(
                "must be a non-empty list of connection names", f'write `"{pattern}": [conn-a, conn-b]`', str(pattern)
            )
        for target in targets:
            if target not in names:
                close = difflib.get_close_matches(target, sorted(names), n=1)
                hint = f"did you mean `{close[0]}`?" if close else f"connections are: {', '.join(sorted(names))}"
                r.fail(f"names no connection {target!r}", hint, str(pattern))
        routes[str(pattern)] = list(targets)
    return routes


def _aliases(source: str, data: Any, names: set[str]) -> dict[str, list[tuple[str, str]]]:
    r = Reader(source, "aliases", data)
    aliases: dict[str, list[tuple[str, str]]] = {}
    for alias, targets in r.data.items():
        r.seen.add(alias)
        fix = f'write `{alias}: [connection-name/model-name, ...]`'
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
            r.fail("must be a non-empty list of connection/model entries", fix, str(alias))
        if GLOB_CHARS.intersection(str(alias)):
            r.fail("is a pattern; an alias is one exact model name", "use `routes:` for patterns", str(alias))
        entries = []
        for target in targets:
            name, slash, model = target.partition("/")  # connection names hold no '/', model names may
            if not slash or not model:
                r.fail(f"{target!r} is not connection/model", fix, str(alias))
            if name not in names:
                close = difflib.get_close_matches(name, sorted(names), n=1)
                hint = f"did you mean `{close[0]}`?" if close else f"connections are: {', '.join(sorted(names))}"
                r.fail(f"names no connection {name!r}", hint, str(alias))
            entries.append((name, model))
        aliases[str(alias)] = entries
    return aliases


def parse_config(data: Any, source: str = "<config>") -> Config:
    r = Reader(source, "", data)
    server = _server(source, r.get("server"))
    refs = References(r.string("data_dir", "data") or "data", r.string("master_key_file"))
    auth = _auth(source, r.get("auth"), refs)
    logging_config = _logging(source, r.get("logging"))
    store = _store(source, r.get("store"), refs.data_dir)
    sampling_rules = _sampling_rules(source, r.get("anthropic_sampling_rules"))
    reliability_reader = Reader(source, "reliability", r.get("reliability"))
    reliability = _reliability(reliability_reader, Reliability())
    reliability_reader.finish()
    limits = _limits(source, r.get("limits"))
    raw_connections = r.get("connections") or []
    if not isinstance(raw_connections, list):
        r.fail("must be a list of connections", "write `connections:` followed by `- name: ...` items", "connections")
    connections: list[Connection] = []
    names: set[str] = set()
    for index, item in enumerate(raw_connections):
        connection = _connection(source, index, item, names, refs, reliability)
        names.add(connection.name)
        connections.append(connection)
    connections.sort(key=lambda c: (c.priority, c.order))
    routes = _routes(source, r.get("routes"), names)
    aliases = _aliases(source, r.get("aliases"), names)
    admin = _admin(source, r.get("admin"), refs)
    catalog = _catalog(source, r.get("catalog"))
    proxy = _proxy(source, r.get("proxy"), refs, server)
    r.finish()
    return Config(
        data_dir=str(refs.data_dir),
        master_key_file=str(refs.master_key_file),
        source=source,
        server=server,
        auth=auth,
        logging=logging_config,
        store=store,
        anthropic_sampling_rules=sampling_rules,
        connections=connections,
        routes=routes,
        aliases=aliases,
        admin=admin,
        catalog=catalog,
        proxy=proxy,
        reliability=reliability,
        limits=limits,
    )
