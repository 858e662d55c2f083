"""Structured logging on the stdlib ``logging`` module.

One :class:`StructuredHandler` on the root logger builds each record's
:class:`~observability.records.LogEntry` once, in the thread that logged, writes it to a stream
(JSON lines by default, or a readable console format for local development) and hands it to every
configured sink (Loki, Elasticsearch, the embedded search store), whose ``submit`` never blocks.

Records logged from a sink's own background thread (its HTTP client's lines) are written to the
stream but never handed to the sinks, so a shipper never ships itself.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Sequence
from typing import IO, Final

from observability.records import LogEntry, build_entry, is_shipper_thread
from observability.sinks.base import Sink

__all__ = [
    "CONSOLE",
    "FORMATS",
    "JSON",
    "StructuredHandler",
    "format_console",
]

JSON: Final = "json"
CONSOLE: Final = "console"
FORMATS: Final = (JSON, CONSOLE)

_LEVEL_STYLE = {
    "DEBUG": "\x1b[2m",
    "INFO": "\x1b[36m",
    "WARNING": "\x1b[33m",
    "ERROR": "\x1b[31m",
    "CRITICAL": "\x1b[1;31m",
}
_CONSOLE_SKIP = frozenset({"timestamp", "level", "logger", "message", "service", "exception"})


def format_console(entry: LogEntry, *, color: bool = False) -> str:
    """Render ``entry`` as one readable line (plus the stack, if any) for a terminal.

    Args:
        entry: The structured record.
        color: Colour the level with ANSI escapes.

    Returns:
        ``HH:MM:SS.mmm LEVEL logger: message key=value ...``
    """
    f = entry.fields
    level = f["level"]
    level = f"{_LEVEL_STYLE.get(level, '')}{level:<7}\x1b[0m" if color else f"{level:<7}"
    extras = " ".join(f"{k}={v}" for k, v in f.items() if k not in _CONSOLE_SKIP)
    line = f"{f['timestamp'][11:23]} {level} {f['logger']}: {f['message']}"
    if extras:
        line += f"  {extras}"
    exc = f.get("exception")
    if exc:
        line += "\n" + str(exc.get("stack", "")).rstrip()
    return line


class StructuredHandler(logging.Handler):
    """Write structured records to a stream and fan them out to sinks.

    Args:
        service: The ``service`` field stamped on every record.
        stream: Where lines go (default ``sys.stderr``); call :meth:`without_stream` to
            write no lines (records still reach the sinks).
        fmt: ``json`` (one JSON object per line) or ``console`` (readable).
        sinks: Destinations that receive every record (never blocking).
        level: The handler's level.
    """

    def __init__(
        self,
        service: str,
        *,
        stream: IO[str] | None = None,
        fmt: str = JSON,
        sinks: Sequence[Sink] = (),
        level: int = logging.NOTSET,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"log format must be one of {FORMATS}, got {fmt!r}")
        super().__init__(level)
        self.service = service
        self.stream: IO[str] | None = stream if stream is not None else sys.stderr
        self.fmt = fmt
        self.sinks: tuple[Sink, ...] = tuple(sinks)
        self._color = fmt == CONSOLE and bool(getattr(self.stream, "isatty", lambda: False)())
        self._write_lock = threading.Lock()

    def without_stream(self) -> StructuredHandler:
        """Stop writing lines (sinks still receive records); returns ``self``."""
        self.stream = None
        return self

    def emit(self, record: logging.LogRecord) -> None:
        """Build the entry once, write it, and hand it to each sink."""
        try:
            entry = build_entry(record, self.service)
            stream = self.stream
            if stream is not None:
                if self.fmt == JSON:
                    line = entry.json()
                else:
                    line = format_console(entry, color=self._color)
                with self._write_lock:
                    stream.write(line + "\n")
                    stream.flush()
            if self.sinks and not is_shipper_thread():
                for sink in self.sinks:
                    sink.submit(entry)
        except RecursionError:  # pragma: no cover - mirrors logging.StreamHandler
            raise
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        """Flush the stream (sinks flush on :meth:`close` or explicitly)."""
        stream = self.stream
        if stream is not None and hasattr(stream, "flush"):
            with self._write_lock:
                stream.flush()

    def close(self) -> None:
        """Close every sink with a bounded flush, then the handler itself."""
        for sink in self.sinks:
            try:
                sink.close(timeout=5.0)
            except Exception:  # pragma: no cover - a sink must not break shutdown
                logging.getLogger(__name__).exception("closing sink %s failed", sink.name)
        super().close()
