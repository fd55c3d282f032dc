"""The HTTPS proxy's plain-HTTP path (absolute-form request lines) goes through the same path rules
as the reverse proxy: no traversal reaches an upstream with the connection's key."""

from __future__ import annotations

import orjson
import pytest

from tests.conftest import CLIENT_KEY, connection, gateway_config
from tests.mock_openai import completion, json_handler
from tests.test_https_proxy import refused, start_proxied  # noqa: F401 (a fixture)


@pytest.mark.parametrize(
    "target",
    [
        "http://api.openai.com/v1/../../admin/secret",
        "http://api.openai.com/v1/%2e%2e/%2e%2e/admin",
        "http://api.openai.com/v1/files/..%2F..%2Fadmin",
        "http://api.openai.com/v1/x/../chat/completions",
        "http://api.openai.com/v1/files/a%3Fkey=1",
    ],
)
async def test_absolute_form_traversal_is_refused(start_upstream, start_proxied, target):  # noqa: F811
    upstream = await start_upstream(json_handler(completion()))
    gw = await start_proxied(gateway_config(connection("main", upstream)))
    head = f"GET {target} HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\r\n"
    answer, body = await refused(gw.proxy_url, head)
    assert answer.startswith("HTTP/1.1 400"), answer
    assert orjson.loads(body)["error"]["code"] == "invalid_path"
    assert not upstream.requests
