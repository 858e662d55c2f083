"""Tests for the Loki sink against a local server that checks Loki's documented push format."""

from __future__ import annotations

import base64
import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client import REGISTRY

from observability.records import LogEntry, bind, build_entry
from observability.sinks.loki import DeliveryConfig, LokiConfig, LokiSink
from tests.observability.fakes import FakeLoki

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _entry(
    message: str,
    *,
    level: int = logging.INFO,
    created: float | None = None,
    traced: bool = True,
    run_id: str | None = None,
) -> LogEntry:
    record = logging.LogRecord("app.module", level, __file__, 1, message, None, None)
    if created is not None:
        record.created = created
    span = NonRecordingSpan(
        SpanContext(TRACE_ID, SPAN_ID, is_remote=False, trace_flags=TraceFlags(1))
    )
    with contextlib.ExitStack() as stack:
        if traced:
            stack.enter_context(trace.use_span(span))
        stack.enter_context(bind(run_id=run_id))
        return build_entry(record, "api")


@pytest.fixture
def loki() -> Iterator[FakeLoki]:
    with FakeLoki() as server:
        yield server
    assert server.violations == []


@pytest.fixture
def delivery(tmp_path: Path) -> DeliveryConfig:
    return DeliveryConfig(
        linger=0.02, initial_backoff=0.01, max_backoff=0.05, spool_dir=str(tmp_path / "spool")
    )


@pytest.fixture
def sinks() -> Iterator[list[LokiSink]]:
    made: list[LokiSink] = []
    yield made
    for sink in made:
        sink.close(1.0)


def _sink(sinks: list[LokiSink], **config: object) -> LokiSink:
    sink = LokiSink(LokiConfig(**config))  # type: ignore[arg-type]
    sinks.append(sink)
    return sink


def test_push_matches_loki_format(
    loki: FakeLoki, delivery: DeliveryConfig, sinks: list[LokiSink]
) -> None:
    """Entries arrive on /loki/api/v1/push, gzipped, with the documented JSON schema."""
    sink = _sink(sinks, url=loki.url, env="prod", delivery=delivery)
    entries = [
        _entry("with a run", run_id="run-42"),
        _entry("outside a span", traced=False),
        _entry("it broke", level=logging.ERROR),
    ]
    for entry in entries:
        sink.submit(entry)
    assert sink.flush(5.0)
    assert [r.path for r in loki.requests] == ["/loki/api/v1/push"]
    assert loki.requests[0].headers["content-encoding"] == "gzip"
    got = {e.line: e for e in loki.entries}
    assert list(got) == [e.json() for e in entries if e.level == "INFO"] + [entries[2].json()]
    run = got[entries[0].json()]
    assert run.labels == {"service": "api", "level": "INFO", "env": "prod"}
    assert run.time_ns == entries[0].time_ns
    assert run.metadata == {
        "trace_id": format(TRACE_ID, "032x"),
        "span_id": format(SPAN_ID, "016x"),
        "run_id": "run-42",
    }
    assert got[entries[1].json()].metadata is None
    assert got[entries[2].json()].labels["level"] == "ERROR"
    assert run.record["trace_id"] == format(TRACE_ID, "032x")  # ids are in the line too
    assert sink.health().healthy


def test_timestamp_is_the_record_time(
    loki: FakeLoki, delivery: DeliveryConfig, sinks: list[LokiSink]
) -> None:
    """The entry carries the record's own time, not the time it was sent."""
    an_hour_ago = time.time() - 3600
    entry = _entry("old news", created=an_hour_ago)
    sink = _sink(sinks, url=loki.url, delivery=delivery)
    sink.submit(entry)
    assert sink.flush(5.0)
    assert loki.entries[0].time_ns == entry.time_ns == int(an_hour_ago * 1e9)


def test_tenant_and_bearer_token(delivery: DeliveryConfig, sinks: list[LokiSink]) -> None:
    """The tenant goes in X-Scope-OrgID and the token in a Bearer Authorization header."""
    with FakeLoki(tenant="team-a", authorization="Bearer s3cret") as loki:
        sink = _sink(sinks, url=loki.url, tenant="team-a", token="s3cret", delivery=delivery)
        sink.submit(_entry("hello"))
        assert sink.flush(5.0)
        assert len(loki.entries) == 1
        assert loki.violations == []


def test_basic_auth(delivery: DeliveryConfig, sinks: list[LokiSink]) -> None:
    """Username and password are sent as HTTP basic auth (the library's session does it)."""
    expected = "Basic " + base64.b64encode(b"loki:pw").decode()
    with FakeLoki(authorization=expected) as loki:
        sink = _sink(sinks, url=loki.url, username="loki", password="pw", delivery=delivery)
        sink.submit(_entry("hello"))
        assert sink.flush(5.0)
        assert len(loki.entries) == 1


def test_static_labels_are_added(delivery: DeliveryConfig, sinks: list[LokiSink]) -> None:
    """Configured static labels join service, level and env on every stream."""
    with FakeLoki(labels=frozenset({"service", "level", "env", "cluster"})) as loki:
        sink = _sink(sinks, url=loki.url, labels={"cluster": "eu-1"}, delivery=delivery)
        sink.submit(_entry("hello"))
        assert sink.flush(5.0)
        assert loki.entries[0].labels["cluster"] == "eu-1"
        assert loki.violations == []


def test_structured_metadata_can_be_switched_off(
    loki: FakeLoki, delivery: DeliveryConfig, sinks: list[LokiSink]
) -> None:
    """For Loki 2.x the entries are plain [ts, line] pairs; the ids stay in the line."""
    sink = _sink(sinks, url=loki.url, structured_metadata=False, delivery=delivery)
    sink.submit(_entry("hello", run_id="r-1"))
    assert sink.flush(5.0)
    assert loki.entries[0].metadata is None
    assert loki.entries[0].record["run_id"] == "r-1"


def test_429_then_success(loki: FakeLoki, delivery: DeliveryConfig, sinks: list[LokiSink]) -> None:
    """A 429 is retried after a backoff and every record arrives exactly once, in order."""
    retried = _metric("agent_runtime_log_batches_retried_total", sink="loki")
    loki.fail_next(429)
    sink = _sink(sinks, url=loki.url, delivery=delivery)
    for n in range(20):
        sink.submit(_entry(f"record {n}"))
    assert sink.flush(5.0)
    assert [e.record["message"] for e in loki.entries] == [f"record {n}" for n in range(20)]
    assert len(loki.requests) >= 2
    assert _metric("agent_runtime_log_batches_retried_total", sink="loki") == retried + 1


def test_500s_are_retried(loki: FakeLoki, delivery: DeliveryConfig, sinks: list[LokiSink]) -> None:
    """500, 502 and 503 in a row are retried until Loki accepts."""
    retried = _metric("agent_runtime_log_batches_retried_total", sink="loki")
    loki.fail_next(500, 502, 503)
    sink = _sink(sinks, url=loki.url, delivery=delivery)
    sink.submit(_entry("survivor"))
    assert sink.flush(5.0)
    assert [e.record["message"] for e in loki.entries] == ["survivor"]
    assert _metric("agent_runtime_log_batches_retried_total", sink="loki") == retried + 3


def test_400_is_dropped_and_logged_once(
    loki: FakeLoki,
    delivery: DeliveryConfig,
    sinks: list[LokiSink],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 400 is not retried: the batch is counted as rejected, logged once, and shipping goes on."""
    rejected = _metric("agent_runtime_log_records_dropped_total", sink="loki", reason="rejected")
    loki.fail_next(400, 400, 400)
    sink = _sink(sinks, url=loki.url, delivery=delivery)
    sent = 0
    for batch in range(3):
        for n in range(5):
            sink.submit(_entry(f"bad {batch}.{n}"))
        assert sink.flush(5.0)
        sent += 5
    assert len(loki.requests) == 3  # one attempt per batch, none repeated
    assert loki.entries == []
    dropped = _metric("agent_runtime_log_records_dropped_total", sink="loki", reason="rejected")
    assert dropped == rejected + sent
    health = sink.health()
    assert not health.healthy
    assert "HTTP 400" in health.detail
    sink.submit(_entry("good"))
    assert sink.flush(5.0)
    assert [e.record["message"] for e in loki.entries] == ["good"]
    assert sink.health().healthy
    warnings = [r for r in caplog.records if "(rejected)" in r.getMessage()]
    assert len(warnings) == 1
    assert "HTTP 400" in warnings[0].getMessage()


def test_wrong_token_keeps_records_until_fixed(
    delivery: DeliveryConfig, sinks: list[LokiSink]
) -> None:
    """A 401 keeps the records in the spool with a hint; a fixed config delivers them."""
    with FakeLoki(authorization="Bearer right") as loki:
        wrong = _sink(sinks, url=loki.url, token="wrong", delivery=delivery)
        for n in range(5):
            wrong.submit(_entry(f"kept {n}"))
        assert not wrong.flush(0.3)
        health = wrong.health()
        assert not health.healthy
        assert "HTTP 401" in health.detail
        assert "AGENT_RUNTIME_LOKI_TOKEN" in health.detail
        wrong.close(0.5)
        fixed = _sink(sinks, url=loki.url, token="right", delivery=delivery)
        assert fixed.flush(5.0)
        assert [e.record["message"] for e in loki.entries] == [f"kept {n}" for n in range(5)]
        assert loki.violations == []


def test_unreachable_loki_is_unhealthy_with_the_cause(
    delivery: DeliveryConfig, sinks: list[LokiSink]
) -> None:
    """Connection refused makes the sink unhealthy, saying it cannot reach Loki at that URL."""
    loki = FakeLoki().start()
    url = loki.url
    loki.stop()
    sink = _sink(sinks, url=url, delivery=delivery)
    sink.submit(_entry("nobody listens"))
    assert not sink.flush(0.3)
    health = sink.health()
    assert not health.healthy
    assert f"cannot reach Loki at {url}" in health.detail
    assert health.spooled == 1


# -- configuration --------------------------------------------------------------------------


def test_url_is_normalised() -> None:
    """A trailing slash or the full push path is accepted and reduced to the base URL."""
    assert LokiConfig(url="http://loki:3100/").url == "http://loki:3100"
    config = LokiConfig(url="https://logs.example.test/loki/api/v1/push")
    assert config.url == "https://logs.example.test"
    assert config.push_url == "https://logs.example.test/loki/api/v1/push"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "loki:3100"}, "must start with http:// or https://"),
        ({"url": "http://loki:3100/api/prom/push"}, "deprecated /api/prom/push"),
        ({"url": "http://loki", "labels": {"trace_id": "x"}}, "stream per value"),
        ({"url": "http://loki", "labels": {"level": "x"}}, "reserved"),
        ({"url": "http://loki", "labels": {"bad-name": "x"}}, "invalid"),
        ({"url": "http://loki", "username": "u"}, "both a username and a password"),
        ({"url": "http://loki", "username": "u", "password": "p", "token": "t"}, "not both"),
        ({"url": "http://loki", "timeout": 0}, "must be > 0 seconds"),
        ({"url": "http://loki", "env": ""}, "env label"),
    ],
)
def test_bad_config_says_what_to_fix(kwargs: dict[str, object], message: str) -> None:
    """Invalid settings raise ValueError with the reason."""
    with pytest.raises(ValueError, match=message):
        LokiConfig(**kwargs)  # type: ignore[arg-type]


def test_from_env_reads_every_variable(tmp_path: Path) -> None:
    """AGENT_RUNTIME_LOKI_* and AGENT_RUNTIME_ENV build the whole configuration."""
    env = {
        "AGENT_RUNTIME_LOKI_URL": "http://loki:3100",
        "AGENT_RUNTIME_ENV": "staging",
        "AGENT_RUNTIME_LOKI_LABELS": "cluster=eu-1, region=west",
        "AGENT_RUNTIME_LOKI_TENANT": "team-a",
        "AGENT_RUNTIME_LOKI_TOKEN": "t0k",
        "AGENT_RUNTIME_LOKI_TIMEOUT": "2.5",
        "AGENT_RUNTIME_LOKI_CA_CERTS": "/etc/ssl/loki.pem",
        "AGENT_RUNTIME_LOKI_STRUCTURED_METADATA": "false",
        "AGENT_RUNTIME_LOKI_BATCH_SIZE": "100",
        "AGENT_RUNTIME_LOKI_SPOOL_DIR": str(tmp_path),
        "AGENT_RUNTIME_LOKI_SPOOL_MAX_BYTES": "1_000_000",
    }
    config = LokiConfig.from_env(env)
    assert config is not None
    assert config.env == "staging"
    assert dict(config.labels) == {"cluster": "eu-1", "region": "west"}
    assert (config.tenant, config.token, config.timeout) == ("team-a", "t0k", 2.5)
    assert config.ca_certs == "/etc/ssl/loki.pem"
    assert config.structured_metadata is False
    assert config.delivery.batch_size == 100
    assert config.delivery.spool_max_bytes == 1_000_000
    assert config.delivery.spool_dir == str(tmp_path)


def test_from_env_is_off_without_url_and_names_bad_variables() -> None:
    """No URL means no sink; a malformed variable is named in the error."""
    assert LokiConfig.from_env({}) is None
    with pytest.raises(ValueError, match="AGENT_RUNTIME_LOKI_TIMEOUT must be a number"):
        LokiConfig.from_env(
            {"AGENT_RUNTIME_LOKI_URL": "http://l", "AGENT_RUNTIME_LOKI_TIMEOUT": "x"}
        )
    with pytest.raises(ValueError, match="AGENT_RUNTIME_LOKI_LABELS must look like"):
        LokiConfig.from_env(
            {"AGENT_RUNTIME_LOKI_URL": "http://l", "AGENT_RUNTIME_LOKI_LABELS": "x"}
        )
    with pytest.raises(ValueError, match="AGENT_RUNTIME_LOKI_BATCH_SIZE: batch_size"):
        LokiConfig.from_env(
            {"AGENT_RUNTIME_LOKI_URL": "http://l", "AGENT_RUNTIME_LOKI_BATCH_SIZE": "-3"}
        )
    with pytest.raises(ValueError, match="AGENT_RUNTIME_LOKI_URL"):
        LokiConfig.from_env({"AGENT_RUNTIME_LOKI_URL": "localhost:3100"})
