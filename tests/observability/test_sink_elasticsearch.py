"""Tests for the Elasticsearch sink against a local server checking the documented APIs."""

from __future__ import annotations

import base64
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client import REGISTRY

from observability.records import LogEntry, bind, build_entry
from observability.sinks.elasticsearch import (
    DeliveryConfig,
    ElasticsearchConfig,
    ElasticsearchSink,
    ecs_document,
    retention_seconds,
)
from tests.observability.fakes import ES_COMPAT_NDJSON, FakeElasticsearch

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7
DS = "logs-agent_runtime-default"


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _entry(
    message: str,
    *,
    level: int = logging.INFO,
    traced: bool = True,
    run_id: str | None = None,
    extra: dict[str, object] | None = None,
    exc: bool = False,
) -> LogEntry:
    exc_info = None
    if exc:
        try:
            raise KeyError("missing")
        except KeyError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("app.module", level, __file__, 1, message, None, exc_info)
    for key, value in (extra or {}).items():
        setattr(record, key, value)
    span = NonRecordingSpan(
        SpanContext(TRACE_ID, SPAN_ID, is_remote=False, trace_flags=TraceFlags(1))
    )
    with contextlib.ExitStack() as stack:
        if traced:
            stack.enter_context(trace.use_span(span))
        stack.enter_context(bind(run_id=run_id, step="fetch" if run_id else None))
        return build_entry(record, "api")


@pytest.fixture
def es() -> Iterator[FakeElasticsearch]:
    with FakeElasticsearch() as server:
        yield server
    assert server.violations == []


@pytest.fixture
def delivery(tmp_path: Path) -> DeliveryConfig:
    return DeliveryConfig(
        linger=0.02, initial_backoff=0.01, max_backoff=0.05, spool_dir=str(tmp_path / "spool")
    )


@pytest.fixture
def sinks() -> Iterator[list[ElasticsearchSink]]:
    made: list[ElasticsearchSink] = []
    yield made
    for sink in made:
        sink.close(1.0)


def _sink(sinks: list[ElasticsearchSink], **config: object) -> ElasticsearchSink:
    sink = ElasticsearchSink(ElasticsearchConfig(**config))  # type: ignore[arg-type]
    sinks.append(sink)
    return sink


def _messages(es: FakeElasticsearch) -> list[str]:
    return [d.source["message"] for d in es.documents]


def test_installs_lifecycle_and_template_then_bulk_creates(
    es: FakeElasticsearch, delivery: DeliveryConfig, sinks: list[ElasticsearchSink]
) -> None:
    """First use installs the ILM policy and index template, then bulk-creates documents."""
    sink = _sink(sinks, url=es.url, delivery=delivery)
    for n in range(3):
        sink.submit(_entry(f"doc {n}"))
    assert sink.flush(5.0)
    sink.submit(_entry("later"))
    assert sink.flush(5.0)
    calls = [(r.method, r.path) for r in es.requests]
    assert calls[:2] == [
        ("PUT", f"/_ilm/policy/{DS}-retention"),
        ("PUT", f"/_index_template/{DS}"),
    ]
    assert {path for _, path in calls[2:]} == {f"/{DS}/_bulk"}  # installed once, on first use
    policy = es.policies[f"{DS}-retention"]
    assert policy["phases"]["delete"] == {"min_age": "7d", "actions": {"delete": {}}}
    assert policy["phases"]["hot"]["actions"]["rollover"]["max_age"] == "1d"
    template = es.templates[DS]
    assert template["index_patterns"] == [DS]
    assert template["priority"] == 200
    assert template["template"]["settings"]["index"]["lifecycle"]["name"] == f"{DS}-retention"
    mappings = template["template"]["mappings"]["properties"]
    assert mappings["@timestamp"] == {"type": "date_nanos"}
    assert mappings["agent_runtime"]["type"] == "flattened"
    bulk = es.requests[2]
    assert bulk.headers["content-type"] == ES_COMPAT_NDJSON
    lines = bulk.body.decode().splitlines()
    assert lines[0::2] == ['{"create":{}}'] * 3  # the only op a data stream accepts
    assert _messages(es) == ["doc 0", "doc 1", "doc 2", "later"]
    assert sink.health().healthy


def test_documents_use_ecs_fields(
    es: FakeElasticsearch, delivery: DeliveryConfig, sinks: list[ElasticsearchSink]
) -> None:
    """Documents carry ECS names, the record's time in ns, run fields in labels."""
    entry = _entry(
        "step failed", level=logging.ERROR, run_id="run-9", extra={"tokens": 12, "ctx": {"a": 1}}
    )
    failing = _entry("with error", exc=True)
    sink = _sink(sinks, url=es.url, env="prod", delivery=delivery)
    sink.submit(entry)
    sink.submit(failing)
    assert sink.flush(5.0)
    doc = es.documents[0].source
    assert doc["message"] == "step failed"
    assert doc["log"] == {"level": "ERROR", "logger": "app.module"}
    assert doc["service"] == {"name": "api", "environment": "prod"}
    assert doc["trace"] == {"id": format(TRACE_ID, "032x")}
    assert doc["span"] == {"id": format(SPAN_ID, "016x")}
    assert doc["labels"] == {"run_id": "run-9", "step": "fetch", "tokens": 12}
    assert doc["agent_runtime"] == {"ctx": {"a": 1}}
    seconds, fraction = doc["@timestamp"].rstrip("Z").split(".")
    assert int(fraction) == entry.time_ns % 1_000_000_000
    assert seconds == entry.fields["timestamp"][:19]
    error = es.documents[1].source["error"]
    assert error["type"] == "KeyError"
    assert error["message"] == "'missing'"
    assert "Traceback" in error["stack_trace"]


def test_custom_retention_and_data_stream(
    es: FakeElasticsearch, delivery: DeliveryConfig, sinks: list[ElasticsearchSink]
) -> None:
    """Retention goes to the delete phase; a short one also shortens the rollover."""
    ds = "logs-agent_runtime-staging"
    sink = _sink(sinks, url=es.url, data_stream=ds, retention="12h", delivery=delivery)
    sink.submit(_entry("x"))
    assert sink.flush(5.0)
    policy = es.policies[f"{ds}-retention"]
    assert policy["phases"]["delete"]["min_age"] == "12h"
    assert policy["phases"]["hot"]["actions"]["rollover"]["max_age"] == "12h"
    assert es.documents[0].index == ds


def test_per_item_429_is_retried(
    es: FakeElasticsearch, delivery: DeliveryConfig, sinks: list[ElasticsearchSink]
) -> None:
    """Documents refused with 429 inside a bulk response are sent again; none is duplicated."""
    retried = _metric("agent_runtime_log_batches_retried_total", sink="elasticsearch")
    es.fail_items(429, 429)  # the first two documents of the first bulk
    sink = _sink(sinks, url=es.url, delivery=delivery)
    for n in range(5):
        sink.submit(_entry(f"doc {n}"))
    assert sink.flush(5.0)
    assert sorted(_messages(es)) == [f"doc {n}" for n in range(5)]
    assert _metric("agent_runtime_log_batches_retried_total", sink="elasticsearch") == retried + 1


def test_whole_request_429_and_503_are_retried(
    es: FakeElasticsearch, delivery: DeliveryConfig, sinks: list[ElasticsearchSink]
) -> None:
    """A rejected bulk request (429, then 503) is retried in order until accepted."""
    sink = _sink(sinks, url=es.url, delivery=delivery)
    sink.submit(_entry("warm up"))
    assert sink.flush(5.0)
    es.fail_next(429, 503)
    for n in range(10):
        sink.submit(_entry(f"doc {n}"))
    assert sink.flush(5.0)
    assert _messages(es) == ["warm up", *[f"doc {n}" for n in range(10)]]


def test_per_item_400_is_dropped_and_logged_once(
    es: FakeElasticsearch,
    delivery: DeliveryConfig,
    sinks: list[ElasticsearchSink],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A document refused with 400 (mapping conflict) is counted as rejected, not retried."""
    rejected = _metric(
        "agent_runtime_log_records_dropped_total", sink="elasticsearch", reason="rejected"
    )
    es.fail_items(400)
    sink = _sink(sinks, url=es.url, delivery=delivery)
    for n in range(3):
        sink.submit(_entry(f"doc {n}"))
    assert sink.flush(5.0)
    assert _messages(es) == ["doc 1", "doc 2"]
    dropped = _metric(
        "agent_runtime_log_records_dropped_total", sink="elasticsearch", reason="rejected"
    )
    assert dropped == rejected + 1
    warnings = [r for r in caplog.records if "(rejected)" in r.getMessage()]
    assert len(warnings) == 1
    assert "document_parsing_exception" in warnings[0].getMessage()


def test_api_key_and_wrong_key(delivery: DeliveryConfig, sinks: list[ElasticsearchSink]) -> None:
    """The API key goes in 'Authorization: ApiKey'; a wrong one keeps records with a hint."""
    key = base64.b64encode(b"id:secret").decode()
    with FakeElasticsearch(authorization=f"ApiKey {key}") as es:
        wrong = _sink(sinks, url=es.url, api_key="bm9wZQ==", delivery=delivery)
        wrong.submit(_entry("kept"))
        assert not wrong.flush(0.3)
        health = wrong.health()
        assert not health.healthy
        assert "HTTP 401" in health.detail
        assert "AGENT_RUNTIME_ELASTICSEARCH_API_KEY" in health.detail
        wrong.close(0.5)
        right = _sink(sinks, url=es.url, api_key=key, delivery=delivery)
        assert right.flush(5.0)
        assert _messages(es) == ["kept"]
        assert es.violations == []


def test_basic_auth(delivery: DeliveryConfig, sinks: list[ElasticsearchSink]) -> None:
    """Username and password are sent as HTTP basic auth."""
    expected = "Basic " + base64.b64encode(b"elastic:pw").decode()
    with FakeElasticsearch(authorization=expected) as es:
        sink = _sink(sinks, url=es.url, username="elastic", password="pw", delivery=delivery)
        sink.submit(_entry("hello"))
        assert sink.flush(5.0)
        assert _messages(es) == ["hello"]


def test_server_without_product_header_is_refused(
    delivery: DeliveryConfig, sinks: list[ElasticsearchSink]
) -> None:
    """A server that is not Elasticsearch makes the sink unhealthy, saying so; nothing is lost."""
    with FakeElasticsearch(product_header=False) as es:
        sink = _sink(sinks, url=es.url, delivery=delivery)
        sink.submit(_entry("kept"))
        assert not sink.flush(0.3)
        health = sink.health()
        assert "is not Elasticsearch" in health.detail
        assert health.spooled == 1
        assert health.dropped == 0


def test_template_without_privileges_still_ships(
    es: FakeElasticsearch,
    delivery: DeliveryConfig,
    sinks: list[ElasticsearchSink],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 403 on the template is logged once with the privileges needed; records still go."""
    es.template_status = 403
    es.templates[DS] = {"index_patterns": [DS]}  # an administrator installed one earlier
    sink = _sink(sinks, url=es.url, delivery=delivery)
    sink.submit(_entry("a"))
    sink.submit(_entry("b"))
    assert sink.flush(5.0)
    assert _messages(es) == ["a", "b"]
    warnings = [r for r in caplog.records if "manage_index_templates" in r.getMessage()]
    assert len(warnings) == 1


def test_install_can_be_switched_off(
    es: FakeElasticsearch, delivery: DeliveryConfig, sinks: list[ElasticsearchSink]
) -> None:
    """install_template=False sends only bulk requests."""
    es.templates[DS] = {"index_patterns": [DS]}
    sink = _sink(sinks, url=es.url, install_template=False, delivery=delivery)
    sink.submit(_entry("a"))
    assert sink.flush(5.0)
    assert [r.path for r in es.requests] == [f"/{DS}/_bulk"]


def test_client_native_spans_are_off(
    delivery: DeliveryConfig, sinks: list[ElasticsearchSink]
) -> None:
    """The sink's client and its .options() copies (used by the bulk helper) make no spans."""
    sink = _sink(sinks, url="http://127.0.0.1:9", delivery=delivery)
    client = sink._transport._client  # type: ignore[attr-defined]
    assert client._otel.enabled is False
    assert client.options(request_timeout=1)._otel.enabled is False


def test_ecs_document_flattens_dotted_label_keys() -> None:
    """Scalar extras with dots become flat label keys; objects go under agent_runtime."""
    entry = LogEntry(
        1, "INFO", {"message": "m", "extra.message": "x", "nested": [1, 2], "none": None}
    )
    doc = ecs_document(entry, "dev")
    assert doc["labels"] == {"extra_message": "x"}
    assert doc["agent_runtime"] == {"nested": [1, 2], "none": None}
    assert doc["@timestamp"] == "1970-01-01T00:00:00.000000001Z"


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "elasticsearch:9200"}, "must start with http:// or https://"),
        ({"url": "http://es", "data_stream": "Logs-Upper"}, "data stream name"),
        ({"url": "http://es", "data_stream": "-logs"}, "data stream name"),
        ({"url": "http://es", "retention": "7 days"}, "positive number followed by"),
        ({"url": "http://es", "retention": "0d"}, "positive number followed by"),
        ({"url": "http://es", "username": "u"}, "both a username and a password"),
        ({"url": "http://es", "api_key": "k", "username": "u", "password": "p"}, "not both"),
        ({"url": "http://es", "compatible_with": 3}, "major version"),
        ({"url": "http://es", "timeout": -1}, "must be > 0 seconds"),
    ],
)
def test_bad_config_says_what_to_fix(kwargs: dict[str, object], message: str) -> None:
    """Invalid settings raise ValueError with the reason."""
    with pytest.raises(ValueError, match=message):
        ElasticsearchConfig(**kwargs)  # type: ignore[arg-type]


def test_retention_units() -> None:
    """Retention accepts d, h, m and s."""
    assert [retention_seconds(v) for v in ("7d", "12h", "30m", "90s")] == [
        604_800,
        43_200,
        1_800,
        90,
    ]


def test_from_env_reads_every_variable(tmp_path: Path) -> None:
    """AGENT_RUNTIME_ELASTICSEARCH_* and AGENT_RUNTIME_ENV build the whole configuration."""
    env = {
        "AGENT_RUNTIME_ELASTICSEARCH_URL": "https://es:9200",
        "AGENT_RUNTIME_ELASTICSEARCH_API_KEY": "a2V5",
        "AGENT_RUNTIME_ELASTICSEARCH_DATA_STREAM": "logs-agent_runtime-prod",
        "AGENT_RUNTIME_ELASTICSEARCH_RETENTION": "30d",
        "AGENT_RUNTIME_ENV": "prod",
        "AGENT_RUNTIME_ELASTICSEARCH_INSTALL_TEMPLATE": "no",
        "AGENT_RUNTIME_ELASTICSEARCH_COMPATIBLE_WITH": "0",
        "AGENT_RUNTIME_ELASTICSEARCH_TIMEOUT": "3",
        "AGENT_RUNTIME_ELASTICSEARCH_CA_CERTS": "/etc/ssl/es.pem",
        "AGENT_RUNTIME_ELASTICSEARCH_LINGER": "0.2",
        "AGENT_RUNTIME_ELASTICSEARCH_SPOOL_DIR": str(tmp_path),
    }
    config = ElasticsearchConfig.from_env(env)
    assert config is not None
    assert (config.url, config.api_key, config.data_stream) == (
        "https://es:9200",
        "a2V5",
        "logs-agent_runtime-prod",
    )
    assert (config.retention, config.env, config.install_template) == ("30d", "prod", False)
    assert config.compatible_with is None
    assert (config.timeout, config.ca_certs) == (3.0, "/etc/ssl/es.pem")
    assert config.delivery.linger == 0.2
    assert ElasticsearchConfig.from_env({}) is None
    with pytest.raises(ValueError, match="AGENT_RUNTIME_ELASTICSEARCH_INSTALL_TEMPLATE must be"):
        ElasticsearchConfig.from_env(
            {
                "AGENT_RUNTIME_ELASTICSEARCH_URL": "http://es",
                "AGENT_RUNTIME_ELASTICSEARCH_INSTALL_TEMPLATE": "maybe",
            }
        )
