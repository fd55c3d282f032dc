"""The Gemini dialect's `API` (error bodies, listings, model objects, the probe's format), and the
JSON array that `:streamGenerateContent` without `alt=sse` answers, made in the format's folder."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from gateway.config.sections import parse_config
from gateway.contracts import Candidate, Dialect
from gateway.errors import Reason, UpstreamError
from gateway.formats.canonical import Response
from gateway.formats.gemini.api import API
from gateway.formats.gemini.client import Renderer
from gateway.formats.gemini.native import Native
from gateway.formats.gemini.upstream import Upstream, error_from

from .conftest import CLIENT_KEY, connection, gateway_config
from .mock_gemini import Chunk, chunk_body, gemini_handler

GEMINI = parse_config({"connections": [{"name": "g", "provider": "gemini", "api_key": "k"}]}).connections[0]


@pytest.mark.parametrize(
    ("status", "state"),
    [(400, "INVALID_ARGUMENT"), (401, "UNAUTHENTICATED"), (404, "NOT_FOUND"), (413, "INVALID_ARGUMENT"),
     (429, "RESOURCE_EXHAUSTED"), (503, "UNAVAILABLE"), (504, "DEADLINE_EXCEEDED"), (409, "FAILED_PRECONDITION"),
     (500, "INTERNAL"), (502, "INTERNAL")],
)  # fmt: skip
def test_error_body_names_the_status(status, state):
    body = API.error_body(status, "no", code="ignored", param="ignored")
    assert orjson.loads(body) == {"error": {"code": status, "message": "no", "status": state}}


def test_listing_call_and_ids_drop_the_models_prefix():
    assert API.dialect is Dialect.GEMINI
    assert API.forwarded_headers({"anthropic-beta": "x"}) == {}
    assert API.listing_call(GEMINI) == ("/models?pageSize=1000", {})
    body = orjson.dumps({"models": [{"name": "models/gemini-2.5-pro"}, {"name": "tunedModels/t"}, {"name": ""}, 7,
                                    {"displayName": "no name"}, {"name": "bare"}]})  # fmt: skip
    assert API.listed_ids(body) == ["gemini-2.5-pro", "tunedModels/t", "bare"]


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'{"data": []}', b'{"models": {}}'])
def test_unusable_listings_are_bad_responses(body):
    with pytest.raises(UpstreamError) as caught:
        API.listed_ids(body)
    assert caught.value.reason is Reason.BAD_RESPONSE


def test_model_objects_and_list():
    model = API.model_object("gemini-2.5-pro", "google", 1700000000)
    assert model == {"name": "models/gemini-2.5-pro", "displayName": "gemini-2.5-pro",
                     "supportedGenerationMethods": ["generateContent", "streamGenerateContent"]}  # fmt: skip
    assert API.model_list([model]) == {"models": [model]}
    assert API.model_list([]) == {"models": []}
    assert isinstance(API.probe_format([]), Upstream)


def test_error_from_keeps_the_status_classification():
    assert error_from({"error": {"code": 429, "message": "quota"}}).reason is Reason.RATE_LIMITED
    assert error_from({"error": {"code": 400, "message": "bad"}}).reason is Reason.CLIENT_ERROR
    assert error_from({"error": {"status": "INTERNAL"}}).message == "error from upstream: INTERNAL"
    assert error_from({"error": "flat"}).reason is Reason.SERVER_ERROR


def test_array_answers_wrap_one_chunk():
    candidate = Candidate(GEMINI, "models/gemini-x")
    body = orjson.dumps(chunk_body(Chunk([{"text": "Hi"}], finish="STOP"), last=True))
    assert Native({}, False).response_body(candidate, body, False)[0] == body
    wrapped, usage = Native({}, False, array=True).response_body(candidate, body, False)
    assert wrapped == b"[" + body + b"]" and usage is not None and usage.input_tokens == 12
    folded, _ = Native({}, False, array=True).response_body(candidate, b"data: " + body + b"\n\n", True)
    assert orjson.loads(folded)[0]["candidates"][0]["content"]["parts"] == [{"text": "Hi"}]
    rendered = orjson.loads(Renderer("m", array=True).render(Response(text="Hi")))
    assert isinstance(rendered, list) and rendered[0]["candidates"][0]["content"]["parts"] == [{"text": "Hi"}]
    assert isinstance(orjson.loads(Renderer("m").render(Response(text="Hi"))), dict)


async def test_stream_method_without_sse_answers_an_array_from_a_gemini_connection(start_upstream, start_gateway):
    upstream = await start_upstream(gemini_handler([Chunk([{"text": "Hel"}]), Chunk([{"text": "lo"}], finish="STOP")]))
    gw = await start_gateway(gateway_config(connection("gem", upstream, provider="gemini")))
    async with aiohttp.ClientSession() as session, session.post(
        f"{gw.url}/v1beta/models/gemini-x:streamGenerateContent?key={CLIENT_KEY}",
        json={"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]},
    ) as response:  # fmt: skip
        array = await response.json()
    assert upstream.requests[0].path.endswith(":generateContent")
    assert isinstance(array, list) and len(array) == 1
    assert array[0]["candidates"][0]["content"]["parts"] == [{"text": "Hello"}]
