"""Observability for agent-runtime: JSON logs with trace ids, tracing, metrics and log shipping.

:func:`configure` sets it all up in one call, from arguments or from the environment
(OpenTelemetry's standard variables where they exist):

* structured JSON logging on the stdlib ``logging`` root logger (``console`` format one setting
  away), every record carrying ``trace_id``/``span_id`` and the bound ``run_id``/``step``;
* the sinks: Loki (``AGENT_RUNTIME_LOKI_URL``), Elasticsearch
  (``AGENT_RUNTIME_ELASTICSEARCH_URL``), and the embedded search store, which is on by default
  when neither is configured (``agent-runtime logs search``);
* tracing on the OpenTelemetry SDK with OTLP/HTTP export when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is
  set, and httpx instrumented.

This package never imports ``agent_runtime``: the runtime reaches it through hooks
(``agent_runtime.instrumentation``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging as _logging  # the submodule observability.logging shadows the name
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Final

from observability.logging import CONSOLE, FORMATS, JSON, StructuredHandler
from observability.records import LogEntry, bind, bound_fields
from observability.sinks.base import Sink, SinkHealth

__all__ = [
    "CONSOLE",
    "DEFAULT_SERVICE_NAME",
    "JSON",
    "LogEntry",
    "Observability",
    "ObservabilityConfig",
    "Sink",
    "SinkHealth",
    "bind",
    "bound_fields",
    "configure",
    "current",
    "shutdown",
]

DEFAULT_SERVICE_NAME: Final = "agent-runtime"
DEFAULT_LEVEL: Final = "INFO"
DEFAULT_SHUTDOWN_TIMEOUT: Final = 5.0
_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_STREAMS: Final = ("stderr", "stdout", "none")


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false (1/0), got {raw!r}")


@dataclass(frozen=True, slots=True)
class ObservabilityConfig:
    """What :func:`configure` sets up.

    Attributes:
        service_name: The ``service`` field and label (``OTEL_SERVICE_NAME``).
        level: Minimum level logged: DEBUG, INFO, WARNING, ERROR (``AGENT_RUNTIME_LOG_LEVEL``).
        log_format: ``json`` (default) or ``console`` (``AGENT_RUNTIME_LOG_FORMAT``).
        stream: Where lines are written: ``stderr``, ``stdout`` or ``none``
            (``AGENT_RUNTIME_LOG_STREAM``).
        env: Deployment environment, the ``env`` label (``AGENT_RUNTIME_ENV``).
        loki_url: Loki base URL (``AGENT_RUNTIME_LOKI_URL``); None: no Loki sink.
        elasticsearch_url: Elasticsearch URL (``AGENT_RUNTIME_ELASTICSEARCH_URL``).
        local_search: Keep records in the embedded search store (``AGENT_RUNTIME_LOG_SEARCH``;
            default: on when neither Loki nor Elasticsearch is configured).
        otlp_endpoint: OTLP/HTTP endpoint for traces (``OTEL_EXPORTER_OTLP_ENDPOINT``).
        tracing: Install the OpenTelemetry SDK tracer provider.
        quiet_loggers: Loggers held at WARNING (chatty HTTP client internals).
    """

    service_name: str = DEFAULT_SERVICE_NAME
    level: str = DEFAULT_LEVEL
    log_format: str = JSON
    stream: str = "stderr"
    env: str = "dev"
    loki_url: str | None = None
    elasticsearch_url: str | None = None
    local_search: bool | None = None
    otlp_endpoint: str | None = None
    tracing: bool = True
    quiet_loggers: tuple[str, ...] = field(
        default=("urllib3", "elastic_transport", "httpcore", "docker")
    )

    def __post_init__(self) -> None:
        if self.level.upper() not in _LEVELS:
            raise ValueError(f"log level must be one of {', '.join(_LEVELS)}, got {self.level!r}")
        object.__setattr__(self, "level", self.level.upper())
        if self.log_format not in FORMATS:
            raise ValueError(
                f"log format must be one of {', '.join(FORMATS)}, got {self.log_format!r}"
            )
        if self.stream not in _STREAMS:
            raise ValueError(
                f"log stream must be one of {', '.join(_STREAMS)}, got {self.stream!r}"
            )
        if not self.service_name.strip():
            raise ValueError("service name must not be empty (OTEL_SERVICE_NAME)")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ObservabilityConfig:
        """Read the configuration from environment variables (see the attributes)."""
        env = os.environ if environ is None else environ
        search = env.get("AGENT_RUNTIME_LOG_SEARCH")
        return cls(
            service_name=env.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME,
            level=env.get("AGENT_RUNTIME_LOG_LEVEL") or DEFAULT_LEVEL,
            log_format=env.get("AGENT_RUNTIME_LOG_FORMAT") or JSON,
            stream=env.get("AGENT_RUNTIME_LOG_STREAM") or "stderr",
            env=env.get("AGENT_RUNTIME_ENV") or "dev",
            loki_url=env.get("AGENT_RUNTIME_LOKI_URL") or None,
            elasticsearch_url=env.get("AGENT_RUNTIME_ELASTICSEARCH_URL") or None,
            local_search=None if not search else _flag(env, "AGENT_RUNTIME_LOG_SEARCH", True),
            otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or None,
            tracing=_flag(env, "AGENT_RUNTIME_TRACING", True),
        )


class Observability:
    """What :func:`configure` installed: the handler and its sinks.

    Attributes:
        config: The configuration in force.
        handler: The structured handler on the root logger.
        sinks: The sinks records are shipped to.
    """

    def __init__(
        self,
        config: ObservabilityConfig,
        handler: StructuredHandler,
        sinks: Sequence[Sink],
        *,
        previous_levels: Mapping[str, int] | None = None,
    ) -> None:
        self.config = config
        self.handler = handler
        self.sinks = tuple(sinks)
        self._previous_levels = dict(previous_levels or {})
        self._closed = False

    def health(self) -> list[SinkHealth]:
        """Return the health of every sink (for ``/readyz``)."""
        return [sink.health() for sink in self.sinks]

    def flush(self, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> bool:
        """Deliver what the sinks hold, waiting at most ``timeout`` seconds in all."""
        ok = True
        for sink in self.sinks:
            ok = sink.flush(timeout) and ok
        return ok

    def shutdown(self, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> None:
        """Detach from logging, close the sinks with a bounded flush, flush spans."""
        if self._closed:
            return
        self._closed = True
        root = _logging.getLogger()
        root.removeHandler(self.handler)
        for name, level in self._previous_levels.items():  # undo what configure() changed
            _logging.getLogger(name or None).setLevel(level)
        for sink in self.sinks:
            with contextlib.suppress(Exception):
                sink.close(timeout)
        if self.config.tracing:
            from observability.tracing import shutdown_tracing

            shutdown_tracing(timeout)


_lock = threading.Lock()
_current: Observability | None = None


def current() -> Observability | None:
    """Return what :func:`configure` installed last (None before it ran)."""
    return _current


def _build_sinks(config: ObservabilityConfig, environ: Mapping[str, str]) -> list[Sink]:
    sinks: list[Sink] = []
    if config.loki_url:
        from observability.sinks.loki import LokiConfig, LokiSink

        loki_env = dict(environ)
        loki_env["AGENT_RUNTIME_LOKI_URL"] = config.loki_url
        loki_env.setdefault("AGENT_RUNTIME_ENV", config.env)
        loki_config = LokiConfig.from_env(loki_env)
        if loki_config is not None:
            sinks.append(LokiSink(loki_config))
    if config.elasticsearch_url:
        from observability.sinks.elasticsearch import ElasticsearchConfig, ElasticsearchSink

        es_env = dict(environ)
        es_env["AGENT_RUNTIME_ELASTICSEARCH_URL"] = config.elasticsearch_url
        es_env.setdefault("AGENT_RUNTIME_ENV", config.env)
        es_config = ElasticsearchConfig.from_env(es_env)
        if es_config is not None:
            sinks.append(ElasticsearchSink(es_config))
    local = config.local_search
    if local is None:
        local = not sinks
    if local:
        from observability.search import LocalSearchConfig
        from observability.sinks.local import LocalLogSink

        sinks.append(LocalLogSink.from_config(LocalSearchConfig.from_env(environ)))
    return sinks


def configure(
    service_name: str | None = None,
    *,
    config: ObservabilityConfig | None = None,
    stream: IO[str] | str | None = None,
    sinks: Sequence[Sink] | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: object,
) -> Observability:
    """Set up structured logging, log shipping and tracing for this process.

    Calling it again replaces what the previous call installed (its sinks are closed first).

    Args:
        service_name: Overrides ``OTEL_SERVICE_NAME``.
        config: The full configuration (default: from the environment, then ``overrides``).
        stream: A stream to write lines to, or ``"stderr"``/``"stdout"``/``"none"`` (the
            ``stream`` setting).
        sinks: Sinks to use instead of those the configuration describes.
        environ: Environment to read (default ``os.environ``).
        **overrides: Fields of :class:`ObservabilityConfig` to override (``level="DEBUG"``,
            ``log_format="console"``, ``loki_url=...``...).

    Returns:
        The installed :class:`Observability`.

    Raises:
        ValueError: A setting is invalid (the message names it and what is accepted).
        OSError: A spool directory or the search store cannot be used.
    """
    global _current
    env = os.environ if environ is None else environ
    base = config or ObservabilityConfig.from_env(env)
    values = {name: getattr(base, name) for name in ObservabilityConfig.__dataclass_fields__}
    if service_name:
        values["service_name"] = service_name
    unknown = set(overrides) - set(values)
    if unknown:
        raise ValueError(f"unknown observability setting(s): {', '.join(sorted(unknown))}")
    values.update(overrides)
    if isinstance(stream, str):
        values["stream"] = stream
        stream = None
    cfg = ObservabilityConfig(**values)
    with _lock:
        if _current is not None:
            _current.shutdown(timeout=2.0)
        built = list(sinks) if sinks is not None else _build_sinks(cfg, env)
        out: IO[str] | None
        if stream is not None:
            out = stream
        elif cfg.stream == "none":
            out = None
        else:
            out = sys.stdout if cfg.stream == "stdout" else sys.stderr
        handler = StructuredHandler(cfg.service_name, stream=out, fmt=cfg.log_format, sinks=built)
        if out is None:
            handler.without_stream()
        root = _logging.getLogger()
        for existing in list(root.handlers):
            if isinstance(existing, StructuredHandler):
                root.removeHandler(existing)
        previous = {"": root.level}
        previous.update({name: _logging.getLogger(name).level for name in cfg.quiet_loggers})
        root.addHandler(handler)
        root.setLevel(cfg.level)
        for name in cfg.quiet_loggers:
            _logging.getLogger(name).setLevel(_logging.WARNING)
        if cfg.tracing:
            from observability.tracing import configure_tracing

            configure_tracing(cfg.service_name, otlp_endpoint=cfg.otlp_endpoint)
        _current = Observability(cfg, handler, built, previous_levels=previous)
        return _current


def shutdown(timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> None:
    """Undo :func:`configure`: close the sinks with a bounded flush (also run at exit)."""
    global _current
    with _lock:
        if _current is not None:
            _current.shutdown(timeout)
            _current = None


atexit.register(shutdown)
