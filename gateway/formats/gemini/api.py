"""What the gateway knows of the Gemini dialect beyond one request: its error bodies, its model
listings (the upstream's and the gateway's own), the headers it forwards, the format a connection
test speaks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from ...contracts import Dialect
from .. import base
from .upstream import Upstream

if TYPE_CHECKING:
    from ...config.model import Connection
    from ...presets import SamplingRule

# --- tables ------------------------------------------------------------------------------------

# google.rpc.Code names of the statuses the gateway answers with; others: by class.
ERROR_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


# --- classes -----------------------------------------------------------------------------------


class Api:
    """The Gemini dialect (`contracts.DialectApi`)."""

    __slots__ = ()

    dialect = Dialect.GEMINI

    def error_body(self, status: int, message: str, code: str | None = None, param: str | None = None) -> bytes:
        """`{"error": {code, message, status}}` (Gemini's errors carry no code word or param)."""
        state = ERROR_STATUS.get(status, "FAILED_PRECONDITION" if status < 500 else "INTERNAL")
        return orjson.dumps({"error": {"code": status, "message": message, "status": state}})

    def forwarded_headers(self, client_headers: Mapping[str, str]) -> dict[str, str]:
        """None: no client header means anything to a Gemini upstream."""
        return {}

    def listing_call(self, connection: Connection) -> tuple[str, dict[str, str]]:
        """`/models`, one page as large as the API allows."""
        return "/models?pageSize=1000", {}

    def listed_ids(self, body: bytes) -> list[str]:
        """`models[].name` without its `models/` prefix. Raises UpstreamError(bad_response) for a body
        that is not JSON or has no list of models."""
        return base.listed_ids(body, "models", "name", "models/")

    def model_object(self, model_id: str, owner: str, created: int) -> dict[str, Any]:
        """A Model resource: `models/<id>`, the id as its display name, the generation methods."""
        return {
            "name": f"models/{model_id}",
            "displayName": model_id,
            "supportedGenerationMethods": ["generateContent", "streamGenerateContent"],
        }

    def model_list(self, models: list[dict[str, Any]]) -> dict[str, Any]:
        """`{"models": [...]}` in one page."""
        return {"models": models}

    def probe_format(self, rules: list[SamplingRule]) -> Upstream:
        """generateContent (Gemini has no sampling rules to apply)."""
        return Upstream()


API = Api()
