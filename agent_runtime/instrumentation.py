"""The one place where runtime events become logs, spans and metrics.

:class:`ObservabilityHook` subscribes to :data:`agent_runtime.events.hooks`. For each **scope** it
opens a span (run, step, attempt, sandbox, limiter wait) and binds ``run_id``/``workflow``/
``step`` to the log context, so every record logged inside carries them along with the span's
``trace_id``/``span_id``. For each **event** it updates the Prometheus metrics of
:mod:`observability.metrics` (histograms with a ``trace_id`` exemplar) and writes one structured
log line where an operator would want one (retries, failures, recoveries, breaker changes,
blocked egress, sandbox output).

It is installed by ``Runtime(observe=True)`` (the default) and costs nothing when not installed:
the runtime then emits into an empty hook registry.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from agent_runtime import events as ev
from agent_runtime.events import hooks
from observability import metrics as m
from observability.records import bind, pop_fields, push_fields
from observability.tracing import span_in_trace, tracer

if TYPE_CHECKING:
    from agent_runtime.runtime import Runtime

__all__ = ["ObservabilityHook", "install", "uninstall"]

_log_run = logging.getLogger("agent_runtime.run")
_log_step = logging.getLogger("agent_runtime.step")
_log_res = logging.getLogger("agent_runtime.resilience")
_log_sandbox = logging.getLogger("agent_runtime.sandbox")
_log_output = logging.getLogger("agent_runtime.sandbox.output")
_log_flags = logging.getLogger("agent_runtime.flags")

_BREAKER_STATES = ("closed", "open", "half_open")


def _exemplar() -> dict[str, str] | None:
    span_ctx = trace.get_current_span().get_span_context()
    if not span_ctx.is_valid:
        return None
    return {"trace_id": format(span_ctx.trace_id, "032x")}


def _trace_exemplar(trace_id: str | None) -> dict[str, str] | None:
    return {"trace_id": trace_id} if trace_id else _exemplar()


class ObservabilityHook:
    """Turns runtime events and scopes into logs, spans and metrics."""

    def __init__(self) -> None:
        self._dlq_source: Any = None
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: every step updates these."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def use_dlq_source(self, runtime: Runtime) -> None:
        """Read the DLQ depth gauge from ``runtime``'s database at scrape time."""
        self._dlq_source = runtime.store

        def depth() -> float:
            store = self._dlq_source
            if store is None:
                return math.nan
            try:
                return float(store.dlq_depth())
            except Exception:
                return math.nan  # a scrape must not fail because the database is down

        m.DLQ_DEPTH.set_function(depth)

    # -- scopes --------------------------------------------------------------------------------

    def scope(self, scope: ev.Scope) -> contextlib.AbstractContextManager[Any]:
        """Return the span (and log binding) for ``scope``."""
        if isinstance(scope, ev.RunScope):
            return self._run_scope(scope)
        if isinstance(scope, ev.StepScope):
            return self._step_scope(scope)
        if isinstance(scope, ev.AttemptScope):
            return _SpanScope(
                f"attempt {scope.step} #{scope.attempt}",
                {"step.name": scope.step, "attempt": scope.attempt},
                None,
            )
        if isinstance(scope, ev.SandboxScope):
            return self._span(
                f"sandbox {scope.backend}",
                {
                    "sandbox.backend": scope.backend,
                    "sandbox.image": scope.image,
                    "sandbox.command": " ".join(scope.command)[:500],
                },
            )
        if isinstance(scope, ev.LimiterWaitScope):
            return self._limiter_wait(scope)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _run_scope(self, scope: ev.RunScope) -> Iterator[None]:
        attributes = {
            "run.id": scope.run_id,
            "workflow": scope.workflow,
            "run.resumed": scope.resumed,
        }
        name = f"run {scope.workflow}" + (" (resumed)" if scope.resumed else "")
        gauge = m.RUNS_ACTIVE.labels(scope.workflow)
        gauge.inc()
        try:
            with (
                span_in_trace(
                    name, scope.trace_id, scope.parent_span_id, attributes=attributes
                ) as span,
                bind(run_id=scope.run_id, workflow=scope.workflow),
            ):
                try:
                    yield
                except BaseException as exc:
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    raise
        finally:
            gauge.dec()

    def _step_scope(self, scope: ev.StepScope) -> _SpanScope:
        return _SpanScope(
            f"step {scope.step}",
            {
                "step.name": scope.step,
                "step.position": scope.position,
                "run.id": scope.run_id or "",
            },
            {"step": scope.step},
        )

    @contextlib.contextmanager
    def _limiter_wait(self, scope: ev.LimiterWaitScope) -> Iterator[None]:
        started = time.perf_counter()
        try:
            with self._span(f"limiter wait {scope.limiter}", {"limiter": scope.limiter}):
                yield
        finally:
            m.LIMITER_WAIT_SECONDS.labels(scope.limiter).observe(
                time.perf_counter() - started, exemplar=_exemplar()
            )

    @contextlib.contextmanager
    def _span(self, name: str, attributes: dict[str, Any]) -> Iterator[None]:
        with tracer().start_as_current_span(name, attributes=attributes) as span:
            try:
                yield
            except BaseException as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise

    # -- events --------------------------------------------------------------------------------

    def on_event(self, event: ev.Event) -> None:
        """Update metrics and log for ``event``."""
        if isinstance(event, ev.WorkflowRegistered):
            # Start the workflow's series at zero: rate() cannot see the first increments of a
            # series that appears already at its first value (a burst of failures would never
            # fire the failure-ratio alerts).
            wf = event.workflow
            for resumed in ("false", "true"):
                m.RUNS_STARTED.labels(wf, resumed)
            for status in ("success", "failed"):
                m.RUNS_FINISHED.labels(wf, status)
            for outcome in ("success", "replayed", "failed"):
                m.STEPS.labels(wf, outcome)
            m.DLQ_ENTRIES.labels(wf)
            m.RUNS_RECOVERED.labels(wf)
        elif isinstance(event, ev.StepFinished):
            wf = event.workflow or "-"
            self._child(m.STEPS, wf, event.outcome).inc()
            if event.outcome != "replayed":
                self._child(m.STEP_DURATION_SECONDS, wf, event.step).observe(
                    event.duration_s, exemplar=_exemplar()
                )
            if event.outcome == "failed":
                _log_step.warning(
                    "step %s failed after %d attempt(s): %s",
                    event.step,
                    event.attempts,
                    event.error_type,
                    extra={"position": event.position, "attempts": event.attempts},
                )
        elif isinstance(event, ev.CheckpointWritten):
            m.CHECKPOINT_WRITE_SECONDS.observe(event.duration_s, exemplar=_exemplar())
        elif isinstance(event, ev.RetryScheduled):
            m.RETRIES.labels(event.step, event.reason).inc()
            _log_step.warning(
                "attempt %d of %s failed (%s: %s); retrying in %.2f s",
                event.attempt,
                event.step,
                event.error_type,
                event.message,
                event.delay_s,
                extra={
                    "attempt": event.attempt,
                    "delay_s": round(event.delay_s, 3),
                    "error_class": event.reason,
                    "step": event.step,
                },
            )
        elif isinstance(event, ev.RunTransitioned):
            m.RUN_TRANSITIONS.labels(event.from_status or "none", event.to_status).inc()
            _log_run.info(
                "run %s: %s -> %s (%s)",
                event.run_id,
                event.from_status or "(new)",
                event.to_status,
                event.reason,
                extra=_run_fields(event.run_id, event.workflow, event.trace_id),
            )
        elif isinstance(event, ev.RunStarted):
            m.RUNS_STARTED.labels(event.workflow, str(event.resumed).lower()).inc()
        elif isinstance(event, ev.RunFinished):
            m.RUNS_FINISHED.labels(event.workflow, event.status).inc()
            m.RUN_DURATION_SECONDS.labels(event.workflow, event.status).observe(
                event.duration_s, exemplar=_trace_exemplar(event.trace_id)
            )
        elif isinstance(event, ev.RunRecovered):
            m.RUNS_RECOVERED.labels(event.workflow).inc()
            _log_run.warning(
                "run %s recovered from %s",
                event.run_id,
                event.previous_owner,
                extra=_run_fields(event.run_id, event.workflow, event.trace_id),
            )
        elif isinstance(event, ev.DeadLettered):
            m.DLQ_ENTRIES.labels(event.workflow).inc()
            _log_run.error(
                "run %s dead-lettered (entry %d): %s: %s",
                event.run_id,
                event.dead_letter_id,
                event.error_type,
                event.message,
                extra={
                    **_run_fields(event.run_id, event.workflow, event.trace_id),
                    "dead_letter_id": event.dead_letter_id,
                    "error_type": event.error_type,
                },
            )
        elif isinstance(event, ev.DeadLetterRetried):
            _log_run.info(
                "dead-letter entry %d retried: run %s is pending again",
                event.dead_letter_id,
                event.run_id,
                extra=_run_fields(event.run_id, event.workflow, None),
            )
        else:
            self._resilience_or_sandbox(event)

    def _resilience_or_sandbox(self, event: ev.Event) -> None:
        if isinstance(event, ev.BreakerStateChanged):
            for state in _BREAKER_STATES:
                m.BREAKER_STATE.labels(event.breaker, state).set(
                    1 if state == event.to_state else 0
                )
            if event.observed:
                return  # another process made (and counted, and logged) this transition
            m.BREAKER_TRANSITIONS.labels(event.breaker, event.from_state, event.to_state).inc()
            level = logging.WARNING if event.to_state == "open" else logging.INFO
            _log_res.log(
                level,
                "breaker %s: %s -> %s (%s)",
                event.breaker,
                event.from_state,
                event.to_state,
                event.reason,
                extra={"breaker": event.breaker, "breaker_state": event.to_state},
            )
        elif isinstance(event, ev.BreakerRejected):
            m.BREAKER_REJECTIONS.labels(event.breaker).inc()
        elif isinstance(event, ev.LimiterChanged):
            m.LIMITER_IN_FLIGHT.labels(event.limiter).set(event.in_flight)
            m.LIMITER_QUEUED.labels(event.limiter).set(event.queued)
        elif isinstance(event, ev.LimiterRejected):
            m.LIMITER_REJECTED.labels(event.limiter, event.reason).inc()
            _log_res.warning(
                "limiter %s rejected a call (%s)",
                event.limiter,
                event.reason,
                extra={"limiter": event.limiter, "reason": event.reason},
            )
        elif isinstance(event, ev.FallbackServed):
            m.FALLBACK_SERVED.labels(event.chain, event.served or "none").inc()
            if event.skipped:
                _log_res.info(
                    "fallback %s served by %s; skipped %s",
                    event.chain,
                    event.served,
                    ", ".join(f"{n} ({why})" for n, why in event.skipped),
                    extra={"chain": event.chain, "served": event.served},
                )
        elif isinstance(event, ev.GuardrailTriggered):
            m.GUARDRAIL_TRIGGERED.labels(event.limit, str(event.hard).lower()).inc()
            _log_res.log(
                logging.ERROR if event.hard else logging.WARNING,
                "guardrail %s %s: %s",
                event.limit,
                "stopped the loop" if event.hard else "warning",
                event.detail,
                extra={"limit": event.limit, "value": event.value, "threshold": event.threshold},
            )
        elif isinstance(event, ev.FlagsReloaded):
            m.FLAGS_RELOADS.labels("ok" if event.ok else "rejected").inc()
            if event.ok:
                _log_flags.info("feature flags reloaded from %s", event.source)
            else:
                _log_flags.error(
                    "feature flags from %s rejected, previous flags stay in force: %s",
                    event.source,
                    event.error,
                )
        elif isinstance(event, ev.SandboxStarted):
            m.SANDBOX_STARTS.labels(event.backend, str(event.warm).lower()).inc()
        elif isinstance(event, ev.SandboxFinished):
            m.SANDBOX_FINISHED.labels(event.backend, event.reason).inc()
            m.SANDBOX_DURATION_SECONDS.labels(event.backend).observe(
                event.duration_s, exemplar=_exemplar()
            )
            level = logging.INFO if event.reason == "exited" else logging.WARNING
            _log_sandbox.log(
                level,
                "sandbox command ended: %s (exit code %s) in %.2f s",
                event.reason,
                event.exit_code,
                event.duration_s,
                extra={
                    "reason": event.reason,
                    "exit_code": event.exit_code,
                    "peak_memory_bytes": event.peak_memory_bytes,
                },
            )
        elif isinstance(event, ev.SandboxOutput):
            _log_output.info(event.line, extra={"stream": event.stream})
        elif isinstance(event, ev.EgressBlocked):
            m.SANDBOX_EGRESS_BLOCKED.inc()
            _log_sandbox.warning(
                "sandbox egress to %s blocked: not on the allowlist",
                event.destination,
                extra={
                    "destination": event.destination,
                    "blocked_at": event.at,
                    **({"run_id": event.run_id} if event.run_id else {}),
                    **({"trace_id": event.trace_id} if event.trace_id else {}),
                },
            )
        elif isinstance(event, ev.WorkspaceRolledBack):
            m.WORKSPACE_ROLLBACKS.labels(str(event.automatic).lower()).inc()
            _log_sandbox.info(
                "workspace of run %s rolled back to %s (%d file(s) restored)",
                event.run_id,
                "the initial state" if event.to_step is None else f"step {event.to_step}",
                event.files_restored,
                extra={"run_id": event.run_id, "automatic": event.automatic},
            )


class _SpanScope:
    """A span made current (and log fields bound) for the duration of a ``with`` block.

    A plain class rather than a generator-based context manager: step and attempt scopes run
    on every step, and this keeps their cost to a few microseconds.
    """

    __slots__ = ("_attributes", "_context_token", "_fields", "_fields_token", "_name", "_span")

    def __init__(
        self, name: str, attributes: dict[str, Any], fields: dict[str, Any] | None
    ) -> None:
        self._name = name
        self._attributes = attributes
        self._fields = fields

    def __enter__(self) -> None:
        self._span = tracer().start_span(self._name, attributes=self._attributes)
        self._context_token = otel_context.attach(trace.set_span_in_context(self._span))
        self._fields_token = push_fields(**self._fields) if self._fields else None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self._fields_token is not None:
            pop_fields(self._fields_token)
        otel_context.detach(self._context_token)
        if exc is not None:
            self._span.record_exception(exc)
            self._span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        self._span.end()


def _run_fields(run_id: str, workflow: str | None, trace_id: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"run_id": run_id}
    if workflow:
        fields["workflow"] = workflow
    if trace_id and not trace.get_current_span().get_span_context().is_valid:
        fields["trace_id"] = trace_id
    return fields


_hook: ObservabilityHook | None = None
_hook_lock = threading.Lock()


def install(runtime: Runtime | None = None) -> ObservabilityHook:
    """Subscribe the observability hook (idempotent) and return it."""
    global _hook
    with _hook_lock:
        if _hook is None:
            _hook = ObservabilityHook()
            from agent_runtime import __version__

            m.BUILD_INFO.info({"version": __version__})
        hooks.subscribe(_hook)
        if runtime is not None:
            _hook.use_dlq_source(runtime)
        return _hook


def uninstall() -> None:
    """Unsubscribe the observability hook."""
    with _hook_lock:
        if _hook is not None:
            hooks.unsubscribe(_hook)
