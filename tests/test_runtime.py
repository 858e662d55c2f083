"""The runtime on SQLite and PostgreSQL: steps, replay, retries, DLQ, timeouts, leases, recovery."""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

import agent_runtime
from agent_runtime import (
    CheckpointCorruptedError,
    InvalidTransitionError,
    NonDeterminismError,
    PickleSerializer,
    RetryPolicy,
    RunContext,
    RunFailedError,
    RunLeaseHeldError,
    RunStatus,
    Runtime,
    SerializationError,
    StaleLeaseError,
    WorkflowNotFoundError,
)
from agent_runtime.events import DeadLettered, RetryScheduled, RunTransitioned, StepFinished
from agent_runtime.state.machine import FINAL_STATES
from tests.conftest import Recorder

NO_JITTER = RetryPolicy(max_attempts=3, initial=1.0, multiplier=2.0, jitter=0.0)


def _name() -> str:
    return "wf_" + secrets.token_hex(4)


class Sleeps:
    """Records backoff sleeps instead of sleeping."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)

    async def async_sleep(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    """A sleep recorder."""
    return Sleeps()


@pytest.fixture
def rt(db_url: str, sleeps: Sleeps) -> Iterator[Runtime]:
    """A runtime whose backoff sleeps are recorded, not slept."""
    runtime = Runtime(db_url, recover=False, sleep=sleeps, async_sleep=sleeps.async_sleep)
    yield runtime
    runtime.close(timeout=2)


def test_public_api_exports_are_sorted_and_complete() -> None:
    """The package re-exports a sorted __all__ whose names all exist."""
    names = agent_runtime.__all__
    assert names == sorted(names)
    for name in names:
        assert hasattr(agent_runtime, name), name
    assert {"Runtime", "RetryPolicy", "RunContext", "RunHandle", "RunStatus"} <= set(names)


def test_sync_workflow_checkpoints_each_step(rt: Runtime) -> None:
    """A sync workflow's steps are checkpointed in order and the result is stored."""

    def double(x: int) -> int:
        return x * 2

    @rt.workflow(_name())
    def wf(ctx: RunContext, x: int) -> dict[str, int]:
        a = ctx.step(double, x)
        b = ctx.step(double, a)
        return {"a": a, "b": b}

    handle = rt.start(wf, 3)
    assert handle.result(timeout=10) == {"a": 6, "b": 12}
    assert handle.status is RunStatus.SUCCESS
    steps = rt.store.load_steps(handle.id)
    assert [(s.position, s.name, s.output) for s in steps.values()] == [
        (0, "test_sync_workflow_checkpoints_each_step.double", "6"),
        (1, "test_sync_workflow_checkpoints_each_step.double", "12"),
    ]
    moves = [(e.from_status, e.to_status) for e in rt.store.events(handle.id)]
    assert moves == [(None, "pending"), ("pending", "running"), ("running", "success")]


def test_async_workflow_with_gathered_steps(rt: Runtime) -> None:
    """Async workflows await steps; gathered steps get positions in call order."""

    async def fetch(i: int) -> int:
        await asyncio.sleep(0.01 * (3 - i))  # finish in reverse order
        return i * 10

    def sync_step(x: int) -> int:
        return x + 1

    @rt.workflow(_name())
    async def wf(ctx: RunContext) -> list[int]:
        values = await asyncio.gather(*(ctx.step(fetch, i, name=f"fetch-{i}") for i in range(3)))
        last = await ctx.step(sync_step, sum(values))
        return [*values, last]

    assert asyncio.run(wf()) == [0, 10, 20, 31]  # calling it runs it durably (awaitable)
    (run,) = rt.store.list_runs(workflow=wf.name)
    names = [s.name for s in rt.store.load_steps(run.id).values()]
    assert names[:3] == ["fetch-0", "fetch-1", "fetch-2"]


def test_workflow_call_returns_result(rt: Runtime) -> None:
    """Calling a registered workflow runs it as a durable run and returns its result."""

    @rt.workflow(_name())
    def wf(ctx: RunContext, a: int, *, b: int) -> int:
        return a + b

    assert wf(1, b=2) == 3
    assert rt.store.list_runs(workflow=wf.name)[0].status == "success"


def test_step_results_round_trip_like_a_replay(rt: Runtime) -> None:
    """A step returns what a replay would (JSON: tuples come back as lists)."""

    def pair() -> tuple[int, int]:
        return (1, 2)

    @rt.workflow(_name())
    def wf(ctx: RunContext) -> Any:
        return ctx.step(pair)

    assert rt.run(wf) == [1, 2]


def test_resume_does_not_rerun_committed_steps(db_url: str) -> None:
    """A run abandoned mid-way resumes in another runtime; committed steps are replayed."""
    calls: Counter[str] = Counter()
    release = threading.Event()
    name = _name()

    def quick(i: int) -> int:
        calls[f"quick{i}"] += 1
        return i

    def slow() -> str:
        calls["slow"] += 1
        if calls["slow"] == 1:
            release.wait(10)
        return "done"

    first = Runtime(db_url, recover=False)

    @first.workflow(name)
    def wf(ctx: RunContext) -> list[Any]:
        return [ctx.step(quick, 0), ctx.step(quick, 1), ctx.step(slow)]

    handle = first.start(wf)
    deadline = time.monotonic() + 10
    while calls["slow"] < 1 and time.monotonic() < deadline:  # inside the third step
        time.sleep(0.01)
    assert len(first.store.load_steps(handle.id)) == 2
    first.close(timeout=0)  # hand the run over: its lease is released, its thread fenced
    second = Runtime(db_url, recover=False)
    resumed = second.resume(handle.id)
    assert resumed.result(timeout=10) == [0, 1, "done"]
    release.set()
    with pytest.raises(StaleLeaseError):  # the first execution finished late and was fenced
        handle.result(timeout=10)
    assert calls["quick0"] == 1
    assert calls["quick1"] == 1
    assert calls["slow"] == 2  # the step in flight when the first process stopped ran again
    kinds = [e.kind for e in second.store.events(handle.id)]
    assert "lease" in kinds
    second.close()


def test_renamed_step_is_non_determinism(rt: Runtime) -> None:
    """Replaying a run whose workflow now calls a different step fails with NonDeterminismError."""
    name = _name()

    def step_a() -> int:
        return 1

    def step_b() -> int:
        raise KeyError("missing")

    def renamed_a() -> int:
        return 1

    @rt.workflow(name, retry=RetryPolicy.none())
    def wf(ctx: RunContext) -> int:
        return ctx.step(step_a) + ctx.step(step_b)

    handle = rt.start(wf)
    with pytest.raises(RunFailedError):
        handle.result(timeout=10)

    @rt.workflow(name, retry=RetryPolicy.none())
    def wf2(ctx: RunContext) -> int:
        return ctx.step(renamed_a) + ctx.step(step_b)

    retried = rt.dlq.retry(handle.id)
    with pytest.raises(RunFailedError) as info:
        retried.result(timeout=10)
    cause = info.value.__cause__
    assert isinstance(cause, NonDeterminismError)
    assert cause.position == 0
    assert cause.recorded.endswith("step_a")
    assert cause.called.endswith("renamed_a")
    assert "workflow code changed" in str(cause)
    assert rt.dlq.get(handle.id).error_type == "NonDeterminismError"


def test_corrupt_checkpoint_is_not_resumed(rt: Runtime) -> None:
    """A checkpoint row changed outside the runtime fails its checksum; nothing runs on it."""
    calls: Counter[str] = Counter()
    fail_next = {"value": True}

    def amount() -> int:
        calls["amount"] += 1
        return 100

    def pay(x: int) -> int:
        calls["pay"] += 1
        if fail_next["value"]:
            raise KeyError("gateway down")
        return x

    @rt.workflow(_name(), retry=RetryPolicy.none())
    def wf(ctx: RunContext) -> int:
        return ctx.step(pay, ctx.step(amount))

    handle = rt.start(wf)
    with pytest.raises(RunFailedError):
        handle.result(timeout=10)
    with rt.store.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE ar_steps SET output = '1000000' WHERE run_id = :r AND position = 0"),
            {"r": handle.id},
        )
    fail_next["value"] = False
    with pytest.raises(RunFailedError) as info:
        rt.dlq.retry(handle.id).result(timeout=10)
    assert isinstance(info.value.__cause__, CheckpointCorruptedError)
    assert "fails its checksum" in str(info.value.__cause__)
    assert calls == Counter({"amount": 1, "pay": 1})  # nothing ran on the corrupt value


def test_non_serializable_step_result(rt: Runtime) -> None:
    """A step result JSON cannot hold fails the run with a SerializationError naming it."""

    def make() -> object:
        return object()

    @rt.workflow(_name(), retry=RetryPolicy.none())
    def wf(ctx: RunContext) -> Any:
        return ctx.step(make)

    with pytest.raises(RunFailedError) as info:
        rt.run(wf)
    err = info.value.__cause__
    assert isinstance(err, SerializationError)
    assert err.value_type == "object"
    assert err.step is not None
    assert err.step.endswith("make")
    assert "PickleSerializer" in str(err)


def test_non_serializable_inputs_create_no_run(rt: Runtime) -> None:
    """Inputs that cannot be serialized are refused before any run is recorded."""

    @rt.workflow(_name())
    def wf(ctx: RunContext, x: Any) -> None:
        return None

    with pytest.raises(SerializationError, match="inputs"):
        rt.start(wf, {1, 2})
    assert rt.store.list_runs(workflow=wf.name) == []


@dataclass
class Point:
    """A value JSON cannot hold."""

    x: int
    y: int


def make_point() -> Point:
    """Return a point."""
    return Point(1, 2)


def test_pickle_serializer_for_python_objects(rt: Runtime) -> None:
    """With PickleSerializer, steps and results may be arbitrary picklable objects."""

    @rt.workflow(_name(), serializer=PickleSerializer())
    def wf(ctx: RunContext) -> Point:
        return ctx.step(make_point)

    assert rt.run(wf) == Point(1, 2)


def test_retries_follow_the_policy(rt: Runtime, sleeps: Sleeps, recorder: Recorder) -> None:
    """A failing step is retried with the policy's delays while the run is retrying."""
    attempts = Counter[str]()

    def flaky() -> str:
        attempts["n"] += 1
        if attempts["n"] < 3:
            raise ConnectionError("reset")
        return "ok"

    @rt.workflow(_name(), retry=NO_JITTER)
    def wf(ctx: RunContext) -> str:
        return ctx.step(flaky)

    handle = rt.start(wf)
    assert handle.result(timeout=10) == "ok"
    assert sleeps.calls == [1.0, 2.0]
    moves = [(e.from_status, e.to_status) for e in rt.store.events(handle.id)]
    assert moves.count(("running", "retrying")) == 2
    assert moves.count(("retrying", "running")) == 2
    recorded = rt.store.attempts(handle.id)
    assert [(a.attempt, a.error_type, a.error_class, a.delay) for a in recorded] == [
        (1, "ConnectionError", "connection", 1.0),
        (2, "ConnectionError", "connection", 2.0),
    ]
    assert rt.store.load_steps(handle.id)[0].attempts == 3
    retried = [e for e in recorder.of(RetryScheduled) if e.run_id == handle.id]
    assert [e.delay_s for e in retried] == [1.0, 2.0]


def test_exhausted_retries_write_a_complete_dead_letter(rt: Runtime, recorder: Recorder) -> None:
    """When retries run out the run fails and its DLQ entry holds everything needed."""

    def ok(x: int) -> int:
        return x

    def always_503(order: str) -> None:
        raise TimeoutError(f"upstream timed out for {order}")

    @rt.workflow(_name(), retry=NO_JITTER)
    def wf(ctx: RunContext, order: str) -> None:
        ctx.step(ok, 1)
        ctx.step(ok, 2)
        ctx.step(always_503, order)

    handle = rt.start(wf, "O-1")
    with pytest.raises(RunFailedError) as info:
        handle.result(timeout=10)
    assert info.value.error_type == "RetriesExhaustedError"
    assert handle.status is RunStatus.FAILED
    entry = rt.dlq.get(handle.id)
    assert entry.status == "open"
    assert entry.error_type == "RetriesExhaustedError"
    assert "upstream timed out for O-1" in entry.message
    assert "TimeoutError" in entry.traceback
    assert entry.step is not None
    assert entry.step.endswith("always_503")
    assert [a["attempt"] for a in entry.attempts] == [1, 2, 3]
    assert all(a["error_type"] == "TimeoutError" and a["at"] > 0 for a in entry.attempts)
    assert (entry.last_checkpoint_position, entry.last_checkpoint_step) == (
        1,
        "test_exhausted_retries_write_a_complete_dead_letter.ok",
    )
    assert '"O-1"' in entry.inputs
    assert [e.run_id for e in recorder.of(DeadLettered)] == [handle.id]
    assert [d.run_id for d in rt.dlq.list()] == [handle.id]


def test_dlq_retry_resumes_from_last_good_checkpoint(rt: Runtime) -> None:
    """A DLQ retry moves failed -> pending, starts a new generation and skips done steps."""
    calls: Counter[str] = Counter()
    broken = {"value": True}

    def reserve() -> str:
        calls["reserve"] += 1
        return "r-1"

    def charge() -> str:
        calls["charge"] += 1
        if broken["value"]:
            raise ValueError("declined: merchant id unknown")
        return "c-1"

    @rt.workflow(_name(), retry=NO_JITTER)
    def wf(ctx: RunContext) -> list[str]:
        return [ctx.step(reserve), ctx.step(charge)]

    handle = rt.start(wf)
    with pytest.raises(RunFailedError):
        handle.result(timeout=10)
    assert calls["charge"] == 2  # the same ValueError twice stops retrying early
    broken["value"] = False
    entry = rt.dlq.get(handle.id)
    retried = rt.dlq.retry(entry.id)
    assert retried.result(timeout=10) == ["r-1", "c-1"]
    assert calls["reserve"] == 1
    info = retried.info()
    assert info.generation == 1
    moves = [(e.from_status, e.to_status) for e in rt.store.events(handle.id)]
    assert ("failed", "pending") in moves
    assert rt.dlq.get(entry.id).status == "retried"
    assert rt.dlq.list() == []
    with pytest.raises(InvalidTransitionError, match="already retried"):
        rt.dlq.retry(entry.id)


def test_non_retryable_error_is_raised_as_itself(rt: Runtime, sleeps: Sleeps) -> None:
    """An error the policy gives up on at once reaches the workflow as its own type."""

    def lookup() -> None:
        raise KeyError("no such customer")

    @rt.workflow(_name(), retry=RetryPolicy(give_up_on=(KeyError,)))
    def wf(ctx: RunContext) -> str:
        try:
            ctx.step(lookup)
        except KeyError:
            return "handled"
        return "not reached"

    assert rt.run(wf) == "handled"
    assert sleeps.calls == []


def test_sync_step_timeout_abandons_the_thread(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """A sync step over its timeout is a failed attempt; a warning says its thread may run on."""
    calls: Counter[str] = Counter()

    def slow_then_fast() -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            time.sleep(1.0)
        return "ok"

    @rt.workflow(_name(), retry=NO_JITTER)
    def wf(ctx: RunContext) -> str:
        return ctx.step(slow_then_fast, timeout=0.1)

    with caplog.at_level(logging.WARNING, logger="agent_runtime.step"):
        handle = rt.start(wf)
        assert handle.result(timeout=10) == "ok"
    assert any("may still be running" in r.getMessage() for r in caplog.records)
    (attempt,) = rt.store.attempts(handle.id)
    assert (attempt.error_type, attempt.error_class) == ("StepTimeoutError", "timeout")


def test_async_step_timeout_cancels(rt: Runtime) -> None:
    """An async step over its timeout is cancelled."""
    cancelled = threading.Event()

    async def hang() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    @rt.workflow(_name(), retry=RetryPolicy.none())
    async def wf(ctx: RunContext) -> None:
        await ctx.step(hang, timeout=0.05)

    with pytest.raises(RunFailedError) as info:
        rt.start(wf).result(timeout=10)
    assert info.value.error_type == "StepTimeoutError"
    assert cancelled.is_set()


def test_run_deadline_fails_the_run(db_url: str) -> None:
    """A run past its timeout fails at the next step boundary with RunTimeoutError."""
    rt = Runtime(db_url, recover=False)

    def tick() -> None:
        time.sleep(0.05)

    @rt.workflow(_name(), timeout=0.3)
    def wf(ctx: RunContext) -> None:
        while True:
            ctx.step(tick)

    handle = rt.start(wf)
    with pytest.raises(RunFailedError) as info:
        handle.result(timeout=10)
    assert info.value.error_type == "RunTimeoutError"
    assert rt.dlq.get(handle.id).error_type == "RunTimeoutError"
    rt.close()


def test_stuck_sync_step_is_abandoned_at_the_deadline(db_url: str) -> None:
    """A sync step stuck past the run deadline: the run is failed and the thread abandoned."""
    rt = Runtime(db_url, recover=False, timeout_grace=0.2)
    unblock = threading.Event()

    def stuck() -> str:
        unblock.wait(10)
        return "late"

    @rt.workflow(_name(), timeout=0.3)
    def wf(ctx: RunContext) -> str:
        return ctx.step(stuck)

    handle = rt.start(wf)
    started = time.monotonic()
    with pytest.raises(RunFailedError) as info:
        handle.result(timeout=10)
    assert time.monotonic() - started < 5
    assert info.value.error_type == "RunTimeoutError"
    unblock.set()
    time.sleep(0.2)
    assert rt.store.load_steps(handle.id) == {}  # the late result was fenced off
    assert rt.store.get_run(handle.id).status == "failed"
    rt.close()


def test_async_run_deadline_cancels_the_task(db_url: str) -> None:
    """An async run past its timeout is cancelled and failed."""
    rt = Runtime(db_url, recover=False)

    @rt.workflow(_name(), timeout=0.2)
    async def wf(ctx: RunContext) -> None:
        await asyncio.sleep(10)

    with pytest.raises(RunFailedError) as info:
        rt.start(wf).result(timeout=10)
    assert info.value.error_type == "RunTimeoutError"
    rt.close()


def _orphan(rt: Runtime, wf: Any, owner: str, lease_expires_at: float) -> str:
    """Record a run as if ``owner`` had started executing it."""
    handle = rt.enqueue(wf)
    rt.store.claim(handle.id, owner, lease_expires_at, expected_owner=None, reason="test")
    rt.store.transition(handle.id, RunStatus.RUNNING, reason="test", owner=owner)
    return handle.id


def test_recover_takes_over_a_dead_owner_at_once(rt: Runtime) -> None:
    """A run owned by a dead process on this host is recovered without waiting for its lease."""
    import socket

    @rt.workflow(_name())
    def wf(ctx: RunContext) -> str:
        return "recovered"

    run_id = _orphan(rt, wf, f"{socket.gethostname()}/999999/1/dead", time.time() + 3600)
    (handle,) = rt.recover()
    assert handle.id == run_id
    assert handle.result(timeout=10) == "recovered"
    reasons = [e.reason for e in rt.store.events(run_id) if e.kind == "lease"]
    assert "owner process is dead" in reasons[-1]


def test_recover_waits_for_the_lease_of_an_unknown_owner(rt: Runtime) -> None:
    """A run owned on another host is recovered only once its lease has expired."""

    @rt.workflow(_name())
    def wf(ctx: RunContext) -> str:
        return "ok"

    run_id = _orphan(rt, wf, "other-host/1/1/x", time.time() + 3600)
    assert rt.recover() == []
    rt.store.update_run(run_id, lease_expires_at=time.time() - 1)
    (handle,) = rt.recover()
    assert handle.result(timeout=10) == "ok"
    reasons = [e.reason for e in rt.store.events(run_id) if e.kind == "lease"]
    assert "lease expired" in reasons[-1]


def test_resume_refuses_a_run_held_by_a_live_owner(rt: Runtime) -> None:
    """resume() of a run whose owner is alive and holds the lease raises RunLeaseHeldError."""

    @rt.workflow(_name())
    def wf(ctx: RunContext) -> None:
        return None

    run_id = _orphan(rt, wf, "other-host/1/1/x", time.time() + 3600)
    with pytest.raises(RunLeaseHeldError) as info:
        rt.resume(run_id)
    assert info.value.owner == "other-host/1/1/x"


def test_two_runtimes_never_execute_one_run_twice(db_url: str) -> None:
    """Two runtimes recovering the same orphan concurrently: exactly one executes it."""
    executed: Counter[str] = Counter()
    name = _name()
    rts = [Runtime(db_url, recover=False) for _ in range(3)]

    def work() -> str:
        executed["n"] += 1
        time.sleep(0.1)
        return "once"

    for runtime in rts:

        @runtime.workflow(name)
        def wf(ctx: RunContext) -> str:
            return ctx.step(work)

    run_id = _orphan(rts[0], name, "other-host/1/1/x", time.time() - 1)
    barrier = threading.Barrier(3)
    handles: list[Any] = []

    def recover(runtime: Runtime) -> None:
        barrier.wait()
        handles.extend(runtime.recover())

    threads = [threading.Thread(target=recover, args=(r,)) for r in rts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [h.id for h in handles] == [run_id]
    assert handles[0].result(timeout=10) == "once"
    assert executed["n"] == 1
    for runtime in rts:
        runtime.close()


def test_worker_claims_enqueued_runs(db_url: str) -> None:
    """Runs enqueued by one process are claimed and executed by a worker."""
    producer = Runtime(db_url, recover=False)
    worker = Runtime(db_url, recover=False)
    name = _name()

    @producer.workflow(name)
    def wf(ctx: RunContext, i: int) -> int:
        return i * i

    handles = [producer.enqueue(name, i) for i in range(5)]
    stop = threading.Event()
    thread = threading.Thread(target=worker.work, kwargs={"stop": stop, "poll_interval": 0.05})
    thread.start()
    try:
        assert [h.result(timeout=10) for h in handles] == [0, 1, 4, 9, 16]
    finally:
        stop.set()
        thread.join()
    producer.close()
    worker.close()


def test_unknown_workflow_lists_the_known_ones(rt: Runtime) -> None:
    """Starting a workflow that is not registered says which ones are."""
    with pytest.raises(WorkflowNotFoundError, match="registered"):
        rt.start("no.such.workflow")


def test_result_timeout_leaves_the_run_going(rt: Runtime) -> None:
    """handle.result(timeout) raises TimeoutError while the run goes on."""
    go = threading.Event()

    def wait() -> str:
        go.wait(10)
        return "done"

    @rt.workflow(_name())
    def wf(ctx: RunContext) -> str:
        return ctx.step(wait)

    handle = rt.start(wf)
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.05)
    assert not handle.done()
    assert handle.status not in FINAL_STATES
    go.set()
    assert handle.result(timeout=10) == "done"


def test_run_continues_the_callers_trace(rt: Runtime) -> None:
    """A run started inside a span takes that span's trace id (and the span as parent)."""
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")

    @rt.workflow(_name())
    def wf(ctx: RunContext) -> str:
        return ctx.trace_id

    with tracer.start_as_current_span("request") as span:
        handle = rt.start(wf)
        expected = format(span.get_span_context().trace_id, "032x")
    assert handle.trace_id == expected
    assert handle.result(timeout=10) == expected
    assert rt.store.get_run(handle.id).parent_span_id == format(
        span.get_span_context().span_id, "016x"
    )


def test_events_describe_the_run(rt: Runtime, recorder: Recorder) -> None:
    """Transitions and step outcomes are emitted as typed events."""

    def one() -> int:
        return 1

    @rt.workflow(_name())
    def wf(ctx: RunContext) -> int:
        return ctx.step(one)

    handle = rt.start(wf)
    handle.result(timeout=10)
    moves = [
        (e.from_status, e.to_status) for e in recorder.of(RunTransitioned) if e.run_id == handle.id
    ]
    assert moves == [(None, "pending"), ("pending", "running"), ("running", "success")]
    finished = [e for e in recorder.of(StepFinished) if e.run_id == handle.id]
    assert [(e.position, e.outcome) for e in finished] == [(0, "success")]


def test_idle_maintenance_thread_sleeps(sqlite_url: str) -> None:
    """With recovery off, registering a workflow does not leave the maintenance loop spinning."""
    rt = Runtime(sqlite_url, recover=False)

    @rt.workflow(_name())
    def wf(ctx: RunContext) -> int:
        return 1

    assert rt.run(wf) == 1  # starts the maintenance thread
    deadline = time.monotonic() + 5
    while rt._wake.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not rt._wake.is_set()  # consumed: the loop waits on it again
    rt.close()
