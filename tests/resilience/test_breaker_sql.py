"""The SQL breaker store on SQLite and the real PostgreSQL: shared state, one probe, outages."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import sqlmodel
from resilience_helpers import FakeClock

from agent_runtime import errors
from agent_runtime.resilience import (
    BreakerConfig,
    BreakerRow,
    CircuitBreaker,
    SqlBreakerStore,
)

WORKER = Path(__file__).with_name("breaker_worker.py")


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """An engine on a fresh SQLite file or a fresh PostgreSQL schema."""
    eng = sa.create_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def table() -> str:
    """A table name of this test's own (the schema or file is fresh too)."""
    return "ar_breakers_" + secrets.token_hex(4)


def _store(engine: sa.Engine, table: str, **kwargs: object) -> SqlBreakerStore:
    kwargs.setdefault("cache_ttl", 0)
    return SqlBreakerStore(engine, table_name=table, **kwargs)  # type: ignore[arg-type]


def test_breaker_table_is_on_sqlmodel_metadata() -> None:
    """The default table ar_breakers is declared on SQLModel.metadata for the runtime's store."""
    assert sqlmodel.SQLModel.metadata.tables["ar_breakers"] is BreakerRow.__table__  # type: ignore[attr-defined]


def test_default_table_is_created(engine: sa.Engine) -> None:
    """With the default name the store creates ar_breakers itself when missing."""
    store = SqlBreakerStore(engine, cache_ttl=0)
    breaker = CircuitBreaker("default-" + secrets.token_hex(3), store=store)
    assert breaker.call(lambda: 1) == 1
    assert "ar_breakers" in sa.inspect(engine).get_table_names()
    store.delete(breaker.name or "")


def test_state_is_persisted(engine: sa.Engine, table: str, clock: FakeClock) -> None:
    """Opening writes state, reason and half-open time to the row."""
    store = _store(engine, table)
    breaker = CircuitBreaker("api", BreakerConfig(failure_threshold=2), store=store, clock=clock)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(_down)
    with engine.connect() as conn:
        row = conn.execute(sa.select(store.table).where(store.table.c.name == "api")).one()
    assert row.state == "open"
    assert row.half_open_at == clock.now + 30
    assert "2 failures within 60 s" in row.reason
    assert row.version == 2  # inserted at 0, one write per failure


def _down() -> None:
    raise ConnectionError("down")


def test_two_processes_share_failures(db_url: str, table: str, clock: FakeClock) -> None:
    """Failures recorded through two engines (two processes' views) add up in one window."""
    engines = [sa.create_engine(db_url) for _ in range(2)]
    try:
        stores = [_store(e, table) for e in engines]
        a, b = (
            CircuitBreaker("shared", BreakerConfig(failure_threshold=5), store=s, clock=clock)
            for s in stores
        )
        for breaker in (a, b, a, b):
            with pytest.raises(ConnectionError):
                breaker.call(_down)
            clock.advance(5)
        assert a.status == "closed"
        with pytest.raises(ConnectionError):
            b.call(_down)
        with pytest.raises(errors.CircuitOpenError):
            a.call(lambda: 1)
    finally:
        for e in engines:
            e.dispose()


def test_one_probe_across_engines_and_threads(db_url: str, table: str) -> None:
    """Five engines x ten threads race for the probe: the compare-and-set lets exactly one in."""
    engines = [sa.create_engine(db_url) for _ in range(5)]
    try:
        stores = [_store(e, table) for e in engines]
        past = FakeClock(time.time() - 100)
        opener = CircuitBreaker(
            "race", BreakerConfig(failure_threshold=1), store=stores[0], clock=past
        )
        with pytest.raises(ConnectionError):
            opener.call(_down)
        breakers = [
            CircuitBreaker("race", BreakerConfig(failure_threshold=1), store=s) for s in stores
        ]
        start = threading.Barrier(50)
        done_trying = threading.Event()
        ran: list[int] = []
        rejected: list[int] = []
        lock = threading.Lock()

        def probe() -> None:
            ran.append(1)
            done_trying.wait(10)

        def caller(i: int) -> None:
            start.wait()
            try:
                breakers[i % 5].call(probe)
            except errors.CircuitOpenError:
                with lock:
                    rejected.append(1)
                    if len(rejected) == 49:
                        done_trying.set()

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(ran) == 1
        assert len(rejected) == 49
        assert breakers[3].status == "closed"
    finally:
        for e in engines:
            e.dispose()


def test_one_probe_across_real_processes(db_url: str, table: str, tmp_path: Path) -> None:
    """Three OS processes x ten threads hit a ripe half-open breaker: exactly one call runs."""
    engine = sa.create_engine(db_url)
    release = tmp_path / "release-probe"
    try:
        store = _store(engine, table)
        past = FakeClock(time.time() - 100)
        opener = CircuitBreaker(
            "procs", BreakerConfig(failure_threshold=1), store=store, clock=past
        )
        with pytest.raises(ConnectionError):
            opener.call(_down)
        assert store.load("procs").state == "open"
        workers = [
            subprocess.Popen(
                [sys.executable, str(WORKER), db_url, table, "procs", "10", str(release)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.close()
        for worker in workers:  # every thread everywhere was refused or holds the probe
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "tried"
        release.touch()
        results = []
        for worker in workers:
            assert worker.stdout is not None
            # Read through the same buffered reader as above (it may hold the last line).
            results.append(json.loads(worker.stdout.read().strip().splitlines()[-1]))
            worker.stdout.close()
            assert worker.wait(timeout=60) == 0
        assert sum(r["ran"] for r in results) == 1, results
        assert sum(r["rejected"] for r in results) == 29, results
        assert [r["other"] for r in results] == [[], [], []]
        assert store.load("procs").state == "closed"
    finally:
        engine.dispose()


async def test_async_one_probe_with_sql_store(engine: sa.Engine, table: str) -> None:
    """Async callers use the SQL store from worker threads; still exactly one probe."""
    store = _store(engine, table)
    past = FakeClock(time.time() - 100)
    opener = CircuitBreaker("async", BreakerConfig(failure_threshold=1), store=store, clock=past)
    with pytest.raises(ConnectionError):
        opener.call(_down)
    breaker = CircuitBreaker("async", BreakerConfig(failure_threshold=1), store=store)
    release = asyncio.Event()

    async def probe() -> str:
        await release.wait()
        return "ok"

    async def caller() -> str:
        try:
            return await breaker.call_async(probe)
        except errors.CircuitOpenError:
            return "rejected"

    tasks = [asyncio.create_task(caller()) for _ in range(20)]
    deadline = time.monotonic() + 30
    while sum(t.done() for t in tasks) < 19:  # everyone but the probe has been refused
        assert time.monotonic() < deadline, "callers did not all get an answer"
        await asyncio.sleep(0.01)
    release.set()
    results = await asyncio.gather(*tasks)
    assert results.count("ok") == 1
    assert results.count("rejected") == 19
    assert breaker.status == "closed"


def test_cache_serves_closed_state_for_cache_ttl(engine: sa.Engine, table: str) -> None:
    """A cached closed state is trusted for cache_ttl; after that the opening is seen."""
    mono = FakeClock(0.0)
    fresh = _store(engine, table)
    cached = _store(engine, table, cache_ttl=1.0, clock=mono)
    a = CircuitBreaker("c", BreakerConfig(failure_threshold=1), store=fresh)
    b = CircuitBreaker("c", BreakerConfig(failure_threshold=1), store=cached)
    assert b.call(lambda: 1) == 1  # caches "closed"
    with pytest.raises(ConnectionError):
        a.call(_down)
    assert b.call(lambda: 2) == 2  # still within cache_ttl
    mono.advance(1.0)
    with pytest.raises(errors.CircuitOpenError):
        b.call(lambda: 3)


def test_delete_forgets_the_breaker(engine: sa.Engine, table: str, clock: FakeClock) -> None:
    """delete() removes the row: the breaker starts closed again."""
    store = _store(engine, table)
    breaker = CircuitBreaker("gone", BreakerConfig(failure_threshold=1), store=store, clock=clock)
    with pytest.raises(ConnectionError):
        breaker.call(_down)
    store.delete("gone")
    assert store.load("gone").state == "closed"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_database_is_a_clear_error() -> None:
    """Creating the table on a database that is down raises DatabaseUnavailableError."""
    port = _closed_port()
    engine = sa.create_engine(f"postgresql+psycopg://postgres:secret@127.0.0.1:{port}/nope")
    with pytest.raises(errors.DatabaseUnavailableError) as caught:
        SqlBreakerStore(engine)
    assert "secret" not in str(caught.value)
    assert "***" in caught.value.url
    assert "Check that the database is running" in str(caught.value)
    engine.dispose()


def test_database_down_fails_open(caplog: pytest.LogCaptureFixture) -> None:
    """A breaker whose SQL store is down lets calls through and logs a warning."""
    engine = sa.create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/nope")
    store = SqlBreakerStore(engine, create_table=False)
    breaker = CircuitBreaker("offline", store=store)
    with caplog.at_level(logging.WARNING, logger="agent_runtime.resilience.breaker"):
        assert breaker.call(lambda: "served") == "served"
    assert "fail open" in caplog.text
    engine.dispose()


def test_negative_cache_ttl_is_rejected(engine: sa.Engine) -> None:
    """cache_ttl below zero is a configuration error."""
    with pytest.raises(errors.ConfigurationError, match="cache_ttl"):
        SqlBreakerStore(engine, cache_ttl=-1, create_table=False)
