"""The OpenAI dialect's API object: error bodies, model listings, model objects, the probe's format."""

from __future__ import annotations

import orjson
import pytest

from gateway.config.sections import parse_config
from gateway.contracts import Dialect
from gateway.errors import Reason, UpstreamError
from gateway.formats.openai_chat.api import API
from gateway.formats.openai_chat.upstream import Upstream

CONNECTION = parse_config({"connections": [{"name": "x", "provider": "openai_compatible", "base_url": "http://h/v1"}]})
CONNECTION_X = CONNECTION.connections[0]


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (404, "not_found_error"),
        (413, "invalid_request_error"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "service_unavailable"),
        (504, "timeout"),
    ],
)
def test_error_body_shape_per_status(status: int, kind: str) -> None:
    body = API.error_body(status, "nope", code="model_not_found", param="model")
    expected = {"message": "nope", "type": kind, "param": "model", "code": "model_not_found"}
    assert body == orjson.dumps({"error": expected})  # byte for byte, keys in OpenAI's order


def test_error_body_without_code_or_param() -> None:
    assert orjson.loads(API.error_body(500, "boom")) == {
        "error": {"message": "boom", "type": "api_error", "param": None, "code": None}
    }


def test_listing_call_and_ids() -> None:
    assert API.dialect is Dialect.OPENAI
    assert API.listing_call(CONNECTION_X) == ("/models", {})
    listed = [{"id": "gpt-x"}, {"id": ""}, {"name": "no-id"}, "junk", {"id": "o9"}]
    body = orjson.dumps({"object": "list", "data": listed})
    assert API.listed_ids(body) == ["gpt-x", "o9"]
    # OpenAI ids are kept as they are: no Gemini `models/` prefix is taken off
    assert API.listed_ids(orjson.dumps({"data": [{"id": "models/m"}]})) == ["models/m"]


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"models": []}', b'{"data": {}}'])
def test_unusable_listing_is_a_bad_response(body: bytes) -> None:
    with pytest.raises(UpstreamError) as caught:
        API.listed_ids(body)
    assert caught.value.reason is Reason.BAD_RESPONSE


def test_model_objects_and_list() -> None:
    model = API.model_object("gpt-x", "openai", 1700000000)
    assert model == {"id": "gpt-x", "object": "model", "created": 1700000000, "owned_by": "openai"}
    assert API.model_list([model]) == {"object": "list", "data": [model]}
    assert API.model_list([]) == {"object": "list", "data": []}


def test_forwarded_headers_and_probe_format() -> None:
    assert API.forwarded_headers({"anthropic-beta": "x", "authorization": "Bearer k"}) == {}
    probe = API.probe_format([])
    assert isinstance(probe, Upstream)
    assert probe.dialect is Dialect.OPENAI
