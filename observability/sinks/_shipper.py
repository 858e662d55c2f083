"""Background delivery shared by the Loki and Elasticsearch sinks.

One concept: a :class:`Shipper` is a :class:`~observability.sinks.base.Sink` that turns
``submit(entry)`` (non-blocking, in the thread that logged) into ordered, batched deliveries
through a :class:`Transport` in one background thread, and never loses a record silently.

How a record travels:

1. ``submit`` appends the entry to a bounded in-memory queue (a ``deque``: one append and one
   length check, no lock, no I/O). A full queue drops the record and counts it
   (``queue_full``).
2. The background thread takes up to ``batch_size`` records once ``batch_size`` are waiting or
   ``linger`` seconds have passed, encodes them for the destination and sends them.
3. A 429, a 5xx, a connection error (and, so that nothing is lost while an operator fixes the
   configuration, a 401/403/404) makes the batch go to the on-disk
   :class:`~observability.sinks.spool.Spool` and schedules a retry with exponential backoff and
   jitter. While the spool holds records, every new record goes to the spool behind them, so
   the spool drains oldest-first, before anything newer: delivery stays in order across an
   outage, and records spooled by a previous process are delivered first by the next one.
4. Any other 4xx rejects the records for good: they are counted (``rejected``) and logged once,
   never retried forever.

Every drop is counted in ``agent_runtime_log_records_dropped_total{sink,reason}`` and logged
once per episode (when it starts, and a summary when it stops), never per record. ``close``
flushes for a bounded time and spools the rest.

The thread marks itself with :func:`~observability.records.mark_shipper_thread` (what it logs is
never shipped back) and runs with OpenTelemetry's instrumentation suppressed, so the HTTP calls
of the shipper do not become spans. Time is injected: ``clock`` schedules retries and ``sleep``
waits out the backoff (in short slices, so records keep moving to the spool and ``close`` is
not held up), which lets tests run a backoff schedule without waiting for it.
"""

from __future__ import annotations

import atexit
import errno
import logging
import random as _random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import urlsplit

from opentelemetry.instrumentation.utils import (
    suppress_http_instrumentation,
    suppress_instrumentation,
)

from observability.metrics import LOG_DROPPED, LOG_RETRIED, LOG_SENT, LOG_SPOOLED
from observability.records import LogEntry, mark_shipper_thread
from observability.sinks.base import SinkHealth
from observability.sinks.spool import (
    DEFAULT_SEGMENT_BYTES,
    DEFAULT_SPOOL_MAX_BYTES,
    Spool,
    SpoolRead,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_INITIAL_BACKOFF",
    "DEFAULT_LINGER",
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_QUEUE_SIZE",
    "DEFAULT_SEGMENT_BYTES",
    "DEFAULT_SPOOL_DIR",
    "DEFAULT_SPOOL_MAX_BYTES",
    "Delivery",
    "DeliveryConfig",
    "Shipper",
    "Transport",
    "backoff_delay",
    "env_bool",
    "env_float",
    "env_int",
    "env_str",
    "retryable_status",
    "validate_http_url",
]

DEFAULT_QUEUE_SIZE: Final = 10_000
"""Records held in memory per sink before ``submit`` starts dropping (``queue_full``)."""

DEFAULT_BATCH_SIZE: Final = 500
"""Records sent in one request."""

DEFAULT_LINGER: Final = 1.0
"""Seconds a record may wait in memory for a batch to fill."""

DEFAULT_INITIAL_BACKOFF: Final = 0.5
"""Seconds before the first retry; doubled per failed attempt."""

DEFAULT_MAX_BACKOFF: Final = 30.0
"""Cap on the delay between two attempts."""

DEFAULT_SPOOL_DIR: Final = ".agent_runtime/spool"
"""Spool root (relative to the working directory); each sink uses a sub-directory."""

DEFAULT_CLOSE_TIMEOUT: Final = 5.0
"""Seconds the exit hook gives a sink that was never closed to flush."""

_POLL: Final = 0.05  # longest uninterrupted sleep during a backoff
_JOIN_GRACE: Final = 1.0  # extra time close() gives the thread to write the spool
_RETRY_ALWAYS: Final = frozenset({401, 403, 404, 407, 408, 425, 429})

_log = logging.getLogger("observability.sinks")


# -- pure decisions -----------------------------------------------------------------------------


def backoff_delay(attempt: int, *, initial: float, maximum: float, rand: float) -> float:
    """Return the delay before retry number ``attempt``: exponential, capped, with jitter.

    The delay doubles per attempt up to ``maximum`` and is then spread uniformly over its upper
    half ("equal jitter"), so many processes coming back together do not retry in lock-step and
    no retry comes sooner than half the nominal delay.

    Args:
        attempt: 1 for the first retry.
        initial: The nominal first delay in seconds.
        maximum: The cap in seconds.
        rand: A number in ``[0, 1)``.

    Returns:
        Seconds to wait.
    """
    nominal = min(maximum, initial * 2.0 ** max(0, attempt - 1))
    return nominal / 2 + nominal / 2 * rand


def retryable_status(status: int) -> bool:
    """Return whether a whole request answered with ``status`` should be retried later.

    429 and 5xx are transient. 401, 403 and 404 mean the sink is misconfigured (credentials,
    tenant, URL); those records are kept in the spool too, so that they arrive once the
    configuration is fixed and the process restarted. Any other 4xx is the destination
    refusing these records: they are dropped, not retried forever.

    Args:
        status: The HTTP status code.

    Returns:
        True to retry, False to reject.
    """
    return status >= 500 or status in _RETRY_ALWAYS


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of one batch sent by a :class:`Transport`.

    Attributes:
        delivered: Records the destination accepted.
        retry: Indexes (into the batch, ascending) of records to send again later.
        rejected: Records the destination refused for good.
        error: What went wrong, in one sentence with what to check (empty if nothing).
    """

    delivered: int = 0
    retry: tuple[int, ...] = ()
    rejected: int = 0
    error: str = ""

    @classmethod
    def ok(cls, count: int) -> Delivery:
        """Every record of a batch of ``count`` was accepted."""
        return cls(delivered=count)

    @classmethod
    def failed(cls, count: int, error: str) -> Delivery:
        """The whole batch of ``count`` must be retried because of ``error``."""
        return cls(retry=tuple(range(count)), error=error)

    @classmethod
    def refused(cls, count: int, error: str) -> Delivery:
        """The whole batch of ``count`` was rejected for good because of ``error``."""
        return cls(rejected=count, error=error)


class Transport(Protocol):
    """Encodes records for one destination and sends batches of them (blocking, with timeout).

    A transport is used from the shipper's background thread only.
    """

    destination: str
    """Who the records go to, for messages (``Loki at http://loki:3100``)."""

    def encode(self, entry: LogEntry) -> str:
        """Return the record as one line of JSON text (what the spool stores)."""

    def send(self, records: Sequence[str], timeout: float) -> Delivery:
        """Send encoded records in order; never raise for a destination failure."""

    def close(self) -> None:
        """Release connections."""


# -- configuration ------------------------------------------------------------------------------


class _FieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """How a sink queues, batches, retries and spools (shared by Loki and Elasticsearch).

    Attributes:
        queue_size: Records held in memory before ``submit`` drops (``queue_full``).
        batch_size: Records per request.
        linger: Seconds a record may wait for its batch to fill (0 sends at once).
        initial_backoff: Seconds before the first retry of a failed batch.
        max_backoff: Cap on the delay between attempts.
        spool_dir: Root directory of the on-disk spool; each sink uses ``spool_dir/<sink>``.
        spool_max_bytes: Bound on one sink's spool; past it records are dropped
            (``spool_full``).
        spool_segment_bytes: Size of one spool segment file.

    Raises:
        ValueError: If a size or duration is out of range; the message names the field.
    """

    queue_size: int = DEFAULT_QUEUE_SIZE
    batch_size: int = DEFAULT_BATCH_SIZE
    linger: float = DEFAULT_LINGER
    initial_backoff: float = DEFAULT_INITIAL_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF
    spool_dir: str = DEFAULT_SPOOL_DIR
    spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES
    spool_segment_bytes: int = DEFAULT_SEGMENT_BYTES

    def __post_init__(self) -> None:
        for name in ("queue_size", "batch_size", "spool_max_bytes", "spool_segment_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _FieldError(name, f"{name} must be a positive integer, got {value!r}")
        if not _is_number(self.linger) or self.linger < 0:
            raise _FieldError("linger", f"linger must be >= 0 seconds, got {self.linger!r}")
        if not _is_number(self.initial_backoff) or self.initial_backoff <= 0:
            raise _FieldError(
                "initial_backoff",
                f"initial_backoff must be > 0 seconds, got {self.initial_backoff!r}",
            )
        if not _is_number(self.max_backoff) or self.max_backoff < self.initial_backoff:
            raise _FieldError(
                "max_backoff",
                f"max_backoff must be >= initial_backoff ({self.initial_backoff}), "
                f"got {self.max_backoff!r}",
            )
        if not isinstance(self.spool_dir, str) or not self.spool_dir.strip():
            raise _FieldError("spool_dir", "spool_dir must be a directory path, got an empty one")

    @classmethod
    def from_env(cls, prefix: str, environ: Mapping[str, str]) -> DeliveryConfig:
        """Read ``{prefix}QUEUE_SIZE``, ``{prefix}BATCH_SIZE``, ``{prefix}LINGER``,
        ``{prefix}INITIAL_BACKOFF``, ``{prefix}MAX_BACKOFF``, ``{prefix}SPOOL_DIR``,
        ``{prefix}SPOOL_MAX_BYTES`` and ``{prefix}SPOOL_SEGMENT_BYTES``; unset ones keep their
        defaults.

        Args:
            prefix: For example ``AGENT_RUNTIME_LOKI_``.
            environ: The environment.

        Returns:
            The configuration.

        Raises:
            ValueError: If a variable is malformed or out of range; the message names it.
        """
        kwargs: dict[str, object] = {}
        for f in fields(cls):
            name = prefix + f.name.upper()
            if name not in environ:
                continue
            if f.name == "spool_dir":
                kwargs[f.name] = env_str(environ, name)
            elif f.type in ("int", int):
                kwargs[f.name] = env_int(environ, name)
            else:
                kwargs[f.name] = env_float(environ, name)
        try:
            return cls(**kwargs)  # type: ignore[arg-type]
        except _FieldError as exc:
            raise ValueError(f"{prefix}{exc.field.upper()}: {exc}") from None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def env_str(environ: Mapping[str, str], name: str) -> str | None:
    """Return the stripped value of ``name``, or None if unset or blank."""
    value = environ.get(name, "").strip()
    return value or None


def env_int(environ: Mapping[str, str], name: str) -> int | None:
    """Return ``name`` as an integer (None if unset).

    Raises:
        ValueError: If it is not an integer.
    """
    value = env_str(environ, name)
    if value is None:
        return None
    try:
        return int(value.replace("_", ""))
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def env_float(environ: Mapping[str, str], name: str) -> float | None:
    """Return ``name`` as a number of seconds (None if unset).

    Raises:
        ValueError: If it is not a number.
    """
    value = env_str(environ, name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def env_bool(environ: Mapping[str, str], name: str) -> bool | None:
    """Return ``name`` as a boolean (``1/true/yes/on`` or ``0/false/no/off``; None if unset).

    Raises:
        ValueError: If it is something else.
    """
    value = env_str(environ, name)
    if value is None:
        return None
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def validate_http_url(url: object, what: str) -> str:
    """Check that ``url`` is an absolute http(s) URL and return it without a trailing slash.

    Args:
        url: The configured value.
        what: The setting's name for the message (``AGENT_RUNTIME_LOKI_URL``).

    Returns:
        The normalised URL.

    Raises:
        ValueError: If it is not an http(s) URL with a host.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError(
            f"{what} must be an http(s) URL such as http://localhost:3100, got {url!r}"
        )
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{what} is not a valid URL ({exc}): {text!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{what} must start with http:// or https:// and name a host, got {text!r}"
        )
    if port == 0:
        raise ValueError(f"{what} has port 0, which cannot be connected to: {text!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"{what} must not have a query or fragment: {text!r}")
    return text.rstrip("/")


# -- the shipper --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Batch:
    records: list[str]
    read: SpoolRead | None  # where it came from in the spool; None if from memory


class Shipper:
    """A non-blocking :class:`~observability.sinks.base.Sink` delivering through a transport.

    Args:
        name: The sink name (metric label and spool sub-directory).
        transport: Encodes and sends batches.
        config: Queue, batch, retry and spool settings.
        timeout: Seconds one request may take.
        clock: Monotonic seconds; schedules retries.
        sleep: Waits during a backoff (called with at most 0.05 s at a time).
        random: Returns a number in ``[0, 1)`` for the backoff jitter.

    Raises:
        OSError: If the spool directory cannot be used.
    """

    def __init__(
        self,
        name: str,
        transport: Transport,
        config: DeliveryConfig,
        *,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.name = name
        self._transport = transport
        self._config = config
        self._timeout = timeout
        self._clock = clock
        self._sleep = sleep
        self._random = random
        self._spool = Spool(
            Path(config.spool_dir) / name,
            max_bytes=config.spool_max_bytes,
            segment_bytes=config.spool_segment_bytes,
        )
        self._queue: deque[LogEntry] = deque()
        self._max_queue = config.queue_size
        self._batch_size = config.batch_size
        # submit() wakes the thread when a batch is full, or on the first record if the
        # sink must not linger at all.
        self._wake_at = config.batch_size if config.linger > 0 else 1
        self._idle_wait = config.linger if config.linger > 0 else 1.0
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # Counted by submit() in the logging thread, reported by the background thread.
        self._submit_drops: dict[str, int] = {}
        self._submit_drops_lock = threading.Lock()
        # Background-thread state (also read under _lock by flush/close/health).
        self._sending: _Batch | None = None
        self._inflight: _Batch | None = None
        self._attempt = 0
        self._retry_at: float | None = None
        self._failing_since: float | None = None
        self._error: str | None = None
        self._dropping: dict[str, int] = {}
        self._dropped = 0
        self._sent = 0
        self._flush_waiters = 0
        self._stopping = False
        self._deadline = 0.0
        self._closed = False
        self._abandoned = False
        self._finished = False
        self._metric_sent = LOG_SENT.labels(sink=name)
        self._metric_retried = LOG_RETRIED.labels(sink=name)
        self._metric_spooled = LOG_SPOOLED.labels(sink=name)
        self._metric_spooled.set(self._spool.count)
        if self._spool.count:
            _log.info(
                "%s: %d log records left in the spool %s by a previous process will be "
                "delivered first",
                name,
                self._spool.count,
                self._spool.directory,
            )
        self._thread = threading.Thread(
            target=self._run, name=f"observability-{name}-shipper", daemon=True
        )
        self._thread.start()
        atexit.register(self._close_at_exit)

    @property
    def spool(self) -> Spool:
        """The sink's on-disk spool (for inspection; only the background thread writes it)."""
        return self._spool

    # -- the Sink protocol ---------------------------------------------------------------------

    def submit(self, entry: LogEntry) -> None:
        """Queue one record for delivery; never blocks, never raises.

        Args:
            entry: The structured record.
        """
        queue = self._queue
        if self._closed or len(queue) >= self._max_queue:
            self._count_submit_drop("closed" if self._closed else "queue_full")
            return
        queue.append(entry)
        if len(queue) == self._wake_at:
            self._wake.set()

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued and spooled is delivered, at most ``timeout`` seconds.

        Args:
            timeout: Seconds to wait.

        Returns:
            True if nothing is left to deliver.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            self._flush_waiters += 1
        self._wake.set()
        try:
            with self._lock:
                while not self._drained() and not self._finished:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._changed.wait(remaining)
                return self._drained()
        finally:
            with self._lock:
                self._flush_waiters -= 1

    def close(self, timeout: float = DEFAULT_CLOSE_TIMEOUT) -> None:
        """Deliver for at most ``timeout`` seconds, spool the rest to disk, stop the thread.

        Records that could not be delivered in time (or because the destination is down) are
        written to the spool and delivered by the next process using the same spool
        directory. Idempotent.

        Args:
            timeout: Seconds to spend delivering before spooling.
        """
        timeout = max(0.0, timeout)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stopping = True
            self._deadline = time.monotonic() + timeout
        atexit.unregister(self._close_at_exit)
        self._wake.set()
        self._thread.join(timeout + _JOIN_GRACE)
        if self._thread.is_alive():
            # A request is stuck past its timeout; take what is left to disk from here.
            with self._lock:
                self._abandoned = True
                sending = self._sending
                if sending is not None and sending.read is None:
                    self._spool_records(sending.records)
                self._spool_memory()
            _log.warning(
                "%s: %s did not answer within the %.1fs close timeout; %d records are kept "
                "in the spool %s for the next start",
                self.name,
                self._transport.destination,
                timeout,
                self._spool.count,
                self._spool.directory,
            )
        self._collect_submit_drops()
        self._metric_spooled.set(self._spool.count)
        self._spool.close()
        self._transport.close()

    def health(self) -> SinkHealth:
        """Return the sink's health: unhealthy while the destination fails.

        Returns:
            The health, with a sentence saying what is wrong or how much is waiting.
        """
        error = self._error
        spooled = self._spool.count
        with self._submit_drops_lock:
            pending_drops = sum(self._submit_drops.values())
        if error is None:
            detail = f"delivering to {self._transport.destination}"
            if spooled:
                detail += f"; {spooled} spooled records draining"
        else:
            detail = f"{error}; {spooled} records spooled in {self._spool.directory}"
            retry_at = self._retry_at
            if retry_at is not None:
                detail += f", next attempt in {max(0.0, retry_at - self._clock()):.1f}s"
        return SinkHealth(
            name=self.name,
            healthy=error is None,
            detail=detail,
            queued=len(self._queue),
            spooled=spooled,
            dropped=self._dropped + pending_drops,
        )

    # -- submit-side accounting ----------------------------------------------------------------

    def _count_submit_drop(self, reason: str) -> None:
        with self._submit_drops_lock:
            self._submit_drops[reason] = self._submit_drops.get(reason, 0) + 1

    def _collect_submit_drops(self) -> None:
        with self._submit_drops_lock:
            drops, self._submit_drops = self._submit_drops, {}
        for reason, count in drops.items():
            self._drop(
                reason,
                count,
                f"the in-memory queue of {self._max_queue} records is full"
                if reason == "queue_full"
                else "records were logged after the sink was closed",
            )
        if "queue_full" not in drops and len(self._queue) < self._max_queue // 2:
            self._end_drop_episode("queue_full")

    # -- the background thread -----------------------------------------------------------------

    def _run(self) -> None:
        mark_shipper_thread()
        try:
            with suppress_instrumentation(), suppress_http_instrumentation():
                self._loop()
        except Exception:
            _log.exception(
                "%s: the log shipper thread failed; records now wait in memory until close()",
                self.name,
            )
        finally:
            with self._lock:
                self._finished = True
                self._changed.notify_all()

    def _loop(self) -> None:
        lingered = False
        while True:
            self._collect_submit_drops()
            if self._stopping:
                if self._retry_at is not None or time.monotonic() >= self._deadline:
                    with self._lock:
                        if not self._abandoned:
                            self._spool_memory()
                    return
            elif self._retry_at is not None:
                remaining = self._retry_at - self._clock()
                if remaining > 0:
                    with self._lock:
                        self._spool_memory()
                        self._changed.notify_all()
                    self._sleep(min(_POLL, remaining))
                    continue
            batch = self._next_spooled()
            if batch is None:
                pending = len(self._queue)
                if pending == 0:
                    with self._lock:
                        self._changed.notify_all()
                    if self._stopping:
                        return
                    self._wait(self._idle_wait)
                    lingered = True
                    continue
                urgent = self._stopping or self._flush_waiters > 0
                if pending < self._batch_size and not lingered and not urgent:
                    self._wait(self._config.linger)
                    lingered = True
                    continue
                lingered = False
                batch = self._take_memory()
                if batch is None:
                    continue
            if not self._deliver(batch):
                return

    def _wait(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _next_spooled(self) -> _Batch | None:
        with self._lock:
            if self._inflight is not None:
                batch = self._inflight
                self._sending = batch
                return batch
            if not self._spool.count:
                return None
            # Newer records queue up behind the spooled ones, on disk, to keep the order.
            self._spool_memory()
            while self._spool.count:
                read = self._spool.read(self._batch_size)
                self._report_corrupt(read)
                if read.records:
                    batch = _Batch(list(read.records), read)
                    self._sending = batch
                    return batch
                self._spool.commit(read)
            self._metric_spooled.set(self._spool.count)
            return None

    def _take_memory(self) -> _Batch | None:
        with self._lock:
            entries: list[LogEntry] = []
            queue = self._queue
            while queue and len(entries) < self._batch_size:
                entries.append(queue.popleft())
            records = self._encode(entries)
            if not records:
                return None
            batch = _Batch(records, None)
            self._sending = batch
            return batch

    def _encode(self, entries: Sequence[LogEntry]) -> list[str]:
        records: list[str] = []
        for entry in entries:
            try:
                records.append(self._transport.encode(entry))
            except Exception as exc:  # a record that cannot be encoded must not stop the rest
                self._drop("rejected", 1, f"a record could not be encoded ({exc!r})")
        return records

    def _request_timeout(self) -> float:
        if not self._stopping:
            return self._timeout
        return max(0.1, min(self._timeout, self._deadline - time.monotonic()))

    def _deliver(self, batch: _Batch) -> bool:
        try:
            result = self._transport.send(batch.records, self._request_timeout())
        except Exception as exc:  # a transport bug must not kill delivery
            _log.exception("%s: unexpected error sending a batch", self.name)
            result = Delivery.failed(len(batch.records), f"unexpected error: {exc!r}")
        with self._lock:
            self._sending = None
            if self._abandoned:
                return False
            self._apply(batch, result)
            self._changed.notify_all()
        return True

    def _apply(self, batch: _Batch, result: Delivery) -> None:
        if result.delivered:
            self._metric_sent.inc(result.delivered)
            self._sent += result.delivered
        if result.rejected:
            self._drop("rejected", result.rejected, result.error)
        if not result.retry:
            if batch.read is not None:
                self._spool.commit(batch.read)
                self._metric_spooled.set(self._spool.count)
            self._inflight = None
            self._attempt = 0
            self._retry_at = None
            if self._failing_since is not None:
                _log.info(
                    "%s: %s is back after %.1fs; delivering %d spooled records in order",
                    self.name,
                    self._transport.destination,
                    self._clock() - self._failing_since,
                    self._spool.count,
                )
                self._failing_since = None
            if result.rejected:
                self._error = result.error
            else:
                self._error = None
                self._end_drop_episode("rejected")
            return
        retry = [batch.records[i] for i in result.retry]
        self._metric_retried.inc()
        self._attempt += 1
        delay = backoff_delay(
            self._attempt,
            initial=self._config.initial_backoff,
            maximum=self._config.max_backoff,
            rand=self._random(),
        )
        now = self._clock()
        self._retry_at = now + delay
        self._error = result.error
        if self._failing_since is None:
            self._failing_since = now
            _log.warning(
                "%s: %s; records are kept in the spool %s and retried with backoff "
                "(this is logged once per outage)",
                self.name,
                result.error,
                self._spool.directory,
            )
        if batch.read is not None:
            # Still on disk at its place at the head of the spool; only what failed is resent.
            self._inflight = _Batch(retry, batch.read)
        else:
            self._inflight = None
            self._spool_records(retry)

    # -- spool and drop accounting (called with _lock held) ------------------------------------

    def _drained(self) -> bool:
        return (
            not self._queue
            and not self._spool.count
            and self._sending is None
            and self._inflight is None
        )

    def _spool_memory(self) -> None:
        queue = self._queue
        while queue:
            entries: list[LogEntry] = []
            while queue and len(entries) < self._batch_size:
                entries.append(queue.popleft())
            self._spool_records(self._encode(entries))

    def _spool_records(self, records: list[str]) -> None:
        if not records:
            return
        try:
            written = self._spool.append(records)
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            self._drop(
                "spool_full" if full else "spool_error",
                len(records),
                f"cannot write the spool {self._spool.directory} ({exc}); "
                + ("free disk space" if full else "check the directory's permissions and disk"),
            )
            return
        if written < len(records):
            self._drop(
                "spool_full",
                len(records) - written,
                f"the spool {self._spool.directory} reached its bound of "
                f"{self._spool.max_bytes} bytes (spool_max_bytes)",
            )
        else:
            self._end_drop_episode("spool_full")
            self._end_drop_episode("spool_error")
        self._metric_spooled.set(self._spool.count)

    def _report_corrupt(self, read: SpoolRead) -> None:
        if read.corrupt:
            self._drop(
                "spool_corrupt",
                read.corrupt,
                f"torn or unreadable lines in the spool {self._spool.directory} were skipped "
                "(left by a crash)",
            )

    def _drop(self, reason: str, count: int, detail: str) -> None:
        LOG_DROPPED.labels(sink=self.name, reason=reason).inc(count)
        self._dropped += count
        if reason in self._dropping:
            self._dropping[reason] += count
            return
        self._dropping[reason] = count
        _log.warning(
            "%s: dropping log records (%s): %s. Counted in "
            'agent_runtime_log_records_dropped_total{sink="%s",reason="%s"}; '
            "logged once until it stops",
            self.name,
            reason,
            detail,
            self.name,
            reason,
        )

    def _end_drop_episode(self, reason: str) -> None:
        count = self._dropping.pop(reason, None)
        if count is not None:
            _log.info("%s: stopped dropping (%s) after %d records", self.name, reason, count)

    def _close_at_exit(self) -> None:
        self.close(DEFAULT_CLOSE_TIMEOUT)
