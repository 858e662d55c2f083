"""The contract every log sink implements.

A sink receives :class:`~observability.records.LogEntry` objects from the logging handler in
the thread that logged, and must return at once: ``submit`` never blocks and never raises. The
sink batches, ships, retries and spools in its own background thread, counts what it sent,
retried and dropped in the ``agent_runtime_log_*`` metrics, and reports its health for
``/readyz``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from observability.records import LogEntry

__all__ = ["Sink", "SinkHealth"]


@dataclass(frozen=True, slots=True)
class SinkHealth:
    """A sink's health as ``/readyz`` reports it.

    Attributes:
        name: The sink name (``loki``, ``elasticsearch``, ``local``).
        healthy: False while the destination refuses or cannot be reached.
        detail: A human sentence: the last error, or how many records are spooled.
        queued: Records in memory waiting to be sent.
        spooled: Records on disk waiting for the destination to come back.
        dropped: Records given up on since start (past every bound).
    """

    name: str
    healthy: bool
    detail: str
    queued: int = 0
    spooled: int = 0
    dropped: int = 0


@runtime_checkable
class Sink(Protocol):
    """A destination for structured log records."""

    name: str

    def submit(self, entry: LogEntry) -> None:
        """Hand one record to the sink; never blocks, never raises."""

    def flush(self, timeout: float) -> bool:
        """Deliver what is queued, waiting at most ``timeout`` seconds; True if all went."""

    def close(self, timeout: float) -> None:
        """Flush for at most ``timeout`` seconds, spool the rest to disk, stop the thread."""

    def health(self) -> SinkHealth:
        """Return the current health."""
