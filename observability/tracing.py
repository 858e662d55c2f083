"""Tracing on the OpenTelemetry SDK: provider set-up, OTLP export, httpx, trace continuity.

:func:`configure_tracing` installs a ``TracerProvider`` with the service's resource, a batch
OTLP/HTTP exporter when an endpoint is configured (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, the standard variables), and instruments httpx so outbound
calls carry ``traceparent``.

**Trace continuity.** A durable run keeps one trace id for its whole life, across process
crashes. The SDK offers no way to start a *root* span with a chosen trace id, so the provider
installed here uses an id generator that, inside :func:`span_in_trace`, returns the recorded
trace id instead of a random one: a resumed run's span is a new root span in the same trace. If
the application installed its own provider, :func:`span_in_trace` falls back to a remote parent
span context carrying that trace id (the trace id is kept; the trace shows a missing parent).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags

__all__ = [
    "TRACER_NAME",
    "configure_tracing",
    "current_traceparent",
    "format_traceparent",
    "parse_traceparent",
    "shutdown_tracing",
    "span_in_trace",
    "tracer",
]

TRACER_NAME = "agent_runtime"

_forced_trace_id: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "observability_forced_trace_id", default=None
)
_lock = threading.Lock()
_provider: TracerProvider | None = None
_httpx_instrumented = False


class _ContinuingIdGenerator(IdGenerator):
    """Random ids, except the trace id a durable run asks for inside :func:`span_in_trace`."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        return self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        forced = _forced_trace_id.get()
        return forced if forced else self._random.generate_trace_id()


def configure_tracing(
    service_name: str,
    *,
    otlp_endpoint: str | None = None,
    exporter: SpanExporter | None = None,
    processor: SpanProcessor | None = None,
    resource_attributes: Mapping[str, str] | None = None,
    instrument_httpx: bool = True,
) -> TracerProvider:
    """Install the global tracer provider (once per process; later calls add processors).

    Args:
        service_name: ``service.name`` of the resource.
        otlp_endpoint: OTLP/HTTP base URL (default from the standard OTEL variables).
        exporter: A span exporter to batch to (e.g. in-memory for tests), besides OTLP.
        processor: A span processor to add as is.
        resource_attributes: Extra resource attributes.
        instrument_httpx: Instrument httpx clients (outbound ``traceparent``).

    Returns:
        The provider.
    """
    global _provider, _httpx_instrumented
    with _lock:
        if _provider is None:
            attrs: dict[str, Any] = {"service.name": service_name}
            attrs.update(resource_attributes or {})
            provider = TracerProvider(
                resource=Resource.create(attrs), id_generator=_ContinuingIdGenerator()
            )
            current = trace.get_tracer_provider()
            if isinstance(current, TracerProvider):
                provider = current  # the application configured its own: add to it
            else:
                trace.set_tracer_provider(provider)
            _provider = provider
            endpoint = otlp_endpoint or _env_endpoint()
            if endpoint:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )

                _provider.add_span_processor(
                    BatchSpanProcessor(OTLPSpanExporter(endpoint=_traces_url(endpoint)))
                )
        if exporter is not None:
            _provider.add_span_processor(BatchSpanProcessor(exporter))
        if processor is not None:
            _provider.add_span_processor(processor)
        if instrument_httpx and not _httpx_instrumented:
            from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

            HTTPXClientInstrumentor().instrument()
            _httpx_instrumented = True
        return _provider


def _env_endpoint() -> str | None:
    return os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )


def _traces_url(endpoint: str) -> str:
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == endpoint:
        return endpoint  # the per-signal variable is used as is
    return endpoint.rstrip("/") + (
        "" if endpoint.rstrip("/").endswith("/v1/traces") else "/v1/traces"
    )


def shutdown_tracing(timeout_s: float = 5.0) -> None:
    """Flush and stop span export (bounded by ``timeout_s``)."""
    provider = _provider
    if provider is not None:
        provider.force_flush(int(timeout_s * 1000))


_tracer: trace.Tracer | None = None


def tracer() -> trace.Tracer:
    """Return agent-runtime's tracer.

    Cached: ``trace.get_tracer`` reads the environment on every call while no provider is set.
    Before a provider is installed this is OpenTelemetry's proxy tracer, which starts real spans
    as soon as one is.
    """
    global _tracer
    if _tracer is None:
        _tracer = trace.get_tracer(TRACER_NAME)
    return _tracer


def _synthetic_span_id(trace_id: int) -> int:
    digest = hashlib.blake2b(trace_id.to_bytes(16, "big"), digest_size=8).digest()
    return int.from_bytes(digest, "big") or 1


@contextlib.contextmanager
def span_in_trace(
    name: str,
    trace_id: str,
    parent_span_id: str | None = None,
    *,
    attributes: Mapping[str, Any] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Iterator[Span]:
    """Start a span (made current) that belongs to the recorded trace ``trace_id``.

    Args:
        name: Span name.
        trace_id: 32 hex characters.
        parent_span_id: 16 hex characters of the parent (e.g. the request that started the
            run), or None for a root span.
        attributes: Span attributes.
        kind: Span kind.

    Yields:
        The span.
    """
    tid = int(trace_id, 16)
    if parent_span_id:
        parent = SpanContext(
            tid, int(parent_span_id, 16), is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)
        )
        ctx = trace.set_span_in_context(NonRecordingSpan(parent), otel_context.Context())
        with tracer().start_as_current_span(
            name, context=ctx, kind=kind, attributes=attributes
        ) as span:
            yield span
        return
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider) and isinstance(
        provider.id_generator, _ContinuingIdGenerator
    ):
        token = _forced_trace_id.set(tid)
        try:
            span = tracer().start_span(
                name, context=otel_context.Context(), kind=kind, attributes=attributes
            )
        finally:
            _forced_trace_id.reset(token)
        with trace.use_span(span, end_on_exit=True):
            yield span
        return
    parent = SpanContext(
        tid, _synthetic_span_id(tid), is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )
    ctx = trace.set_span_in_context(NonRecordingSpan(parent), otel_context.Context())
    with tracer().start_as_current_span(
        name, context=ctx, kind=kind, attributes=attributes
    ) as span:
        yield span


def format_traceparent(trace_id: str, span_id: str, sampled: bool = True) -> str:
    """Return a W3C ``traceparent`` header value."""
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """Parse a W3C ``traceparent``; None when it is absent or malformed (never raises)."""
    if not value:
        return None
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff":
        return None
    version, trace_id, span_id, flags = parts[0], parts[1], parts[2], parts[3]
    if version == "00" and len(parts) != 4:
        return None
    if len(trace_id) != 32 or len(span_id) != 16 or len(flags) != 2:
        return None
    try:
        if int(trace_id, 16) == 0 or int(span_id, 16) == 0:
            return None
        int(flags, 16)
    except ValueError:
        return None
    if trace_id != trace_id.lower() or span_id != span_id.lower():
        return None
    return trace_id, span_id


def current_traceparent(fallback_trace_id: str | None = None) -> str | None:
    """Return the ``traceparent`` of the current span, or one built on ``fallback_trace_id``."""
    span_ctx = trace.get_current_span().get_span_context()
    if span_ctx.is_valid:
        return format_traceparent(
            format(span_ctx.trace_id, "032x"),
            format(span_ctx.span_id, "016x"),
            bool(span_ctx.trace_flags & TraceFlags.SAMPLED),
        )
    if fallback_trace_id:
        tid = int(fallback_trace_id, 16)
        return format_traceparent(fallback_trace_id, format(_synthetic_span_id(tid), "016x"))
    return None
