"""The run context a workflow receives, and the checkpointed step drivers.

``ctx.step(fn, *args, **kwargs)`` is where durability happens:

1. The call gets the next **position** (0, 1, 2... in call order; for ``asyncio.gather`` the order
   in which ``ctx.step`` was called, so it is deterministic).
2. **Replay**: if a checkpoint exists at that position, its step name must match (else
   :class:`NonDeterminismError`) and its checksum must verify (else
   :class:`CheckpointCorruptedError`); the recorded value is returned and ``fn`` is not called.
3. Otherwise ``fn`` runs, with retries decided by its :class:`RetryPolicy` (the run is
   ``retrying`` while it waits; every failed attempt is persisted), an optional per-attempt
   timeout (an async step is cancelled; a sync step runs in a helper thread and is abandoned, with
   a warning that its thread may still be running), and the run's deadline.
4. The result is serialized and **committed** (fenced on the lease) before the workflow
   continues, and the step returns the value as a replay would return it (JSON round trip), so a
   workflow behaves the same on its first execution and on a resume.

Steps are at-least-once: a step whose checkpoint was committed never runs again, but a step
in flight when the process died runs again on resume. Make steps idempotent (see the README).

The decision logic (replay checks, retry decisions, persistence) is shared; the sync and async
drivers only differ in how they call, wait and sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from agent_runtime import errors
from agent_runtime._threads import call_abandonable
from agent_runtime.events import (
    AttemptScope,
    CheckpointWritten,
    RetryScheduled,
    Scope,
    StepFinished,
    StepScope,
    hooks,
)
from agent_runtime.flags import current as current_flags
from agent_runtime.resilience.breaker import CircuitBreaker
from agent_runtime.resilience.fallback import Alternative, FallbackChain, FallbackResult
from agent_runtime.resilience.limiter import Limiter
from agent_runtime.resilience.policy import AttemptRecord, RetryDecision, RetryPolicy
from agent_runtime.state.machine import RunStatus
from agent_runtime.state.models import RunRow, StepRow
from agent_runtime.state.serialization import Serializer, checksum, encode, get_serializer

if TYPE_CHECKING:
    from agent_runtime.runtime import Runtime, Workflow
    from agent_runtime.sandbox.run_sandbox import RunSandbox
    from agent_runtime.state.store import CheckpointWriter
    from agent_runtime.workspace import Workspace

__all__ = ["RunContext", "step_name"]

_log = logging.getLogger("agent_runtime.step")
_NULL_SCOPE = contextlib.nullcontext()

# Exceptions that mean "this execution must stop", never "this attempt failed".
_STOP = (errors.StaleLeaseError, errors.RunTimeoutError, KeyboardInterrupt, SystemExit)


def step_name(fn: Callable[..., Any]) -> str:
    """Return the default step name of ``fn``: its qualified name without ``<locals>``.

    ``Client.fetch`` for a method, ``handler.parse`` for a function defined inside ``handler``.
    """
    target = fn.func if isinstance(fn, functools.partial) else fn
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    return name.replace("<locals>.", "") if name else repr(fn)


_ASYNC_CACHE: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _is_async_callable(fn: Callable[..., Any]) -> bool:
    # Cached per function (weakly): inspect costs microseconds and this is on every step.
    try:
        return _ASYNC_CACHE[fn]
    except (KeyError, TypeError):
        pass
    target = fn.func if isinstance(fn, functools.partial) else fn
    result = inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004 - async callable objects
    )
    with contextlib.suppress(TypeError):  # not weak-referenceable: just not cached
        _ASYNC_CACHE[fn] = result
    return result


@dataclass
class Execution:
    """Book-keeping of one execution of a run in this process (internal)."""

    run: RunRow
    owner: str
    deadline: float
    checkpoints: dict[int, StepRow] = field(default_factory=dict)
    history: dict[int, list[AttemptRecord]] = field(default_factory=dict)
    writer: CheckpointWriter | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    timed_out: bool = False
    finalized: bool = False
    abandoned: bool = False
    position: int = 0
    loop: asyncio.AbstractEventLoop | None = None
    task: asyncio.Task[Any] | None = None
    started_monotonic: float = field(default_factory=time.monotonic)
    ctx: RunContext | None = None

    @property
    def run_id(self) -> str:
        """The run id."""
        return self.run.id

    def next_position(self) -> int:
        """Allocate the next step position."""
        with self.lock:
            position = self.position
            self.position += 1
        return position

    def remaining(self) -> float:
        """Seconds left before the run's deadline."""
        return self.deadline - time.monotonic()

    def check(self) -> None:
        """Raise if this execution must stop (deadline passed, abandoned, cancelled)."""
        if self.abandoned:
            raise errors.StaleLeaseError(
                f"run {self.run_id}: this execution was abandoned (its run was failed or "
                "taken over); it stops here",
                run_id=self.run_id,
            )
        if self.timed_out or time.monotonic() >= self.deadline:
            self.timed_out = True
            raise errors.RunTimeoutError(
                f"run {self.run_id} overran its {self.run.timeout:g} s timeout; raise the "
                "workflow's timeout= or make its steps faster",
                run_id=self.run_id,
                timeout=self.run.timeout,
            )


@dataclass(frozen=True, slots=True)
class _StepCall:
    position: int
    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    policy: RetryPolicy
    timeout: float | None
    serializer: Serializer
    breaker: CircuitBreaker | None = None
    limiter: Limiter | None = None
    fallback: FallbackChain[Any] | None = None


class RunContext:
    """What a workflow function receives as its first argument.

    Attributes:
        run_id: The run's id.
        workflow: The workflow name.
        trace_id: The run's trace id (hex), the same across resumes.
        generation: 0, or how many times the run was retried from the dead-letter queue.
        resumed: Whether this execution resumed a run that had started before.
    """

    def __init__(
        self,
        runtime: Runtime,
        execution: Execution,
        workflow: Workflow[Any, Any],
        *,
        resumed: bool,
    ) -> None:
        self._runtime = runtime
        self._exe = execution
        self._wf = workflow
        self.run_id = execution.run.id
        self.workflow = execution.run.workflow
        self.trace_id = execution.run.trace_id
        self.generation = execution.run.generation
        self.resumed = resumed
        self._workspace: Workspace | None = None
        self._sandbox: RunSandbox | None = None
        execution.ctx = self

    def __repr__(self) -> str:
        return f"RunContext(run_id={self.run_id!r}, workflow={self.workflow!r})"

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose records carry this run's id and workflow."""
        return logging.LoggerAdapter(
            logging.getLogger(f"agent_runtime.workflow.{self.workflow}"),
            {"run_id": self.run_id, "workflow": self.workflow},
        )

    @property
    def workspace(self) -> Workspace:
        """The run's workspace (created on first use; the sandbox sees it at ``/workspace``)."""
        return self._open_workspace()

    @property
    def sandbox(self) -> RunSandbox:
        """The run's sandbox: ``ctx.sandbox.run(cmd, spec=SandboxSpec(...))``."""
        if self._sandbox is None:
            from agent_runtime.sandbox.run_sandbox import RunSandbox

            self._sandbox = RunSandbox(self, self._runtime, self._open_workspace)
        return self._sandbox

    def _open_workspace(self) -> Workspace:
        if self._workspace is None:
            from agent_runtime.sandbox.run_sandbox import open_workspace

            workspace = open_workspace(
                self._runtime, self.run_id, auto_rollback=self._runtime.auto_rollback()
            )
            if self.resumed:
                self._restore_to_checkpoint(workspace)
            self._workspace = workspace
        return self._workspace

    def _restore_to_checkpoint(self, workspace: Workspace) -> None:
        """Undo what a step in flight at a crash left in the workspace (it will run again)."""
        committed = max(self._exe.checkpoints, default=-1)
        positions = [s.position for s in workspace.snapshots() if s.position <= committed]
        if positions:
            workspace.rollback(max(positions), automatic=True)

    def _run_failed(self) -> None:
        """Roll the workspace back when the run failed (if it has one and it is configured)."""
        workspace = self._workspace
        if workspace is None:
            from agent_runtime.sandbox.run_sandbox import has_workspace, open_workspace

            if not has_workspace(self._runtime, self.run_id):
                return
            workspace = open_workspace(
                self._runtime, self.run_id, auto_rollback=self._runtime.auto_rollback()
            )
        workspace.on_run_failed()

    # -- the step API --------------------------------------------------------------------

    def step(
        self,
        fn: Callable[..., Any],
        *args: Any,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        name: str | None = None,
        serializer: Serializer | None = None,
        breaker: CircuitBreaker | None = None,
        limiter: Limiter | None = None,
        fallback: Sequence[Callable[..., Any] | Alternative[Any]]
        | FallbackChain[Any]
        | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` as a checkpointed step.

        In a sync workflow this returns the step's value. In an ``async def`` workflow it returns
        an awaitable (``await ctx.step(...)``); a sync ``fn`` then runs in a worker thread so
        the event loop is not blocked.

        Args:
            fn: The step function (sync or async).
            *args: Positional arguments for ``fn``.
            retry: Retry policy (default: the workflow's, else the runtime's).
            timeout: Timeout of each attempt, in seconds (None: bounded by the run's deadline).
            name: Step name recorded in the checkpoint (default: ``fn``'s qualified name).
            serializer: Serializer of the result (default: the workflow's, JSON).
            breaker: A circuit breaker every attempt passes through; while it is open an
                attempt fails fast with ``CircuitOpenError`` and the retry waits until it
                half-opens.
            limiter: A limiter every attempt takes a slot of (a refusal is retried after its
                ``retry_after``).
            fallback: Alternatives tried in order, in each attempt, when ``fn`` fails or its
                breaker is open: functions, :class:`Alternative` objects (each with its own
                breaker), or a whole :class:`FallbackChain` (then ``fn`` is not called: the
                chain is the step). Which alternative served, and why the others did not, is
                recorded as a ``fallback`` event of the run.
            **kwargs: Keyword arguments for ``fn``. The names ``retry``, ``timeout``, ``name``,
                ``serializer``, ``breaker``, ``limiter`` and ``fallback`` are reserved; wrap
                ``fn`` in ``functools.partial`` to pass arguments with those names.

        Returns:
            The step's value (or, in an async workflow, an awaitable of it).

        Raises:
            NonDeterminismError: The recorded step at this position has another name.
            CheckpointCorruptedError: The recorded checkpoint fails its checksum.
            SerializationError: The value cannot be serialized.
            RetriesExhaustedError: Retries stopped (max attempts, deadline, repeated error); the
                last error is its ``__cause__``. A non-retryable error is raised as itself.
            RunTimeoutError: The run's deadline passed.
        """
        if timeout is not None and timeout <= 0:
            raise errors.ConfigurationError(f"step timeout must be > 0 seconds, got {timeout}")
        step = name or step_name(fn)
        call = _StepCall(
            position=self._exe.next_position(),
            name=step,
            fn=fn,
            args=args,
            kwargs=kwargs,
            policy=retry or self._wf.retry or self._runtime.retry,
            timeout=timeout if timeout is not None else (retry.attempt_timeout if retry else None),
            serializer=serializer or self._wf.serializer,
            breaker=breaker,
            limiter=limiter,
            fallback=_chain(step, fn, breaker, fallback),
        )
        if self._wf.is_async:
            return self._step_async(call)
        return self._step_sync(call)

    # -- shared logic --------------------------------------------------------------------

    def _replay(self, call: _StepCall) -> tuple[bool, Any]:
        cp = self._exe.checkpoints.get(call.position)
        if cp is None:
            return False, None
        if cp.name != call.name:
            raise errors.NonDeterminismError(
                f"run {self.run_id}: step {call.position} was recorded as {cp.name!r} but the "
                f"workflow now calls {call.name!r} there: the workflow code changed since this "
                "run started. Resume it with the code it started with, or start a new run.",
                run_id=self.run_id,
                position=call.position,
                recorded=cp.name,
                called=call.name,
            )
        expected = checksum(self.run_id, cp.position, cp.name, cp.serializer, cp.output)
        if expected != cp.checksum:
            raise errors.CheckpointCorruptedError(
                f"run {self.run_id}: the checkpoint of step {call.position} ({cp.name}) fails its "
                "checksum: the row was changed outside agent-runtime or the database is damaged. "
                "The run is not resumed on corrupt data: restore the database from a backup, or "
                "start a new run.",
                run_id=self.run_id,
                step=cp.name,
                position=call.position,
            )
        try:
            value = get_serializer(cp.serializer).loads(cp.output)
        except errors.SerializationError:
            raise
        except Exception as exc:
            raise errors.CheckpointCorruptedError(
                f"run {self.run_id}: the checkpoint of step {call.position} ({cp.name}) cannot "
                f"be decoded by the {cp.serializer!r} serializer ({exc}); the run is not resumed",
                run_id=self.run_id,
                step=cp.name,
                position=call.position,
            ) from exc
        hooks.emit(
            StepFinished(self.run_id, self.workflow, call.name, call.position, "replayed", 0.0)
        )
        return True, value

    def _commit(self, call: _StepCall, value: Any, attempts: int, started: float) -> Any:
        t0 = time.perf_counter()
        payload = encode(
            call.serializer,
            value,
            what=f"the result of step {call.name!r}",
            run_id=self.run_id,
            step=call.name,
        )
        digest = checksum(self.run_id, call.position, call.name, call.serializer.name, payload)
        self._exe.check()
        if self._workspace is not None:
            # Before the checkpoint: a crash in between leaves a snapshot ahead of the
            # checkpoints, never a committed step whose files were not recorded.
            self._workspace.snapshot(call.position, call.name)
        writer = self._exe.writer
        assert writer is not None, "execution has no checkpoint writer"
        duration = time.perf_counter() - started
        writer.write(
            call.position,
            call.name,
            payload,
            call.serializer.name,
            digest,
            attempts,
            duration,
            self._runtime.clock(),
        )
        if hooks.active:
            hooks.emit(
                CheckpointWritten(
                    self.run_id,
                    call.name,
                    call.position,
                    time.perf_counter() - t0,
                    len(payload),
                )
            )
            hooks.emit(
                StepFinished(
                    self.run_id,
                    self.workflow,
                    call.name,
                    call.position,
                    "success",
                    duration,
                    attempts,
                )
            )
        return call.serializer.loads(payload)

    def _on_failure(
        self, call: _StepCall, exc: BaseException, started_wall: float
    ) -> RetryDecision:
        """Decide about a failed attempt and persist it (with the retrying transition)."""
        history = self._exe.history.setdefault(call.position, [])
        decision = call.policy.decide(
            exc,
            history,
            step=call.name,
            now=self._runtime.clock(),
            started_at=started_wall,
        )
        if (
            decision.retry
            and call.policy.deadline is None
            and decision.delay >= self._exe.remaining()
        ):
            decision = RetryDecision(False, 0.0, decision.record, "deadline")
        history.append(decision.record)
        record = (self.generation, call.position, call.name, decision.record)
        store = self._runtime.store
        if decision.retry:
            store.transition(
                self.run_id,
                RunStatus.RETRYING,
                reason=(
                    f"step {call.name} attempt {decision.record.attempt} failed: "
                    f"{decision.record.error_type}: {decision.record.message[:200]}; retry in "
                    f"{decision.delay:.2f} s"
                ),
                owner=self._exe.owner,
                attempts=[record],
            )
            hooks.emit(
                RetryScheduled(
                    step=call.name,
                    attempt=decision.record.attempt,
                    delay_s=decision.delay,
                    reason=decision.record.error_class,
                    error_type=decision.record.error_type,
                    message=decision.record.message[:500],
                    run_id=self.run_id,
                    workflow=self.workflow,
                )
            )
        else:
            store.record_attempts(self.run_id, [record])
        return decision

    def _resume_running(self, call: _StepCall, attempt: int) -> None:
        self._runtime.store.transition(
            self.run_id,
            RunStatus.RUNNING,
            reason=f"step {call.name} attempt {attempt} starting",
            owner=self._exe.owner,
        )

    def _give_up(
        self, call: _StepCall, exc: BaseException, decision: RetryDecision, started: float
    ) -> BaseException:
        history = self._exe.history.get(call.position, [])
        hooks.emit(
            StepFinished(
                self.run_id,
                self.workflow,
                call.name,
                call.position,
                "failed",
                time.perf_counter() - started,
                len(history),
                type(exc).__name__,
            )
        )
        if decision.stop_reason == "non_retryable" or call.policy.max_attempts == 1:
            return exc
        error = errors.RetriesExhaustedError(
            f"step {call.name} of run {self.run_id} failed after {len(history)} attempt(s) "
            f"({decision.stop_reason}): {type(exc).__name__}: {exc}",
            attempts=[r.as_dict() for r in history],
            reason=decision.stop_reason or "max_attempts",
            run_id=self.run_id,
            step=call.name,
        )
        error.__cause__ = exc
        return error

    def _attempt_timeout(self, call: _StepCall) -> float | None:
        if call.timeout is None:
            return None
        return max(0.0, min(call.timeout, self._exe.remaining()))

    def _timeout_error(self, call: _StepCall, attempt: int) -> errors.StepTimeoutError:
        return errors.StepTimeoutError(
            f"step {call.name} of run {self.run_id} attempt {attempt} overran its "
            f"{call.timeout:g} s timeout",
            run_id=self.run_id,
            step=call.name,
            attempt=attempt,
            timeout=call.timeout or 0.0,
        )

    @staticmethod
    def _scope(kind: type[Scope], *fields: Any) -> contextlib.AbstractContextManager[Any]:
        """The hooks' scope, without building the scope object when nobody listens."""
        return hooks.scope(kind(*fields)) if hooks.active else _NULL_SCOPE

    # -- sync driver ---------------------------------------------------------------------

    def _step_sync(self, call: _StepCall) -> Any:
        self._exe.check()
        replayed, value = self._replay(call)
        if replayed:
            return value
        started = time.perf_counter()
        started_wall = self._runtime.clock()
        with self._scope(StepScope, call.name, call.position, self.run_id, self.workflow):
            while True:
                attempt = len(self._exe.history.get(call.position, ())) + 1
                try:
                    with self._scope(AttemptScope, call.name, attempt, self.run_id):
                        value = self._call_sync(call, attempt)
                except _STOP:
                    raise
                except Exception as exc:
                    self._exe.check()
                    decision = self._on_failure(call, exc, started_wall)
                    if not decision.retry:
                        raise self._give_up(call, exc, decision, started) from exc
                    self._sleep(decision.delay)
                    self._exe.check()
                    self._resume_running(call, attempt + 1)
                    continue
                return self._commit(call, value, attempt, started)

    def _call_sync(self, call: _StepCall, attempt: int) -> Any:
        if call.breaker is None and call.limiter is None and call.fallback is None:
            return self._call_plain_sync(call, attempt)
        flags = current_flags()
        limiter = call.limiter if flags.limiter_enabled else None
        with limiter.slot() if limiter is not None else contextlib.nullcontext():
            if call.fallback is not None and flags.fallback_enabled:
                result = call.fallback.run(
                    lambda alt: self._call_plain_sync(
                        replace(call, fn=_guarded(alt, flags.breaker_enabled)), attempt
                    )
                )
                self._record_fallback(call, result)
                return result.value
            if call.breaker is not None and flags.breaker_enabled:
                return call.breaker.call(self._call_plain_sync, call, attempt)
            return self._call_plain_sync(call, attempt)

    def _call_plain_sync(self, call: _StepCall, attempt: int) -> Any:
        if _is_async_callable(call.fn):
            timeout = self._attempt_timeout(call)
            expired = {"value": False}

            async def bounded() -> Any:
                if timeout is None:
                    return await call.fn(*call.args, **call.kwargs)
                limit = asyncio.timeout(timeout)
                try:
                    async with limit:
                        return await call.fn(*call.args, **call.kwargs)
                finally:
                    expired["value"] = limit.expired()

            try:
                return asyncio.run(bounded())
            except TimeoutError:
                if not expired["value"]:
                    raise
                raise self._timeout_error(call, attempt) from None
        timeout = self._attempt_timeout(call)
        if timeout is None:
            return call.fn(*call.args, **call.kwargs)
        return self._call_in_thread(call, attempt, timeout)

    def _call_in_thread(self, call: _StepCall, attempt: int, timeout: float) -> Any:
        finished, value, _thread = call_abandonable(
            call.fn, call.args, call.kwargs, timeout=timeout, name=f"agent-runtime-step-{call.name}"
        )
        if not finished:
            _log.warning(
                "step %s of run %s attempt %d overran its %.3g s timeout and was abandoned; "
                "its thread may still be running",
                call.name,
                self.run_id,
                attempt,
                call.timeout,
                extra={"run_id": self.run_id, "step": call.name, "attempt": attempt},
            )
            raise self._timeout_error(call, attempt)
        return value

    def _sleep(self, delay: float) -> None:
        if delay <= 0:
            return
        if self._runtime._default_sleep:
            # Interruptible: a run deadline or shutdown wakes the backoff early.
            self._exe.cancel.wait(min(delay, max(0.0, self._exe.remaining())))
        else:
            self._runtime.sleep(delay)

    # -- async driver --------------------------------------------------------------------

    async def _step_async(self, call: _StepCall) -> Any:
        self._exe.check()
        replayed, value = self._replay(call)
        if replayed:
            return value
        started = time.perf_counter()
        started_wall = self._runtime.clock()
        with self._scope(StepScope, call.name, call.position, self.run_id, self.workflow):
            while True:
                attempt = len(self._exe.history.get(call.position, ())) + 1
                try:
                    with self._scope(AttemptScope, call.name, attempt, self.run_id):
                        value = await self._call_async(call, attempt)
                except _STOP:
                    raise
                except asyncio.CancelledError:
                    self._exe.check()  # a run deadline cancels the task: report it as such
                    raise
                except Exception as exc:
                    self._exe.check()
                    decision = self._on_failure(call, exc, started_wall)
                    if not decision.retry:
                        raise self._give_up(call, exc, decision, started) from exc
                    await self._runtime.async_sleep(decision.delay)
                    self._exe.check()
                    self._resume_running(call, attempt + 1)
                    continue
                return self._commit(call, value, attempt, started)

    async def _call_async(self, call: _StepCall, attempt: int) -> Any:
        if call.breaker is None and call.limiter is None and call.fallback is None:
            return await self._call_plain_async(call, attempt)
        flags = current_flags()
        limiter = call.limiter if flags.limiter_enabled else None
        async with limiter.slot_async() if limiter is not None else contextlib.nullcontext():
            if call.fallback is not None and flags.fallback_enabled:
                result = await call.fallback.run_async(
                    lambda alt: self._call_plain_async(
                        replace(call, fn=_guarded_async(alt, flags.breaker_enabled)), attempt
                    )
                )
                self._record_fallback(call, result)
                return result.value
            if call.breaker is not None and flags.breaker_enabled:
                breaker = call.breaker

                async def attempt_call() -> Any:
                    return await self._call_plain_async(call, attempt)

                return await breaker.call_async(attempt_call)
            return await self._call_plain_async(call, attempt)

    def _record_fallback(self, call: _StepCall, result: FallbackResult[Any]) -> None:
        if not result.fell_back:
            return
        why = "; ".join(
            f"{o.name} {o.outcome}" + (f" ({o.reason})" if o.reason else "")
            for o in result.outcomes
            if o.outcome != "not_tried"
        )
        self._runtime.store.record_event(
            self.run_id,
            "fallback",
            f"step {call.name} (#{call.position}) served by {result.served}: {why}",
            owner=self._exe.owner,
        )

    async def _call_plain_async(self, call: _StepCall, attempt: int) -> Any:
        timeout = self._attempt_timeout(call)
        if _is_async_callable(call.fn):
            awaitable: Awaitable[Any] = call.fn(*call.args, **call.kwargs)
        else:
            awaitable = asyncio.to_thread(call.fn, *call.args, **call.kwargs)
        if timeout is None:
            return await awaitable
        limit = asyncio.timeout(timeout)
        try:
            async with limit:
                return await awaitable
        except TimeoutError:
            if not limit.expired():
                raise  # the step itself raised TimeoutError: an ordinary failed attempt
            if not _is_async_callable(call.fn):
                _log.warning(
                    "step %s of run %s attempt %d overran its %.3g s timeout and was "
                    "abandoned; its thread may still be running",
                    call.name,
                    self.run_id,
                    attempt,
                    call.timeout,
                    extra={"run_id": self.run_id, "step": call.name, "attempt": attempt},
                )
            raise self._timeout_error(call, attempt) from None


def _chain(
    step: str,
    fn: Callable[..., Any],
    breaker: CircuitBreaker | None,
    fallback: Sequence[Callable[..., Any] | Alternative[Any]] | FallbackChain[Any] | None,
) -> FallbackChain[Any] | None:
    """Build the step's fallback chain: ``fn`` (behind ``breaker``) first, then the fallbacks."""
    if fallback is None:
        return None
    if isinstance(fallback, FallbackChain):
        return fallback
    alternatives: list[Alternative[Any]] = [Alternative(step, fn, breaker)]
    for item in fallback:
        if isinstance(item, Alternative):
            alternatives.append(item)
        elif callable(item):
            alternatives.append(Alternative(step_name(item), item))
        else:
            raise errors.ConfigurationError(
                f"fallback of step {step!r} must hold functions or Alternative objects, got "
                f"{type(item).__name__}"
            )
    return FallbackChain(step, alternatives)


def _guarded(alt: Alternative[Any], breakers_on: bool) -> Callable[..., Any]:
    """The alternative's function, passing through its breaker when breakers are on."""
    breaker = alt.breaker if breakers_on else None
    if breaker is None:
        return alt.fn

    def call(*args: Any, **kwargs: Any) -> Any:
        return breaker.call(alt.fn, *args, **kwargs)

    return call


def _guarded_async(alt: Alternative[Any], breakers_on: bool) -> Callable[..., Any]:
    breaker = alt.breaker if breakers_on else None
    if breaker is None:
        return alt.fn

    async def call(*args: Any, **kwargs: Any) -> Any:
        if _is_async_callable(alt.fn):
            return await breaker.call_async(alt.fn, *args, **kwargs)
        return await asyncio.to_thread(breaker.call, alt.fn, *args, **kwargs)

    return call
