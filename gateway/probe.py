"""Connection tests: prove a configured connection works before relying on it.

A test lists the provider's models (where it has a listing), then asks for one tiny generation ("Hi",
a small output budget) in the connection's own wire format, and reports `ok` or the reason from the
core vocabulary, the latency and the model that answered. Only configured connections are tested:
nothing a caller sends becomes a URL, a header or a key.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import asdict, dataclass

from .catalog import list_models
from .config.model import Config, Connection
from .contracts import Candidate
from .errors import Reason, UpstreamError
from .formats import canonical as c
from .formats import registry
from .transport import Transport, scrub_text

PROMPT = "Hi"
OUTPUT_BUDGET = 16  # tokens: enough for a greeting, cheap on any price list
# Listed models that cannot answer a chat request: not picked as the model to test.
NOT_CHAT = re.compile(r"embed|whisper|tts|dall-e|moderation|image|audio|rerank|transcribe|realtime", re.I)


@dataclass(slots=True)
class ProbeResult:
    connection: str
    status: str  # "ok", or a reason: auth_error, not_found, timeout, connect_error, rate_limited, ...
    latency_ms: float | None = None  # of the generation
    model: str | None = None  # the model that answered (as the provider names it)
    listed_models: int | None = None  # how many models the provider listed; None without a listing
    listing: str | None = None  # "ok" or the listing's failure reason; None without a listing
    detail: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _model_to_test(connection: Connection, requested: str | None, listed: list[str]) -> str | None:
    if requested:  # the operator's choice wins over the connection's own model; a mapped name is mapped
        return connection.models.get(requested, requested)
    mapped = next(iter(connection.models.values()), None)
    candidates = [connection.model, mapped, *connection.listed_models]
    candidates += [m for m in listed if not NOT_CHAT.search(m)]
    return next((m for m in candidates if m), None)


async def probe_connection(
    transport: Transport, config: Config, connection: Connection, model: str | None = None
) -> ProbeResult:
    """List, then generate once. Never raises for an upstream failure: it is the result."""
    result = ProbeResult(connection.name, Reason.OK.value)
    if not connection.enabled:
        result.status, result.detail = Reason.DISABLED.value, connection.disabled_reason
        return result
    limits = connection.timeout
    listed: list[str] = []
    if connection.listing:
        try:
            listed = await list_models(transport, connection, limits.first_byte)
            result.listing, result.listed_models = Reason.OK.value, len(listed)
        except UpstreamError as err:
            result.listing = err.reason.value
    chosen = _model_to_test(connection, model, listed)
    if chosen is None:
        result.status = Reason.NOT_FOUND.value
        result.detail = "no model to test: the connection names none and lists none; pass one (--model)"
        return result
    upstream = registry.APIS[connection.dialect].probe_format(config.anthropic_sampling_rules)
    request = c.Request(messages=[c.Message("user", [c.Text(PROMPT)])], max_output_tokens=OUTPUT_BUDGET)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        call = upstream.call(request, Candidate(connection, chosen))
        body = await transport.fetch(
            connection,
            "POST",
            call.path,
            key=connection.api_key,
            timeout=min(limits.first_byte + limits.idle, limits.total),
            body=call.body,
            headers=call.headers,
        )
        answer = upstream.parse(body, connection)
    except UpstreamError as err:
        result.status, result.detail = err.reason.value, scrub_text(err.message, connection)
        result.model = chosen
        return result
    finally:
        result.latency_ms = round((loop.time() - started) * 1000, 1)
    result.model = answer.model or chosen
    return result


async def probe_connections(
    transport: Transport, config: Config, names: list[str], model: str | None = None
) -> list[ProbeResult]:
    """Several connections at once, in the order asked."""
    connections = [config.connection(name) for name in names]
    return list(await asyncio.gather(*(probe_connection(transport, config, c, model) for c in connections)))
