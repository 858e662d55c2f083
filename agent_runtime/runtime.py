"""The runtime: workflow registry, run execution, leases, deadlines and recovery.

A run is a row in the state database (see :mod:`agent_runtime.state.store`) plus, while some
process executes it, an **execution** in that process: a thread that calls the workflow function
with a :class:`~agent_runtime.context.RunContext`. Ownership is a **lease**: the owner id of the
process (``host/pid/start/token``) and an expiry that a maintenance thread renews every
``lease_ttl / 3`` seconds. The same thread enforces run deadlines and, every ``lease_ttl / 2``
seconds, recovers orphans: runs whose owner is known dead (same host, pid gone) are taken over at
once; runs whose lease expired are taken over after ``lease_ttl`` (another host, or a stalled
process, which the fenced checkpoint writes then shut out). Taking a lease is a compare-and-set
on the previous owner, so two processes never execute the same run at once.

A run's deadline (``timeout``, per execution) is enforced in three steps: at the next step
boundary the run raises :class:`RunTimeoutError`; an async workflow's task is cancelled; and a
sync workflow stuck inside a step is, after a grace period, failed by the maintenance thread and
its thread abandoned (fenced: nothing it does later is recorded).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import importlib
import inspect
import logging
import os
import secrets
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Generic, ParamSpec, TypeVar

from opentelemetry import trace as otel_trace

from agent_runtime import errors
from agent_runtime._process import current_identity, is_alive
from agent_runtime.context import Execution, RunContext
from agent_runtime.events import (
    DeadLettered,
    RunFinished,
    RunRecovered,
    RunScope,
    RunStarted,
    RunTransitioned,
    WorkflowRegistered,
    hooks,
)
from agent_runtime.resilience.policy import AttemptRecord, RetryPolicy
from agent_runtime.state.machine import FINAL_STATES, RunStatus
from agent_runtime.state.models import RunRow
from agent_runtime.state.serialization import (
    JSONSerializer,
    Serializer,
    checksum,
    encode,
    get_serializer,
    register,
)
from agent_runtime.state.store import DEFAULT_DB_URL, Store, Transition, dump_attempts
from agent_runtime.state.views import RunInfo
from agent_runtime.workspace.config import DEFAULT_STATE_DIR

if TYPE_CHECKING:
    from agent_runtime.sandbox.protocol import Sandbox

__all__ = [
    "DEFAULT_LEASE_TTL",
    "DEFAULT_MAX_CONCURRENT_RUNS",
    "DEFAULT_RUN_TIMEOUT",
    "DEFAULT_STEP_RETRY",
    "RunHandle",
    "Runtime",
    "Workflow",
    "registered_workflows",
]

DEFAULT_LEASE_TTL: Final = 30.0
DEFAULT_RUN_TIMEOUT: Final = 3600.0
DEFAULT_MAX_CONCURRENT_RUNS: Final = 64
DEFAULT_STEP_RETRY: Final = RetryPolicy()
DEFAULT_TIMEOUT_GRACE: Final = 2.0
DEFAULT_SHUTDOWN_TIMEOUT: Final = 10.0

_log = logging.getLogger("agent_runtime.runtime")
P = ParamSpec("P")
R = TypeVar("R")


# -- workflows ---------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Workflow(Generic[P, R]):
    """A registered workflow: the function and its options.

    Calling it runs it as a durable run and returns the result (an awaitable for ``async def``
    workflows); use :meth:`Runtime.start` to get a handle instead.

    Attributes:
        fn: The workflow function; its first parameter receives the :class:`RunContext`.
        name: The registered name, stored with each run.
        retry: Default retry policy of its steps (None: the runtime's).
        timeout: Run timeout in seconds, per execution.
        serializer: Serializer of inputs, step results and the result.
        entrypoint: ``module:qualname``, importable by another process to resume runs.
    """

    fn: Callable[..., Any]
    name: str
    retry: RetryPolicy | None
    timeout: float
    serializer: Serializer
    entrypoint: str | None
    runtime: Runtime | None = field(default=None, repr=False)

    @property
    def is_async(self) -> bool:
        """Whether the workflow function is ``async def``."""
        return inspect.iscoroutinefunction(self.fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.runtime is None:
            raise errors.ConfigurationError(f"workflow {self.name} is not bound to a Runtime")
        if self.is_async:
            return self.runtime.run_async(self, *args, **kwargs)
        return self.runtime.run(self, *args, **kwargs)


_REGISTRY: dict[str, Workflow[Any, Any]] = {}
_REGISTRY_LOCK = threading.Lock()


def registered_workflows() -> dict[str, Workflow[Any, Any]]:
    """Return every workflow registered in this process, by name."""
    with _REGISTRY_LOCK:
        return dict(_REGISTRY)


def _entrypoint(fn: Callable[..., Any]) -> str | None:
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<locals>" in qualname:
        return None
    return f"{module}:{qualname}"


def _new_trace_context() -> tuple[str, str | None]:
    """Continue the caller's trace when there is one, else start a new trace id."""
    span_ctx = otel_trace.get_current_span().get_span_context()
    if span_ctx.is_valid:
        return format(span_ctx.trace_id, "032x"), format(span_ctx.span_id, "016x")
    trace_id = 0
    while trace_id == 0:
        trace_id = secrets.randbits(128)
    return format(trace_id, "032x"), None


# -- handles -----------------------------------------------------------------------------------


class RunHandle:
    """A started run.

    Attributes:
        id: The run id.
        trace_id: The run's trace id.
    """

    def __init__(
        self,
        runtime: Runtime,
        run_id: str,
        trace_id: str,
        future: concurrent.futures.Future[Any] | None = None,
    ) -> None:
        self._runtime = runtime
        self.id = run_id
        self.trace_id = trace_id
        self._future = future

    def __repr__(self) -> str:
        return f"RunHandle(id={self.id!r}, trace_id={self.trace_id!r})"

    @property
    def status(self) -> RunStatus:
        """The run's current state (read from the database)."""
        return RunStatus(self._runtime.store.get_run(self.id).status)

    def info(self) -> RunInfo:
        """The run as stored."""
        return RunInfo.from_row(self._runtime.store.get_run(self.id))

    def done(self) -> bool:
        """Whether the run reached ``success`` or ``failed``."""
        if self._future is not None and self._future.done():
            return True
        return self.status in FINAL_STATES

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the run to finish and return its result.

        Args:
            timeout: Seconds to wait (None: until it finishes).

        Returns:
            The workflow's return value.

        Raises:
            RunFailedError: The run failed (its dead-letter entry has the details; the original
                error is the ``__cause__`` when it failed in this process).
            TimeoutError: It did not finish within ``timeout``.
        """
        if self._future is not None:
            try:
                return self._future.result(timeout)
            except concurrent.futures.TimeoutError:
                raise TimeoutError(
                    f"run {self.id} did not finish within {timeout} s; it goes on"
                ) from None
        return self._runtime._wait_stored(self.id, timeout)

    async def result_async(self, timeout: float | None = None) -> Any:
        """Like :meth:`result`, without blocking the event loop."""
        if self._future is not None:
            try:
                return await asyncio.wait_for(asyncio.wrap_future(self._future), timeout)
            except TimeoutError:
                raise TimeoutError(
                    f"run {self.id} did not finish within {timeout} s; it goes on"
                ) from None
        return await asyncio.to_thread(self._runtime._wait_stored, self.id, timeout)


# -- the runtime -------------------------------------------------------------------------------


class Runtime:
    """Runs workflows durably.

    Args:
        db: State database URL (default: ``AGENT_RUNTIME_DB``, else
            ``sqlite:///.agent_runtime/state.db``).
        lease_ttl: Seconds a run's lease lasts without renewal.
        run_timeout: Default run timeout in seconds (per execution).
        retry: Default retry policy of steps.
        serializer: Default serializer of inputs, results and step values.
        max_concurrent_runs: Runs this process executes at once (more wait, ``pending``).
        recover: Recover orphaned runs in the background (first pass shortly after start-up,
            then every ``lease_ttl / 2`` seconds). Default: True unless
            ``AGENT_RUNTIME_RECOVER=0``.
        observe: Subscribe the observability hooks (logs, spans, metrics).
        clock: Wall-clock source for stored times and leases (epoch seconds).
        sleep: Sleep used for retry backoff in sync steps (tests inject a recorder).
        async_sleep: Sleep used for retry backoff in async steps.
        timeout_grace: Seconds after a missed deadline before a stuck execution is abandoned.
        sqlite_synchronous: ``full`` or ``normal`` for a SQLite store (see
            :class:`~agent_runtime.state.store.Store`).
        state_dir: Where workspaces, their blobs and sandbox disks live (default
            ``AGENT_RUNTIME_STATE_DIR``, else ``.agent_runtime``).
        sandbox: The sandbox backend of ``ctx.sandbox`` (default: a
            :class:`~agent_runtime.sandbox.DockerSandbox` created on first use; pass a
            :class:`~agent_runtime.sandbox.ProcessSandbox` explicitly to run without Docker).

    Raises:
        ConfigurationError: A bad URL or argument.
        DatabaseUnavailableError: The database cannot be reached.
        SchemaVersionError: The database schema is newer than this agent-runtime.
    """

    def __init__(
        self,
        db: str | None = None,
        *,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        run_timeout: float = DEFAULT_RUN_TIMEOUT,
        retry: RetryPolicy = DEFAULT_STEP_RETRY,
        serializer: Serializer | None = None,
        max_concurrent_runs: int = DEFAULT_MAX_CONCURRENT_RUNS,
        recover: bool | None = None,
        observe: bool = True,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] | None = None,
        async_sleep: Callable[[float], Coroutine[Any, Any, None]] | None = None,
        timeout_grace: float = DEFAULT_TIMEOUT_GRACE,
        sqlite_synchronous: str | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        sandbox: Sandbox | None = None,
    ) -> None:
        if lease_ttl <= 0 or run_timeout <= 0 or max_concurrent_runs < 1 or timeout_grace < 0:
            raise errors.ConfigurationError(
                "lease_ttl and run_timeout must be > 0, max_concurrent_runs >= 1, "
                "timeout_grace >= 0"
            )
        self.url = db or os.environ.get("AGENT_RUNTIME_DB") or DEFAULT_DB_URL
        self.clock = clock
        self.store = Store(self.url, clock=clock, sqlite_synchronous=sqlite_synchronous)
        self.lease_ttl = lease_ttl
        self.run_timeout = run_timeout
        self.retry = retry
        self.serializer = serializer or JSONSerializer()
        register(self.serializer)
        self.sleep = sleep or time.sleep
        self._default_sleep = sleep is None
        self.async_sleep = async_sleep or asyncio.sleep
        self.timeout_grace = timeout_grace
        self.state_dir = Path(
            state_dir or os.environ.get("AGENT_RUNTIME_STATE_DIR") or DEFAULT_STATE_DIR
        )
        self._sandbox = sandbox
        self._owns_sandbox = sandbox is None
        self.identity = current_identity()
        self.owner = str(self.identity)
        self.max_concurrent_runs = max_concurrent_runs
        self._slots = threading.BoundedSemaphore(max_concurrent_runs)
        self._executions: dict[str, Execution] = {}
        self._futures: dict[str, concurrent.futures.Future[Any]] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._recover_now = threading.Event()
        self._stopping = threading.Event()
        self._maintenance: threading.Thread | None = None
        self._recovery_warned: set[str] = set()
        if recover is None:
            recover = os.environ.get("AGENT_RUNTIME_RECOVER", "1").lower() not in ("0", "false")
        self._recover_enabled = recover
        self._recovered_once = threading.Event()
        self._closed = False
        if observe:
            from agent_runtime import instrumentation

            instrumentation.install(self)
        self.dlq = _dlq_for(self)
        _live_runtimes.add(self)
        if recover:
            self._ensure_maintenance()

    def __repr__(self) -> str:
        return f"Runtime(db={self.store.url!r}, owner={self.owner!r})"

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sandbox -----------------------------------------------------------------------------

    @property
    def sandbox(self) -> Sandbox:
        """The sandbox backend of ``ctx.sandbox`` (a :class:`DockerSandbox` by default).

        The default sandbox keeps ``sandbox_warm_pool_size`` containers of the default spec
        warm when the ``sandbox_warm_pool`` flag is on.

        Raises:
            DockerUnavailableError: No Docker engine answers; start one, set ``DOCKER_HOST``,
                or pass ``Runtime(sandbox=ProcessSandbox())`` to accept weaker isolation.
        """
        with self._lock:
            if self._sandbox is None:
                from agent_runtime import flags
                from agent_runtime.sandbox import DockerSandbox

                current = flags.current()
                warm = current.sandbox_warm_pool_size if current.sandbox_warm_pool else 0
                self._sandbox = DockerSandbox(state_dir=self.state_dir, warm=warm)
            return self._sandbox

    def auto_rollback(self) -> bool:
        """Whether a failed run's workspace is restored (flag ``workspace_auto_rollback``)."""
        from agent_runtime import flags

        return bool(flags.current().workspace_auto_rollback)

    # -- registration ----------------------------------------------------------------------

    def workflow(
        self,
        name: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        serializer: Serializer | None = None,
    ) -> Callable[[Callable[..., Any]], Workflow[Any, Any]]:
        """Register a workflow function (sync or ``async def``).

        Args:
            name: Registered name (default ``module.qualname``); keep it stable across
                deploys, runs in flight are resumed by it.
            retry: Default retry policy of its steps.
            timeout: Run timeout in seconds, per execution (default: the runtime's).
            serializer: Serializer of its inputs, step values and result.

        Returns:
            A decorator returning the :class:`Workflow`.
        """

        def decorate(fn: Callable[..., Any]) -> Workflow[Any, Any]:
            if not callable(fn):
                raise errors.ConfigurationError("@rt.workflow() decorates a function")
            wf_name = name or f"{fn.__module__}.{fn.__qualname__}"
            if timeout is not None and timeout <= 0:
                raise errors.ConfigurationError(f"workflow timeout must be > 0, got {timeout}")
            ser = serializer or self.serializer
            register(ser)
            wf: Workflow[Any, Any] = Workflow(
                fn=fn,
                name=wf_name,
                retry=retry,
                timeout=timeout or self.run_timeout,
                serializer=ser,
                entrypoint=_entrypoint(fn),
                runtime=self,
            )
            with _REGISTRY_LOCK:
                previous = _REGISTRY.get(wf_name)
                _REGISTRY[wf_name] = wf
            if previous is not None and previous.fn is not fn:
                _log.warning(
                    "workflow name %s was registered again with another function; runs "
                    "recovered by name now execute the new one",
                    wf_name,
                )
            hooks.emit(WorkflowRegistered(wf_name))
            self._recover_now.set()  # a new workflow may make orphaned runs recoverable
            self._wake.set()
            return wf

        return decorate

    def _resolve(self, ref: Workflow[Any, Any] | Callable[..., Any] | str) -> Workflow[Any, Any]:
        if isinstance(ref, Workflow):
            return ref
        with _REGISTRY_LOCK:
            if isinstance(ref, str):
                wf = _REGISTRY.get(ref)
            else:
                wf = next((w for w in _REGISTRY.values() if w.fn is ref), None)
            known = sorted(_REGISTRY)
        if wf is None:
            shown = ref if isinstance(ref, str) else getattr(ref, "__qualname__", repr(ref))
            raise errors.WorkflowNotFoundError(
                f"no workflow {shown!r} is registered in this process; decorate it with "
                f"@rt.workflow() and import its module first (registered: "
                f"{', '.join(known) or 'none'})",
                workflow=str(shown),
                known=known,
            )
        return wf

    def _workflow_for_run(self, row: RunRow, *, import_entrypoint: bool) -> Workflow[Any, Any]:
        with _REGISTRY_LOCK:
            wf = _REGISTRY.get(row.workflow)
        if wf is None and import_entrypoint and row.entrypoint:
            module = row.entrypoint.split(":", 1)[0]
            try:
                importlib.import_module(module)
            except Exception as exc:
                raise errors.WorkflowNotFoundError(
                    f"run {row.id}: cannot import {module!r} to find workflow {row.workflow!r}: "
                    f"{exc}; run from the directory of your code or set PYTHONPATH",
                    workflow=row.workflow,
                ) from exc
        return self._resolve(row.workflow)

    # -- starting runs -----------------------------------------------------------------------

    def start(
        self,
        workflow: Workflow[Any, Any] | Callable[..., Any] | str,
        *args: Any,
        **kwargs: Any,
    ) -> RunHandle:
        """Start a run in the background and return its handle at once.

        The run is recorded (``pending``) before this returns, so it survives a crash from here
        on. Its trace continues the caller's current span, if there is one.

        Raises:
            WorkflowNotFoundError: ``workflow`` is not registered.
            SerializationError: The inputs cannot be serialized.
        """
        wf = self._resolve(workflow)
        row = self._create(wf, args, kwargs, owner=self.owner)
        return self._launch(row, resumed=False, workflow=wf)

    def enqueue(
        self,
        workflow: Workflow[Any, Any] | Callable[..., Any] | str,
        *args: Any,
        **kwargs: Any,
    ) -> RunHandle:
        """Record a ``pending`` run for any worker (``Runtime.work``) to claim and execute."""
        wf = self._resolve(workflow)
        row = self._create(wf, args, kwargs, owner=None)
        return RunHandle(self, row.id, row.trace_id)

    def run(
        self,
        workflow: Workflow[Any, Any] | Callable[..., Any] | str,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """Start a run and wait for its result (see :meth:`start` and :meth:`RunHandle.result`)."""
        return self.start(workflow, *args, **kwargs).result()

    async def run_async(
        self,
        workflow: Workflow[Any, Any] | Callable[..., Any] | str,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """Start a run and await its result without blocking the event loop."""
        handle = await asyncio.to_thread(self.start, workflow, *args, **kwargs)
        return await handle.result_async()

    def _create(
        self,
        wf: Workflow[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        owner: str | None,
    ) -> RunRow:
        if self._closed:
            raise errors.ConfigurationError("this Runtime is closed; create a new one")
        run_id = secrets.token_hex(16)
        inputs = encode(
            wf.serializer,
            {"args": list(args), "kwargs": kwargs},
            what=f"the inputs of workflow {wf.name!r}",
            run_id=run_id,
            step=None,
        )
        trace_id, parent_span_id = _new_trace_context()
        row = self.store.create_run(
            run_id=run_id,
            workflow=wf.name,
            entrypoint=wf.entrypoint,
            inputs=inputs,
            serializer=wf.serializer.name,
            trace_id=trace_id,
            parent_span_id=parent_span_id,
            timeout=wf.timeout,
            owner=owner,
            lease_expires_at=self.clock() + self.lease_ttl if owner else None,
            reason="started" if owner else "enqueued",
        )
        hooks.emit(
            RunTransitioned(run_id, wf.name, None, RunStatus.PENDING.value, "started", trace_id)
        )
        return row

    # -- executing -----------------------------------------------------------------------------

    def _launch(
        self, row: RunRow, *, resumed: bool, workflow: Workflow[Any, Any] | None = None
    ) -> RunHandle:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            existing = self._futures.get(row.id)
            if existing is not None and not existing.done():
                return RunHandle(self, row.id, row.trace_id, existing)
            self._futures[row.id] = future
        self._ensure_maintenance()
        thread = threading.Thread(
            target=self._execute,
            args=(row, resumed, future, workflow),
            name=f"agent-runtime-run-{row.id[:8]}",
            daemon=True,
        )
        thread.start()
        return RunHandle(self, row.id, row.trace_id, future)

    def _execute(
        self,
        row: RunRow,
        resumed: bool,
        future: concurrent.futures.Future[Any],
        workflow: Workflow[Any, Any] | None,
    ) -> None:
        self._slots.acquire()
        try:
            self._execute_with_slot(row, resumed, future, workflow)
        except BaseException as exc:  # pragma: no cover - last resort, never leave a future hanging
            _log.exception("run %s: execution crashed", row.id, extra={"run_id": row.id})
            if not future.done():
                future.set_exception(exc)
        finally:
            self._slots.release()
            with self._lock:
                self._executions.pop(row.id, None)
                if self._futures.get(row.id) is future:
                    del self._futures[row.id]

    def _execute_with_slot(
        self,
        row: RunRow,
        resumed: bool,
        future: concurrent.futures.Future[Any],
        workflow: Workflow[Any, Any] | None,
    ) -> None:
        try:
            wf = workflow or self._workflow_for_run(row, import_entrypoint=False)
        except errors.WorkflowNotFoundError as exc:
            self.store.release_lease(row.id, self.owner)
            future.set_exception(exc)
            return
        exe = Execution(run=row, owner=self.owner, deadline=time.monotonic() + row.timeout)
        with self._lock:
            self._executions[row.id] = exe
        started = time.perf_counter()
        try:
            self._enter_running(exe, resumed)
            exe.checkpoints = self.store.load_steps(row.id)
            for attempt in self.store.attempts(row.id, row.generation):
                exe.history.setdefault(attempt.position, []).append(
                    AttemptRecord(
                        attempt.attempt,
                        attempt.at,
                        attempt.error_type,
                        attempt.message,
                        attempt.fingerprint,
                        attempt.error_class,
                        attempt.delay,
                    )
                )
            exe.writer = self.store.checkpoint_writer(row.id, self.owner)
            serializer = get_serializer(row.serializer)
            inputs = serializer.loads(row.inputs)
            ctx = RunContext(self, exe, wf, resumed=resumed or bool(exe.checkpoints))
            hooks.emit(RunStarted(row.id, row.workflow, row.trace_id, ctx.resumed))
            scope = RunScope(row.id, row.workflow, row.trace_id, row.parent_span_id, ctx.resumed)
            with hooks.scope(scope):
                try:
                    value = self._call_workflow(wf, ctx, exe, inputs)
                    exe.check()
                    result = self._succeed(exe, wf, value, started)
                except errors.StaleLeaseError as exc:
                    _log.warning(
                        "run %s: stopped, this process no longer owns it (%s)",
                        row.id,
                        exc,
                        extra={"run_id": row.id},
                    )
                    future.set_exception(exc)
                    return
                except Exception as exc:
                    self._fail(exe, exc, started)
                    future.set_exception(self._failed_error(row.id, exc))
                    return
            future.set_result(result)
        except errors.StaleLeaseError as exc:
            future.set_exception(exc)
        except Exception as exc:
            # Failures before the workflow ran (database down, corrupt inputs): fail if we can.
            with contextlib.suppress(Exception):
                self._fail(exe, exc, started)
            future.set_exception(self._failed_error(row.id, exc))
        finally:
            if exe.writer is not None:
                exe.writer.close()

    def _enter_running(self, exe: Execution, resumed: bool) -> None:
        row = exe.run
        status = RunStatus(row.status)
        if status == RunStatus.RUNNING:
            return
        reason = "execution started" if not resumed else f"resumed by {self.owner}"
        values = {"started_at": self.clock(), "lease_expires_at": self.clock() + self.lease_ttl}
        transition = self.store.transition(
            row.id, RunStatus.RUNNING, reason=reason, owner=self.owner, values=values
        )
        self._emit_transition(row, transition, reason)
        exe.run = self.store.get_run(row.id)

    def _call_workflow(
        self, wf: Workflow[Any, Any], ctx: RunContext, exe: Execution, inputs: dict[str, Any]
    ) -> Any:
        args = inputs.get("args", [])
        kwargs = inputs.get("kwargs", {})
        if not wf.is_async:
            return wf.fn(ctx, *args, **kwargs)

        async def main() -> Any:
            exe.loop = asyncio.get_running_loop()
            exe.task = asyncio.current_task()
            deadline = asyncio.timeout(exe.remaining())
            try:
                async with deadline:
                    return await wf.fn(ctx, *args, **kwargs)
            except TimeoutError:
                if deadline.expired():  # the run's deadline, not a TimeoutError from a step
                    exe.timed_out = True
                    exe.check()
                raise

        try:
            return asyncio.run(main())
        except asyncio.CancelledError:
            exe.check()
            raise

    def _succeed(self, exe: Execution, wf: Workflow[Any, Any], value: Any, started: float) -> Any:
        row = exe.run
        payload = encode(
            wf.serializer,
            value,
            what=f"the result of workflow {wf.name!r}",
            run_id=row.id,
            step=None,
        )
        with exe.lock:
            if exe.finalized:
                raise errors.StaleLeaseError(f"run {row.id} was already finalized", run_id=row.id)
            exe.finalized = True
        transition = self.store.transition(
            row.id,
            RunStatus.SUCCESS,
            reason="workflow returned",
            owner=self.owner,
            values={
                "result": payload,
                "result_checksum": checksum(row.id, -1, "result", wf.serializer.name, payload),
                "finished_at": self.clock(),
                "lease_expires_at": None,
            },
        )
        self._emit_transition(row, transition, "workflow returned")
        hooks.emit(
            RunFinished(
                row.id, row.workflow, "success", time.perf_counter() - started, row.trace_id
            )
        )
        return wf.serializer.loads(payload)

    def _fail(self, exe: Execution, exc: BaseException, started: float) -> int | None:
        """Fail the run and write its dead-letter entry (once per execution)."""
        row = exe.run
        with exe.lock:
            if exe.finalized:
                return None
            exe.finalized = True
        current = self.store.get_run(row.id)
        if current.owner != self.owner or RunStatus(current.status) in FINAL_STATES:
            return None
        attempts = self.store.attempts(row.id, current.generation)
        last = max(exe.checkpoints, default=None) if exe.checkpoints else None
        try:
            steps = self.store.load_steps(row.id)
            last = max(steps) if steps else None
            last_name = steps[last].name if last is not None else None
        except errors.StoreError:
            last_name = exe.checkpoints[last].name if last is not None else None
        failing_step = getattr(exc, "step", None) or (attempts[-1].step if attempts else None)
        message = str(exc) or type(exc).__name__
        dead_letter = {
            "workflow": row.workflow,
            "generation": current.generation,
            "status": "open",
            "error_type": type(exc).__name__,
            "message": message,
            "traceback": "".join(traceback.format_exception(exc)),
            "step": failing_step,
            "attempts": dump_attempts(attempts),
            "last_checkpoint_position": last,
            "last_checkpoint_step": last_name,
            "inputs": current.inputs,
        }
        reason = f"{type(exc).__name__}: {message[:300]}"
        if exe.ctx is not None and not exe.abandoned:
            try:
                exe.ctx._run_failed()
            except Exception:
                _log.exception(
                    "run %s: rolling back its workspace failed; roll it back by hand with "
                    "`agent-runtime rollback %s`",
                    row.id,
                    row.id,
                    extra={"run_id": row.id},
                )
        transition = self.store.transition(
            row.id,
            RunStatus.FAILED,
            reason=reason,
            owner=self.owner,
            values={
                "error_type": type(exc).__name__,
                "error_message": message,
                "finished_at": self.clock(),
                "lease_expires_at": None,
            },
            dead_letter=dead_letter,
        )
        self._emit_transition(row, transition, reason)
        hooks.emit(
            DeadLettered(
                row.id,
                row.workflow,
                transition.dead_letter_id or 0,
                type(exc).__name__,
                message[:500],
                row.trace_id,
            )
        )
        hooks.emit(
            RunFinished(
                row.id,
                row.workflow,
                "failed",
                time.perf_counter() - started,
                row.trace_id,
                type(exc).__name__,
            )
        )
        return transition.dead_letter_id

    def _failed_error(self, run_id: str, exc: BaseException) -> errors.RunFailedError:
        error = errors.RunFailedError(
            f"run {run_id} failed: {type(exc).__name__}: {exc}; see `agent-runtime dlq show "
            f"{run_id}`",
            run_id=run_id,
            error_type=type(exc).__name__,
            error_message=str(exc),
        )
        error.__cause__ = exc
        return error

    def _emit_transition(self, row: RunRow, transition: Transition, reason: str) -> None:
        hooks.emit(
            RunTransitioned(
                row.id,
                row.workflow,
                None if transition.from_status is None else transition.from_status.value,
                transition.to_status.value,
                reason,
                row.trace_id,
            )
        )

    def _wait_stored(self, run_id: str, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.02
        while True:
            row = self.store.get_run(run_id)
            if row.status == RunStatus.SUCCESS.value:
                payload = row.result or "null"
                expected = checksum(run_id, -1, "result", row.serializer, payload)
                if row.result_checksum and row.result_checksum != expected:
                    raise errors.CheckpointCorruptedError(
                        f"run {run_id}: the stored result fails its checksum",
                        run_id=run_id,
                        step="result",
                        position=-1,
                    )
                return get_serializer(row.serializer).loads(payload)
            if row.status == RunStatus.FAILED.value:
                raise errors.RunFailedError(
                    f"run {run_id} failed: {row.error_type}: {row.error_message}; see "
                    f"`agent-runtime dlq show {run_id}`",
                    run_id=run_id,
                    error_type=row.error_type or "",
                    error_message=row.error_message or "",
                )
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {run_id} did not finish within {timeout} s; it goes on")
            time.sleep(
                delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
            )
            delay = min(delay * 2, 0.5)

    # -- resume and recovery -----------------------------------------------------------------

    def get(self, run_id: str) -> RunHandle:
        """Return a handle on an existing run (no execution is started)."""
        row = self.store.get_run(run_id)
        with self._lock:
            future = self._futures.get(run_id)
        return RunHandle(self, row.id, row.trace_id, future)

    def resume(self, run_id: str, *, import_entrypoint: bool = True) -> RunHandle:
        """Resume a run that is not executing anywhere: completed steps are not run again.

        A ``success`` run returns its handle as is. A run held by another live process is
        refused.

        Raises:
            RunNotFoundError: No such run.
            RunLeaseHeldError: Another live process owns it.
            InvalidTransitionError: The run ``failed``: retry it from the dead-letter queue.
            WorkflowNotFoundError: Its workflow is not registered and cannot be imported.
        """
        row = self.store.get_run(run_id)
        with self._lock:
            future = self._futures.get(run_id)
        if future is not None and not future.done():
            return RunHandle(self, row.id, row.trace_id, future)
        status = RunStatus(row.status)
        if status == RunStatus.SUCCESS:
            return RunHandle(self, row.id, row.trace_id)
        if status == RunStatus.FAILED:
            entry = self.store.get_dead_letter(run_id)
            raise errors.InvalidTransitionError(
                f"run {run_id} failed; retry it from the dead-letter queue: "
                f"`agent-runtime dlq retry {entry.id}`",
                run_id=run_id,
                from_state=status.value,
                to_state=RunStatus.RUNNING.value,
            )
        self._workflow_for_run(row, import_entrypoint=import_entrypoint)
        if row.owner is not None and row.owner != self.owner:
            alive = is_alive(row.owner)
            lease_valid = (row.lease_expires_at or 0) > self.clock()
            if lease_valid and alive is not False:
                raise errors.RunLeaseHeldError(
                    f"run {run_id} is held by {row.owner} until its lease lapses; it is being "
                    "executed there (or will be recovered after the lease expires)",
                    run_id=run_id,
                    owner=row.owner,
                    lease_expires_at=row.lease_expires_at,
                )
        claimed = self.store.claim(
            run_id,
            self.owner,
            self.clock() + self.lease_ttl,
            expected_owner=row.owner,
            reason=f"resumed by {self.owner}",
        )
        if claimed is None:
            raise errors.RunLeaseHeldError(
                f"run {run_id} was claimed by another process at the same moment",
                run_id=run_id,
                owner="(concurrent claimer)",
                lease_expires_at=None,
            )
        return self._launch(claimed, resumed=True)

    def recover(self, *, import_entrypoints: bool = False) -> list[RunHandle]:
        """Take over and resume orphaned runs of registered workflows.

        A run is an orphan when it is unfinished, owned by another process, and either that
        process is known dead (same host) or its lease has expired.

        Args:
            import_entrypoints: Import the module of a run's workflow when it is not registered
                (the CLI does this).

        Returns:
            Handles of the runs this call resumed.
        """
        self._recovered_once.set()
        handles: list[RunHandle] = []
        now = self.clock()
        for row in self.store.orphan_candidates(self.owner):
            with self._lock:
                if row.id in self._futures:
                    continue
            alive = is_alive(row.owner)
            expired = (row.lease_expires_at or 0) <= now
            if alive is True and not expired:
                continue
            if alive is None and not expired:
                continue
            try:
                self._workflow_for_run(row, import_entrypoint=import_entrypoints)
            except errors.WorkflowNotFoundError:
                if row.workflow not in self._recovery_warned:
                    self._recovery_warned.add(row.workflow)
                    _log.warning(
                        "orphaned run %s of workflow %s is not recovered by this process: the "
                        "workflow is not registered here",
                        row.id,
                        row.workflow,
                        extra={"run_id": row.id, "workflow": row.workflow},
                    )
                continue
            why = "owner process is dead" if alive is False else "lease expired"
            claimed = self.store.claim(
                row.id,
                self.owner,
                self.clock() + self.lease_ttl,
                expected_owner=row.owner,
                reason=f"recovered from {row.owner}: {why}",
            )
            if claimed is None:
                continue
            hooks.emit(RunRecovered(row.id, row.workflow, row.owner, claimed.status, row.trace_id))
            handles.append(self._launch(claimed, resumed=True))
        return handles

    def work(
        self,
        *,
        stop: threading.Event | None = None,
        poll_interval: float = 1.0,
        batch: int = 8,
    ) -> int:
        """Be a worker: claim ``pending`` runs enqueued by any process and execute them.

        Runs until ``stop`` is set (or forever). Recovery of orphans goes on meanwhile.

        Returns:
            How many runs this worker claimed.
        """
        stop = stop or threading.Event()
        claimed_total = 0
        self._ensure_maintenance()
        while not stop.is_set():
            with self._lock:
                room = self.max_concurrent_runs - len(self._futures)
            rows = []
            if room > 0:
                rows = self.store.claim_pending(
                    self.owner, self.clock() + self.lease_ttl, min(batch, room)
                )
            for row in rows:
                claimed_total += 1
                self._launch(row, resumed=False)
            if not rows:
                stop.wait(poll_interval)
        return claimed_total

    # -- maintenance: leases, deadlines, recovery ------------------------------------------

    def _ensure_maintenance(self) -> None:
        with self._lock:
            if self._maintenance is None or not self._maintenance.is_alive():
                if self._closed:
                    return
                self._maintenance = threading.Thread(
                    target=self._maintain, name="agent-runtime-maintenance", daemon=True
                )
                self._maintenance.start()

    def _maintain(self) -> None:
        heartbeat = self.lease_ttl / 3
        recovery_every = self.lease_ttl / 2
        next_heartbeat = time.monotonic() + heartbeat
        # First recovery pass shortly after start-up, once module-level workflows are registered.
        next_recovery = time.monotonic() + 0.2
        while not self._stopping.is_set():
            now = time.monotonic()
            try:
                self._enforce_deadlines(now)
                if now >= next_heartbeat:
                    self.store.renew_leases(self.owner, self.clock() + self.lease_ttl)
                    next_heartbeat = now + heartbeat
                if self._recover_enabled and (now >= next_recovery or self._recover_now.is_set()):
                    self._recover_now.clear()
                    self.recover()
                    next_recovery = time.monotonic() + recovery_every
            except Exception:
                _log.exception("runtime maintenance pass failed; retrying shortly")
                next_heartbeat = min(next_heartbeat, now + 1.0)
            with self._lock:
                deadlines = [e.deadline for e in self._executions.values() if not e.finalized]
            wake_at = min([next_heartbeat, next_recovery, *deadlines]) - time.monotonic()
            self._wake.wait(max(0.05, min(wake_at, 0.5)))
            self._wake.clear()  # always: a wake that nothing consumes must not spin this loop

    def _enforce_deadlines(self, now: float) -> None:
        with self._lock:
            executions = list(self._executions.values())
        for exe in executions:
            if exe.finalized or now < exe.deadline:
                continue
            if not exe.timed_out:
                exe.timed_out = True
                exe.cancel.set()
                if exe.loop is not None and exe.task is not None:
                    with contextlib.suppress(RuntimeError):
                        exe.loop.call_soon_threadsafe(exe.task.cancel)
            elif now >= exe.deadline + self.timeout_grace:
                exe.abandoned = True
                _log.error(
                    "run %s overran its %g s timeout and its thread did not stop within %g s; "
                    "the run is failed and the thread abandoned (it may still be running)",
                    exe.run_id,
                    exe.run.timeout,
                    self.timeout_grace,
                    extra={"run_id": exe.run_id},
                )
                error = errors.RunTimeoutError(
                    f"run {exe.run_id} overran its {exe.run.timeout:g} s timeout",
                    run_id=exe.run_id,
                    timeout=exe.run.timeout,
                )
                self._fail(exe, error, exe.started_monotonic)
                with self._lock:
                    future = self._futures.get(exe.run_id)
                if future is not None and not future.done():
                    future.set_exception(self._failed_error(exe.run_id, error))

    # -- shutdown ----------------------------------------------------------------------------

    def close(self, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> None:
        """Stop: wait up to ``timeout`` s for runs in flight, then hand the rest over.

        Runs still executing after ``timeout`` have their lease released, so another process
        recovers them at once; this process's further writes to them are fenced off.
        """
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        with self._lock:
            futures = list(self._futures.values())
        for fut in futures:
            with contextlib.suppress(Exception):
                fut.exception(max(0.0, deadline - time.monotonic()))
        with self._lock:
            leftovers = list(self._executions.values())
        for exe in leftovers:
            exe.abandoned = True
            exe.cancel.set()
            with contextlib.suppress(Exception):
                self.store.release_lease(exe.run_id, self.owner)
        self._stopping.set()
        self._wake.set()
        if self._maintenance is not None:
            self._maintenance.join(timeout=5)
        _live_runtimes.discard(self)
        if self._sandbox is not None and self._owns_sandbox:
            with contextlib.suppress(Exception):
                self._sandbox.close()
        self.store.close()


_live_runtimes: weakref.WeakSet[Runtime] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:  # pragma: no cover - exercised at interpreter exit
    for rt in list(_live_runtimes):
        with contextlib.suppress(Exception):
            rt.close(timeout=2.0)


def _dlq_for(runtime: Runtime) -> Any:
    from agent_runtime.dlq import DeadLetterQueue

    return DeadLetterQueue(runtime)
