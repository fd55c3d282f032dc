"""Logging: one structured line per request, JSON or text, with no keys and no bodies by default."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any

import orjson

from .config.model import LoggingConfig
from .record import RequestRecord

request_log = logging.getLogger("gateway.request")

# Log fields a client chose (a model name, a path, a proxy target) are cut here, so no request can
# make a line of megabytes; `logging.bodies: true` keeps its own bound (the first MiB of a body).
FIELD_LIMIT = 1024


def bounded(text: str | None) -> str | None:
    """`text`, or its first FIELD_LIMIT characters and a marker saying how many were cut."""
    if text is None or len(text) <= FIELD_LIMIT:
        return text
    return f"{text[:FIELD_LIMIT]}...[{len(text) - FIELD_LIMIT} more characters]"


def json_line(created: float, level: str, logger: str, message: str, fields: dict[str, Any] | None) -> dict[str, Any]:
    """What a JSON log line holds, in order."""
    entry: dict[str, Any] = {"time": _timestamp(created), "level": level, "logger": logger, "message": message}
    if fields:
        entry.update(fields)
    return entry


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = json_line(
            record.created, record.levelname.lower(), record.name, record.getMessage(), getattr(record, "fields", None)
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...`, control characters escaped (a client's newline
    cannot forge a line); a traceback follows on lines of its own."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record.created)} {record.levelname} {record.name}: {_text(record.getMessage())}"
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={_text(v)}" for k, v in fields.items() if v is not None)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def _timestamp(created: float) -> str:
    """ISO 8601 UTC with milliseconds. The part up to the second changes once a second: it is
    formatted then, not for every line."""
    global _second
    whole = int(created)
    if whole != _second[0]:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int((created - whole) * 1000):03d}Z"


def _text(value: Any) -> str:
    """A field's value on a text line: strings as they are unless they hold a control character
    (then escaped), anything else as JSON."""
    if isinstance(value, str):
        return value if value.isprintable() else value.encode("unicode_escape").decode("ascii")
    return orjson.dumps(value, default=str).decode()


# How long a request line may wait in memory before it is written. Under load one write then carries
# hundreds of lines: fewer system calls, and fewer moments where the event loop lets go of the GIL
# (the response store's thread takes it then). Warnings and errors are written at the end of the turn.
FLUSH_SECONDS = 0.05


class LoopBatchingHandler(logging.StreamHandler):
    """Lines logged on the event loop go out together: warnings and errors at the end of the loop
    turn, other lines within FLUSH_SECONDS. Without a running loop (other threads, start-up) a line
    is written at once; `logging.shutdown` at exit writes what is left."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._urgent = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.add(self.format(record), urgent=record.levelno >= logging.WARNING)
        except Exception:
            self.handleError(record)

    def add(self, line: str, *, urgent: bool = False) -> None:
        """A formatted line, to be written with the others of its moment."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            with self.lock:
                self.stream.write(line + "\n")
                self.stream.flush()
            return
        self._lines.append(line)
        if urgent and not self._urgent:
            self._urgent = True
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_soon(self.flush)
        elif self._timer is None:
            self._timer = loop.call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        with self.lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer, self._urgent = None, False
            if self._lines:
                lines, self._lines = self._lines, []
                self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()


def setup_logging(config: LoggingConfig, level_override: str | None = None) -> None:
    # Neither format prints thread or process names: do not look them up for every record.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = LoopBatchingHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level_override or config.level).upper())
    global _json_handler
    _json_handler = handler if config.format == "json" else None


# The handler of `setup_logging` when it writes JSON lines: request lines then skip the LogRecord.
_json_handler: LoopBatchingHandler | None = None


def _ms(seconds: float | None) -> float | None:
    """Milliseconds to the microsecond (truncated: round() to 3 digits formats the float as text)."""
    return None if seconds is None else int(seconds * 1_000_000) / 1000


def request_fields(record: RequestRecord, duration: float) -> dict[str, Any]:
    usage = record.usage
    attempts = []
    for a in record.attempts:
        attempt = {
            "connection": a.connection, "reason": a.reason.value, "duration_ms": _ms(a.duration), "status": a.status
        }  # fmt: skip
        if a.detail:
            attempt["detail"] = bounded(a.detail)
        attempts.append(attempt)
    fields: dict[str, Any] = {
        "request_id": record.request_id,
        "route": record.route,
        "client_format": record.client_api.value,
        "model": bounded(record.model),
        "stream": record.stream,
        "status": record.status,
        "connection": record.connection,
        "attempts": attempts,
        "duration_ms": _ms(duration),
        "ttfb_ms": _ms(record.ttfb),
        "tokens": None
        if usage is None
        else {"input": usage.input_tokens, "output": usage.output_tokens, "reasoning": usage.reasoning_tokens},
    }
    if usage is not None and usage.estimated:
        fields["usage_estimated"] = True
    if record.client_disconnected:
        fields["client_disconnected"] = True
    if record.failed_after_commit:
        fields["failed_after_commit"] = True
    if record.request_body is not None:
        fields["request_body"] = record.request_body
    if record.response_body is not None:
        fields["response_body"] = record.response_body.decode("utf-8", "replace")
    return fields


class RequestLine(logging.LogRecord):
    """The request line as a LogRecord, so that every handler and formatter takes it, but made from a
    template: LogRecord.__init__ works out the caller's file, module and times for every record,
    which costs as much as the rest of the line and which a request line does not use."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.__dict__.update(_REQUEST_LINE)
        now = time.time()
        self.created = now
        self.msecs = int((now - int(now)) * 1000) + 0.0
        self.relativeCreated = (now - _LOADED) * 1000
        self.fields = fields


_LOADED = time.time()
# Every attribute a LogRecord has (formatters read them through __dict__), with a request line's values.
_REQUEST_LINE = vars(logging.LogRecord(request_log.name, logging.INFO, "", 0, "request", (), None)).copy()


def log_request(record: RequestRecord, duration: float) -> None:
    if not request_log.isEnabledFor(logging.INFO):
        return
    fields = request_fields(record, duration)
    direct = _json_handler
    root_handlers = logging.root.handlers
    if direct is not None and len(root_handlers) == 1 and root_handlers[0] is direct and not request_log.handlers:
        # Only the JSON handler of `setup_logging` takes it: the line it would format, without the
        # LogRecord and the handler chain (together half a line's cost).
        entry = json_line(time.time(), "info", request_log.name, "request", fields)
        direct.add(orjson.dumps(entry, default=str).decode())
    else:
        request_log.handle(RequestLine(fields))
