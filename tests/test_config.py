"""Config parsing and validation, plus the pure routing/error decisions that depend on it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from gateway import errors
from gateway.config.load import load_config
from gateway.config.model import Config, ConfigError, Connection, ServerConfig, Timeouts
from gateway.config.sections import parse_config
from gateway.contracts import Candidate, Dialect
from gateway.errors import ErrorKind, GatewayError, Reason, UpstreamError, classify_status, parse_retry_after
from gateway.presets import DEFAULT_SAMPLING_RULES, AuthStyle
from gateway.routing.plan import route_targets
from gateway.routing.policy import falls_back, verdict

SOURCE = "my-gateway.yaml"
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "gateway.yaml"
DEFAULT_CONFIG_VARS = (
    "ANTHROPIC_API_KEY",
    "GATEWAY_CLIENT_KEY",
    "OPENAI_API_KEY",
    "GROQ_API_KEY",
    "OPENROUTER_API_KEY",
    "OLLAMA_BASE_URL",
)


def parse(data: Any) -> Config:
    return parse_config(data, SOURCE)


def one(connection: dict[str, Any]) -> Connection:
    """Parse a config holding just this connection and return it."""
    return parse({"connections": [connection]}).connections[0]


def config_error(data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse(data)
    return str(info.value)


# --- a valid config ------------------------------------------------------------------------------

FULL = {
    "server": {"host": "127.0.0.1", "port": 9090, "max_body_bytes": 1048576, "deadline": 30},
    "auth": {"client_keys": ["env:TEST_GW_CLIENT_KEY", "literal-client-key"]},
    "connections": [
        {
            "name": "groq-main",
            "provider": "groq",
            "api_key": "env:TEST_GROQ_KEY",
            "priority": 5,
            "timeout": 7.5,
            "models": {"fast": "llama-3.1-8b-instant"},
        },
        {
            "name": "openai",
            "provider": "openai",
            "api_key": "sk-literal",
            "priority": 1,
            "timeout": {"connect": 2, "first_byte": 10, "idle": 30, "total": 120},
            "headers": {"OpenAI-Organization": "org-1", "X-Trace": "env:TEST_TRACE_HEADER"},
        },
        {"name": "anthropic", "provider": "anthropic", "api_key": "sk-ant", "priority": 5, "model": "claude-sonnet-4"},
        {"name": "local", "provider": "openai_compatible", "base_url": "http://10.0.0.5:8000/v1/", "priority": 1},
        {"name": "az", "provider": "azure", "resource": "myres", "api_key": "az-key"},
    ],
    "routes": {"gpt-4o*": ["openai", "local"], "fast": ["groq-main"]},
}


@pytest.fixture
def full_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_GW_CLIENT_KEY", "gw-secret")
    monkeypatch.setenv("TEST_GROQ_KEY", "gsk-from-env")
    monkeypatch.setenv("TEST_TRACE_HEADER", "trace-value")


def test_full_config_server_and_auth(full_env: None) -> None:
    config = parse(FULL)
    assert config.source == SOURCE
    assert config.server == ServerConfig(host="127.0.0.1", port=9090, max_body_bytes=1048576, deadline=30.0)
    assert isinstance(config.server.deadline, float)
    assert config.auth.client_keys == ("gw-secret", "literal-client-key")


def test_full_config_priority_order_keeps_config_order_for_ties(full_env: None) -> None:
    config = parse(FULL)
    # priority 1: openai (index 1) before local (index 3); priority 5: groq-main (0) before anthropic (2);
    # az has the default priority 100. Alphabetical order would differ in both tie groups.
    assert [c.name for c in config.connections] == ["openai", "local", "groq-main", "anthropic", "az"]
    assert [c.priority for c in config.connections] == [1, 1, 5, 5, 100]
    assert [c.order for c in config.connections] == [1, 3, 0, 2, 4]


def test_full_config_connections_typed_values(full_env: None) -> None:
    config = parse(FULL)

    groq = config.connection("groq-main")
    assert groq.provider == "groq"
    assert groq.dialect is Dialect.OPENAI
    assert groq.auth is AuthStyle.BEARER
    assert groq.base_url == "https://api.groq.com/openai/v1"
    assert groq.api_key == "gsk-from-env"
    assert groq.models == {"fast": "llama-3.1-8b-instant"}
    assert groq.model is None
    assert groq.timeout == Timeouts(connect=5.0, first_byte=7.5, idle=60.0, total=600.0)  # scalar: first_byte only
    assert groq.enabled is True
    assert groq.disabled_reason is None

    openai = config.connection("openai")
    assert openai.base_url == "https://api.openai.com/v1"
    assert openai.api_key == "sk-literal"
    assert openai.timeout == Timeouts(connect=2.0, first_byte=10.0, idle=30.0, total=120.0)
    assert all(isinstance(v, float) for v in (openai.timeout.connect, openai.timeout.total))
    assert openai.headers == {"OpenAI-Organization": "org-1", "X-Trace": "trace-value"}

    anthropic = config.connection("anthropic")
    assert anthropic.dialect is Dialect.ANTHROPIC
    assert anthropic.auth is AuthStyle.X_API_KEY
    assert anthropic.base_url == "https://api.anthropic.com/v1"
    assert anthropic.model == "claude-sonnet-4"
    assert anthropic.timeout == Timeouts()
    assert anthropic.headers == {}

    local = config.connection("local")
    assert local.base_url == "http://10.0.0.5:8000/v1"  # trailing slash dropped, no path appended
    assert local.api_key is None
    assert local.enabled is True

    az = config.connection("az")
    assert az.base_url == "https://myres.openai.azure.com/openai/v1"
    assert az.auth is AuthStyle.API_KEY
    assert az.priority == 100


def test_full_config_routes(full_env: None) -> None:
    config = parse(FULL)
    assert config.routes == {"gpt-4o*": ["openai", "local"], "fast": ["groq-main"]}
    assert list(config.routes) == ["gpt-4o*", "fast"]


def test_unset_client_key_variable_is_dropped_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_GW_CLIENT_KEY", raising=False)
    config = parse({"auth": {"client_keys": ["env:TEST_GW_CLIENT_KEY", "literal"]}})
    assert config.auth.client_keys == ("literal",)


def test_empty_document_gives_defaults() -> None:
    config = parse(None)
    assert config.server == ServerConfig()
    assert config.auth.client_keys == ()
    assert config.connections == []
    assert config.routes == {}


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "server:\n  port: 8181\nconnections:\n  - name: local\n    provider: ollama\n    priority: 3\n",
        encoding="utf-8",
    )
    config = load_config(path)
    assert config.source == str(path)
    assert config.server.port == 8181
    [local] = config.connections
    assert (local.name, local.base_url, local.auth, local.priority) == (
        "local",
        "http://127.0.0.1:11434/v1",
        AuthStyle.NONE,
        3,
    )


# --- errors: file, key path, fix -----------------------------------------------------------------

OPENAI = {"name": "openai", "provider": "openai", "api_key": "sk"}

ERROR_CASES = [
    pytest.param(
        {"server": {}, "conections": []}, "conections", ["unknown key", "did you mean `connections`?"], id="top-key"
    ),
    pytest.param(
        {"connections": [{**OPENAI, "prioirty": 1}]},
        "connections[0].prioirty",
        ["unknown key", "did you mean `priority`?"],
        id="connection-key-typo",
    ),
    pytest.param({"server": {"hots": "x"}}, "server.hots", ["did you mean `host`?"], id="server-key-typo"),
    pytest.param(
        {"connections": [OPENAI, {**OPENAI, "name": "b", "timeout": {"first_bye": 3}}]},
        "connections[1].timeout.first_bye",
        ["unknown key", "did you mean `first_byte`?"],
        id="timeout-key-typo",
    ),
    pytest.param({"server": {"port": "8080"}}, "server.port", ["must be a whole number, got str"], id="string-port"),
    pytest.param({"server": {"port": 8080.5}}, "server.port", ["must be a whole number, got float"], id="float-port"),
    pytest.param({"server": {"port": 70000}}, "server.port", ["1-65535", "70000"], id="port-range"),
    pytest.param({"server": {"port": 0}}, "server.port", ["greater than 0"], id="port-zero"),
    pytest.param({"server": {"deadline": True}}, "server.deadline", ["must be a number, got bool"], id="bool-deadline"),
    pytest.param(
        {"connections": [{**OPENAI, "priority": True}]},
        "connections[0].priority",
        ["must be a number, got bool"],
        id="bool-priority",
    ),
    pytest.param(
        {"connections": [OPENAI, {**OPENAI, "name": "b", "timeout": {"first_byte": False}}]},
        "connections[1].timeout.first_byte",
        ["must be a number, got bool"],
        id="bool-timeout-first-byte",
    ),
    pytest.param(
        {"connections": [{**OPENAI, "timeout": "30s"}]},
        "connections[0].timeout",
        ["must be a number, got str"],
        id="string-timeout",
    ),
    pytest.param(
        {"connections": [{**OPENAI, "timeout": {"idle": -1}}]},
        "connections[0].timeout.idle",
        ["greater than 0"],
        id="negative-idle",
    ),
    pytest.param({"connections": {"name": "openai"}}, "connections", ["must be a list"], id="connections-not-list"),
    pytest.param({"connections": ["openai"]}, "connections[0]", ["expected a mapping, got str"], id="item-not-mapping"),
    pytest.param({"server": 8080}, "server", ["expected a mapping, got int"], id="server-not-mapping"),
    pytest.param(
        {"auth": {"client_keys": "env:KEY"}}, "auth.client_keys", ["must be a list of strings"], id="keys-not-list"
    ),
    pytest.param(
        {"connections": [{**OPENAI, "provider": "opnai"}]},
        "connections[0].provider",
        ["unknown provider 'opnai'", "did you mean `openai`?"],
        id="unknown-provider",
    ),
    pytest.param(
        {"connections": [{**OPENAI, "provider": 7}]},
        "connections[0].provider",
        ["must be a non-empty string, got int"],
        id="provider-not-string",
    ),
    pytest.param({"connections": [{"provider": "openai"}]}, "connections[0].name", ["is required"], id="no-name"),
    pytest.param(
        {"connections": [OPENAI, {"name": "g", "provider": "groq", "api_key": "k"}, OPENAI]},
        "connections[2].name",
        ["'openai' is used by another connection"],
        id="duplicate-name",
    ),
    pytest.param(
        {"connections": [{**OPENAI, "name": "my_conn"}]},
        "connections[0].name",
        ["'my_conn' may hold only letters, digits and hyphens"],
        id="underscore-name",
    ),
    pytest.param(
        {"connections": [{**OPENAI, "name": "my conn"}]}, "connections[0].name", ["may hold only"], id="space-name"
    ),
    pytest.param(
        {"connections": [{"name": "vllm", "provider": "openai_compatible"}]},
        "connections[0].base_url",
        ["needs a base URL"],
        id="compatible-without-base-url",
    ),
    pytest.param(
        {"connections": [{"name": "vllm", "provider": "openai_compatible", "base_url": "localhost:8000"}]},
        "connections[0].base_url",
        ["is not an http(s) URL"],
        id="base-url-not-http",
    ),
    pytest.param(
        {"connections": [{"name": "g", "provider": "groq"}]},
        "connections[0].api_key",
        ["provider groq needs an API key", "env:GROQ_API_KEY"],
        id="missing-api-key",
    ),
    pytest.param(
        {"connections": [{"name": "oc", "provider": "opencode-zen"}]},
        "connections[0].api_key",
        ["env:OPENCODE_ZEN_API_KEY"],
        id="missing-api-key-hyphenated-provider",
    ),
    pytest.param(
        {"connections": [{"name": "az", "provider": "azure", "api_key": "k"}]},
        "connections[0].resource",
        ["is required"],
        id="azure-without-resource",
    ),
    pytest.param(
        {"connections": [{"name": "oc", "provider": "opencode-go", "api_key": "k"}]},
        "connections[0].headers",
        ["requires the x-opencode-session header"],
        id="missing-required-header",
    ),
    pytest.param(
        {"connections": [{**OPENAI, "headers": {"X-Num": 5}}]},
        "connections[0].headers",
        ["must map strings to strings"],
        id="headers-not-strings",
    ),
    pytest.param(
        {"connections": [{**OPENAI, "enabled": "yes"}]},
        "connections[0].enabled",
        ["must be true or false, got str"],
        id="enabled-not-bool",
    ),
    pytest.param(
        {"connections": [OPENAI], "routes": {"gpt-4o*": ["opneai"]}},
        "routes.gpt-4o*",
        ["names no connection 'opneai'", "did you mean `openai`?"],
        id="route-unknown-connection",
    ),
    pytest.param(
        {"connections": [OPENAI], "routes": {"gpt-4o": []}},
        "routes.gpt-4o",
        ["non-empty list of connection names"],
        id="route-empty-list",
    ),
    pytest.param(
        {"connections": [OPENAI], "routes": {"gpt-4o": "openai"}},
        "routes.gpt-4o",
        ["non-empty list of connection names"],
        id="route-not-list",
    ),
]


@pytest.mark.parametrize(("data", "path", "fragments"), ERROR_CASES)
def test_config_errors_name_file_key_path_and_fix(data: Any, path: str, fragments: list[str]) -> None:
    message = config_error(data)
    assert message.startswith(f"{SOURCE}: {path}: "), message
    assert "Fix" in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_top_level_not_a_mapping() -> None:
    message = config_error(["server"])
    assert message.startswith(f"{SOURCE}: (top level): expected a mapping, got list"), message
    assert "Fix" in message


def test_invalid_yaml_names_file_line_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("server:\n  port: [8080\nauth: {}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not valid YAML at line 3, column 5."), message
    assert "Fix" in message


def test_missing_file_names_file_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot read the file"), message
    assert "No such file or directory" in message
    assert "Fix" in message and "--config" in message


def test_load_config_errors_name_the_real_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("server:\n  port: '8080'\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: server.port: must be a whole number")


# --- unresolved references disable, they do not fail ---------------------------------------------


def test_unset_api_key_variable_disables_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_UNSET_GROQ_KEY", raising=False)
    connection = one({"name": "groq", "provider": "groq", "api_key": "env:TEST_UNSET_GROQ_KEY"})
    assert connection.enabled is False
    assert connection.api_key is None
    assert connection.disabled_reason == "environment variable TEST_UNSET_GROQ_KEY is not set"


def test_empty_api_key_variable_disables_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_EMPTY_GROQ_KEY", "")
    connection = one({"name": "groq", "provider": "groq", "api_key": "env:TEST_EMPTY_GROQ_KEY"})
    assert connection.enabled is False
    assert "TEST_EMPTY_GROQ_KEY" in (connection.disabled_reason or "")


def test_set_api_key_variable_is_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SET_GROQ_KEY", "gsk-123")
    connection = one({"name": "groq", "provider": "groq", "api_key": "env:TEST_SET_GROQ_KEY"})
    assert connection.enabled is True
    assert connection.api_key == "gsk-123"


def test_unset_base_url_and_header_variables_all_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("TEST_UNSET_URL", "TEST_UNSET_KEY", "TEST_UNSET_HEADER"):
        monkeypatch.delenv(var, raising=False)
    connection = one(
        {
            "name": "vllm",
            "provider": "openai_compatible",
            "base_url": "env:TEST_UNSET_URL",
            "api_key": "env:TEST_UNSET_KEY",
            "headers": {"X-Team": "env:TEST_UNSET_HEADER"},
        }
    )
    assert connection.enabled is False
    assert connection.base_url is None
    assert connection.headers == {}
    assert connection.disabled_reason == (
        "environment variable TEST_UNSET_URL is not set; "
        "environment variable TEST_UNSET_KEY is not set; "
        "header X-Team: environment variable TEST_UNSET_HEADER is not set"
    )


def test_enabled_false_disables_with_reason() -> None:
    connection = one({**OPENAI, "enabled": False})
    assert connection.enabled is False
    assert connection.disabled_reason == "enabled: false in the config"


def test_unset_required_header_variable_disables_instead_of_failing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_UNSET_SESSION", raising=False)
    connection = one(
        {
            "name": "oc",
            "provider": "opencode-go",
            "api_key": "k",
            "headers": {"x-opencode-session": "env:TEST_UNSET_SESSION"},
        }
    )
    assert connection.enabled is False
    assert "TEST_UNSET_SESSION" in (connection.disabled_reason or "")


# --- ollama base URL ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:11434", "http://127.0.0.1:11434/v1"),
        ("http://127.0.0.1:11434/", "http://127.0.0.1:11434/v1"),
        ("http://gpu-box:11434/v1", "http://gpu-box:11434/v1"),
        ("http://gpu-box:11434/v1/", "http://gpu-box:11434/v1"),
        ("https://ollama.example.com", "https://ollama.example.com/v1"),
    ],
)
def test_ollama_base_url_gets_v1(given: str, expected: str) -> None:
    connection = one({"name": "ollama", "provider": "ollama", "base_url": given})
    assert connection.base_url == expected
    assert connection.enabled is True
    assert connection.auth is AuthStyle.NONE


def test_ollama_base_url_from_env_gets_v1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_OLLAMA_URL", "http://10.1.2.3:11434")
    connection = one({"name": "ollama", "provider": "ollama", "base_url": "env:TEST_OLLAMA_URL"})
    assert connection.base_url == "http://10.1.2.3:11434/v1"


def test_ollama_without_base_url_uses_the_preset() -> None:
    connection = one({"name": "ollama", "provider": "ollama"})
    assert connection.base_url == "http://127.0.0.1:11434/v1"
    assert connection.api_key is None
    assert connection.enabled is True


def test_other_presets_get_no_path_appended() -> None:
    connection = one({**OPENAI, "base_url": "https://proxy.example.com/openai/"})
    assert connection.base_url == "https://proxy.example.com/openai"


# --- upstream_model ------------------------------------------------------------------------------


def test_upstream_model_mapping_first_then_override() -> None:
    connection = one({**OPENAI, "models": {"fast": "gpt-4o-mini"}, "model": "gpt-4o"})
    assert connection.upstream_model("fast") == "gpt-4o-mini"
    assert connection.upstream_model("anything") == "gpt-4o"


def test_upstream_model_override_only() -> None:
    connection = one({**OPENAI, "model": "gpt-4o"})
    assert connection.upstream_model("fast") == "gpt-4o"
    assert connection.upstream_model("gpt-3.5-turbo") == "gpt-4o"


def test_upstream_model_pass_through() -> None:
    connection = one(OPENAI)
    assert connection.upstream_model("gpt-4o-mini") == "gpt-4o-mini"


def test_upstream_model_mapping_only_serves_mapped_names() -> None:
    connection = one({**OPENAI, "models": {"fast": "gpt-4o-mini", "smart": "gpt-4o"}})
    assert connection.upstream_model("fast") == "gpt-4o-mini"
    assert connection.upstream_model("smart") == "gpt-4o"
    assert connection.upstream_model("gpt-4o") is None
    assert connection.upstream_model("gpt-4o-mini") is None


# --- the shipped config ----------------------------------------------------------------------------


def test_default_config_without_env_disables_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in DEFAULT_CONFIG_VARS:
        monkeypatch.delenv(var, raising=False)
    config = load_config(DEFAULT_CONFIG)
    assert config.server == ServerConfig(host="0.0.0.0", port=8080, max_body_bytes=33554432, deadline=60.0)
    assert config.auth.client_keys == ()
    assert [c.name for c in config.connections] == ["openai", "groq", "openrouter", "anthropic", "gemini", "ollama"]
    assert [c.enabled for c in config.connections] == [False] * 6
    reasons = {c.name: c.disabled_reason for c in config.connections}
    assert reasons == {
        "openai": "environment variable OPENAI_API_KEY is not set",
        "groq": "environment variable GROQ_API_KEY is not set",
        "openrouter": "environment variable OPENROUTER_API_KEY is not set",
        "anthropic": "environment variable ANTHROPIC_API_KEY is not set",
        "gemini": "environment variable GEMINI_API_KEY is not set",
        "ollama": "environment variable OLLAMA_BASE_URL is not set",
    }
    assert config.routes == {}
    assert tuple(config.anthropic_sampling_rules) == DEFAULT_SAMPLING_RULES  # the file ships the built-in table


def test_default_config_with_openai_and_ollama(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in DEFAULT_CONFIG_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OLLAMA_BASE_URL", "http://127.0.0.1:11434")
    config = load_config(DEFAULT_CONFIG)
    enabled = {c.name: c.enabled for c in config.connections}
    assert enabled == {
        "openai": True,
        "groq": False,
        "openrouter": False,
        "anthropic": False,
        "gemini": False,
        "ollama": True,
    }
    assert config.connection("openai").api_key == "sk-test"
    assert config.connection("openai").base_url == "https://api.openai.com/v1"
    ollama = config.connection("ollama")
    assert ollama.base_url == "http://127.0.0.1:11434/v1"
    assert ollama.base_url.endswith("/v1")
    assert ollama.disabled_reason is None


# --- router.route_targets --------------------------------------------------------------------------

ROUTES = {
    "gpt-4o*": ["glob-4o"],
    "gpt-*": ["glob-gpt"],
    "gpt-4o-mini": ["exact-mini"],
    "claude-?-opus": ["glob-claude"],
    "[ab]-model": ["glob-class"],
    "plain": ["exact-plain"],
}


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o-mini", ["exact-mini"]),  # exact beats the earlier glob that also matches
        ("gpt-4o", ["glob-4o"]),
        ("gpt-4o-2024-08-06", ["glob-4o"]),  # both globs match: the first in config order wins
        ("gpt-3.5-turbo", ["glob-gpt"]),
        ("claude-3-opus", ["glob-claude"]),
        ("claude-35-opus", None),
        ("b-model", ["glob-class"]),
        ("c-model", None),
        ("plain", ["exact-plain"]),
        ("plainer", None),  # a non-glob route is not a prefix
        ("GPT-4o", None),  # case-sensitive
        ("llama-3", None),
    ],
)
def test_route_targets(model: str, expected: list[str] | None) -> None:
    assert route_targets(ROUTES, model) == expected


def test_route_targets_glob_order_is_config_order() -> None:
    routes = {"gpt-*": ["broad"], "gpt-4o*": ["narrow"]}
    assert route_targets(routes, "gpt-4o-mini") == ["broad"]
    assert route_targets({}, "gpt-4o-mini") is None


# --- errors.classify_status / parse_retry_after ------------------------------------------------------

OPENAI_CONTEXT_BODY = (
    b'{"error": {"message": "This model\'s maximum context length is 8192 tokens. However, your messages '
    b'resulted in 9013 tokens. Please reduce the length of the messages.", "type": "invalid_request_error", '
    b'"param": "messages", "code": "context_length_exceeded"}}'
)
OPENAI_UNSUPPORTED_BODY = (
    b'{"error": {"message": "Unsupported parameter: \'max_tokens\' is not supported with this model. Use '
    b'\'max_completion_tokens\' instead.", "type": "invalid_request_error", "param": "max_tokens", "code": null}}'
)
ANTHROPIC_CONTEXT_BODY = (
    b'{"type": "error", "error": {"type": "invalid_request_error", '
    b'"message": "prompt is too long: 210000 tokens > 200000 maximum"}}'
)
PLAIN_400_BODY = (
    b'{"error": {"message": "Invalid type for \'messages[0].content\': expected a string.", '
    b'"type": "invalid_request_error", "param": "messages[0].content", "code": "invalid_type"}}'
)


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (429, b"", Reason.RATE_LIMITED),
        (429, OPENAI_CONTEXT_BODY, Reason.RATE_LIMITED),  # status decides before the body
        (401, b"", Reason.AUTH_ERROR),
        (403, b"", Reason.AUTH_ERROR),
        (408, b"", Reason.TIMEOUT),
        (500, b"", Reason.SERVER_ERROR),
        (502, b"", Reason.SERVER_ERROR),
        (503, b"", Reason.SERVER_ERROR),
        (409, b"", Reason.SERVER_ERROR),
        (425, b"", Reason.SERVER_ERROR),
        (413, b"", Reason.CONTEXT_LENGTH),
        (404, b'{"error": "Not Found"}', Reason.NOT_FOUND),
        (400, OPENAI_CONTEXT_BODY, Reason.CONTEXT_LENGTH),
        (400, ANTHROPIC_CONTEXT_BODY, Reason.CONTEXT_LENGTH),
        (400, OPENAI_UNSUPPORTED_BODY, Reason.UNSUPPORTED),
        (400, b'{"error": {"message": "unsupported parameter: logprobs"}}', Reason.UNSUPPORTED),
        (400, b'{"error": {"code": "model_not_found", "message": "x"}}', Reason.NOT_FOUND),
        (400, PLAIN_400_BODY, Reason.CLIENT_ERROR),
        (400, b"", Reason.CLIENT_ERROR),
        (422, b'{"detail": "bad"}', Reason.CLIENT_ERROR),
    ],
)
def test_classify_status(status: int, body: bytes, reason: Reason) -> None:
    assert classify_status(status, body) is reason


def test_parse_retry_after_seconds() -> None:
    assert parse_retry_after(CIMultiDict({"Retry-After": "7"})) == 7.0
    assert parse_retry_after(CIMultiDict({"Retry-After": "2.5"})) == 2.5
    assert parse_retry_after(CIMultiDict({"Retry-After": "-3"})) == 0.0


def test_parse_retry_after_ms_wins() -> None:
    headers = CIMultiDict({"Retry-After": "7", "retry-after-ms": "1500"})
    assert parse_retry_after(headers) == 1.5
    # an unusable retry-after-ms falls back to Retry-After
    assert parse_retry_after(CIMultiDict({"Retry-After": "7", "retry-after-ms": "soon"})) == 7.0


def test_parse_retry_after_http_date(monkeypatch: pytest.MonkeyPatch) -> None:
    date = "Wed, 21 Oct 2015 07:28:00 GMT"  # 1445412480
    monkeypatch.setattr(errors.time, "time", lambda: 1445412480.0 - 90.0)
    assert parse_retry_after(CIMultiDict({"Retry-After": date})) == pytest.approx(90.0)
    monkeypatch.setattr(errors.time, "time", lambda: 1445412480.0 + 600.0)
    assert parse_retry_after(CIMultiDict({"Retry-After": date})) == 0.0  # in the past


@pytest.mark.parametrize("value", ["soon", "", "tomorrow at noon", "12 parsecs"])
def test_parse_retry_after_garbage(value: str) -> None:
    assert parse_retry_after(CIMultiDict({"Retry-After": value})) is None


def test_parse_retry_after_absent() -> None:
    assert parse_retry_after(CIMultiDict()) is None


@pytest.mark.parametrize("headers", [{"Retry-After": "inf"}, {"retry-after-ms": "1e400"}])
def test_parse_retry_after_non_finite_is_not_returned(headers: dict[str, str]) -> None:
    result = parse_retry_after(CIMultiDict(headers))
    assert result is None or math.isfinite(result)


# --- router.falls_back / verdict -------------------------------------------------------------------


def _error(reason: Reason, retry_after: float | None = None) -> UpstreamError:
    kind = ErrorKind.TIMEOUT if reason is Reason.TIMEOUT else ErrorKind.HTTP_STATUS
    return UpstreamError(kind, reason, f"{reason} happened", status=None, retry_after=retry_after)


@pytest.mark.parametrize("reason", [r for r in Reason if r is not Reason.CLIENT_ERROR])
def test_falls_back_on_everything_but_client_error(reason: Reason) -> None:
    assert falls_back(_error(reason)) is True


def test_does_not_fall_back_on_client_error() -> None:
    assert falls_back(_error(Reason.CLIENT_ERROR)) is False


def test_verdict_all_rate_limited_is_429_with_shortest_retry_after() -> None:
    failures = [
        ("a", _error(Reason.RATE_LIMITED, 7.0)),
        ("b", _error(Reason.RATE_LIMITED, None)),
        ("c", _error(Reason.RATE_LIMITED, 2.2)),
    ]
    err = verdict("gpt-4o", failures, [])
    assert isinstance(err, GatewayError)
    assert (err.status, err.code) == (429, "rate_limited")
    assert err.headers == {"Retry-After": "3"}
    assert "a: rate_limited" in err.message and "c: rate_limited" in err.message


def test_verdict_all_rate_limited_without_hints_has_no_retry_after() -> None:
    err = verdict("gpt-4o", [("a", _error(Reason.RATE_LIMITED)), ("b", _error(Reason.RATE_LIMITED))], [])
    assert (err.status, err.headers) == (429, {})


def test_verdict_all_not_found_is_404() -> None:
    err = verdict("gpt-9", [("a", _error(Reason.NOT_FOUND)), ("b", _error(Reason.NOT_FOUND))], [])
    assert (err.status, err.code) == (404, "model_not_found")


def test_verdict_all_context_length_is_400() -> None:
    err = verdict("gpt-4o", [("a", _error(Reason.CONTEXT_LENGTH))], [])
    assert (err.status, err.code) == (400, "context_length_exceeded")


def test_verdict_mixed_ending_with_timeout_is_504() -> None:
    failures = [("a", _error(Reason.RATE_LIMITED, 1.0)), ("b", _error(Reason.TIMEOUT))]
    err = verdict("gpt-4o", failures, [])
    assert (err.status, err.code) == (504, "upstream_timeout")
    assert err.headers == {}


def test_verdict_mixed_otherwise_is_502() -> None:
    failures = [("a", _error(Reason.TIMEOUT)), ("b", _error(Reason.SERVER_ERROR))]
    err = verdict("gpt-4o", failures, [])
    assert (err.status, err.code) == (502, "upstream_error")
    assert "a: timeout (timeout happened)" in err.message
    assert "b: server_error (server_error happened)" in err.message


def test_verdict_skipped_only_is_503() -> None:
    connection = one({**OPENAI, "enabled": False})
    err = verdict("gpt-4o", [], [Candidate(connection, "gpt-4o", Reason.DISABLED)])
    assert (err.status, err.code) == (503, "no_connection")
    assert "openai: disabled" in err.message


def test_verdict_nothing_tried_is_504() -> None:
    err = verdict("gpt-4o", [], [])
    assert (err.status, err.code) == (504, "timeout")


def test_stored_responses_live_in_the_data_dir_unless_a_path_is_given() -> None:
    connection = {"name": "a", "provider": "openai_compatible", "base_url": "http://127.0.0.1:1/v1"}
    assert parse({"connections": [connection]}).store.path == str(Path("data") / "responses.db")
    assert parse({"data_dir": "/var/lib/gw", "connections": [connection]}).store.path == "/var/lib/gw/responses.db"
    given = {"data_dir": "/var/lib/gw", "store": {"path": "/tmp/r.db"}, "connections": [connection]}
    assert parse(given).store.path == "/tmp/r.db"
