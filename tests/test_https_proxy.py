"""The HTTPS proxy mode: SDKs with their default base URLs reach the gateway through `proxy=` alone.

Everything stays on loopback: managed hosts are answered by the gateway itself, and observe mode and
tunnels reach local TLS servers through `proxy.host_map` (with `allow_private`, as loopback is private).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import ssl
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest
import yaml
from aiohttp import web
from cryptography import x509

from gateway.__main__ import main
from gateway.app import start
from gateway.ca import CertificateAuthority, system_bundle
from gateway.config.model import ConfigError
from gateway.config.sections import parse_config
from gateway.proxy.listener import ProxySite

from .conftest import CLIENT_KEY, Received, connection, gateway_config
from .mock_openai import completion, json_handler, stream_handler, text_stream

MESSAGES = [{"role": "user", "content": "Say hello"}]
PROXY_SECRET = "proxy-secret-xyz"


@pytest.fixture(autouse=True)
def _no_sdk_environment(monkeypatch):
    """The SDKs must use their built-in base URLs, and no proxy from the environment."""
    for name in ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@dataclass
class Proxied:
    url: str  # the gateway's own listener
    proxy_url: str
    site: ProxySite
    ca_file: Path
    closers: list[Any] = field(default_factory=list)

    def http(self, verify: ssl.SSLContext | None = None, proxy: str | None = None) -> httpx2.AsyncClient:
        """An httpx client that knows only the proxy and a CA file (the gateway's, unless told)."""
        context = verify or ssl.create_default_context(cafile=str(self.ca_file))
        client = httpx2.AsyncClient(proxy=proxy or self.proxy_url, verify=context, timeout=10)
        self.closers.append(client)
        return client

    def openai(self, api_key: str = CLIENT_KEY, **kwargs: Any) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(
            api_key=api_key, max_retries=0, http_client=self.http(proxy=kwargs.pop("proxy", None)), **kwargs
        )
        self.closers.append(client)
        return client


@pytest.fixture
async def start_proxied(tmp_path):
    runners: list[web.AppRunner] = []
    started: list[Proxied] = []

    async def _start(config: dict[str, Any]) -> Proxied:
        config = {
            "store": {"path": str(tmp_path / f"responses-{len(runners)}.db")},
            "data_dir": str(tmp_path),
            **config,
        }
        proxy = {"host": "127.0.0.1", "port": 0, **config.get("proxy", {})}
        config["proxy"] = proxy
        parsed = parse_config(config, "test.yaml")
        runner = await start(parsed, "127.0.0.1", 0)
        runners.append(runner)
        site = next(s for s in runner.sites if isinstance(s, ProxySite))
        ca_file = Path(parsed.proxy.ca_dir) / "ca.pem"
        started.append(
            Proxied(f"http://127.0.0.1:{runner.addresses[0][1]}", f"http://127.0.0.1:{site.port}", site, ca_file)
        )
        return started[-1]

    yield _start
    for proxied in started:
        for client in proxied.closers:
            await client.aclose() if isinstance(client, httpx2.AsyncClient) else await client.close()
    for runner in runners:
        await runner.cleanup()


@dataclass
class TLSUpstream:
    """A local HTTPS server presenting a certificate for `name` from a test CA of its own."""

    port: int
    ca_file: Path
    requests: list[Received] = field(default_factory=list)


@pytest.fixture
async def start_tls_upstream(tmp_path):
    runners: list[web.AppRunner] = []

    async def _start(name: str, handler) -> TLSUpstream:
        ca, _ = CertificateAuthority.load_or_create(tmp_path / f"upstream-ca-{len(runners)}")
        upstream = TLSUpstream(0, ca.directory / "ca.pem")

        async def dispatch(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            upstream.requests.append(
                Received(request.method, request.path, request.query_string, dict(request.headers), body)
            )
            return await handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", dispatch)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ca.server_context(name)).start()
        runners.append(runner)
        upstream.port = runner.addresses[0][1]
        return upstream

    yield _start
    for runner in runners:
        await runner.cleanup()


async def raw_request(proxy_url: str, head: str) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send one request head to the proxy; returns its answer's head and the open connection."""
    host, port = proxy_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head.encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return answer.decode("latin-1"), reader, writer


async def refused(proxy_url: str, head: str) -> tuple[str, str]:
    """(status line and headers, body) of an answer that ends the connection."""
    answer, reader, writer = await raw_request(proxy_url, head)
    body = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer, body.decode()


def connect(target: str, *headers: str) -> str:
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"


def write_config(tmp_path: Path, config: dict[str, Any]) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def metric(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


async def scrape(url: str) -> str:
    async with httpx2.AsyncClient(trust_env=False) as client:
        return (await client.get(f"{url}/metrics")).text


# --- managed: the gateway answers -------------------------------------------------------------------


async def test_openai_sdk_default_base_url_reaches_mock_upstream_through_proxy(
    start_upstream, start_proxied, tmp_path, capsys
):
    upstream = await start_upstream(json_handler(completion("Hi via proxy")))
    config = gateway_config(connection("main", upstream), data_dir=str(tmp_path))
    config_file = write_config(tmp_path, {"data_dir": str(tmp_path), "connections": []})
    assert main(["ca", "init", "--config", config_file]) == 0  # the CA exists before the gateway starts
    capsys.readouterr()
    assert main(["ca", "export", "--bundle", "--config", config_file]) == 0
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(capsys.readouterr().out)
    created = (tmp_path / "ca" / "ca.pem").read_bytes()

    gw = await start_proxied(config)
    assert (tmp_path / "ca" / "ca.pem").read_bytes() == created  # reused, not replaced
    gw.ca_file = bundle  # clients trust the system store plus the gateway CA
    client = gw.openai()
    assert str(client.base_url) == "https://api.openai.com/v1/"

    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    answer = raw.parse()
    assert answer.choices[0].message.content == "Hi via proxy"
    assert raw.headers["x-gateway-connection"] == "main"  # the reverse proxy's own request path
    assert raw.headers["x-gateway-attempts"] == "main:ok"
    (seen,) = upstream.requests
    assert seen.path == "/chat/completions"
    assert seen.headers["Authorization"] == "Bearer sk-upstream-secret-main"  # the connection's key, not the client's

    upstream.handler = stream_handler(text_stream(["Hel", "lo"]))
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "Hello"

    with pytest.raises(openai.AuthenticationError):  # client auth applies as on the reverse proxy
        await gw.openai(api_key="not-a-client-key").chat.completions.create(model="m", messages=MESSAGES)

    metrics = await scrape(gw.url)
    assert metric(metrics, 'gateway_requests_total{code_class="2xx",connection="main",route="chat"}') == 2
    assert metric(metrics, 'gateway_proxy_connections_total{mode="managed",outcome="ok"}') >= 1


async def test_anthropic_sdk_default_base_url_is_translated_to_an_openai_connection(start_upstream, start_proxied):
    upstream = await start_upstream(json_handler(completion("Hello from chat")))
    gw = await start_proxied(gateway_config(connection("main", upstream)))
    client = anthropic.AsyncAnthropic(api_key=CLIENT_KEY, max_retries=0, http_client=gw.http())
    gw.closers.append(client)
    assert str(client.base_url) == "https://api.anthropic.com"

    message = await client.messages.create(model="claude-x", max_tokens=50, messages=MESSAGES)
    assert message.content[0].text == "Hello from chat"
    upstream.handler = stream_handler(text_stream(["str", "eam"]))
    async with client.messages.stream(model="claude-x", max_tokens=50, messages=MESSAGES) as stream:
        text = "".join([piece async for piece in stream.text_stream])
    assert text == "stream"
    assert [r.path for r in upstream.requests] == ["/chat/completions", "/chat/completions"]


async def test_plain_http_absolute_uri_requests_are_handled_by_the_gateway(start_upstream, start_proxied):
    upstream = await start_upstream(json_handler(completion("plain")))
    gw = await start_proxied(gateway_config(connection("main", upstream)))
    client = gw.openai(base_url="http://api.openai.com/v1")
    for _ in range(2):  # one request per proxy connection: the second comes through the checks again
        answer = await client.chat.completions.create(model="m", messages=MESSAGES)
        assert answer.choices[0].message.content == "plain"
    assert len(upstream.requests) == 2

    answer, body = await refused(gw.proxy_url, "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert answer.startswith("HTTP/1.1 403") and "example.com:80" in body


async def test_untrusted_gateway_ca_fails_the_handshake_and_is_counted(start_upstream, start_proxied):
    upstream = await start_upstream(json_handler())
    gw = await start_proxied(gateway_config(connection("main", upstream)))
    client = gw.http(verify=ssl.create_default_context())  # the system store only
    with pytest.raises(httpx2.ConnectError):
        await client.get("https://api.openai.com/v1/models")
    for _ in range(50):
        count = metric(await scrape(gw.url), 'gateway_proxy_connections_total{mode="managed",outcome="tls_error"}')
        if count:
            break
        await asyncio.sleep(0.02)
    assert count == 1
    assert upstream.requests == []


# --- observe: forward unchanged to the real host ----------------------------------------------------


async def test_observe_mode_forwards_unchanged_and_records(start_tls_upstream, start_proxied, caplog):
    async def answer(request: web.Request) -> web.StreamResponse:
        if (await request.json()).get("stream"):
            return await stream_handler(text_stream(["obs", "erved"]))(request)
        return await json_handler(completion("real host"), headers={"x-real": "1"})(request)

    real = await start_tls_upstream("api.openai.com", answer)
    gw = await start_proxied(
        gateway_config(
            proxy={
                "intercept": {"api.openai.com": "observe"},
                "host_map": {"api.openai.com": f"127.0.0.1:{real.port}"},
                "allow_private": True,
                "upstream_ca_file": str(real.ca_file),
            }
        )
    )
    caplog.set_level(logging.INFO, logger="gateway.request")
    client = gw.openai(api_key="sk-the-apps-own-key")
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers={"OpenAI-Organization": "org-1"}
    )
    assert raw.parse().choices[0].message.content == "real host"
    assert raw.headers["x-real"] == "1"
    assert "x-gateway-connection" not in raw.headers  # the real host's answer, as it was
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "observed"

    first, second = real.requests
    assert first.path == "/v1/chat/completions"
    assert first.headers["Host"] == "api.openai.com"
    assert first.headers["Authorization"] == "Bearer sk-the-apps-own-key"  # the client's own credentials
    assert first.headers["openai-organization"] == "org-1"
    assert first.headers["x-stainless-lang"] == "python"
    assert first.json == {"model": "gpt-4o-mini", "messages": MESSAGES}  # nothing added, nothing renamed
    assert "stream_options" not in second.json
    assert "Proxy-Authorization" not in first.headers

    metrics = await scrape(gw.url)
    assert metric(metrics, 'gateway_requests_total{code_class="2xx",connection="api.openai.com",route="observe"}') == 2
    assert metric(metrics, 'gateway_upstream_duration_seconds_count{connection="api.openai.com",outcome="ok"}') == 2
    lines = [r.fields for r in caplog.records if r.name == "gateway.request"]
    assert [(f["route"], f["connection"], f["status"], f["model"]) for f in lines] == [
        ("observe", "api.openai.com", 200, "gpt-4o-mini")
    ] * 2
    assert lines[1]["stream"] is True
    assert "sk-the-apps-own-key" not in caplog.text


async def test_observe_mode_verifies_the_real_hosts_certificate(start_tls_upstream, start_proxied):
    real = await start_tls_upstream("api.openai.com", json_handler())
    gw = await start_proxied(
        gateway_config(
            proxy={
                "intercept": {"api.openai.com": "observe"},
                "host_map": {"api.openai.com": f"127.0.0.1:{real.port}"},
                "allow_private": True,  # no upstream_ca_file: the system store does not know the test CA
            }
        )
    )
    with pytest.raises(openai.APIStatusError) as caught:
        await gw.openai().chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert "did not verify" in caught.value.message
    assert real.requests == []


async def test_observe_mode_refuses_private_addresses_after_dns(start_tls_upstream, start_proxied):
    real = await start_tls_upstream("api.openai.com", json_handler())
    gw = await start_proxied(
        gateway_config(
            proxy={
                "intercept": {"api.openai.com": "observe"},
                "host_map": {"api.openai.com": f"localhost:{real.port}"},  # a name; it resolves to loopback
                "upstream_ca_file": str(real.ca_file),
            }
        )
    )
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await gw.openai().chat.completions.create(model="m", messages=MESSAGES)
    assert "allow_private" in caught.value.message
    assert real.requests == []


# --- tunnels, refusals, proxy authentication --------------------------------------------------------


async def test_listed_hosts_are_tunnelled_blind(start_tls_upstream, start_proxied):
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="through the tunnel")

    real = await start_tls_upstream("tunnel.example", hello)
    gw = await start_proxied(
        gateway_config(
            proxy={
                "tunnel": ["tunnel.example"],
                "host_map": {"tunnel.example": f"127.0.0.1:{real.port}"},
                "allow_private": True,
            }
        )
    )
    # The client trusts only the real server's CA: the TLS session is end to end, not the gateway's.
    client = gw.http(verify=ssl.create_default_context(cafile=str(real.ca_file)))
    response = await client.post("https://tunnel.example/echo?x=1", content=b"payload")
    assert response.status_code == 200 and response.text == "through the tunnel"
    assert response.headers.get("x-gateway-connection") is None
    (seen,) = real.requests
    assert (seen.method, seen.path, seen.query, seen.body) == ("POST", "/echo", "x=1", b"payload")

    answer, _ = await refused(gw.proxy_url, connect("tunnel.example:8443"))  # only the listed port
    assert answer.startswith("HTTP/1.1 403")


async def test_other_hosts_and_ports_get_403(start_proxied):
    gw = await start_proxied(gateway_config())
    for target in ("example.com:443", "api.openai.com:8443", "169.254.169.254:80"):
        answer, body = await refused(gw.proxy_url, connect(target))
        assert answer.startswith("HTTP/1.1 403 Forbidden"), target
        assert "neither intercepted nor tunnelled" in body
    answer, _ = await refused(gw.proxy_url, "CONNECT nonsense HTTP/1.1\r\n\r\n")
    assert answer.startswith("HTTP/1.1 400")
    answer, _ = await refused(gw.proxy_url, "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith("HTTP/1.1 400")


async def test_tunnel_to_a_name_resolving_to_loopback_is_refused_unless_allowed(start_proxied):
    accepted = asyncio.Event()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        writer.write(await reader.read(5))
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gw = await start_proxied(gateway_config(proxy={"tunnel": [f"localhost:{port}"]}))
        answer, body = await refused(gw.proxy_url, connect(f"localhost:{port}"))
        assert answer.startswith("HTTP/1.1 403") and "allow_private" in body
        assert not accepted.is_set()

        allowed = await start_proxied(gateway_config(proxy={"tunnel": [f"localhost:{port}"], "allow_private": True}))
        answer, reader, writer = await raw_request(allowed.proxy_url, connect(f"localhost:{port}"))
        assert answer.startswith("HTTP/1.1 200")
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.read(5), 5) == b"hello"
        writer.close()
    finally:
        server.close()


async def test_proxy_authentication(start_upstream, start_proxied, monkeypatch):
    monkeypatch.setenv("TEST_PROXY_SECRET", PROXY_SECRET)
    upstream = await start_upstream(json_handler(completion("authenticated")))
    gw = await start_proxied(gateway_config(connection("main", upstream), proxy={"auth": ["env:TEST_PROXY_SECRET"]}))

    answer, _ = await refused(gw.proxy_url, connect("api.openai.com:443"))
    assert answer.startswith("HTTP/1.1 407") and "Proxy-Authenticate: Basic" in answer
    wrong = base64.b64encode(b"user:wrong").decode()
    answer, _ = await refused(gw.proxy_url, connect("api.openai.com:443", f"Proxy-Authorization: Basic {wrong}"))
    assert answer.startswith("HTTP/1.1 407")
    answer, _ = await refused(gw.proxy_url, connect("example.com:443", f"Proxy-Authorization: Bearer {PROXY_SECRET}"))
    assert answer.startswith("HTTP/1.1 403")  # authenticated, then refused for the host
    answer, _, writer = await raw_request(
        gw.proxy_url, connect("api.openai.com:443", f"Proxy-Authorization: Bearer {PROXY_SECRET}")
    )
    assert answer.startswith("HTTP/1.1 200")
    writer.close()

    with pytest.raises(openai.APIConnectionError):  # httpx reports a 407 to CONNECT as a proxy error
        await gw.openai().chat.completions.create(model="m", messages=MESSAGES)
    with_user = gw.proxy_url.replace("http://", f"http://any-user:{PROXY_SECRET}@")
    answer = await gw.openai(proxy=with_user).chat.completions.create(model="m", messages=MESSAGES)
    assert answer.choices[0].message.content == "authenticated"


async def test_listener_closes_with_the_runner(start_upstream, tmp_path):
    upstream = await start_upstream(json_handler())
    config = gateway_config(connection("main", upstream), data_dir=str(tmp_path))
    config["proxy"] = {"port": 0}
    config["store"] = {"path": str(tmp_path / "r.db")}
    runner = await start(parse_config(config, "test.yaml"), "127.0.0.1", 0)
    site = next(s for s in runner.sites if isinstance(s, ProxySite))
    port = site.port
    _, _, writer = await raw_request(f"http://127.0.0.1:{port}", connect("api.openai.com:443"))
    await runner.cleanup()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    writer.close()


# --- the CA and its command line --------------------------------------------------------------------


def test_ca_init_is_idempotent_with_a_private_key(tmp_path, capsys):
    config_file = write_config(tmp_path, {"data_dir": str(tmp_path / "data"), "connections": []})
    assert main(["ca", "export", "--config", config_file]) == 1
    assert "ca init" in capsys.readouterr().err
    assert main(["ca", "init", "--config", config_file]) == 0
    cert_file, key_file = tmp_path / "data" / "ca" / "ca.pem", tmp_path / "data" / "ca" / "ca.key"
    first = cert_file.read_bytes(), key_file.read_bytes()
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert "created" in capsys.readouterr().err
    assert main(["ca", "init", "--config", config_file]) == 0
    assert "already exists" in capsys.readouterr().err
    assert (cert_file.read_bytes(), key_file.read_bytes()) == first
    assert main(["ca", "export", "--config", config_file]) == 0
    out = capsys.readouterr().out
    assert out.encode() == first[0] and "PRIVATE" not in out

    cert = x509.load_pem_x509_certificate(first[0])
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True


def test_ca_dir_setting_and_partial_ca(tmp_path, capsys):
    ca_dir = tmp_path / "elsewhere"
    config_file = write_config(tmp_path, {"data_dir": str(tmp_path), "proxy": {"ca_dir": str(ca_dir)}})
    assert main(["ca", "init", "--config", config_file]) == 0
    assert (ca_dir / "ca.pem").exists() and not (tmp_path / "ca").exists()
    (ca_dir / "ca.pem").unlink()
    assert main(["ca", "init", "--config", config_file]) == 1
    assert "ca.key exists but" in capsys.readouterr().err


def test_ca_export_bundle_holds_the_system_store_and_the_gateway_ca(tmp_path, capsys, monkeypatch):
    other, _ = CertificateAuthority.load_or_create(tmp_path / "other")  # stands in for a system store
    monkeypatch.setenv("SSL_CERT_FILE", str(other.directory / "ca.pem"))
    config_file = write_config(tmp_path, {"data_dir": str(tmp_path / "data")})
    assert main(["ca", "init", "--config", config_file]) == 0
    capsys.readouterr()
    assert main(["ca", "export", "--bundle", "--config", config_file]) == 0
    out = capsys.readouterr().out
    gateway_pem = (tmp_path / "data" / "ca" / "ca.pem").read_text()
    assert other.cert_pem.decode() in out and gateway_pem in out
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(out)
    assert len(ssl.create_default_context(cafile=str(bundle)).get_ca_certs()) == 2

    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))  # a bundle made from a bundle holds the CA once
    assert main(["ca", "export", "--bundle", "--config", config_file]) == 0
    assert capsys.readouterr().out.count(gateway_pem) == 1


def test_ca_export_bundle_with_the_real_system_store(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    system = system_bundle()
    if system is None:
        pytest.skip("this machine has no system trust store")
    config_file = write_config(tmp_path, {"data_dir": str(tmp_path)})
    assert main(["ca", "init", "--config", config_file]) == 0
    capsys.readouterr()
    assert main(["ca", "export", "--bundle", "--config", config_file]) == 0
    out = capsys.readouterr().out
    assert out.startswith(system.read_text()[:200])
    assert out.endswith((tmp_path / "ca" / "ca.pem").read_text())


def test_leaf_certificates_are_cached_and_signed_for_the_host(tmp_path):
    ca, created = CertificateAuthority.load_or_create(tmp_path / "ca")
    assert created
    again, created = CertificateAuthority.load_or_create(tmp_path / "ca")
    assert not created and again.cert == ca.cert
    assert ca.server_context("api.openai.com") is ca.server_context("API.openai.com")
    leaf = ca.leaf_certificate("api.openai.com")
    assert leaf.issuer == ca.cert.subject
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["api.openai.com"]
    leaf.verify_directly_issued_by(ca.cert)
    assert "PRIVATE" not in repr(ca)


# --- configuration ----------------------------------------------------------------------------------


def proxy_config(tmp_path: Path, **proxy: Any) -> dict[str, Any]:
    return {"data_dir": str(tmp_path), "proxy": proxy}


def test_proxy_is_off_unless_configured_and_has_defaults(tmp_path):
    off = parse_config({"data_dir": str(tmp_path)}, "gw.yaml").proxy
    assert not off.enabled and off.ca_dir == str(tmp_path / "ca")
    on = parse_config(proxy_config(tmp_path), "gw.yaml").proxy
    assert on.enabled and (on.host, on.port) == ("127.0.0.1", 3128)
    assert on.intercept == {
        "api.openai.com": "managed",
        "api.anthropic.com": "managed",
        "generativelanguage.googleapis.com": "managed",
    }
    assert not on.allow_private and on.tunnel == frozenset()


@pytest.mark.parametrize(
    ("proxy", "expected"),
    [
        ({"host": "0.0.0.0"}, "gw.yaml: proxy.auth: the proxy listens on 0.0.0.0, beyond loopback"),
        ({"auth": ["env:UNSET_PROXY_SECRET_VAR"]}, "proxy.auth: none of its secrets can be resolved"),
        ({"intercept": {"api.openai.com": "watch"}}, "proxy.intercept.api.openai.com: unknown mode 'watch'"),
        ({"intercept": {"10.0.0.1": "managed"}}, "proxy.intercept: '10.0.0.1' is not a host name"),
        (
            {"alow_private": True},
            "proxy.alow_private: unknown key. Fix: remove it or correct it (did you mean `allow_private`?)",
        ),
        ({"tunnel": ["example.com:99999"]}, "proxy.tunnel[0]: 'example.com:99999' has no valid port"),
        ({"tunnel": ["api.openai.com"]}, "proxy.tunnel[0]: api.openai.com is also under intercept"),
        ({"tunnel": "example.com"}, "proxy.tunnel: must be a list of hosts"),
        ({"port": 8080}, "proxy.port: is also server.port (8080)"),
        ({"host_map": {"example.com": "10.1.1.1:443"}}, "proxy.host_map.example.com: example.com is neither"),
        (
            {"host_map": {"api.openai.com": "127.0.0.1:8443"}},
            "proxy.host_map.api.openai.com: 127.0.0.1:8443 is a private or loopback address",
        ),
        ({"upstream_ca_file": "/nonexistent/ca.pem"}, "proxy.upstream_ca_file: cannot load /nonexistent/ca.pem"),
    ],
)
def test_proxy_config_errors_name_the_key_and_the_fix(tmp_path, proxy, expected):
    with pytest.raises(ConfigError) as caught:
        parse_config(proxy_config(tmp_path, **proxy), "gw.yaml")
    assert expected in str(caught.value)
    assert "Fix:" in str(caught.value)


def test_proxy_auth_makes_any_listener_address_acceptable(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_PROXY_SECRET", PROXY_SECRET)
    config = parse_config(proxy_config(tmp_path, host="0.0.0.0", auth=["env:TEST_PROXY_SECRET"]), "gw.yaml")
    assert config.proxy.auth == (PROXY_SECRET,)
    assert PROXY_SECRET not in repr(config.proxy)
    mapped = parse_config(
        proxy_config(tmp_path, allow_private=True, host_map={"api.openai.com": "127.0.0.1:8443"}), "gw.yaml"
    )
    assert mapped.proxy.host_map == {"api.openai.com": ("127.0.0.1", 8443)}


async def test_no_proxy_listener_without_the_section(start_upstream, tmp_path):
    upstream = await start_upstream(json_handler())
    config = gateway_config(connection("main", upstream), data_dir=str(tmp_path), store={"path": str(tmp_path / "r")})
    runner = await start(parse_config(config, "test.yaml"), "127.0.0.1", 0)
    try:
        assert not any(isinstance(s, ProxySite) for s in runner.sites)
        assert len(runner.addresses) == 1
        assert not (tmp_path / "ca").exists()
    finally:
        await runner.cleanup()
