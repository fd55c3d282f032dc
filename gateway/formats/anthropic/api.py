"""What the gateway knows of the Anthropic dialect beyond one request: its error bodies, its model
listings (as a connection lists them and as the gateway lists its own), the client header that goes
along to its upstreams (`anthropic-beta`), and the format a connection test speaks."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from ...config.model import Connection
from ...contracts import Dialect
from ...presets import SamplingRule
from .. import base
from .upstream import Upstream

# --- tables ------------------------------------------------------------------------------------

# An HTTP status -> the error `type` Anthropic's SDKs expect; any other: invalid_request_error below
# 500, api_error from 500.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


# --- classes -----------------------------------------------------------------------------------


class Api:
    """The Anthropic dialect (`contracts.DialectApi`)."""

    __slots__ = ()

    dialect = Dialect.ANTHROPIC

    def error_body(self, status: int, message: str, code: str | None = None, param: str | None = None) -> bytes:
        """`{"type": "error", "error": {"type", "message"}}`, the type from the status (`ERROR_TYPES`);
        Anthropic's errors have no code or param."""
        kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})

    def forwarded_headers(self, client_headers: Mapping[str, str]) -> dict[str, str]:
        """The client's `anthropic-beta` (meaningful to Anthropic only), when it sent one; else {}."""
        if "anthropic-beta" in client_headers:
            return {"anthropic-beta": client_headers["anthropic-beta"]}
        return {}

    def listing_call(self, connection: Connection) -> tuple[str, dict[str, str]]:
        """`GET /models?limit=1000` with the connection's anthropic-version."""
        return "/models?limit=1000", {"anthropic-version": connection.anthropic_version}

    def listed_ids(self, body: bytes) -> list[str]:
        """The non-empty string `data[].id`s of a listing. Raises UpstreamError(bad_response) for a
        body that is not JSON or has no `data` list."""
        return base.listed_ids(body, "data", "id")

    def model_object(self, model_id: str, owner: str, created: int) -> dict[str, Any]:
        """A ModelInfo: `created_at` is `created` (Unix seconds) in ISO 8601 UTC; the owner is not shown."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
        return {"type": "model", "id": model_id, "display_name": model_id, "created_at": stamp}

    def model_list(self, models: list[dict[str, Any]]) -> dict[str, Any]:
        """One page holding every model, with the ids of the first and last (None when empty)."""
        first, last = (models[0]["id"], models[-1]["id"]) if models else (None, None)
        return {"data": models, "has_more": False, "first_id": first, "last_id": last}

    def probe_format(self, rules: list[SamplingRule]) -> Upstream:
        """Messages, with the gateway's sampling rules (`anthropic_sampling_rules`)."""
        return Upstream(rules)


API = Api()
