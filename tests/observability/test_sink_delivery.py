"""Delivery guarantees of both sinks: outages, restarts, bounded close, full spool, full disk."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from observability.logging import StructuredHandler
from observability.records import LogEntry
from observability.sinks._shipper import Shipper
from observability.sinks.elasticsearch import ElasticsearchConfig, ElasticsearchSink
from observability.sinks.loki import DeliveryConfig, LokiConfig, LokiSink
from observability.sinks.spool import Spool
from tests.observability.fakes import HANG, FakeElasticsearch, FakeLoki, FakeServer


@dataclass
class Target:
    """One sink kind and its fake server."""

    name: str
    fake: FakeServer
    sinks: list[Shipper]

    def make(self, delivery: DeliveryConfig, timeout: float = 10.0) -> Shipper:
        sink: Shipper
        if self.name == "loki":
            sink = LokiSink(LokiConfig(url=self.fake.url, timeout=timeout, delivery=delivery))
        else:
            sink = ElasticsearchSink(
                ElasticsearchConfig(url=self.fake.url, timeout=timeout, delivery=delivery)
            )
        self.sinks.append(sink)
        return sink

    def messages(self) -> list[str]:
        if isinstance(self.fake, FakeLoki):
            return [e.record["message"] for e in self.fake.entries]
        assert isinstance(self.fake, FakeElasticsearch)
        return [d.source["message"] for d in self.fake.documents]


@pytest.fixture(params=["loki", "elasticsearch"])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    fake: FakeServer = FakeLoki() if request.param == "loki" else FakeElasticsearch()
    fake.start()
    t = Target(request.param, fake, [])
    yield t
    for sink in t.sinks:
        sink.close(1.0)
    fake.stop()
    assert fake.violations == []


def _delivery(tmp_path: Path, **overrides: object) -> DeliveryConfig:
    settings: dict[str, object] = {
        "linger": 0.05,
        "initial_backoff": 0.05,
        "max_backoff": 0.2,
        "spool_dir": str(tmp_path / "spool"),
    }
    settings.update(overrides)
    return DeliveryConfig(**settings)  # type: ignore[arg-type]


def _dropped(sink: str, reason: str) -> float:
    labels = {"sink": sink, "reason": reason}
    return REGISTRY.get_sample_value("agent_runtime_log_records_dropped_total", labels) or 0.0


@pytest.fixture
def app_logger() -> Iterator[Callable[[Shipper], logging.Logger]]:
    handlers: list[tuple[logging.Logger, StructuredHandler]] = []

    def attach(sink: Shipper) -> logging.Logger:
        logger = logging.getLogger(f"app.delivery.{len(handlers)}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        handler = StructuredHandler("api", sinks=[sink]).without_stream()
        logger.addHandler(handler)
        handlers.append((logger, handler))
        return logger

    yield attach
    for logger, handler in handlers:
        logger.removeHandler(handler)


def _entry(n: int) -> LogEntry:
    fields = {"message": f"record {n}", "logger": "app", "service": "api", "level": "INFO"}
    return LogEntry(time.time_ns(), "INFO", {"timestamp": "2026-01-01T00:00:00.000000Z", **fields})


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_outage_10k_records_arrive_in_order_and_no_call_blocks(
    target: Target,
    tmp_path: Path,
    app_logger: Callable[[Shipper], logging.Logger],
) -> None:
    """Server down, 10,000 records logged, all arrive in order once it is back; none blocked."""
    target.fake.stop()
    sink = target.make(_delivery(tmp_path))
    logger = app_logger(sink)
    for n in range(10_000):
        logger.info("record %d", n)
    # Every one of the 10,000 calls has returned, and the server is still down.
    assert _wait_for(lambda: not sink.health().healthy)
    assert _wait_for(lambda: sink.health().spooled == 10_000)
    assert target.messages() == []
    target.fake.start()
    assert sink.flush(60.0)
    assert target.messages() == [f"record {n}" for n in range(10_000)]
    health = sink.health()
    assert health.healthy
    assert (health.dropped, health.spooled, health.queued) == (0, 0, 0)


_CHILD = """
import logging, sys
from observability.logging import StructuredHandler
from observability.records import LogEntry
from observability.sinks.elasticsearch import ElasticsearchConfig, ElasticsearchSink
from observability.sinks.loki import DeliveryConfig, LokiConfig, LokiSink

kind, url, spool = sys.argv[1:4]
delivery = DeliveryConfig(linger=0.05, spool_dir=spool)
if kind == "loki":
    sink = LokiSink(LokiConfig(url=url, delivery=delivery))
else:
    sink = ElasticsearchSink(ElasticsearchConfig(url=url, delivery=delivery))
logger = logging.getLogger("child")
logger.propagate = False
logger.setLevel(logging.INFO)
logger.addHandler(StructuredHandler("api", sinks=[sink]).without_stream())
for n in range(200):
    logger.info("first process %d", n)
# No explicit close: logging's exit hook closes the handler, which closes the sink.
"""


def test_restart_delivers_the_previous_spool_first(
    target: Target,
    tmp_path: Path,
    app_logger: Callable[[Shipper], logging.Logger],
) -> None:
    """Records a process spooled at exit (server down) are delivered by the next, before its own."""
    target.fake.stop()
    spool_dir = tmp_path / "spool"
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, target.name, target.fake.url, str(spool_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    leftover = Spool(spool_dir / target.name)
    assert leftover.count == 200  # logging.shutdown closed the sink, which spooled everything
    leftover.close()
    target.fake.start()
    sink = target.make(_delivery(tmp_path))
    logger = app_logger(sink)
    for n in range(5):
        logger.info("second process %d", n)
    assert sink.flush(30.0)
    expected = [f"first process {n}" for n in range(200)] + [
        f"second process {n}" for n in range(5)
    ]
    assert target.messages() == expected
    assert list((spool_dir / target.name / "slot-0").glob("*.seg")) == []


def test_close_is_time_bounded_when_the_server_hangs(target: Target, tmp_path: Path) -> None:
    """A server that never answers cannot hold close() past its timeout; records go to disk."""
    target.fake.fail_next(HANG)
    sink = target.make(_delivery(tmp_path), timeout=30.0)
    for n in range(50):
        sink.submit(_entry(n))
    assert _wait_for(lambda: len(target.fake.requests) == 1)  # the first request hangs
    for n in range(50, 80):
        sink.submit(_entry(n))
    started = time.monotonic()
    sink.close(timeout=0.5)
    assert time.monotonic() - started < 5.0  # bounded by close's timeout, not the 30 s request
    spool = Spool(tmp_path / "spool" / target.name)
    assert spool.count == 80
    spool.close()


def test_close_with_the_server_down_spools_at_once(target: Target, tmp_path: Path) -> None:
    """close() with connection refused spools what is queued without waiting for retries."""
    target.fake.stop()
    sink = target.make(_delivery(tmp_path, initial_backoff=5.0, max_backoff=10.0))
    for n in range(30):
        sink.submit(_entry(n))
    started = time.monotonic()
    sink.close(timeout=5.0)
    assert time.monotonic() - started < 3.0
    assert sink.health().spooled == 30


def test_spool_bound_drops_are_counted_and_logged_once(
    target: Target,
    tmp_path: Path,
    app_logger: Callable[[Shipper], logging.Logger],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past the spool bound records are dropped, counted and logged once; the rest arrive."""
    before = _dropped(target.name, "spool_full")
    target.fake.stop()
    sink = target.make(_delivery(tmp_path, spool_max_bytes=20_000, batch_size=50))
    logger = app_logger(sink)
    for n in range(500):
        logger.info("record %d", n)
    assert _wait_for(lambda: sink.health().queued == 0 and sink.health().dropped > 0)
    target.fake.start()
    assert sink.flush(30.0)
    dropped = _dropped(target.name, "spool_full") - before
    delivered = target.messages()
    assert dropped > 0
    assert len(delivered) + dropped == 500
    assert delivered == [f"record {n}" for n in range(len(delivered))]  # the oldest are kept
    warnings = [r for r in caplog.records if "(spool_full)" in r.getMessage()]
    assert len(warnings) == 1
    assert "reached its bound of 20000 bytes" in warnings[0].getMessage()


def test_full_disk_drops_counts_and_logs_once_without_raising(
    target: Target,
    tmp_path: Path,
    app_logger: Callable[[Shipper], logging.Logger],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ENOSPC on the spool drops (counted, logged once), never raises, and delivery recovers."""
    before = _dropped(target.name, "spool_full")
    target.fake.stop()
    sink = target.make(_delivery(tmp_path, linger=0.5))
    os.symlink("/dev/full", sink.spool.segment_path(1))  # the first segment is a full disk
    logger = app_logger(sink)
    for n in range(100):
        logger.info("record %d", n)
    assert _wait_for(lambda: _dropped(target.name, "spool_full") > before)
    for n in range(100, 150):
        logger.info("record %d", n)
    target.fake.start()
    assert sink.flush(30.0)
    dropped = _dropped(target.name, "spool_full") - before
    delivered = target.messages()
    assert len(delivered) + dropped == 150
    numbers = [int(m.split()[1]) for m in delivered]
    assert numbers == sorted(numbers)
    assert numbers[-50:] == list(range(100, 150))
    warnings = [r for r in caplog.records if "(spool_full)" in r.getMessage()]
    assert len(warnings) == 1
    assert "No space left on device" in warnings[0].getMessage()


def test_shipper_http_logs_never_reach_the_sinks(tmp_path: Path) -> None:
    """urllib3, elastic_transport and the shipper's own lines are written but never shipped."""
    root = logging.getLogger()
    saved_level = root.level
    stream = io.StringIO()
    with FakeLoki() as loki, FakeElasticsearch() as es:
        delivery = _delivery(tmp_path)
        sinks: list[Shipper] = [
            LokiSink(LokiConfig(url=loki.url, delivery=delivery)),
            ElasticsearchSink(ElasticsearchConfig(url=es.url, delivery=delivery)),
        ]
        handler = StructuredHandler("api", stream=stream, sinks=sinks)
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)
        try:
            loki.fail_next(503)  # makes the Loki shipper log a warning from its own thread
            es.fail_next(503)
            app = logging.getLogger("app")
            for n in range(5):
                app.info("app %d", n)
            assert all(sink.flush(10.0) for sink in sinks)
        finally:
            root.removeHandler(handler)
            root.setLevel(saved_level)
            for sink in sinks:
                sink.close(1.0)
        written = [json.loads(line) for line in stream.getvalue().splitlines()]
        loggers = {record["logger"] for record in written}
        assert {"urllib3.connectionpool", "elastic_transport.transport"} <= loggers
        assert "observability.sinks" in loggers
        assert {e.record["logger"] for e in loki.entries} == {"app"}
        assert {d.source["log"]["logger"] for d in es.documents} == {"app"}
        app_lines = [line for line in stream.getvalue().splitlines() if '"logger": "app"' in line]
        assert [e.line for e in loki.entries] == app_lines  # the very line written to the file
        assert loki.violations == es.violations == []
