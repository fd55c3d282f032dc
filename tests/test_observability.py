"""Metrics, request log lines, readiness and graceful drain."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import string
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.logs import JsonFormatter, TextFormatter

from .conftest import CLIENT_KEY, connection, gateway_config
from .mock_openai import completion, error_handler, json_handler, stream_handler, text_stream

MESSAGES = [{"role": "user", "content": "Say hello secret-prompt-text"}]
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}


async def scrape(gw) -> dict[tuple[str, frozenset], float]:
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("gateway_"):
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_after_a_fallback(start_upstream, start_gateway):
    primary = await start_upstream(error_handler(500))
    secondary = await start_upstream(json_handler(completion("ok")))
    streamer = await start_upstream(stream_handler(text_stream(["a", "b"])))
    gw = await start_gateway(
        gateway_config(
            connection("primary", primary),
            connection("secondary", secondary, priority=200),
            connection("streamer", streamer, priority=300),
            connection("off", secondary, api_key="env:GATEWAY_TEST_UNSET_VARIABLE"),
            routes={"streamy": ["primary", "streamer"]},
        )
    )
    client = gw.client()
    await client.chat.completions.create(model="m", messages=MESSAGES)
    stream = await client.chat.completions.create(model="streamy", messages=MESSAGES, stream=True)
    assert [c async for c in stream]
    samples = await scrape(gw)

    assert value(samples, "gateway_requests_total", route="chat", connection="secondary", code_class="2xx") == 1
    assert value(samples, "gateway_requests_total", route="chat", connection="streamer", code_class="2xx") == 1
    fallback = dict(from_connection="primary", reason="server_error")
    assert value(samples, "gateway_fallbacks_total", to_connection="secondary", **fallback) == 1
    assert value(samples, "gateway_fallbacks_total", to_connection="streamer", **fallback) == 1
    assert value(samples, "gateway_upstream_errors_total", connection="primary", reason="server_error") == 2
    duration = "gateway_upstream_duration_seconds_count"
    assert value(samples, duration, connection="primary", outcome="server_error") == 2
    assert value(samples, duration, connection="secondary", outcome="ok") == 1
    assert value(samples, "gateway_upstream_ttfb_seconds_count", connection="streamer") == 1
    assert value(samples, "gateway_request_duration_seconds_count", route="chat") == 2
    assert value(samples, "gateway_overhead_seconds_count", route="chat") == 2
    assert value(samples, "gateway_inflight_requests", route="chat") == 0
    # non-streamed usage, and the streamed usage chunk the client never asked for
    assert value(samples, "gateway_tokens_total", connection="secondary", kind="input") == 9
    assert value(samples, "gateway_tokens_total", connection="streamer", kind="output") == 3
    assert value(samples, "gateway_connection_up", connection="secondary") == 1
    assert value(samples, "gateway_connection_up", connection="off") == 0


async def test_rejected_requests_count_under_connection_none(start_upstream, start_gateway):
    upstream = await start_upstream(json_handler())
    gw = await start_gateway(gateway_config(connection("main", upstream)))
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gw.url}/v1/chat/completions", data=b"{", headers=AUTH) as response:
            assert response.status == 400
        async with session.post(f"{gw.url}/v1/chat/completions", json={}) as response:
            assert response.status == 401
    samples = await scrape(gw)
    assert value(samples, "gateway_requests_total", route="chat", connection="none", code_class="4xx") == 2


def _random_word(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits + "-_.", k=rng.randint(1, 40)))


async def test_client_input_never_creates_series(start_upstream, start_gateway):
    upstream = await start_upstream(error_handler(404, "no such model", code="model_not_found"))
    gw = await start_gateway(gateway_config(connection("main", upstream)))
    rng = random.Random(1234)

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        kind = i % 4
        if kind == 0:
            url, body = f"{gw.url}/v1/chat/completions", {"model": _random_word(rng), "messages": MESSAGES}
        elif kind == 1:
            url, body = f"{gw.url}/v1/{_random_word(rng)}/{_random_word(rng)}", {}
        elif kind == 2:
            url, body = f"{gw.url}/{_random_word(rng)}", {}
        else:
            url, body = f"{gw.url}/v1/embeddings", {"model": _random_word(rng), "input": "x"}
        headers = {**AUTH, "x-request-id": _random_word(rng)}
        async with session.post(url, json=body, headers=headers) as response:
            await response.read()

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, i) for i in range(8)))  # every kind once: the series exist
        before = set(await scrape(gw))
        for batch in range(0, 1000, 50):
            await asyncio.gather(*(one(session, i) for i in range(batch, batch + 50)))
    after = set(await scrape(gw))
    assert after == before
    assert value(await scrape(gw), "gateway_requests_total", route="unmatched", connection="none", code_class="4xx")


async def test_request_log_line_fields_without_keys_or_bodies(start_upstream, start_gateway, caplog):
    primary = await start_upstream(error_handler(429, "slow down"))
    secondary = await start_upstream(json_handler(completion("the-completion-text")))
    gw = await start_gateway(gateway_config(connection("primary", primary), connection("secondary", secondary)))
    caplog.set_level(logging.INFO, logger="gateway.request")
    raw = await gw.client().chat.completions.with_raw_response.create(model="gpt-x", messages=MESSAGES)
    (record,) = [r for r in caplog.records if r.name == "gateway.request"]
    line = JsonFormatter().format(record)
    entry = orjson.loads(line)
    assert entry["request_id"] == raw.headers["x-request-id"]
    assert entry["route"] == "chat" and entry["client_format"] == "openai" and entry["model"] == "gpt-x"
    assert entry["status"] == 200 and entry["connection"] == "secondary" and entry["stream"] is False
    assert [(a["connection"], a["reason"]) for a in entry["attempts"]] == [
        ("primary", "rate_limited"),
        ("secondary", "ok"),
    ]
    assert all(a["duration_ms"] >= 0 for a in entry["attempts"])
    assert entry["duration_ms"] > 0 and entry["tokens"] == {"input": 9, "output": 3, "reasoning": 0}
    assert entry["level"] == "info" and entry["time"].endswith("Z")
    for text in (line, TextFormatter().format(record)):
        assert "sk-upstream-secret" not in text and CLIENT_KEY not in text
        assert "secret-prompt-text" not in text and "the-completion-text" not in text


async def test_bodies_are_logged_only_when_configured(start_upstream, start_gateway, caplog):
    upstream = await start_upstream(stream_handler(text_stream(["the-", "completion"])))
    gw = await start_gateway(gateway_config(connection("main", upstream), logging={"bodies": True}))
    caplog.set_level(logging.INFO, logger="gateway.request")
    stream = await gw.client().chat.completions.create(model="m", messages=MESSAGES, stream=True)
    assert [c async for c in stream]
    (record,) = [r for r in caplog.records if r.name == "gateway.request"]
    entry = orjson.loads(JsonFormatter().format(record))
    assert entry["request_body"]["messages"] == MESSAGES
    assert '"the-"' in entry["response_body"] and "[DONE]" in entry["response_body"]
    assert entry["ttfb_ms"] is not None and entry["stream"] is True


async def test_readyz_states(start_upstream, start_gateway):
    upstream = await start_upstream(json_handler())
    ready = await start_gateway(gateway_config(connection("main", upstream)))
    unready = await start_gateway(gateway_config(connection("main", upstream, api_key="env:GATEWAY_TEST_UNSET")))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{ready.url}/readyz") as response:
            assert response.status == 200 and (await response.json())["ready"] is True
        async with session.get(f"{unready.url}/readyz") as response:
            body = await response.json()
            assert response.status == 503 and body["reasons"] == ["no connection is enabled"]
            assert body["connections"] == [
                {
                    "name": "main",
                    "provider": "openai_compatible",
                    "enabled": False,
                    "reason": "environment variable GATEWAY_TEST_UNSET is not set",
                }
            ]
            assert "sk-upstream-secret" not in await response.text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_sigterm_drains_open_streams_then_exits_zero(start_upstream, tmp_path: Path):
    events = text_stream([f"w{i} " for i in range(30)])
    upstream = await start_upstream(stream_handler(events, delay=0.05))  # ~1.6 s of stream
    port = _free_port()
    config = gateway_config(
        connection("main", upstream), server={"drain_delay": 0.5, "drain_timeout": 10}, logging={"level": "warning"}
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", str(path), "--host", "127.0.0.1", "--port", str(port),
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(f"{url}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            response = await session.post(
                f"{url}/v1/chat/completions",
                json={"model": "m", "messages": MESSAGES, "stream": True},
                headers=AUTH,
            )
            assert response.status == 200
            first = await response.content.readuntil(b"\n\n")
            assert first.startswith(b"data: ")

            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.1)
            async with aiohttp.ClientSession() as fresh, fresh.get(f"{url}/readyz") as ready:
                assert ready.status == 503  # still accepting, but no longer ready
                assert (await ready.json())["draining"] is True
            await asyncio.sleep(0.7)  # past drain_delay: the listener is closed
            with pytest.raises(aiohttp.ClientConnectionError):
                async with aiohttp.ClientSession() as fresh, fresh.get(f"{url}/healthz"):
                    pass

            rest = await response.read()  # the open stream still finishes, whole
            text = (first + rest).decode()
            assert text.rstrip().endswith("data: [DONE]")
            assert "".join(f"w{i} " for i in range(30)) == "".join(
                orjson.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                for line in text.split("\n")
                if line.startswith("data: {") and orjson.loads(line[6:])["choices"]
            )
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_histogram_buckets_are_inclusive_and_cumulative():
    from gateway.metrics import LATENCY_BUCKETS, Histogram

    histogram = Histogram("h_seconds", "doc", ["route"], LATENCY_BUCKETS)
    for value in (0.5, 0.5000001, 0.001, 1000.0):
        histogram.observe(("chat",), value)
    (sample_set,) = [histogram.family()]
    buckets = {s.labels["le"]: s.value for s in sample_set.samples if s.name.endswith("_bucket")}
    assert buckets["0.01"] == 1 and buckets["0.5"] == 2 and buckets["1.0"] == 3 and buckets["+Inf"] == 4
    assert [s.value for s in sample_set.samples if s.name.endswith("_count")] == [4]


async def test_json_request_lines_skip_the_log_record_but_read_the_same(monkeypatch):
    """`setup_logging`'s JSON handler takes request lines directly: the same line as through the
    formatter, written with the others of its moment, and through the formatter again once any
    other handler listens."""
    import io

    from gateway import logs
    from gateway.config.model import LoggingConfig
    from gateway.contracts import Dialect
    from gateway.errors import Reason
    from gateway.record import Attempt, RequestRecord, Usage

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    logs.setup_logging(LoggingConfig())
    monkeypatch.setattr(logs, "_json_handler", logs._json_handler)
    handler = root.handlers[0]
    handler.stream = out = io.StringIO()
    record = RequestRecord("rid", "chat", Dialect.OPENAI, 0.0, model="m", attempts=[Attempt("main", Reason.OK, 0.5)])
    record.connection, record.status, record.usage = "main", 200, Usage(3, 4)
    handled: list[logging.LogRecord] = []
    handle = logs.request_log.handle
    monkeypatch.setattr(logs.request_log, "handle", lambda r: handled.append(r) or handle(r))
    logs.log_request(record, 0.75)
    assert handled == [] and out.getvalue() == ""  # no LogRecord; held until the batch is written
    handler.flush()
    direct = orjson.loads(out.getvalue())
    formatted = orjson.loads(JsonFormatter().format(logs.RequestLine(logs.request_fields(record, 0.75))))
    assert direct.pop("time") and formatted.pop("time")
    assert direct == formatted and direct["tokens"] == {"input": 3, "output": 4, "reasoning": 0}
    seen: list[logging.LogRecord] = []
    listener = logging.Handler()
    listener.emit = seen.append  # type: ignore[method-assign]
    root.addHandler(listener)
    logs.log_request(record, 0.75)
    assert len(seen) == len(handled) == 1 and seen[0].fields["request_id"] == "rid"
    handler.flush()
    assert out.getvalue().count("\n") == 2
