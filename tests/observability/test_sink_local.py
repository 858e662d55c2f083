"""Tests of the local log sink: batching, bounds, failures and shutdown on real SQLite files."""

from __future__ import annotations

import io
import logging
import multiprocessing
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from observability.logging import StructuredHandler
from observability.records import LogEntry, format_timestamp
from observability.search import LocalLogStore, LocalSearchConfig
from observability.sinks.base import Sink
from observability.sinks.local import LocalLogSink


def entry(message: str, *, at: float | None = None, level: str = "INFO") -> LogEntry:
    """A record like the structured handler builds, stamped now unless ``at`` is given."""
    t = time.time() if at is None else at
    fields = {
        "timestamp": format_timestamp(t),
        "level": level,
        "logger": "app",
        "message": message,
        "service": "test",
    }
    return LogEntry(round(t * 1e9), level, fields)


def sent() -> float:
    """The sink's sent counter."""
    value = REGISTRY.get_sample_value("agent_runtime_log_records_sent_total", {"sink": "local"})
    return value or 0.0


def dropped(reason: str) -> float:
    """The sink's dropped counter for one reason."""
    return (
        REGISTRY.get_sample_value(
            "agent_runtime_log_records_dropped_total", {"sink": "local", "reason": reason}
        )
        or 0.0
    )


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds (a background thread is doing the work)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalLogStore]:
    """A store without retention limits, busy timeout short for lock tests."""
    s = LocalLogStore(tmp_path / "logs.db", max_records=None, max_age=None, busy_timeout=0.1)
    yield s
    s.close()


class Locked:
    """Another process's view: a connection holding the store's write lock."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        """Give the lock back."""
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        self.conn.close()


def test_is_a_sink(store: LocalLogStore) -> None:
    """LocalLogSink satisfies the Sink protocol and is named local."""
    sink = LocalLogSink(store)
    try:
        assert isinstance(sink, Sink)
        assert sink.name == "local"
    finally:
        sink.close(timeout=5)


def test_submitted_records_become_searchable(store: LocalLogStore) -> None:
    """Records handed to submit are written in the background and counted as sent."""
    before = sent()
    sink = LocalLogSink(store, flush_interval=0.05)
    for i in range(250):
        sink.submit(entry(f"record number{i}"))
    assert sink.flush(timeout=10)
    assert store.stats().records == 250
    assert [r["message"] for r in store.search("number7")] == ["record number7"]
    assert sent() - before == 250
    health = sink.health()
    assert health.healthy
    assert (health.queued, health.dropped) == (0, 0)
    assert "250 records written" in health.detail
    sink.close(timeout=5)


def test_a_partial_batch_is_written_after_flush_interval(store: LocalLogStore) -> None:
    """A few records are written without a flush once flush_interval has passed."""
    sink = LocalLogSink(store, batch_size=1000, flush_interval=0.05)
    sink.submit(entry("lonely"))
    wait_until(lambda: store.stats().records == 1, timeout=5)
    sink.close(timeout=5)


def test_one_transaction_per_batch(store: LocalLogStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer inserts at most batch_size records per store.insert (one transaction each)."""
    sizes: list[int] = []
    real_insert = store.insert

    def spy(entries: Any) -> int:
        batch = list(entries)
        sizes.append(len(batch))
        return real_insert(batch)

    monkeypatch.setattr(store, "insert", spy)
    sink = LocalLogSink(store, batch_size=20, flush_interval=0.05)
    for i in range(105):
        sink.submit(entry(f"r{i}"))
    assert sink.flush(timeout=10)
    sink.close(timeout=5)
    assert sum(sizes) == 105
    assert max(sizes) <= 20
    assert len(sizes) >= 6


def test_burst_past_the_bound_drops_counts_and_warns_once(
    store: LocalLogStore, caplog: pytest.LogCaptureFixture
) -> None:
    """With the writer held up, a burst fills the queue; the rest is dropped, counted, logged."""
    caplog.set_level(logging.WARNING, logger="observability.sinks.local")
    before = dropped("queue_full")
    lock = Locked(store.path)
    sink = LocalLogSink(store, max_queue=50, batch_size=10, flush_interval=0.01)
    try:
        began = time.perf_counter()
        for i in range(2000):
            sink.submit(entry(f"burst {i}"))
        elapsed = time.perf_counter() - began
        health = sink.health()
        assert 2000 - 60 <= health.dropped <= 2000 - 50
        assert health.queued <= 50
        assert dropped("queue_full") - before == health.dropped
        assert elapsed < 0.5  # submit never waits for the locked store
    finally:
        lock.release()
    assert sink.flush(timeout=10)
    assert store.stats().records == 2000 - sink.health().dropped
    for i in range(200):  # a second burst: counted again, not logged again
        sink.submit(entry(f"second {i}"))
    sink.close(timeout=5)
    warnings = [r for r in caplog.records if "queue is full" in r.getMessage()]
    assert len(warnings) == 1
    assert "AGENT_RUNTIME_LOG_DB_QUEUE" in warnings[0].getMessage()


def test_locked_store_is_retried_until_it_frees(store: LocalLogStore) -> None:
    """A batch that finds the file locked is kept and written once the lock goes."""
    lock = Locked(store.path)
    sink = LocalLogSink(store, batch_size=10, flush_interval=0.01)
    try:
        for i in range(30):
            sink.submit(entry(f"patient {i}"))
        wait_until(lambda: not sink.health().healthy, timeout=5)
        assert "locked by another process" in sink.health().detail
    finally:
        lock.release()
    assert sink.flush(timeout=10)
    assert store.stats().records == 30
    assert sink.health().healthy
    assert sink.health().dropped == 0
    sink.close(timeout=5)


def test_close_is_time_bounded_and_counts_what_is_lost(store: LocalLogStore) -> None:
    """close returns by its timeout even when the store is locked; the unsent are counted."""
    before = dropped("shutdown")
    slow = LocalLogStore(store.path, max_records=None, max_age=None, busy_timeout=3.0)
    lock = Locked(store.path)
    sink = LocalLogSink(slow, batch_size=10, flush_interval=0.01)
    try:
        for i in range(100):
            sink.submit(entry(f"doomed {i}"))
        began = time.monotonic()
        sink.close(timeout=0.3)
        took = time.monotonic() - began
        assert took < 1.0
        assert sink.health().dropped >= 90  # the queue; the in-flight batch follows
    finally:
        lock.release()
    sink._thread.join(10)  # the writer's statement returns once the lock is gone
    assert not sink._thread.is_alive()
    assert sink.health().dropped + slow.stats().records == 100
    assert dropped("shutdown") - before == sink.health().dropped
    slow.close()


def test_close_drains_and_later_submits_are_dropped(store: LocalLogStore) -> None:
    """close writes what is queued; records submitted after close are counted as dropped."""
    sink = LocalLogSink(store, batch_size=1000, flush_interval=60)
    for i in range(300):
        sink.submit(entry(f"final {i}"))
    sink.close(timeout=10)
    sink.close(timeout=10)  # idempotent
    assert store.stats().records == 300
    before = dropped("shutdown")
    sink.submit(entry("too late"))
    assert dropped("shutdown") - before == 1
    assert sink.health().dropped == 1
    assert sink.health().detail.startswith("closed; 300 records written")


def test_flush_times_out_while_locked(store: LocalLogStore) -> None:
    """flush gives up after its timeout and says so."""
    lock = Locked(store.path)
    sink = LocalLogSink(store, flush_interval=0.01)
    try:
        sink.submit(entry("stuck"))
        began = time.monotonic()
        assert sink.flush(timeout=0.2) is False
        assert time.monotonic() - began < 1.0
    finally:
        lock.release()
    assert sink.flush(timeout=10)
    sink.close(timeout=5)


def test_refused_writes_are_dropped_reported_and_not_shipped_back(
    store: LocalLogStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A full store drops the batch (rejected), turns unhealthy, logs once, never loops."""
    caplog.set_level(logging.ERROR, logger="observability.sinks.local")
    store.insert([entry("fits")])
    # max_page_count makes SQLite hit its real SQLITE_FULL path without filling a disk.
    pages = store._writer.execute("PRAGMA page_count").fetchone()[0]
    store._writer.execute(f"PRAGMA max_page_count = {pages + 2}")
    before = dropped("rejected")
    sink = LocalLogSink(store, batch_size=20, flush_interval=0.01)
    # The sink's own error line goes through a structured handler that feeds the same sink:
    # it must reach the stream but never the sink (the writer is a shipper thread).
    stream = io.StringIO()
    handler = StructuredHandler("test", stream=stream, sinks=[sink])
    sink_logger = logging.getLogger("observability.sinks.local")
    sink_logger.addHandler(handler)
    try:
        for i in range(60):
            sink.submit(entry("x" * 4000 + f" big {i}"))
        assert sink.flush(timeout=10) is False
        health = sink.health()
        assert not health.healthy
        assert "is full" in health.detail
        assert health.dropped == 60
        assert dropped("rejected") - before == 60
        errors = [r for r in caplog.records if "is full" in r.getMessage()]
        assert len(errors) == 1
        assert "is full" in stream.getvalue()
        assert sink.health().queued == 0
    finally:
        sink_logger.removeHandler(handler)
    store._writer.execute("PRAGMA max_page_count = 1073741823")
    sink.submit(entry("small again"))
    assert sink.flush(timeout=10)
    assert sink.health().healthy
    sink.close(timeout=5)
    assert [r["message"] for r in store.search()] == ["small again", "fits"]


def test_retention_runs_in_the_background(tmp_path: Path) -> None:
    """The writer prunes past max_records in batches every prune_interval."""
    s = LocalLogStore(tmp_path / "logs.db", max_records=20, max_age=None)
    sink = LocalLogSink(s, prune_interval=0.05, prune_batch=7, flush_interval=0.01)
    for i in range(100):
        sink.submit(entry(f"r{i}", at=time.time() + i))
    assert sink.flush(timeout=10)
    wait_until(lambda: s.stats().records == 20)
    assert [r["message"] for r in s.search(limit=3)] == ["r99", "r98", "r97"]
    sink.close(timeout=5)
    s.close()


def test_from_config_owns_and_closes_its_store(tmp_path: Path) -> None:
    """A sink built from a config opens the store and closes it when it stops."""
    cfg = LocalSearchConfig(path=str(tmp_path / "deep" / "logs.db"), flush_interval=0.01)
    sink = LocalLogSink.from_config(cfg)
    sink.submit(entry("configured"))
    sink.close(timeout=5)
    with pytest.raises(ValueError, match="closed"):
        sink.store.search()
    with LocalLogStore(cfg.path, create=False) as s:
        assert [r["message"] for r in s.search()] == ["configured"]


def test_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a config the sink reads AGENT_RUNTIME_LOG_DB*."""
    monkeypatch.setenv("AGENT_RUNTIME_LOG_DB", str(tmp_path / "env.db"))
    monkeypatch.setenv("AGENT_RUNTIME_LOG_DB_QUEUE", "123")
    sink = LocalLogSink.from_config()
    try:
        assert sink.store.path == tmp_path / "env.db"
        assert sink.max_queue == 123
    finally:
        sink.close(timeout=5)


def test_path_argument_opens_a_store(tmp_path: Path) -> None:
    """A path instead of a store opens one, which the sink closes at the end."""
    sink = LocalLogSink(tmp_path / "p.db", flush_interval=0.01)
    sink.submit(entry("by path"))
    sink.close(timeout=5)
    with LocalLogStore(tmp_path / "p.db") as s:
        assert s.stats().records == 1


def test_unopenable_path_raises_at_construction(tmp_path: Path) -> None:
    """A path holding something that is not a log store fails at once, with what to do."""
    (tmp_path / "notes.db").write_text("my notes")
    with pytest.raises(OSError, match="Move it away"):
        LocalLogSink(tmp_path / "notes.db")


@pytest.mark.parametrize(
    "kwargs",
    [{"max_queue": 0}, {"batch_size": 0}, {"flush_interval": 0}, {"prune_interval": -1}],
)
def test_bad_arguments(store: LocalLogStore, kwargs: dict[str, Any]) -> None:
    """Out-of-range bounds are refused before a thread starts."""
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        LocalLogSink(store, **kwargs)


def test_logging_through_the_structured_handler(store: LocalLogStore) -> None:
    """Records logged with the stdlib logger end up searchable with their fields."""
    sink = LocalLogSink(store, flush_interval=0.01)
    handler = StructuredHandler("svc", sinks=[sink]).without_stream()
    log = logging.getLogger("test_sink_local.app")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        log.warning("disk almost full on %s", "node-1", extra={"run_id": "run-42"})
    finally:
        log.removeHandler(handler)
        log.propagate = True
    assert sink.flush(timeout=10)
    [record] = store.search("almost", run_id="run-42", level="WARNING")
    assert record["message"] == "disk almost full on node-1"
    assert record["service"] == "svc"
    assert record["logger"] == "test_sink_local.app"
    sink.close(timeout=5)


def _write_with_sink(path: str, tag: str, count: int, start: Any) -> None:
    store = LocalLogStore(path, max_records=None, max_age=None, busy_timeout=30)
    sink = LocalLogSink(store, batch_size=50, flush_interval=0.01)
    start.wait(30)
    for i in range(count):
        sink.submit(entry(f"{tag} {i}"))
        if i % 200 == 0:
            time.sleep(0.001)  # let the other process's batches interleave with ours
    ok = sink.flush(timeout=60)
    sink.close(timeout=10)
    store.close()
    if not ok or sink.health().dropped:
        raise SystemExit(1)


def test_two_writer_processes_lose_nothing(tmp_path: Path) -> None:
    """Two processes logging into one store at once: every record of both is there."""
    path = str(tmp_path / "logs.db")
    LocalLogStore(path).close()
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [
        ctx.Process(target=_write_with_sink, args=(path, tag, 3000, start))
        for tag in ("alpha", "bravo")
    ]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with LocalLogStore(path) as s:
        assert s.stats().records == 6000
        for tag in ("alpha", "bravo"):
            found = [r["message"] for r in s.search(tag, limit=10_000)]
            assert sorted(found) == sorted(f"{tag} {i}" for i in range(3000))
    conn = sqlite3.connect(path)
    [name] = [
        r[0]
        for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if re.fullmatch(r"log_fts_\d{4}_\d{2}_\d{2}", r[0])
    ]
    conn.execute(f"INSERT INTO {name} ({name}, rank) VALUES ('integrity-check', 1)")
    conn.close()
