"""observability.configure(): settings from arguments and the environment, sinks chosen right."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

import observability
from observability import ObservabilityConfig, configure
from observability.logging import StructuredHandler


@pytest.fixture(autouse=True)
def _undo() -> Iterator[None]:
    yield
    observability.shutdown()


def test_defaults_from_an_empty_environment() -> None:
    """With nothing set: JSON to stderr at INFO, service agent-runtime, local search on."""
    cfg = ObservabilityConfig.from_env({})
    assert (cfg.service_name, cfg.level, cfg.log_format, cfg.stream) == (
        "agent-runtime",
        "INFO",
        "json",
        "stderr",
    )
    assert cfg.local_search is None


def test_environment_is_read() -> None:
    """OTEL_SERVICE_NAME and the AGENT_RUNTIME_LOG_* variables are honoured."""
    cfg = ObservabilityConfig.from_env(
        {
            "OTEL_SERVICE_NAME": "triage-api",
            "AGENT_RUNTIME_LOG_LEVEL": "debug",
            "AGENT_RUNTIME_LOG_FORMAT": "console",
            "AGENT_RUNTIME_LOG_STREAM": "stdout",
            "AGENT_RUNTIME_ENV": "prod",
            "AGENT_RUNTIME_LOKI_URL": "http://loki:3100",
            "AGENT_RUNTIME_LOG_SEARCH": "0",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        }
    )
    assert cfg.service_name == "triage-api"
    assert cfg.level == "DEBUG"
    assert cfg.log_format == "console"
    assert cfg.stream == "stdout"
    assert cfg.env == "prod"
    assert cfg.loki_url == "http://loki:3100"
    assert cfg.local_search is False
    assert cfg.otlp_endpoint == "http://collector:4318"


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"AGENT_RUNTIME_LOG_LEVEL": "LOUD"}, "log level"),
        ({"AGENT_RUNTIME_LOG_FORMAT": "xml"}, "log format"),
        ({"AGENT_RUNTIME_LOG_STREAM": "printer"}, "log stream"),
        ({"AGENT_RUNTIME_LOG_SEARCH": "maybe"}, "AGENT_RUNTIME_LOG_SEARCH"),
    ],
)
def test_bad_settings_say_what_is_accepted(env: dict[str, str], match: str) -> None:
    """A bad value raises ValueError naming the setting and the accepted values."""
    with pytest.raises(ValueError, match=match):
        ObservabilityConfig.from_env(env)


def test_unknown_override_is_refused() -> None:
    """configure() refuses keyword settings it does not know."""
    with pytest.raises(ValueError, match="unknown observability setting"):
        configure(colour="blue", sinks=[], stream=io.StringIO())


def test_local_search_is_the_default_sink(tmp_path: Path) -> None:
    """Without Loki or Elasticsearch the embedded search store receives the records."""
    db = tmp_path / "logs.db"
    obs = configure(
        "svc",
        stream=io.StringIO(),
        environ={"AGENT_RUNTIME_LOG_DB": str(db)},
        tracing=False,
    )
    assert [s.name for s in obs.sinks] == ["local"]
    logging.getLogger("t").warning("kept for search")
    assert obs.flush(5)
    from observability.search import LocalLogStore

    with LocalLogStore(db, create=False) as store:
        assert [r["message"] for r in store.search("kept")] == ["kept for search"]


def test_loki_and_elasticsearch_replace_local_search(tmp_path: Path) -> None:
    """With Loki and Elasticsearch configured, those two sinks are used and local search is off."""
    obs = configure(
        "svc",
        stream=io.StringIO(),
        environ={
            "AGENT_RUNTIME_LOKI_SPOOL_DIR": str(tmp_path / "loki"),
            "AGENT_RUNTIME_ELASTICSEARCH_SPOOL_DIR": str(tmp_path / "es"),
        },
        loki_url="http://127.0.0.1:9",
        elasticsearch_url="http://127.0.0.1:9",
        tracing=False,
    )
    assert sorted(s.name for s in obs.sinks) == ["elasticsearch", "loki"]
    obs.shutdown(timeout=0.5)


def test_console_format_and_replacement() -> None:
    """A second configure() replaces the first: one structured handler, the new format."""
    first = io.StringIO()
    configure("svc", stream=first, sinks=[], tracing=False)
    second = io.StringIO()
    configure("svc", stream=second, sinks=[], log_format="console", tracing=False)
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, StructuredHandler)]
    assert len(handlers) == 1
    logging.getLogger("app").error("broke", extra={"order": 7})
    assert first.getvalue() == ""
    line = second.getvalue()
    assert "ERROR" in line
    assert "app: broke" in line
    assert "order=7" in line


def test_exceptions_are_serialised() -> None:
    """An exception is logged with its type, message and stack."""
    stream = io.StringIO()
    configure("svc", stream=stream, sinks=[], tracing=False)
    try:
        raise RuntimeError("disk on fire")
    except RuntimeError:
        logging.getLogger("app").exception("failed to save")
    record = json.loads(stream.getvalue().splitlines()[-1])
    assert record["level"] == "ERROR"
    assert record["exception"]["type"] == "RuntimeError"
    assert record["exception"]["message"] == "disk on fire"
    assert "Traceback" in record["exception"]["stack"]


def test_stream_none_writes_no_lines_but_sinks_receive() -> None:
    """stream=none keeps the console quiet while sinks still get every record."""
    from observability.records import LogEntry
    from observability.sinks.base import SinkHealth

    class Collect:
        name = "collect"

        def __init__(self) -> None:
            self.entries: list[LogEntry] = []

        def submit(self, entry: LogEntry) -> None:
            self.entries.append(entry)

        def flush(self, timeout: float) -> bool:
            return True

        def close(self, timeout: float) -> None:
            return None

        def health(self) -> SinkHealth:
            return SinkHealth("collect", True, "ok")

    sink = Collect()
    obs = configure(
        "svc", sinks=[sink], environ={"AGENT_RUNTIME_LOG_STREAM": "none"}, tracing=False
    )
    assert obs.handler.stream is None
    logging.getLogger("app").info("to the sink only")
    assert [e.message for e in sink.entries] == ["to the sink only"]


def test_shutdown_restores_the_logging_levels_it_changed() -> None:
    """configure() sets the root level and quiets HTTP client loggers; shutdown() undoes both."""
    root = logging.getLogger()
    urllib3 = logging.getLogger("urllib3")
    root.setLevel(logging.ERROR)
    urllib3.setLevel(logging.DEBUG)
    try:
        configure("svc", stream=io.StringIO(), sinks=[], level="DEBUG", tracing=False)
        assert root.level == logging.DEBUG
        assert urllib3.level == logging.WARNING
        observability.shutdown()
        assert root.level == logging.ERROR
        assert urllib3.level == logging.DEBUG
    finally:
        root.setLevel(logging.WARNING)
        urllib3.setLevel(logging.NOTSET)
