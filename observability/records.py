"""The structured log record: one dict per log call, built once, shared by every output.

``LogEntry`` is what the console/file output, the Loki and Elasticsearch sinks and the embedded
log search all consume. It is built in the thread that logged, so it captures that thread's
OpenTelemetry span (``trace_id``/``span_id``) and the fields bound with :func:`bind` (``run_id``,
``step``...), and then handed to background sinks without further work in the caller.

Field names (the JSON line):

``timestamp`` RFC 3339 UTC with microseconds, ``level`` (DEBUG, INFO, WARNING, ERROR, CRITICAL),
``logger``, ``message``, ``service``, ``trace_id`` and ``span_id`` (lower-case hex, absent
outside a span), ``run_id``/``step``/``workflow`` inside a run, any ``extra={...}`` given to the
logging call, and ``exception`` (``type``, ``message``, ``stack``) when one is attached.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import threading
import traceback
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from opentelemetry import trace

__all__ = [
    "RESERVED_FIELDS",
    "LogEntry",
    "bind",
    "bound_fields",
    "build_entry",
    "format_timestamp",
    "is_shipper_thread",
    "mark_shipper_thread",
    "pop_fields",
    "push_fields",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "observability_log_context", default=_EMPTY
)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}

RESERVED_FIELDS = frozenset(
    {"timestamp", "level", "logger", "message", "service", "trace_id", "span_id", "exception"}
)
"""Field names the record builder owns; an ``extra`` with one of these names is prefixed.

Exception: ``trace_id``/``span_id`` given in ``extra`` are used as is when the record is not
logged inside a span (the runtime logs on behalf of a run from outside its span).
"""
_TRACE_FIELDS = frozenset({"trace_id", "span_id"})


class _ShipperFlag(threading.local):
    # A class attribute default: reading it never raises (getattr with a default on a bare
    # threading.local raises and catches internally on every call, which costs microseconds).
    active = False


_shipper = _ShipperFlag()


def mark_shipper_thread() -> None:
    """Mark the calling thread as a log shipper: records it logs never reach the sinks.

    Sinks call this in their background threads so that their own HTTP client's log lines
    (``httpx``, ``urllib3``, ``elastic_transport``) are never shipped back into themselves.
    """
    _shipper.active = True


def is_shipper_thread() -> bool:
    """Return whether the calling thread was marked with :func:`mark_shipper_thread`."""
    return _shipper.active


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every record logged inside the ``with`` block (this context only).

    Example:
        >>> with bind(run_id="r-1", step="fetch"):
        ...     logging.getLogger("agent").info("fetching")  # record has run_id and step
    """
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def push_fields(**fields: Any) -> contextvars.Token[Mapping[str, Any]]:
    """Bind ``fields`` until :func:`pop_fields` (the class-free form of :func:`bind`).

    For hot paths that manage their own scope objects; ``pop_fields`` must be called with the
    token in the same context, in LIFO order.
    """
    return _context.set({**_context.get(), **fields})


def pop_fields(token: contextvars.Token[Mapping[str, Any]]) -> None:
    """Undo :func:`push_fields`."""
    _context.reset(token)


def bound_fields() -> Mapping[str, Any]:
    """Return the fields bound by the enclosing :func:`bind` blocks."""
    return _context.get()


_second_cache: tuple[int, str] = (-1, "")


def format_timestamp(created: float) -> str:
    """Format epoch seconds as RFC 3339 UTC with microseconds (``2026-01-02T03:04:05.123456Z``).

    The ``YYYY-MM-DDTHH:MM:SS`` prefix is cached per whole second (log calls come in bursts);
    microseconds are rounded like ``datetime`` rounds them.
    """
    global _second_cache
    second = int(created // 1)
    micros = round((created - second) * 1_000_000)
    if micros >= 1_000_000:
        second += 1
        micros -= 1_000_000
    cached_second, prefix = _second_cache
    if cached_second != second:
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_cache = (second, prefix)
    return f"{prefix}.{micros:06d}Z"


class LogEntry:
    """One structured log record.

    Attributes:
        time_ns: The record's own creation time in nanoseconds since the epoch (never the send
            time).
        level: The level name.
        fields: The full record as a JSON-ready dict (see the module docstring).
    """

    __slots__ = ("_json", "fields", "level", "time_ns")

    def __init__(self, time_ns: int, level: str, fields: dict[str, Any]) -> None:
        self.time_ns = time_ns
        self.level = level
        self.fields = fields
        self._json: str | None = None

    def json(self) -> str:
        """Return the record as one line of JSON (computed once)."""
        if self._json is None:
            self._json = _ENCODER.encode(self.fields)
        return self._json

    @property
    def trace_id(self) -> str | None:
        """The record's trace id, if it was logged inside a span."""
        return self.fields.get("trace_id")

    @property
    def message(self) -> str:
        """The formatted message."""
        return str(self.fields.get("message", ""))

    def __repr__(self) -> str:
        return f"LogEntry({self.json()})"


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)


_ENCODER = json.JSONEncoder(default=_json_default, ensure_ascii=False)


def _exception_fields(exc_info: Any) -> dict[str, str] | None:
    if not exc_info or exc_info is True:
        return None
    etype, value, tb = exc_info
    if etype is None:
        return None
    return {
        "type": f"{etype.__module__}.{etype.__qualname__}"
        if etype.__module__ != "builtins"
        else etype.__qualname__,
        "message": str(value),
        "stack": "".join(traceback.format_exception(etype, value, tb)),
    }


def build_entry(record: logging.LogRecord, service: str) -> LogEntry:
    """Build the structured entry for ``record`` in the calling thread.

    Args:
        record: The stdlib log record.
        service: The service name to stamp on it.

    Returns:
        The entry, ready to be formatted or shipped.
    """
    message = record.getMessage()
    fields: dict[str, Any] = {
        "timestamp": format_timestamp(record.created),
        "level": record.levelname,
        "logger": record.name,
        "message": message,
        "service": service,
    }
    span_ctx = trace.get_current_span().get_span_context()
    if span_ctx.is_valid:
        fields["trace_id"] = format(span_ctx.trace_id, "032x")
        fields["span_id"] = format(span_ctx.span_id, "016x")
    bound = _context.get()
    if bound:
        fields.update(bound)
        if "trace_id" in bound and not span_ctx.is_valid:
            fields["trace_id"] = bound["trace_id"]
    for key, value in record.__dict__.items():
        if key in _RECORD_ATTRS or key.startswith("_"):
            continue
        if key in _TRACE_FIELDS and not span_ctx.is_valid and value:
            fields[key] = value  # logged outside a span on behalf of a known trace
        else:
            fields[f"extra.{key}" if key in RESERVED_FIELDS else key] = value
    exc = _exception_fields(record.exc_info)
    if exc is not None:
        fields["exception"] = exc
    elif record.exc_text:
        fields["exception"] = {"type": "", "message": "", "stack": record.exc_text}
    if record.stack_info:
        fields["stack_info"] = record.stack_info
    return LogEntry(int(record.created * 1e9), record.levelname, fields)
