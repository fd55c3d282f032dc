"""The pivot every translation goes through: one request, one response, one set of stream events.

Each wire format converts to and from these, so N formats need N converters, not N x N. The model
holds what every format can express; a field that cannot be carried is dropped with a debug log, or
the translation fails with `unsupported` when dropping it would change the meaning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
# What clients accept as finish reasons (some reject anything else).
Finish = Literal["stop", "length", "tool_calls", "content_filter"]


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0  # of input_tokens, served from the provider's prompt cache
    cache_write_tokens: int = 0  # of input_tokens, written to the provider's prompt cache
    estimated: bool = False  # no usage from the upstream: a documented heuristic


@dataclass(slots=True)
class Text:
    text: str


@dataclass(slots=True)
class Image:
    url: str  # http(s) or a data: URL
    detail: str | None = None


@dataclass(slots=True)
class File:
    data: str | None = None  # a data: URL or base64
    file_id: str | None = None
    filename: str | None = None


Part = Text | Image | File


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, exactly as the model produced it


@dataclass(slots=True)
class Message:
    role: Role
    content: list[Part] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)  # assistant
    tool_call_id: str | None = None  # tool: the call this answers
    reasoning: str | None = None  # assistant: reasoning to replay where a format can carry it
    reasoning_signature: str | None = None  # proof the reasoning is the model's own (Anthropic thinking)

    def text(self) -> str:
        return "".join(p.text for p in self.content if isinstance(p, Text))


@dataclass(slots=True)
class Tool:
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


@dataclass(slots=True)
class OutputFormat:
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


@dataclass(slots=True)
class Request:
    messages: list[Message]
    tools: list[Tool] = field(default_factory=list)
    tool_choice: str | None = None  # "auto", "none", "required"
    forced_tool: str | None = None  # a tool the model must call
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    output_format: OutputFormat | None = None
    reasoning_effort: str | None = None
    metadata: dict[str, Any] | None = None
    user: str | None = None
    stream: bool = False
    # What the client asked for that this model cannot carry; a translation that would need it fails.
    unsupported: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Response:
    text: str = ""
    reasoning: str = ""
    reasoning_signature: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish: Finish = "stop"
    usage: Usage | None = None
    refusal: str | None = None
    id: str | None = None
    model: str | None = None


# --- stream events ---------------------------------------------------------------------------------


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ReasoningDelta:
    text: str


@dataclass(slots=True)
class ReasoningSignature:
    signature: str


@dataclass(slots=True)
class ToolCallStart:
    index: int  # the upstream's index: parallel calls are told apart by it
    id: str
    name: str


@dataclass(slots=True)
class ToolCallDelta:
    index: int
    arguments: str


@dataclass(slots=True)
class FinishEvent:
    reason: Finish


@dataclass(slots=True)
class UsageEvent:
    usage: Usage


Event = TextDelta | ReasoningDelta | ReasoningSignature | ToolCallStart | ToolCallDelta | FinishEvent | UsageEvent
# Events that mean the model has answered: a stream commits to its connection on the first of them.
CONTENT_EVENTS = (TextDelta, ReasoningDelta, ToolCallStart, ToolCallDelta, FinishEvent)


def carries_content(events: list[Event]) -> bool:
    return any(isinstance(e, CONTENT_EVENTS) and not (isinstance(e, TextDelta) and not e.text) for e in events)


def events_of(response: Response) -> list[Event]:
    """A whole answer as the stream events that would have carried it (for an upstream that answered
    a stream request with one JSON body). Usage is not among them: it goes to `finish_stream`."""
    events: list[Event] = []
    if response.reasoning:
        events.append(ReasoningDelta(response.reasoning))
    if response.reasoning_signature:
        events.append(ReasoningSignature(response.reasoning_signature))
    if response.text or response.refusal:
        events.append(TextDelta(response.text or response.refusal or ""))
    for index, call in enumerate(response.tool_calls):
        events.append(ToolCallStart(index, call.id, call.name))
        if call.arguments:
            events.append(ToolCallDelta(index, call.arguments))
    events.append(FinishEvent(response.finish))
    return events


class Accumulator:
    """Folds stream events into a Response (an upstream that streams to a client that asked for JSON)."""

    def __init__(self) -> None:
        self.response = Response()
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._calls: dict[int, ToolCall] = {}
        self.finished = False

    def add(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, TextDelta):
                self._text.append(event.text)
            elif isinstance(event, ReasoningDelta):
                self._reasoning.append(event.text)
            elif isinstance(event, ReasoningSignature):
                self.response.reasoning_signature = event.signature
            elif isinstance(event, ToolCallStart):
                self._calls[event.index] = ToolCall(event.id, event.name, "")
            elif isinstance(event, ToolCallDelta):
                call = self._calls.get(event.index)
                if call is not None:
                    call.arguments += event.arguments
            elif isinstance(event, FinishEvent):
                self.response.finish = event.reason
                self.finished = True
            elif isinstance(event, UsageEvent):
                self.response.usage = event.usage

    def result(self) -> Response:
        self.response.text = "".join(self._text)
        self.response.reasoning = "".join(self._reasoning)
        self.response.tool_calls = [self._calls[i] for i in sorted(self._calls)]
        return self.response


# --- usage when an upstream reports none ------------------------------------------------------------

CHARS_PER_TOKEN = 4  # the usual English average for BPE tokenizers; no tokenizer download needed


def estimate_tokens(chars: int) -> int:
    return max(1, math.ceil(chars / CHARS_PER_TOKEN)) if chars else 0


def request_chars(request: Request) -> int:
    chars = 0
    for message in request.messages:
        chars += len(message.text())
        chars += sum(len(c.name) + len(c.arguments) for c in message.tool_calls)
    for tool in request.tools:
        chars += len(tool.name) + len(tool.description or "") + len(str(tool.parameters or ""))
    return chars


def answer_chars(response: Response) -> int:
    """What an answer's output tokens are estimated from: text and tool calls (reasoning apart)."""
    return len(response.text) + sum(len(c.name) + len(c.arguments) for c in response.tool_calls)


def estimate_usage(request: Request, answer: int, reasoning: int) -> Usage:
    """Documented heuristic (README): about four characters per token, marked as estimated.
    `answer` and `reasoning` are character counts."""
    reasoning_tokens = estimate_tokens(reasoning)
    output = estimate_tokens(answer) + reasoning_tokens
    return Usage(
        input_tokens=estimate_tokens(request_chars(request)),
        output_tokens=output,
        reasoning_tokens=reasoning_tokens,
        estimated=True,
    )


# --- what a request needs from a connection ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Features:
    tools: bool = False
    vision: bool = False
    json_schema: bool = False
    reasoning: bool = False
    input_tokens: int = 0  # estimated

    def missing(self, capabilities: Any) -> list[str]:
        """The features `capabilities` cannot serve, by name."""
        lacking = [
            name
            for name in ("tools", "vision", "json_schema", "reasoning")
            if getattr(self, name) and not getattr(capabilities, name)
        ]
        if capabilities.max_context and self.input_tokens > capabilities.max_context:
            lacking.append(f"a context of {self.input_tokens} tokens (max_context {capabilities.max_context})")
        return lacking


def features(request: Request) -> Features:
    return Features(
        tools=bool(request.tools) or any(m.tool_calls or m.role == "tool" for m in request.messages),
        vision=any(isinstance(p, Image) for m in request.messages for p in m.content),
        json_schema=request.output_format is not None and request.output_format.type == "json_schema",
        reasoning=bool(request.reasoning_effort) and request.reasoning_effort != "none",
        input_tokens=estimate_tokens(request_chars(request)),
    )
