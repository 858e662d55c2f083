"""Tests for the shared delivery machinery: batching, backoff, queue bound, threads, config."""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from opentelemetry.instrumentation.utils import (
    is_http_instrumentation_enabled,
    is_instrumentation_enabled,
)
from prometheus_client import REGISTRY

from observability.records import LogEntry, is_shipper_thread
from observability.sinks._shipper import (
    Delivery,
    DeliveryConfig,
    Shipper,
    backoff_delay,
    retryable_status,
    validate_http_url,
)
from observability.sinks.spool import Spool

_names = itertools.count()
MakeShipper = Callable[..., Shipper]


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _entry(n: int) -> LogEntry:
    return LogEntry(1_700_000_000_000_000_000 + n, "INFO", {"message": f"m{n}", "n": n})


class FakeTime:
    """A clock that only moves when the shipper sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        time.sleep(0)  # let other threads run, as a real sleep would


class ScriptedTransport:
    """A Transport test double: answers each send from a script, then accepts."""

    destination = "the test destination"

    def __init__(self, *script: str | Delivery | threading.Event, clock: FakeTime | None = None):
        self.script: deque[str | Delivery | threading.Event] = deque(script)
        self.clock = clock
        self.attempts: list[list[int]] = []
        self.attempt_times: list[float] = []
        self.delivered: list[int] = []
        self.threads: list[tuple[bool, bool, bool]] = []
        self.timeouts: list[float] = []
        self.closed = False
        self.lock = threading.Lock()

    def encode(self, entry: LogEntry) -> str:
        return json.dumps({"n": entry.fields["n"]})

    def send(self, records: Sequence[str], timeout: float) -> Delivery:
        numbers = [json.loads(r)["n"] for r in records]
        with self.lock:
            self.attempts.append(numbers)
            self.timeouts.append(timeout)
            if self.clock is not None:
                self.attempt_times.append(self.clock.now)
            self.threads.append(
                (
                    is_shipper_thread(),
                    is_http_instrumentation_enabled(),
                    is_instrumentation_enabled(),
                )
            )
            action = self.script.popleft() if self.script else "ok"
        if isinstance(action, threading.Event):
            action.wait(30)
            action = "ok"
        if action == "raise":
            raise RuntimeError("transport bug")
        if action == "retry":
            return Delivery.failed(len(records), "HTTP 503 from the test destination")
        if action == "reject":
            return Delivery.refused(len(records), "HTTP 400: bad records")
        if isinstance(action, Delivery):
            kept = set(range(len(records))) - set(action.retry)
            with self.lock:
                self.delivered.extend(numbers[i] for i in sorted(kept))
            return action
        with self.lock:
            self.delivered.extend(numbers)
        return Delivery.ok(len(records))

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def make_shipper(tmp_path: Path) -> Iterator[MakeShipper]:
    shippers: list[Shipper] = []

    def make(transport: ScriptedTransport, ft: FakeTime | None = None, **config: object) -> Shipper:
        settings: dict[str, object] = {
            "linger": 0.01,
            "initial_backoff": 0.01,
            "max_backoff": 0.02,
            "spool_dir": str(tmp_path / "spool"),
        }
        settings.update(config)
        extra = {"clock": ft.clock, "sleep": ft.sleep} if ft is not None else {}
        shipper = Shipper(
            f"test{next(_names)}",
            transport,
            DeliveryConfig(**settings),  # type: ignore[arg-type]
            timeout=5.0,
            random=lambda: 0.5,
            **extra,  # type: ignore[arg-type]
        )
        shippers.append(shipper)
        return shipper

    yield make
    for shipper in shippers:
        shipper.close(1.0)


def test_backoff_delay_doubles_caps_and_jitters() -> None:
    """The delay doubles per attempt, stops at the cap and stays in the upper half of it."""
    delays = [backoff_delay(a, initial=1.0, maximum=5.0, rand=0.0) for a in range(1, 6)]
    assert delays == [0.5, 1.0, 2.0, 2.5, 2.5]
    assert backoff_delay(1, initial=1.0, maximum=5.0, rand=0.999) == pytest.approx(0.9995)
    assert backoff_delay(10, initial=1.0, maximum=5.0, rand=0.999) <= 5.0


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        (429, True),
        (500, True),
        (503, True),
        (401, True),
        (403, True),
        (404, True),
        (400, False),
        (413, False),
        (422, False),
    ],
)
def test_retryable_status(status: int, retry: bool) -> None:
    """429, 5xx and misconfiguration (401/403/404) are retried; other 4xx are rejected."""
    assert retryable_status(status) is retry


def test_retry_schedule_follows_backoff_without_waiting(make_shipper: MakeShipper) -> None:
    """Three failures are retried after 0.75, 1.5 and 2.25 s of injected time, then delivered."""
    ft = FakeTime()
    transport = ScriptedTransport("retry", "retry", "retry", clock=ft)
    shipper = make_shipper(transport, ft, initial_backoff=1.0, max_backoff=3.0)
    started = time.monotonic()
    for n in range(3):
        shipper.submit(_entry(n))
    assert shipper.flush(10.0)
    times = transport.attempt_times
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([0.75, 1.5, 2.25])
    assert sum(ft.sleeps) == pytest.approx(4.5)
    assert transport.delivered == [0, 1, 2]
    assert time.monotonic() - started < 4.5  # the schedule ran on the injected clock
    assert _metric("agent_runtime_log_batches_retried_total", sink=shipper.name) == 3


def test_background_thread_is_marked_and_uninstrumented(make_shipper: MakeShipper) -> None:
    """Sends run in a shipper thread with OpenTelemetry (HTTP) instrumentation suppressed."""
    transport = ScriptedTransport()
    shipper = make_shipper(transport)
    shipper.submit(_entry(1))
    assert shipper.flush(5.0)
    assert transport.threads == [(True, False, False)]
    assert not is_shipper_thread()
    assert is_http_instrumentation_enabled()


def test_full_queue_drops_counts_and_logs_once(
    make_shipper: MakeShipper,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past queue_size, submit returns at once, counts queue_full and it is logged once."""
    gate = threading.Event()
    transport = ScriptedTransport(gate)
    shipper = make_shipper(transport, queue_size=50, batch_size=10)
    shipper.submit(_entry(0))
    deadline = time.monotonic() + 5
    while not transport.attempts and time.monotonic() < deadline:
        time.sleep(0.005)
    for n in range(1, 121):  # the transport is stuck: 50 fit in the queue, 70 do not
        shipper.submit(_entry(n))
    assert not gate.is_set()  # every submit above returned while the send was still blocked
    gate.set()
    assert shipper.flush(5.0)
    dropped = _metric(
        "agent_runtime_log_records_dropped_total", sink=shipper.name, reason="queue_full"
    )
    assert dropped == 70
    assert transport.delivered == list(range(51))
    warnings = [r for r in caplog.records if "queue_full" in r.getMessage()]
    assert len(warnings) == 1
    assert shipper.health().dropped == 70


def test_records_after_close_are_counted(make_shipper: MakeShipper) -> None:
    """A record submitted after close is counted as dropped (closed), not silently lost."""
    transport = ScriptedTransport()
    shipper = make_shipper(transport)
    shipper.close(1.0)
    shipper.submit(_entry(1))
    assert shipper.health().dropped == 1
    assert transport.closed


def test_partial_failures_resend_only_failed_records(make_shipper: MakeShipper) -> None:
    """Per-record retries (from memory, then from the spool) resend only what failed, once."""
    transport = ScriptedTransport(
        Delivery(delivered=3, retry=(1, 3), error="429 for two records"),
        Delivery(delivered=1, retry=(1,), error="429 again"),
    )
    shipper = make_shipper(transport, batch_size=5, linger=0.05)
    for n in range(5):
        shipper.submit(_entry(n))
    assert shipper.flush(5.0)
    assert transport.attempts == [[0, 1, 2, 3, 4], [1, 3], [3]]
    assert sorted(transport.delivered) == [0, 1, 2, 3, 4]
    assert shipper.spool.count == 0


def test_transport_error_is_retried_and_thread_survives(make_shipper: MakeShipper) -> None:
    """An unexpected exception in a transport is retried like an outage; delivery goes on."""
    transport = ScriptedTransport("raise")
    shipper = make_shipper(transport)
    shipper.submit(_entry(1))
    assert shipper.flush(5.0)
    shipper.submit(_entry(2))
    assert shipper.flush(5.0)
    assert transport.delivered == [1, 2]


def test_flush_reports_failure_and_health_says_why(make_shipper: MakeShipper) -> None:
    """While the destination fails, flush returns False and health is unhealthy with the cause."""
    transport = ScriptedTransport(*["retry"] * 1000)
    shipper = make_shipper(transport, initial_backoff=0.05, max_backoff=0.05)
    for n in range(3):
        shipper.submit(_entry(n))
    assert not shipper.flush(0.3)
    health = shipper.health()
    assert not health.healthy
    assert "HTTP 503 from the test destination" in health.detail
    assert health.spooled == 3
    transport.script.clear()
    assert shipper.flush(5.0)
    health = shipper.health()
    assert health.healthy
    assert health.spooled == 0
    assert transport.delivered == [0, 1, 2]


def test_rejected_batch_is_dropped_not_retried(make_shipper: MakeShipper) -> None:
    """A rejected batch is counted once as rejected and never sent again."""
    transport = ScriptedTransport("reject")
    shipper = make_shipper(transport, linger=0.05)
    for n in range(4):
        shipper.submit(_entry(n))
    assert shipper.flush(5.0)
    assert transport.attempts == [[0, 1, 2, 3]]
    dropped = _metric(
        "agent_runtime_log_records_dropped_total", sink=shipper.name, reason="rejected"
    )
    assert dropped == 4
    assert not shipper.health().healthy


def test_zero_linger_sends_without_a_flush(make_shipper: MakeShipper) -> None:
    """With linger=0 the first record wakes the thread: it is sent without flush or batch."""
    transport = ScriptedTransport()
    make_shipper(transport, linger=0.0).submit(_entry(7))
    deadline = time.monotonic() + 5
    while not transport.delivered and time.monotonic() < deadline:
        time.sleep(0.005)
    assert transport.delivered == [7]


def test_batches_respect_batch_size(make_shipper: MakeShipper) -> None:
    """No request carries more than batch_size records and order is kept."""
    transport = ScriptedTransport()
    shipper = make_shipper(transport, batch_size=8)
    for n in range(30):
        shipper.submit(_entry(n))
    assert shipper.flush(5.0)
    assert max(len(a) for a in transport.attempts) <= 8
    assert transport.delivered == list(range(30))


def test_close_spools_what_the_destination_refuses(
    make_shipper: MakeShipper, tmp_path: Path
) -> None:
    """close() with the destination failing returns quickly and leaves the records on disk."""
    transport = ScriptedTransport(*["retry"] * 1000)
    shipper = make_shipper(transport, initial_backoff=5.0, max_backoff=5.0)
    for n in range(20):
        shipper.submit(_entry(n))
    started = time.monotonic()
    shipper.close(timeout=10.0)
    assert time.monotonic() - started < 5.0  # it did not wait out the backoff or the timeout
    assert shipper.health().spooled == 20
    spool = Spool(tmp_path / "spool" / shipper.name)  # what the next process will find
    assert spool.count == 20
    spool.close()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("queue_size", 0, "queue_size must be a positive integer"),
        ("batch_size", -5, "batch_size must be a positive integer"),
        ("linger", -1.0, "linger must be >= 0"),
        ("initial_backoff", 0.0, "initial_backoff must be > 0"),
        ("max_backoff", 0.1, "max_backoff must be >= initial_backoff"),
        ("spool_max_bytes", 0, "spool_max_bytes must be a positive integer"),
        ("spool_dir", " ", "spool_dir must be a directory path"),
    ],
)
def test_delivery_config_rejects_bad_values(field: str, value: object, message: str) -> None:
    """Out-of-range settings raise ValueError naming the setting."""
    with pytest.raises(ValueError, match=message):
        DeliveryConfig(**{field: value})  # type: ignore[arg-type]


def test_delivery_config_from_env() -> None:
    """Environment variables override the defaults; a bad one is named in the error."""
    env = {"X_BATCH_SIZE": "50", "X_LINGER": "0.5", "X_SPOOL_DIR": "/var/spool/x"}
    config = DeliveryConfig.from_env("X_", env)
    assert (config.batch_size, config.linger, config.spool_dir) == (50, 0.5, "/var/spool/x")
    assert config.queue_size == DeliveryConfig().queue_size
    with pytest.raises(ValueError, match="X_BATCH_SIZE must be an integer"):
        DeliveryConfig.from_env("X_", {"X_BATCH_SIZE": "lots"})
    with pytest.raises(ValueError, match="X_QUEUE_SIZE: queue_size must be a positive integer"):
        DeliveryConfig.from_env("X_", {"X_QUEUE_SIZE": "-1"})


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "must be an http"),
        ("loki:3100", "must start with http:// or https://"),
        ("ftp://loki", "must start with http:// or https://"),
        ("http://loki:99999", "not a valid URL"),
        ("http://loki/?a=b", "must not have a query"),
    ],
)
def test_validate_http_url_explains(url: str, message: str) -> None:
    """Malformed URLs raise ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=message):
        validate_http_url(url, "THE_URL")


def test_unusable_spool_dir_fails_at_construction(tmp_path: Path) -> None:
    """A spool directory that cannot be created fails when the sink is built, not later."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="spool directory"):
        Shipper(
            "unusable",
            ScriptedTransport(),
            DeliveryConfig(spool_dir=str(blocker)),
            timeout=1.0,
        )


def test_shipper_logs_are_not_at_error_level_for_normal_outages(
    make_shipper: MakeShipper,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An outage is one WARNING at its start and one INFO at its end, not a line per retry."""
    caplog.set_level(logging.INFO, logger="observability.sinks")
    transport = ScriptedTransport(*["retry"] * 5)
    shipper = make_shipper(transport)
    for n in range(3):
        shipper.submit(_entry(n))
    assert shipper.flush(5.0)
    mine = [r for r in caplog.records if r.getMessage().startswith(shipper.name + ":")]
    assert [r.levelname for r in mine] == ["WARNING", "INFO"]
    assert "logged once per outage" in mine[0].getMessage()
    assert "is back after" in mine[1].getMessage()
