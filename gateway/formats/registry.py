"""The only list of wire formats. Errors, handlers, the catalog, connection tests and the HTTPS proxy
ask it; adding a format (Cohere v2, Bedrock Converse) is one folder and a line here.
"""

from __future__ import annotations

from ..contracts import Dialect, DialectApi, UpstreamFormat
from ..presets import SamplingRule
from .anthropic import api as anthropic_api
from .anthropic import upstream as anthropic
from .gemini import api as gemini_api
from .gemini import upstream as gemini
from .openai_chat import api as openai_api
from .openai_chat import upstream as openai_chat
from .openai_responses import upstream as openai_responses

# What the gateway knows of each dialect: error bodies, listings, forwarded headers, the probe's format.
APIS: dict[Dialect, DialectApi] = {
    Dialect.OPENAI: openai_api.API,
    Dialect.ANTHROPIC: anthropic_api.API,
    Dialect.GEMINI: gemini_api.API,
}


def upstream_formats(rules: list[SamplingRule]) -> list[UpstreamFormat]:
    """How a translated request may reach a connection, in preference order: the first that accepts
    it is used (native Responses connections through their own API, then Chat Completions). A
    connection of the client's own format never gets here: it takes the byte fast path."""
    return [openai_responses.Upstream(), openai_chat.Upstream(), anthropic.Upstream(rules), gemini.Upstream()]
