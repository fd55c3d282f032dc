"""Provider presets as data: where a provider lives, which wire format it speaks, how it authenticates.

A preset fills in what an operator would otherwise look up; every field can be overridden on the
connection (`base_url`, `headers`, ...). `openai_compatible` with a `base_url` covers everything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .contracts import Dialect


class AuthStyle(StrEnum):
    BEARER = "bearer"  # Authorization: Bearer KEY
    X_API_KEY = "x-api-key"  # Anthropic
    GOOG_API_KEY = "x-goog-api-key"  # Gemini: a header, never ?key= (URLs end up in logs)
    API_KEY = "api-key"  # Azure OpenAI
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a connection can serve. The router skips a connection that lacks a feature a request
    uses (reason `unsupported`) rather than send it and have the feature silently dropped."""

    tools: bool = True
    vision: bool = True
    json_schema: bool = True
    reasoning: bool = True
    max_context: int | None = None  # tokens; None: unknown, not checked

    @property
    def restricted(self) -> bool:
        return not (self.tools and self.vision and self.json_schema and self.reasoning) or bool(self.max_context)


@dataclass(frozen=True, slots=True)
class Preset:
    base_url: str | None
    dialect: Dialect = Dialect.OPENAI
    auth: AuthStyle = AuthStyle.BEARER
    needs_key: bool = True
    # Appended to an operator-given base URL that lacks it (Ollama: the server root is what people know).
    api_path: str = ""
    # Headers the provider requires that only the operator can supply.
    required_headers: tuple[str, ...] = ()
    # Connection keys the base URL template needs, with their defaults (None: required).
    url_params: tuple[tuple[str, str | None], ...] = ()
    # Serves POST /responses itself; otherwise Responses requests are downgraded to Chat Completions.
    responses_native: bool = False
    # How a Chat Completions upstream is told the output budget (OpenAI's reasoning models refuse max_tokens).
    max_tokens_param: str = "max_tokens"
    capabilities: Capabilities = Capabilities()
    # Lists its models at GET {base}/models; where it cannot, `curated` is what the catalog shows.
    listing: bool = True
    curated: tuple[str, ...] = ()


PRESETS: dict[str, Preset] = {
    "openai": Preset("https://api.openai.com/v1", responses_native=True, max_tokens_param="max_completion_tokens"),
    "anthropic": Preset("https://api.anthropic.com/v1", Dialect.ANTHROPIC, AuthStyle.X_API_KEY),
    "gemini": Preset(
        "https://generativelanguage.googleapis.com/{api_version}",
        Dialect.GEMINI,
        AuthStyle.GOOG_API_KEY,
        url_params=(("api_version", "v1beta"),),
    ),
    "openrouter": Preset("https://openrouter.ai/api/v1"),
    "groq": Preset("https://api.groq.com/openai/v1"),
    "nvidia": Preset("https://integrate.api.nvidia.com/v1"),
    "cerebras": Preset("https://api.cerebras.ai/v1"),
    "sambanova": Preset("https://api.sambanova.ai/v1"),
    "together": Preset("https://api.together.xyz/v1"),
    "deepseek": Preset("https://api.deepseek.com/v1"),
    "xai": Preset("https://api.x.ai/v1"),
    "perplexity": Preset(
        "https://api.perplexity.ai",
        capabilities=Capabilities(tools=False),
        listing=False,
        curated=("sonar", "sonar-pro", "sonar-reasoning", "sonar-reasoning-pro", "sonar-deep-research"),
    ),
    "mistral": Preset("https://api.mistral.ai/v1"),
    "fireworks": Preset("https://api.fireworks.ai/inference/v1"),
    "huggingface": Preset("https://router.huggingface.co/v1"),
    "azure": Preset(
        "https://{resource}.openai.azure.com/openai/v1",
        auth=AuthStyle.API_KEY,
        url_params=(("resource", None),),
        responses_native=True,
        max_tokens_param="max_completion_tokens",
    ),
    "opencode-zen": Preset("https://opencode.ai/zen/v1"),
    "opencode-go": Preset("https://opencode.ai/zen/go/v1", required_headers=("x-opencode-session",)),
    "ollama": Preset("http://127.0.0.1:11434/v1", auth=AuthStyle.NONE, needs_key=False, api_path="/v1"),
    "openai_compatible": Preset(None, needs_key=False),
}


def auth_headers(style: AuthStyle, key: str | None) -> dict[str, str]:
    """The upstream credential headers for a connection; they replace whatever the client sent."""
    if not key or style is AuthStyle.NONE:
        return {}
    if style is AuthStyle.BEARER:
        return {"Authorization": f"Bearer {key}"}
    return {style.value: key}


# --- Anthropic sampling rules ------------------------------------------------------------------------

SAMPLERS = ("temperature", "top_p", "top_k")


@dataclass(frozen=True, slots=True)
class SamplingRule:
    """Which sampling parameters a Claude model accepts, and how it thinks. The default instance is
    the safest rule, for unknown and newer models: no sampler at all, adaptive thinking."""

    prefix: str | None = None  # model-name prefix; the longest match wins
    anthropic_version: str | None = None  # or: every request sent with this API version
    samplers: frozenset[str] = frozenset()
    one_of: bool = False  # at most one of temperature / top_p (temperature is kept)
    thinking: str = "adaptive"  # adaptive (output_config.effort) or budget (budget_tokens)


def _rule(prefix: str, samplers: tuple[str, ...], *, one_of: bool = False, thinking: str = "budget") -> SamplingRule:
    return SamplingRule(prefix=prefix, samplers=frozenset(samplers), one_of=one_of, thinking=thinking)


ALL_SAMPLERS = ("temperature", "top_p", "top_k")
# Newer Claude models reject classic samplers (a 400 that must not burn an attempt). Overridable with
# `anthropic_sampling_rules` in the config; config/gateway.yaml ships this same table. Models not listed
# (claude-opus-4-7 and every newer family) get the safest rule: no sampler, adaptive thinking.
DEFAULT_SAMPLING_RULES: tuple[SamplingRule, ...] = (
    _rule("claude-3", ALL_SAMPLERS),
    _rule("claude-sonnet-4-0", ALL_SAMPLERS),
    _rule("claude-sonnet-4-2025", ALL_SAMPLERS),
    _rule("claude-opus-4-0", ALL_SAMPLERS),
    _rule("claude-opus-4-2025", ALL_SAMPLERS),
    _rule("claude-sonnet-4-5", ALL_SAMPLERS, one_of=True),
    _rule("claude-haiku-4-5", ALL_SAMPLERS, one_of=True),
    _rule("claude-opus-4-1", ALL_SAMPLERS, one_of=True),
    _rule("claude-opus-4-5", ALL_SAMPLERS, one_of=True),
    _rule("claude-opus-4-6", ALL_SAMPLERS, one_of=True, thinking="adaptive"),
    # The newest API version rejects sampling parameters for every model.
    SamplingRule(anthropic_version="2026-10-21"),
)
