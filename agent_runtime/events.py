"""Typed runtime events and the hook registry that delivers them.

The runtime never logs metrics or starts spans itself. It emits **events** (something happened:
a step was retried, a breaker opened) and opens **scopes** (a unit of work with a duration: a run,
a step, an attempt, a sandbox execution, a limiter wait). Hooks subscribed here turn them into
logs, spans and metrics in one place (``agent_runtime.instrumentation`` is the one shipped), the
way stamina's instrumentation hooks and structlog's processors keep that concern out of the
business logic.

Delivery is synchronous and in the emitting thread (so a scope's span is the current span while
the work runs, and ``httpx`` calls inside a step carry its ``traceparent``). A hook that raises is
logged once and otherwise ignored: observability never breaks a run. With no hook subscribed,
``emit`` is a cheap no-op and ``scope`` returns a shared null context.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

__all__ = [
    "AttemptScope",
    "BreakerRejected",
    "BreakerStateChanged",
    "CheckpointWritten",
    "DeadLetterRetried",
    "DeadLettered",
    "EgressBlocked",
    "Event",
    "FallbackServed",
    "FlagsReloaded",
    "GuardrailTriggered",
    "Hook",
    "Hooks",
    "LimiterChanged",
    "LimiterRejected",
    "LimiterWaitScope",
    "RetryScheduled",
    "RunFinished",
    "RunRecovered",
    "RunScope",
    "RunStarted",
    "RunTransitioned",
    "SandboxFinished",
    "SandboxOutput",
    "SandboxScope",
    "SandboxStarted",
    "Scope",
    "StepFinished",
    "StepScope",
    "WorkflowRegistered",
    "WorkspaceRolledBack",
    "hooks",
]

_log = logging.getLogger("agent_runtime.events")


# -- events ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of every event. ``kind`` is a stable dotted name used in logs."""

    kind: ClassVar[str] = "event"


@dataclass(frozen=True, slots=True)
class WorkflowRegistered(Event):
    """A workflow was registered in this process (metrics start its series at zero)."""

    kind: ClassVar[str] = "workflow.registered"
    workflow: str


@dataclass(frozen=True, slots=True)
class RunTransitioned(Event):
    """A run changed state (persisted with its event row before this is emitted)."""

    kind: ClassVar[str] = "run.transitioned"
    run_id: str
    workflow: str
    from_status: str | None
    to_status: str
    reason: str
    trace_id: str | None = None


@dataclass(frozen=True, slots=True)
class RunStarted(Event):
    """This process began executing a run (a fresh start or a resume)."""

    kind: ClassVar[str] = "run.started"
    run_id: str
    workflow: str
    trace_id: str | None
    resumed: bool


@dataclass(frozen=True, slots=True)
class RunFinished(Event):
    """A run reached ``success`` or ``failed`` in this process."""

    kind: ClassVar[str] = "run.finished"
    run_id: str
    workflow: str
    status: str
    duration_s: float
    trace_id: str | None = None
    error_type: str | None = None


@dataclass(frozen=True, slots=True)
class RunRecovered(Event):
    """This process took over a run whose previous owner died or let its lease lapse."""

    kind: ClassVar[str] = "run.recovered"
    run_id: str
    workflow: str
    previous_owner: str | None
    status: str
    trace_id: str | None = None


@dataclass(frozen=True, slots=True)
class StepFinished(Event):
    """A step call ended: ``success``, ``replayed`` (from its checkpoint) or ``failed``."""

    kind: ClassVar[str] = "step.finished"
    run_id: str | None
    workflow: str | None
    step: str
    position: int
    outcome: str
    duration_s: float
    attempts: int = 1
    error_type: str | None = None


@dataclass(frozen=True, slots=True)
class RetryScheduled(Event):
    """An attempt failed and another one is scheduled after ``delay_s`` seconds.

    ``reason`` is a bounded class (``timeout``, ``rate_limited``, ``server_error``,
    ``connection``, ``circuit_open``, ``error``) fit for a metric label; ``error_type`` is the
    exception type.
    """

    kind: ClassVar[str] = "retry.scheduled"
    step: str
    attempt: int
    delay_s: float
    reason: str
    error_type: str
    message: str
    run_id: str | None = None
    workflow: str | None = None


@dataclass(frozen=True, slots=True)
class CheckpointWritten(Event):
    """A step result was committed to the state database."""

    kind: ClassVar[str] = "checkpoint.written"
    run_id: str
    step: str
    position: int
    duration_s: float
    size_bytes: int


@dataclass(frozen=True, slots=True)
class DeadLettered(Event):
    """A run failed for good and a dead-letter entry was written."""

    kind: ClassVar[str] = "dlq.added"
    run_id: str
    workflow: str
    dead_letter_id: int
    error_type: str
    message: str
    trace_id: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLetterRetried(Event):
    """A dead-letter entry was retried by hand: its run is ``pending`` again."""

    kind: ClassVar[str] = "dlq.retried"
    run_id: str
    workflow: str
    dead_letter_id: int


@dataclass(frozen=True, slots=True)
class BreakerStateChanged(Event):
    """A circuit breaker moved between ``closed``, ``open`` and ``half_open``.

    ``observed`` is True when this process only noticed a transition another process made
    through the shared breaker store (the state gauge follows it; the transition counter does
    not count it again).
    """

    kind: ClassVar[str] = "breaker.state_changed"
    breaker: str
    from_state: str
    to_state: str
    reason: str
    observed: bool = False


@dataclass(frozen=True, slots=True)
class BreakerRejected(Event):
    """An open (or probing) breaker refused a call."""

    kind: ClassVar[str] = "breaker.rejected"
    breaker: str
    state: str


@dataclass(frozen=True, slots=True)
class LimiterChanged(Event):
    """A limiter's in-flight or queued count changed."""

    kind: ClassVar[str] = "limiter.changed"
    limiter: str
    in_flight: int
    queued: int


@dataclass(frozen=True, slots=True)
class LimiterRejected(Event):
    """A limiter refused a call (``queue_full`` or ``queue_timeout``)."""

    kind: ClassVar[str] = "limiter.rejected"
    limiter: str
    reason: str


@dataclass(frozen=True, slots=True)
class FallbackServed(Event):
    """A fallback chain answered; ``served`` is the alternative that did, ``skipped`` the rest."""

    kind: ClassVar[str] = "fallback.served"
    chain: str
    served: str | None
    skipped: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class GuardrailTriggered(Event):
    """A loop guardrail tripped: ``hard`` ones raise, soft ones only warn."""

    kind: ClassVar[str] = "guardrail.triggered"
    limit: str
    value: float
    threshold: float
    hard: bool
    detail: str
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class FlagsReloaded(Event):
    """Feature flags were reloaded (``ok``) or a reload was rejected (``error`` says why)."""

    kind: ClassVar[str] = "flags.reloaded"
    ok: bool
    source: str
    error: str | None = None


@dataclass(frozen=True, slots=True)
class SandboxStarted(Event):
    """A sandbox container (or process) started for a command."""

    kind: ClassVar[str] = "sandbox.started"
    backend: str
    image: str
    warm: bool
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class SandboxFinished(Event):
    """A sandboxed command ended; ``reason`` is its termination reason."""

    kind: ClassVar[str] = "sandbox.finished"
    backend: str
    reason: str
    exit_code: int | None
    duration_s: float
    peak_memory_bytes: int | None = None
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class SandboxOutput(Event):
    """One line the sandboxed command wrote to ``stdout`` or ``stderr``."""

    kind: ClassVar[str] = "sandbox.output"
    stream: str
    line: str
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class EgressBlocked(Event):
    """The egress proxy refused a sandbox's connection to a destination not on its allowlist."""

    kind: ClassVar[str] = "sandbox.egress_blocked"
    destination: str
    at: float
    run_id: str | None = None
    trace_id: str | None = None


@dataclass(frozen=True, slots=True)
class WorkspaceRolledBack(Event):
    """A run's workspace was restored (automatically after a failure, or by hand)."""

    kind: ClassVar[str] = "workspace.rolled_back"
    run_id: str
    to_step: int | None
    files_restored: int
    automatic: bool


# -- scopes ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scope:
    """Base class of a unit of work with a duration (a hook typically opens a span for it)."""

    kind: ClassVar[str] = "scope"


@dataclass(frozen=True, slots=True)
class RunScope(Scope):
    """One execution of a run in this process.

    ``trace_id``/``parent_span_id`` are the run's recorded trace context, so a run resumed
    after a crash continues the same trace.
    """

    kind: ClassVar[str] = "run"
    run_id: str
    workflow: str
    trace_id: str
    parent_span_id: str | None
    resumed: bool


@dataclass(frozen=True, slots=True)
class StepScope(Scope):
    """One step call inside a run (all its attempts)."""

    kind: ClassVar[str] = "step"
    step: str
    position: int
    run_id: str | None = None
    workflow: str | None = None


@dataclass(frozen=True, slots=True)
class AttemptScope(Scope):
    """One attempt of a retried call."""

    kind: ClassVar[str] = "attempt"
    step: str
    attempt: int
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class SandboxScope(Scope):
    """One sandboxed command execution."""

    kind: ClassVar[str] = "sandbox"
    backend: str
    image: str
    command: tuple[str, ...] = ()
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class LimiterWaitScope(Scope):
    """Time a call spent queued in a limiter before it got a slot (or was rejected)."""

    kind: ClassVar[str] = "limiter_wait"
    limiter: str


# -- hooks -------------------------------------------------------------------------------------


@runtime_checkable
class Hook(Protocol):
    """What a subscriber implements. Both methods must be fast and must not block."""

    def on_event(self, event: Event) -> None:
        """Handle one event."""

    def scope(self, scope: Scope) -> contextlib.AbstractContextManager[Any]:
        """Return a context manager wrapping the unit of work ``scope`` describes."""


_NULL = contextlib.nullcontext()


@dataclass
class Hooks:
    """A registry of hooks. The runtime and the resilience layers emit into ``hooks``."""

    _hooks: tuple[Hook, ...] = field(default=())
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _warned: set[int] = field(default_factory=set)

    def subscribe(self, hook: Hook) -> None:
        """Add ``hook`` (idempotent: a hook already subscribed is not added twice)."""
        with self._lock:
            if hook not in self._hooks:
                self._hooks = (*self._hooks, hook)

    def unsubscribe(self, hook: Hook) -> None:
        """Remove ``hook`` if it is subscribed."""
        with self._lock:
            self._hooks = tuple(h for h in self._hooks if h is not hook)

    @property
    def active(self) -> bool:
        """Whether any hook is subscribed."""
        return bool(self._hooks)

    def emit(self, event: Event) -> None:
        """Deliver ``event`` to every hook; a failing hook is logged once and skipped."""
        for hook in self._hooks:
            try:
                hook.on_event(event)
            except Exception:
                self._hook_failed(hook, event.kind)

    def scope(self, scope: Scope) -> contextlib.AbstractContextManager[Any]:
        """Return a context manager that enters every hook's scope for ``scope``."""
        hooks = self._hooks
        if not hooks:
            return _NULL
        if len(hooks) == 1:
            try:
                return hooks[0].scope(scope)
            except Exception:
                self._hook_failed(hooks[0], scope.kind)
                return _NULL
        return self._multi_scope(hooks, scope)

    @contextlib.contextmanager
    def _multi_scope(self, hooks: tuple[Hook, ...], scope: Scope) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for hook in hooks:
                try:
                    stack.enter_context(hook.scope(scope))
                except Exception:
                    self._hook_failed(hook, scope.kind)
            yield

    def _hook_failed(self, hook: Hook, kind: str) -> None:
        key = id(hook)
        if key not in self._warned:
            self._warned.add(key)
            _log.warning(
                "hook %r failed on %s; further failures of this hook are not logged",
                hook,
                kind,
                exc_info=True,
            )


hooks = Hooks()
"""The process-wide registry every component of agent-runtime emits into."""
