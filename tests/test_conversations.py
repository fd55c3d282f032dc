"""previous_response_id on every connection: the gateway stores answers and rebuilds conversations."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web

from gateway import store as store_module
from gateway.store import ResponseStore, StoredResponse

from .conftest import connection, gateway_config
from .mock_openai import completion, error_handler

TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": False}]


def scripted_chat(*answers: dict[str, Any]):
    """A Chat-only upstream answering its n-th request with the n-th completion body."""
    calls = iter(answers)

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(next(calls))

    return handler


def tool_call_completion(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    body = completion("", finish="tool_calls")
    body["choices"][0]["message"] = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}],
    }
    return body


async def test_three_turns_with_a_tool_round_trip_through_a_chat_only_upstream(start_upstream, start_gateway):
    upstream = await start_upstream(
        scripted_chat(
            tool_call_completion("call_w", "get_weather", '{"city":"Paris"}'),
            completion("It is 21C."),
            completion("Probably sunny."),
        )
    )
    gw = await start_gateway(gateway_config(connection("chat", upstream)))
    client = gw.client()

    first = await client.responses.create(model="m", instructions="Be brief.", input="Weather in Paris?", tools=TOOLS)
    assert first.store is True and first.output[0].type == "function_call"
    second = await client.responses.create(
        model="m",
        instructions="Be brief.",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": "call_w", "output": "21C"}],
        tools=TOOLS,
    )
    assert second.output_text == "It is 21C." and second.previous_response_id == first.id
    third = await client.responses.create(model="m", previous_response_id=second.id, input="Thanks! Tomorrow?")
    assert third.output_text == "Probably sunny."

    user = {"role": "user", "content": "Weather in Paris?"}
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_w", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
        ],
    }
    result = {"role": "tool", "tool_call_id": "call_w", "content": "21C"}
    sent = [r.json["messages"] for r in upstream.requests]
    assert sent[0] == [{"role": "system", "content": "Be brief."}, user]
    assert sent[1] == [{"role": "system", "content": "Be brief."}, user, call, result]
    # earlier instructions are not carried over (as the API does); this turn has none
    assert sent[2] == [user, call, result, {"role": "assistant", "content": "It is 21C."},
                       {"role": "user", "content": "Thanks! Tomorrow?"}]  # fmt: skip


async def test_a_streamed_turn_is_there_for_the_very_next_request(start_upstream, start_gateway):
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.json_response(completion(f"turn {len(body['messages'])}"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in (b'{"role":"assistant","content":"streamed"}', b"{}"):
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "u",
                     "choices": [{"index": 0, "delta": orjson.loads(piece),
                                  "finish_reason": None if piece != b"{}" else "stop"}]}  # fmt: skip
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    upstream = await start_upstream(chat)
    gw = await start_gateway(gateway_config(connection("chat", upstream)))
    client = gw.client()
    async with client.responses.stream(model="m", input="one") as stream:
        first = await stream.get_final_response()
    second = await client.responses.create(model="m", previous_response_id=first.id, input="two")
    assert second.output_text == "turn 3"
    assert upstream.requests[-1].json["messages"][1] == {"role": "assistant", "content": "streamed"}


async def test_store_false_leaves_nothing_behind(start_upstream, start_gateway):
    upstream = await start_upstream(scripted_chat(completion("not kept")))
    gw = await start_gateway(gateway_config(connection("chat", upstream)))
    client = gw.client()
    answer = await client.responses.create(model="m", input="secret", store=False)
    assert answer.store is False
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(answer.id)
    with pytest.raises(openai.NotFoundError) as caught:
        await client.responses.create(model="m", input="again", previous_response_id=answer.id)
    assert caught.value.body["param"] == "previous_response_id"
    db = gw.config.store.path
    with ResponseStoreReader(db) as rows:
        assert rows == []


class ResponseStoreReader:
    """Reads the store's file directly: what is really on disk."""

    def __init__(self, path: str) -> None:
        import sqlite3

        self.db = sqlite3.connect(path)

    def __enter__(self) -> list[tuple]:
        return self.db.execute("SELECT id FROM responses").fetchall()

    def __exit__(self, *exc: object) -> None:
        self.db.close()


async def test_retrieve_delete_and_input_items_with_the_sdk(start_upstream, start_gateway):
    upstream = await start_upstream(scripted_chat(completion("first"), completion("second")))
    gw = await start_gateway(gateway_config(connection("chat", upstream)))
    client = gw.client()
    first = await client.responses.create(model="m", input="hello")
    second = await client.responses.create(
        model="m",
        previous_response_id=first.id,
        input=[{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "input_text", "text": "b"}]}],
    )
    fetched = await client.responses.retrieve(second.id)
    assert fetched.id == second.id and fetched.output_text == "second"

    items = [item async for item in client.responses.input_items.list(second.id, order="asc")]
    assert [(i.type, i.role, i.content[0].text) for i in items] == [("message", "user", "a"), ("message", "user", "b")]
    assert len({i.id for i in items}) == 2
    newest_first = await client.responses.input_items.list(second.id, limit=1)
    assert newest_first.data[0].id == items[-1].id and newest_first.has_more is True

    deleted = await client.responses.delete(first.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):  # the chain is broken now
        await client.responses.create(model="m", previous_response_id=second.id, input="c")


async def test_unknown_previous_response_is_404_in_openai_format(start_upstream, start_gateway):
    upstream = await start_upstream(scripted_chat())
    gw = await start_gateway(gateway_config(connection("chat", upstream)))
    with pytest.raises(openai.NotFoundError) as caught:
        await gw.client().responses.create(model="m", input="hi", previous_response_id="resp_nope")
    assert caught.value.body["code"] == "previous_response_not_found"
    assert upstream.requests == []


def native_answer(response_id: str, text: str) -> dict[str, Any]:
    return {
        "id": response_id, "object": "response", "created_at": 1, "status": "completed", "model": "gpt-5",
        "output": [{"type": "message", "id": f"msg_{response_id}", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}],
        "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7,
                  "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}},
    }  # fmt: skip


async def test_history_survives_falling_back_from_native_to_chat(start_upstream, start_gateway):
    native_turns = iter(
        [
            web.json_response(native_answer("resp_n1", "I am native.")),
            None,  # turn 2: the native connection is down
            web.json_response(native_answer("resp_n3", "Native again.")),
            web.json_response(native_answer("resp_n4", "Still native.")),
        ]
    )

    async def native(request: web.Request) -> web.StreamResponse:
        answer = next(native_turns)
        return answer if answer is not None else await error_handler(503, "down")(request)

    native_up = await start_upstream(native)
    chat_up = await start_upstream(scripted_chat(completion("Chat here.")))
    gw = await start_gateway(
        gateway_config(connection("native", native_up, responses="native"), connection("chat", chat_up, priority=200))
    )
    client = gw.client()
    one = await client.responses.create(model="m", input="Hi")
    assert one.id == "resp_n1"
    two = await client.responses.with_raw_response.create(model="m", input="Who are you?", previous_response_id=one.id)
    assert two.headers["x-gateway-attempts"] == "native:server_error,chat:ok"
    two = two.parse()
    # the native connection had its own id, so it was sent only the new input and the id
    assert native_up.requests[1].json == {"model": "m", "input": "Who are you?", "previous_response_id": "resp_n1"}
    # the chat connection never saw turn 1: it gets the whole conversation
    assert chat_up.requests[0].json["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "I am native."},
        {"role": "user", "content": "Who are you?"},
    ]
    three = await client.responses.create(model="m", input="And now?", previous_response_id=two.id)
    assert three.output_text == "Native again."
    sent = native_up.requests[2].json
    assert "previous_response_id" not in sent  # produced by chat: the native upstream cannot know it
    assert [item.get("content") for item in sent["input"]] == [
        [{"type": "input_text", "text": "Hi"}],
        [{"type": "output_text", "text": "I am native.", "annotations": [], "logprobs": []}],
        [{"type": "input_text", "text": "Who are you?"}],
        [{"type": "output_text", "text": "Chat here.", "annotations": [], "logprobs": []}],
        [{"type": "input_text", "text": "And now?"}],
    ]
    await client.responses.create(model="m", input="Last", previous_response_id=three.id)
    assert native_up.requests[3].json == {"model": "m", "input": "Last", "previous_response_id": "resp_n3"}


async def test_store_file_mode_and_eviction_by_age_and_size(tmp_path):
    path = tmp_path / "deep" / "responses.db"
    store = ResponseStore(str(path), max_age_days=1, max_bytes=2000)
    await store.open()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

        def stored(response_id: str, created_at: float = 0.0, size: int = 100) -> StoredResponse:
            return StoredResponse(response_id, "c", False, None, [{"pad": "x" * size}], {"id": response_id},
                                  created_at=created_at)  # fmt: skip

        store.submit(stored("old", created_at=time.time() - 2 * 86400))
        assert await store.get("old") is None  # expired: invisible at once
        for name in ("a", "b", "c"):
            store.submit(stored(name, size=500))
        assert [await store.get(n) is not None for n in ("a", "b", "c")] == [True, True, True]
        store.submit(stored("d", size=700))  # over 2000 bytes: the oldest go first
        assert [await store.get(n) is not None for n in ("a", "b", "c", "d")] == [False, True, True, True]
        with ResponseStoreReader(str(path)) as rows:
            assert sorted(rows) == [("b",), ("c",), ("d",)]  # "old" was deleted on the next write
        assert await store.delete("b") is True and await store.delete("b") is False
    finally:
        await store.close()


async def test_writes_go_together_in_one_transaction_within_the_batch_time(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "BATCH_SECONDS", 0.02)
    store = ResponseStore(str(tmp_path / "responses.db"), max_age_days=1, max_bytes=1 << 20)
    await store.open()
    batches: list[list[str]] = []
    write = store._write
    monkeypatch.setattr(store, "_write", lambda batch: batches.append([s.id for s in batch]) or write(batch))
    try:
        for n in range(5):
            store.submit(StoredResponse(f"r{n}", "c", False, None, [], {"id": f"r{n}"}))
        assert [(await store.get(f"r{n}")).response for n in range(5)] == [{"id": f"r{n}"} for n in range(5)]
        assert batches == [["r0", "r1", "r2", "r3", "r4"]]
        store.submit(StoredResponse("r5", "c", False, None, [], {"id": "r5"}))
        await asyncio.sleep(0)
        assert len(store._queued) == 1  # not yet: later writes may join it
        await asyncio.sleep(0.1)  # handed to the store's thread without a read
        assert store._queued == []
        assert await store.get("r5") is not None and batches[1:] == [["r5"]]
        store.submit(StoredResponse("r6", "c", False, None, [], {"id": "r6"}))  # closing writes what is queued
    finally:
        await store.close()
    assert batches[2:] == [["r6"]]


async def test_a_batch_goes_in_statements_of_few_distinct_sizes(tmp_path, monkeypatch):
    """Each distinct statement text stays compiled in sqlite3's cache: one per batch size cost megabytes."""
    store = ResponseStore(str(tmp_path / "responses.db"), max_age_days=1, max_bytes=1 << 20)
    await store.open()
    sizes: list[int] = []
    insert = store._insert
    monkeypatch.setattr(store, "_insert", lambda rows: sizes.append(len(rows)) or insert(rows))
    try:
        for n in range(100):
            store.submit(StoredResponse(f"r{n}", "c", False, None, [], {"id": f"r{n}", "text": "é" * n}))
        assert (await store.get("r99")).response["text"] == "é" * 99
    finally:
        await store.close()
    assert sizes == [64, 32, 4]
    assert store._bytes == sum(len(orjson.dumps({"id": f"r{n}", "text": "é" * n})) + 2 for n in range(100))


async def test_an_answer_written_twice_is_kept_once_and_counted_once(tmp_path):
    store = ResponseStore(str(tmp_path / "responses.db"), max_age_days=1, max_bytes=1 << 20)
    await store.open()
    try:
        store.submit(StoredResponse("r", "c", False, None, [], {"id": "r", "v": 1}))
        store.submit(StoredResponse("r", "c", False, None, [], {"id": "r", "v": 22}))  # the same batch
        assert (await store.get("r")).response == {"id": "r", "v": 22}
        store.submit(StoredResponse("r", "c", False, None, [], {"id": "r", "v": 333}))  # a later batch
        assert (await store.get("r")).response == {"id": "r", "v": 333}
    finally:
        await store.close()
    assert store._bytes == len(orjson.dumps({"id": "r", "v": 333})) + 2
