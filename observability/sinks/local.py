"""The local log sink: records go to the embedded search store, written in the background.

``LocalLogSink`` is the :class:`~observability.sinks.base.Sink` for the embedded log search
(:mod:`observability.search`), the default when no Loki or Elasticsearch is configured. The
logging thread only appends to a bounded in-memory queue; one background writer thread takes
batches from it and inserts each batch in one SQLite transaction, and every
``prune_interval`` deletes records past the store's retention limits, in short batches.

Bounds, so that logging never slows down or grows memory: when the queue is full, new records
are dropped, counted in ``agent_runtime_log_records_dropped_total{sink="local",
reason="queue_full"}`` and in :meth:`LocalLogSink.health`, and one warning says so. A batch the
store refuses (disk full, damaged file) is dropped with ``reason="rejected"``; a batch that finds
the file locked by another process past its busy timeout is retried. ``close`` drains for at
most its timeout; what is still queued then is dropped with ``reason="shutdown"``. The writer
thread marks itself with :func:`~observability.records.mark_shipper_thread`, so its own log
lines never come back into the queue.

It does not reuse the Loki and Elasticsearch sinks' shipper: that one spools failed HTTP
batches to a local file and retries them with backoff, but here the destination is itself a
local file. A locked file is retried in place; a write the file refuses (disk full) would be
refused by a spool on the same disk too.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from observability.metrics import LOG_DROPPED, LOG_SENT
from observability.records import LogEntry, mark_shipper_thread
from observability.search import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_QUEUE,
    DEFAULT_PRUNE_BATCH,
    DEFAULT_PRUNE_INTERVAL,
    ENV_QUEUE,
    LocalLogStore,
    LocalSearchConfig,
)
from observability.sinks.base import SinkHealth

__all__ = ["RETRY_INITIAL", "RETRY_MAXIMUM", "LocalLogSink"]

RETRY_INITIAL: Final = 0.05
"""Seconds before the first retry of a batch that found the store locked; doubles each time."""
RETRY_MAXIMUM: Final = 2.0
"""Longest wait between retries of a locked batch."""

_log = logging.getLogger(__name__)


class LocalLogSink:
    """Write log records to a :class:`~observability.search.LocalLogStore` in the background.

    Args:
        store: An open store, or the path of one to open (then the sink owns it and closes it
            when its writer stops).
        max_queue: Records held in memory; past it new records are dropped and counted.
        batch_size: Records per insert transaction.
        flush_interval: Seconds a partial batch waits for more records before it is written.
        prune_interval: Seconds between retention passes (the first one runs at start).
        prune_batch: Records deleted per retention transaction.
        clock: Monotonic seconds, for the intervals and the flush/close deadlines.

    Raises:
        ValueError: A bound or interval is out of range.
        OSError: ``store`` is a path that cannot be opened as a log store (see
            :class:`~observability.search.LocalLogStore`).
    """

    name: str = "local"

    def __init__(
        self,
        store: LocalLogStore | str | os.PathLike[str],
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        prune_interval: float = DEFAULT_PRUNE_INTERVAL,
        prune_batch: int = DEFAULT_PRUNE_BATCH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # The config dataclass validates the same bounds the same way.
        LocalSearchConfig(
            max_queue=max_queue,
            batch_size=batch_size,
            flush_interval=flush_interval,
            prune_interval=prune_interval,
            prune_batch=prune_batch,
        )
        self._owns_store = not isinstance(store, LocalLogStore)
        self.store = store if isinstance(store, LocalLogStore) else LocalLogStore(store)
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.prune_interval = prune_interval
        self.prune_batch = prune_batch
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: deque[LogEntry] = deque()
        self._accepted = 0  # records queued since start
        self._finished = 0  # of those, written or given up on
        self._written = 0
        self._failed = 0  # accepted records dropped by a write error or the shutdown
        self._dropped = 0  # every dropped record, whatever the reason
        self._queue_full = 0  # of those, refused by submit because the queue was full
        self._queue_full_logged = False
        self._last_error: str | None = None
        self._flush_pending = False
        self._stopping = False
        self._deadline = 0.0
        self._batch_due = 0.0
        self._prune_due = clock()
        self._sent = LOG_SENT.labels(sink=self.name)
        self._drop_queue_full = LOG_DROPPED.labels(sink=self.name, reason="queue_full")
        self._drop_rejected = LOG_DROPPED.labels(sink=self.name, reason="rejected")
        self._drop_shutdown = LOG_DROPPED.labels(sink=self.name, reason="shutdown")
        self._thread = threading.Thread(
            target=self._run, name="agent-runtime-log-local", daemon=True
        )
        self._thread.start()

    @classmethod
    def from_config(cls, config: LocalSearchConfig | None = None) -> LocalLogSink:
        """Open the store ``config`` names (default: from the environment) and write to it.

        Args:
            config: The configuration; None reads :meth:`LocalSearchConfig.from_env`.

        Returns:
            The running sink, which owns its store.

        Raises:
            ValueError: An environment variable cannot be used.
            OSError: The store cannot be opened.
        """
        cfg = LocalSearchConfig.from_env() if config is None else config
        store = LocalLogStore.from_config(cfg)
        sink = cls(
            store,
            max_queue=cfg.max_queue,
            batch_size=cfg.batch_size,
            flush_interval=cfg.flush_interval,
            prune_interval=cfg.prune_interval,
            prune_batch=cfg.prune_batch,
        )
        sink._owns_store = True
        return sink

    # -- the logging thread side -----------------------------------------------------------------

    def submit(self, entry: LogEntry) -> None:
        """Queue one record for writing; never blocks on I/O, never raises.

        Args:
            entry: The record.
        """
        try:
            with self._cond:
                if self._stopping:
                    self._dropped += 1
                    self._drop_shutdown.inc()
                    return
                queued = len(self._queue)
                if queued >= self.max_queue:
                    self._dropped += 1
                    self._queue_full += 1
                    self._drop_queue_full.inc()
                    return
                self._queue.append(entry)
                self._accepted += 1
                # Wake the writer on the first record (to time the partial batch) and on a
                # full batch; in between it has nothing new to decide.
                if queued == 0:
                    self._batch_due = self._clock() + self.flush_interval
                    self._cond.notify_all()
                elif queued + 1 == self.batch_size:
                    self._cond.notify_all()
        except Exception:  # pragma: no cover - the contract: a sink never breaks the caller
            return

    def flush(self, timeout: float) -> bool:
        """Write every record queued so far, waiting at most ``timeout`` seconds.

        Args:
            timeout: The most seconds to wait.

        Returns:
            True if all of them are now in the store; False on timeout or if some of them were
            dropped by a write error.
        """
        deadline = self._clock() + timeout
        with self._cond:
            target = self._accepted
            failed_before = self._failed
            self._flush_pending = True
            self._cond.notify_all()
            while self._finished < target:
                remaining = deadline - self._clock()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(remaining)
            return self._failed == failed_before

    def close(self, timeout: float) -> None:
        """Write what is queued for at most ``timeout`` seconds, then stop the writer.

        Records still queued at the deadline are dropped and counted (``reason="shutdown"``);
        so are records submitted after ``close``. Idempotent.

        Args:
            timeout: The most seconds to spend.
        """
        with self._cond:
            if not self._stopping:
                self._stopping = True
                self._deadline = self._clock() + max(timeout, 0.0)
            deadline = self._deadline
            self._cond.notify_all()
        self._thread.join(max(deadline - self._clock(), 0.0))
        if self._thread.is_alive():
            # The writer is stuck in a statement (another process holds the lock); it drops
            # its own batch when it returns. Whatever is still queued is lost now.
            with self._cond:
                self._drop_queued_locked()

    def health(self) -> SinkHealth:
        """Return the sink's health for ``/readyz``.

        Returns:
            Unhealthy while the store refuses writes (the detail says why and what to do).
        """
        with self._cond:
            queued = len(self._queue)
            error = self._last_error
            written, dropped = self._written, self._dropped
            stopping = self._stopping
        path = str(self.store.path)
        if error is not None:
            detail = error
        elif stopping:
            detail = f"closed; {written} records written to {path}"
        else:
            detail = f"writing to {path}: {written} records written, {queued} queued"
        if dropped:
            detail += f"; {dropped} dropped since start"
        return SinkHealth(
            name=self.name,
            healthy=error is None and (stopping or self._thread.is_alive()),
            detail=detail,
            queued=queued,
            spooled=0,
            dropped=dropped,
        )

    def __repr__(self) -> str:
        return f"LocalLogSink({str(self.store.path)!r})"

    # -- the writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        mark_shipper_thread()
        try:
            while True:
                with self._cond:
                    self._wait_for_work_locked()
                    if self._stopping and (not self._queue or self._clock() >= self._deadline):
                        break
                    count = min(len(self._queue), self.batch_size)
                    batch = [self._queue.popleft() for _ in range(count)]
                    if not self._queue:
                        self._flush_pending = False
                if batch:
                    self._write(batch)
                self._warn_queue_full()
                if not self._stopping and self._clock() >= self._prune_due:
                    self._prune()
        finally:
            with self._cond:
                self._drop_queued_locked()
            if self._owns_store:
                self.store.close()

    def _wait_for_work_locked(self) -> None:
        while not self._stopping:
            queued = len(self._queue)
            if queued >= self.batch_size or (queued and self._flush_pending):
                return
            now = self._clock()
            due = min(self._batch_due, self._prune_due) if queued else self._prune_due
            if now >= due:
                return
            self._cond.wait(due - now)

    def _write(self, batch: list[LogEntry]) -> None:
        delay = RETRY_INITIAL
        while True:
            try:
                self.store.insert(batch)
            except OSError as exc:
                if exc.errno == errno.EBUSY and not self._past_deadline():
                    self._set_error(
                        f"the log store {str(self.store.path)!r} is locked by another process; "
                        f"retrying {len(batch)} records ({exc})"
                    )
                    with self._cond:
                        self._cond.wait(delay)
                    delay = min(delay * 2, RETRY_MAXIMUM)
                    continue
                self._give_up(batch, str(exc), busy=exc.errno == errno.EBUSY)
                return
            except Exception as exc:
                self._give_up(batch, f"{type(exc).__name__}: {exc}", busy=False)
                return
            self._sent.inc(len(batch))
            with self._cond:
                self._written += len(batch)
                self._finished += len(batch)
                recovered = self._last_error is not None
                self._last_error = None
                self._cond.notify_all()
            if recovered:
                _log.info("local log store %s accepts records again", self.store.path)
            return

    def _give_up(self, batch: list[LogEntry], reason: str, *, busy: bool) -> None:
        shutdown = busy and self._past_deadline()
        (self._drop_shutdown if shutdown else self._drop_rejected).inc(len(batch))
        with self._cond:
            self._dropped += len(batch)
            self._failed += len(batch)
            self._finished += len(batch)
            self._cond.notify_all()
        if shutdown:
            return
        self._set_error(f"{reason}; {len(batch)} records dropped")

    def _set_error(self, message: str) -> None:
        with self._cond:
            changed = self._last_error is None or (
                self._last_error.split(";")[0] != message.split(";")[0]
            )
            self._last_error = message
        if changed:  # log each new kind of failure once, not every batch
            _log.error("local log sink: %s", message)

    def _past_deadline(self) -> bool:
        with self._cond:
            return self._stopping and self._clock() >= self._deadline

    def _drop_queued_locked(self) -> None:
        left = len(self._queue)
        if left:
            self._queue.clear()
            self._dropped += left
            self._failed += left
            self._finished += left
            self._drop_shutdown.inc(left)
            self._cond.notify_all()

    def _warn_queue_full(self) -> None:
        if self._queue_full_logged:
            return
        with self._cond:
            dropped = self._queue_full
        if dropped:
            self._queue_full_logged = True
            _log.warning(
                "local log sink queue is full (%d records): new records are being dropped "
                "until the writer catches up; raise %s or log less",
                self.max_queue,
                ENV_QUEUE,
            )

    def _prune(self) -> None:
        try:
            deleted = self.store.prune(self.prune_batch)
        except (OSError, ValueError) as exc:
            _log.warning("local log store retention pass failed (retrying later): %s", exc)
            deleted = 0
        # A full batch means more is past the limits: prune again after the next write.
        if deleted < self.prune_batch:
            self._prune_due = self._clock() + self.prune_interval
