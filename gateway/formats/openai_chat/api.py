"""The OpenAI dialect beyond one request: its error bodies, its model listings, the headers it
forwards, and the format a connection test speaks (Chat Completions)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from ...contracts import Dialect
from .. import base
from . import upstream

if TYPE_CHECKING:
    from ...config.model import Connection
    from ...presets import SamplingRule

# --- tables -----------------------------------------------------------------------------------------

# An HTTP status -> the error `type` OpenAI's APIs send with it (others: by the status class).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout",
}


# --- classes ----------------------------------------------------------------------------------------


class Api:
    """OpenAI's surface (`contracts.DialectApi`): Chat Completions, Responses and the rest of
    api.openai.com, and every OpenAI-compatible server."""

    dialect = Dialect.OPENAI

    def error_body(self, status: int, message: str, code: str | None = None, param: str | None = None) -> bytes:
        """`{"error": {message, type, param, code}}`, the type from the status."""
        kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
        return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})

    def forwarded_headers(self, client_headers: Mapping[str, str]) -> dict[str, str]:
        """Nothing: no client header means anything to OpenAI upstreams."""
        return {}

    def listing_call(self, connection: Connection) -> tuple[str, dict[str, str]]:
        """`GET /models`, no extra headers."""
        return "/models", {}

    def listed_ids(self, body: bytes) -> list[str]:
        """The `data[].id` strings of a listing (items without one are skipped). Raises
        UpstreamError(bad_response) for a body that is not JSON or has no `data` array."""
        return base.listed_ids(body, "data", "id")

    def model_object(self, model_id: str, owner: str, created: int) -> dict[str, Any]:
        """`{id, object: "model", created, owned_by}`."""
        return {"id": model_id, "object": "model", "created": created, "owned_by": owner}

    def model_list(self, models: list[dict[str, Any]]) -> dict[str, Any]:
        """`{object: "list", data}`."""
        return {"object": "list", "data": models}

    def probe_format(self, rules: list[SamplingRule]) -> upstream.Upstream:
        """Chat Completions: what every OpenAI-compatible server speaks."""
        return upstream.Upstream()


API = Api()
