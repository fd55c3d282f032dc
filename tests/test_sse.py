"""The incremental SSE parser and writer: framing, chunk boundaries, fields, round trips.

hypothesis is not installed in the project's virtualenv, so chunk boundaries are tested exhaustively
(every single split point, every pair of split points on a shorter stream, and one byte at a time).
"""

from __future__ import annotations

import pytest

from gateway.sse import SSEEvent, SSEParser, encode_comment, encode_event


def parse_chunks(chunks: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.close())
    return events


def parse_whole(stream: bytes) -> list[SSEEvent]:
    return parse_chunks([stream])


def parse_bytewise(stream: bytes) -> list[SSEEvent]:
    return parse_chunks([stream[i : i + 1] for i in range(len(stream))])


def with_line_endings(stream: bytes, ending: bytes) -> bytes:
    return stream.replace(b"\n", ending)


# A realistic OpenAI Chat Completions stream, with an OpenRouter-style keep-alive comment.
CHUNKS = [
    b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}',
    b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}]}',
    b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"delta":{"content":" w\xc3\xb6rld: \\"hi\\"\\n"},"finish_reason":null}]}',
    b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
    b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}',
]
OPENAI_STREAM = (
    b": OPENROUTER PROCESSING\n\n"
    + b"data: "
    + CHUNKS[0]
    + b"\n\n"
    + b"data: "
    + CHUNKS[1]
    + b"\n\n"
    + b": keep-alive\n\n"
    + b"data: "
    + CHUNKS[2]
    + b"\n\n"
    + b"data: "
    + CHUNKS[3]
    + b"\n\n"
    + b"data: "
    + CHUNKS[4]
    + b"\n\n"
    + b"data: [DONE]\n\n"
)
OPENAI_EVENTS = [
    SSEEvent(b"OPENROUTER PROCESSING", comment=True),
    SSEEvent(CHUNKS[0]),
    SSEEvent(CHUNKS[1]),
    SSEEvent(b"keep-alive", comment=True),
    SSEEvent(CHUNKS[2]),
    SSEEvent(CHUNKS[3]),
    SSEEvent(CHUNKS[4]),
    SSEEvent(b"[DONE]"),
]

# A shorter stream exercising every field kind, for the quadratic two-split test.
MIXED_STREAM = (
    b': ping\nevent: message_start\ndata: {"a":1}\n\nid: 7\nretry: 100\ndata:line1\ndata: line2\n\ndata: [DONE]\n\n'
)
MIXED_EVENTS = [
    SSEEvent(b"ping", comment=True),
    SSEEvent(b'{"a":1}', "message_start"),
    SSEEvent(b"line1\nline2"),
    SSEEvent(b"[DONE]"),
]

ENDINGS = [pytest.param(b"\n", id="LF"), pytest.param(b"\r\n", id="CRLF"), pytest.param(b"\r", id="CR")]


# --- chunk boundaries ------------------------------------------------------------------------------


def test_openai_stream_whole() -> None:
    assert parse_whole(OPENAI_STREAM) == OPENAI_EVENTS


def test_openai_stream_events_come_out_without_close() -> None:
    parser = SSEParser()
    assert parser.feed(OPENAI_STREAM) == OPENAI_EVENTS
    assert parser.close() == []


@pytest.mark.parametrize("ending", ENDINGS)
def test_openai_stream_one_byte_at_a_time(ending: bytes) -> None:
    assert parse_bytewise(with_line_endings(OPENAI_STREAM, ending)) == OPENAI_EVENTS


@pytest.mark.parametrize("ending", ENDINGS)
def test_openai_stream_every_single_split_point(ending: bytes) -> None:
    stream = with_line_endings(OPENAI_STREAM, ending)
    for cut in range(len(stream) + 1):
        assert parse_chunks([stream[:cut], stream[cut:]]) == OPENAI_EVENTS, f"split at {cut}: {stream[:cut][-20:]!r}"


@pytest.mark.parametrize("ending", ENDINGS)
def test_mixed_stream_every_pair_of_split_points(ending: bytes) -> None:
    stream = with_line_endings(MIXED_STREAM, ending)
    for first in range(len(stream) + 1):
        for second in range(first, len(stream) + 1):
            chunks = [stream[:first], stream[first:second], stream[second:]]
            assert parse_chunks(chunks) == MIXED_EVENTS, f"splits at {first}, {second}"


@pytest.mark.parametrize("ending", ENDINGS)
def test_mixed_stream_one_byte_at_a_time(ending: bytes) -> None:
    assert parse_bytewise(with_line_endings(MIXED_STREAM, ending)) == MIXED_EVENTS


def test_empty_feeds_change_nothing() -> None:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in (b"", b"data: a\r", b"", b"\n", b"", b"\r\n", b""):
        events.extend(parser.feed(chunk))
    assert events == [SSEEvent(b"a")]
    assert parser.close() == []


# --- line endings --------------------------------------------------------------------------------


def test_lf_crlf_and_cr_framing_give_the_same_events() -> None:
    results = {ending: parse_whole(with_line_endings(MIXED_STREAM, ending)) for ending in (b"\n", b"\r\n", b"\r")}
    assert results[b"\n"] == MIXED_EVENTS
    assert results[b"\r\n"] == MIXED_EVENTS
    assert results[b"\r"] == MIXED_EVENTS


def test_mixed_line_endings_in_one_stream() -> None:
    stream = b"data: a\r\ndata: b\n\rdata: c\r\r\nevent: e\rdata: d\n\r\n"
    assert parse_whole(stream) == [SSEEvent(b"a\nb"), SSEEvent(b"c"), SSEEvent(b"d", "e")]


def test_crlf_split_between_cr_and_lf_is_one_line_break() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    # Were the \r and \n counted as two line breaks, "a" would be dispatched alone here.
    assert parser.feed(b"\ndata: b\r\n") == []
    assert parser.feed(b"\r\n") == [SSEEvent(b"a\nb")]
    assert parser.close() == []


def test_crlf_split_between_cr_and_lf_of_the_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r\n\r") == []  # the final CR may still be half of a CRLF
    assert parser.feed(b"\ndata: b\r\n\r\n") == [SSEEvent(b"a"), SSEEvent(b"b")]


def test_cr_held_at_end_then_bare_cr() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\r") == []  # the second CR could still begin a CRLF
    assert parser.feed(b"data: b\r\r") == [SSEEvent(b"a")]
    assert parser.close() == [SSEEvent(b"b")]


# --- fields ----------------------------------------------------------------------------------------


def test_comment_lines_are_comment_events() -> None:
    events = parse_whole(b": ping\n\n:\n:no-space\n")
    assert events == [SSEEvent(b"ping", comment=True), SSEEvent(b"", comment=True), SSEEvent(b"no-space", comment=True)]
    assert all(e.comment and e.event is None for e in events)


def test_comment_inside_an_event_does_not_break_it() -> None:
    assert parse_whole(b"data: a\n: keep-alive\ndata: b\n\n") == [
        SSEEvent(b"keep-alive", comment=True),
        SSEEvent(b"a\nb"),
    ]


def test_event_name_is_captured_and_reset_after_dispatch() -> None:
    stream = (
        b"event: message_start\n"
        b'data: {"type":"message_start"}\n\n'
        b'data: {"type":"ping"}\n\n'
        b"event:content_block_delta\n"
        b'data: {"type":"content_block_delta"}\n\n'
    )
    assert parse_whole(stream) == [
        SSEEvent(b'{"type":"message_start"}', "message_start"),
        SSEEvent(b'{"type":"ping"}', None),
        SSEEvent(b'{"type":"content_block_delta"}', "content_block_delta"),
    ]


def test_event_without_data_is_not_dispatched_and_its_name_does_not_leak() -> None:
    assert parse_whole(b"event: orphan\n\ndata: x\n\n") == [SSEEvent(b"x")]


def test_multi_line_data_joins_with_newline() -> None:
    assert parse_whole(b'data: {\ndata:   "a": 1\ndata: }\n\n') == [SSEEvent(b'{\n  "a": 1\n}')]


def test_data_without_space_after_colon() -> None:
    assert parse_whole(b"data:[DONE]\n\n") == [SSEEvent(b"[DONE]")]
    # only one leading space is removed
    assert parse_whole(b"data:  two\n\n") == [SSEEvent(b" two")]
    # a colon inside the value stays
    assert parse_whole(b"data: a: b\n\n") == [SSEEvent(b"a: b")]


def test_id_retry_and_unknown_fields_are_ignored() -> None:
    stream = b"id: 42\nretry: 3000\nfoo: bar\ndata: x\nid: 43\n\nid: 44\nretry: 1\n\n"
    assert parse_whole(stream) == [SSEEvent(b"x")]


def test_non_ascii_event_name_and_data() -> None:
    assert parse_whole("event: ümlaut\ndata: héllo\n\n".encode()) == [SSEEvent("héllo".encode(), "ümlaut")]


# --- close ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (b"data: last", [SSEEvent(b"last")]),  # no line break at all
        (b"data: last\n", [SSEEvent(b"last")]),  # line break but no blank line
        (b"data: last\r", [SSEEvent(b"last")]),  # a held CR
        (b"data: last\r\n", [SSEEvent(b"last")]),
        (b"event: done\ndata: a\ndata: b", [SSEEvent(b"a\nb", "done")]),
        (b"", []),
        (b"event: only\n", []),
    ],
)
def test_close_delivers_an_event_without_its_blank_line(tail: bytes, expected: list[SSEEvent]) -> None:
    parser = SSEParser()
    assert parser.feed(b"data: first\n\n" + tail) == [SSEEvent(b"first")]
    assert parser.close() == expected
    assert parser.close() == []  # nothing is delivered twice


# --- encode_event ---------------------------------------------------------------------------------


def test_encode_event_exact_bytes() -> None:
    assert encode_event(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert encode_event(b"a\nb") == b"data: a\ndata: b\n\n"
    assert encode_event(b"x", "message_stop") == b"event: message_stop\ndata: x\n\n"
    assert encode_comment(b"ping") == b": ping\n\n"


@pytest.mark.parametrize(
    "data",
    [
        b'{"id":"chatcmpl-1","choices":[{"delta":{"content":"hi"}}]}',
        b"[DONE]",
        b"line one\nline two\nline three",
        b"trailing newline\n",
        b"\nleading newline",
        b"",
        b" leading space",
        b"key: value",
        b": not a comment",
        "ünïcödé".encode(),
    ],
)
@pytest.mark.parametrize("event", [None, "message_delta"])
def test_encode_event_round_trips(data: bytes, event: str | None) -> None:
    encoded = encode_event(data, event)
    assert encoded.endswith(b"\n\n")
    assert parse_whole(encoded) == [SSEEvent(data, event)]
    assert parse_bytewise(encoded) == [SSEEvent(data, event)]


def test_encoded_events_concatenate_into_a_stream() -> None:
    events = [SSEEvent(b"one"), SSEEvent(b"two\nlines", "multi"), SSEEvent(b"[DONE]")]
    stream = encode_comment(b"ping") + b"".join(encode_event(e.data, e.event) for e in events)
    assert parse_whole(stream) == [SSEEvent(b"ping", comment=True), *events]


@pytest.mark.parametrize("split", [0, 1, 2, 3, 4])
def test_leading_utf8_bom_is_stripped_once_at_any_split(split: int) -> None:
    raw = b"\xef\xbb\xbfdata: first\n\ndata: \xef\xbb\xbfsecond\n\n"
    parser = SSEParser()
    events = parser.feed(raw[:split]) + parser.feed(raw[split:])
    assert [e.data for e in events] == [b"first", b"\xef\xbb\xbfsecond"]
