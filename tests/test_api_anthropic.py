"""The Anthropic dialect's API object: error bodies, listings, model objects, forwarded headers, the
probe's format; and the upstream side's error classification (the retry policy reads its message)."""

from __future__ import annotations

import orjson
import pytest

from gateway.config.sections import parse_config
from gateway.contracts import Dialect
from gateway.errors import Reason, UpstreamError
from gateway.formats.anthropic.api import API
from gateway.formats.anthropic.upstream import Upstream, error_from
from gateway.presets import SamplingRule

CONNECTION = parse_config(
    {"connections": [{"name": "a", "provider": "anthropic", "api_key": "sk-ant", "anthropic_version": "2024-01-01"}]}
).connections[0]


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
    ],
)
def test_error_body_has_the_type_of_the_status(status: int, kind: str) -> None:
    body = orjson.loads(API.error_body(status, "nope", code="some_code", param="model"))
    assert body == {"type": "error", "error": {"type": kind, "message": "nope"}}


def test_forwarded_headers_carry_anthropic_beta_only() -> None:
    assert API.dialect is Dialect.ANTHROPIC
    assert API.forwarded_headers({"anthropic-beta": "b1,b2", "x-other": "v"}) == {"anthropic-beta": "b1,b2"}
    assert API.forwarded_headers({"anthropic-version": "2023-06-01"}) == {}


def test_listing_call_and_listed_ids() -> None:
    assert API.listing_call(CONNECTION) == ("/models?limit=1000", {"anthropic-version": "2024-01-01"})
    body = orjson.dumps({"data": [{"id": "claude-a"}, {"id": ""}, {"id": 3}, "x", {"id": "models/claude-b"}]})
    assert API.listed_ids(body) == ["claude-a", "models/claude-b"]  # no Gemini prefix to strip here
    for unusable in (b"not json", b"[]", b'{"models": []}'):
        with pytest.raises(UpstreamError) as caught:
            API.listed_ids(unusable)
        assert caught.value.reason is Reason.BAD_RESPONSE


def test_model_object_and_list() -> None:
    model = API.model_object("claude-x", "anthropic", 0)
    assert model == {
        "type": "model",
        "id": "claude-x",
        "display_name": "claude-x",
        "created_at": "1970-01-01T00:00:00Z",
    }
    other = API.model_object("claude-y", "o", 1_700_000_000)
    assert other["created_at"] == "2023-11-14T22:13:20Z"
    assert API.model_list([model, other]) == {
        "data": [model, other], "has_more": False, "first_id": "claude-x", "last_id": "claude-y"
    }  # fmt: skip
    assert API.model_list([]) == {"data": [], "has_more": False, "first_id": None, "last_id": None}


def test_probe_format_takes_the_sampling_rules() -> None:
    rules = [SamplingRule(prefix="claude-x")]
    probe = API.probe_format(rules)
    assert isinstance(probe, Upstream) and probe.rules is rules and probe.dialect is Dialect.ANTHROPIC


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("overloaded_error", Reason.SERVER_ERROR),
        ("rate_limit_error", Reason.RATE_LIMITED),
        ("authentication_error", Reason.AUTH_ERROR),
        ("invalid_request_error", Reason.SERVER_ERROR),  # inside a stream: still this connection's failure
        ("something_new", Reason.SERVER_ERROR),
    ],
)
def test_error_from_classifies_by_type_and_names_it(kind: str, reason: Reason) -> None:
    error = error_from({"type": "error", "error": {"type": kind, "message": "Overloaded"}})
    assert error.reason is reason
    assert f"{kind}: Overloaded" in error.message
