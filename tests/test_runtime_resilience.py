"""ctx.step(..., breaker=, limiter=, fallback=): the resilience layers inside durable steps."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_runtime import RetryPolicy, RunContext, Runtime
from agent_runtime.flags import FlagStore
from agent_runtime.resilience import (
    Alternative,
    BreakerConfig,
    CircuitBreaker,
    Limiter,
    LimiterConfig,
)


class Clock:
    """A settable wall clock shared by the runtime and the breaker."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    """A fake wall clock."""
    return Clock()


@pytest.fixture
def sleeps(clock: Clock) -> list[float]:
    """Backoff sleeps, recorded; each one moves the fake clock."""
    return []


@pytest.fixture
def rt(sqlite_url: str, clock: Clock, sleeps: list[float]) -> Iterator[Runtime]:
    """A runtime whose sleeps advance the fake clock instead of waiting."""

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.now += seconds

    async def async_sleep(seconds: float) -> None:
        sleep(seconds)

    runtime = Runtime(sqlite_url, recover=False, clock=clock, sleep=sleep, async_sleep=async_sleep)
    yield runtime
    runtime.close(timeout=2)


def _name() -> str:
    return "res_" + secrets.token_hex(3)


def test_open_breaker_makes_the_step_wait_for_half_open(
    rt: Runtime, clock: Clock, sleeps: list[float]
) -> None:
    """After the breaker opens, the next attempt fails fast and the retry waits until half-open."""
    breaker = CircuitBreaker(
        "payments", BreakerConfig(failure_threshold=2, window=60, reset_timeout=30), clock=clock
    )
    calls = Counter[str]()

    def charge() -> str:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError("payments down")
        return "charged"

    policy = RetryPolicy(max_attempts=5, initial=1.0, jitter=0.0)

    @rt.workflow(_name(), retry=policy)
    def wf(ctx: RunContext) -> str:
        return ctx.step(charge, breaker=breaker, name="charge")

    handle = rt.start(wf)
    assert handle.result(timeout=10) == "charged"
    assert calls["n"] == 3  # the fail-fast attempt never reached the function
    attempts = [(a.error_type, a.error_class) for a in rt.store.attempts(handle.id)]
    assert attempts == [
        ("ConnectionError", "connection"),
        ("ConnectionError", "connection"),
        ("CircuitOpenError", "circuit_open"),
    ]
    # Opened by the second failure (after the first sleep), so it half-opens 30 s after that.
    assert sleeps[2] == pytest.approx(30 - sleeps[1], abs=0.01)
    assert breaker.status == "closed"


def test_fallback_serves_and_is_recorded(rt: Runtime) -> None:
    """When the primary fails, the next alternative answers; the run's events say so."""
    calls = Counter[str]()

    def model_a(prompt: str) -> str:
        calls["a"] += 1
        raise TimeoutError("model-a overloaded")

    def model_b(prompt: str) -> str:
        calls["b"] += 1
        return f"b says {prompt}"

    @rt.workflow(_name(), retry=RetryPolicy.none())
    def wf(ctx: RunContext) -> str:
        return ctx.step(model_a, "hi", name="answer", fallback=[Alternative("model-b", model_b)])

    handle = rt.start(wf)
    assert handle.result(timeout=10) == "b says hi"
    events = [e for e in rt.store.events(handle.id) if e.kind == "fallback"]
    assert len(events) == 1
    assert "served by model-b" in events[0].reason
    assert "answer failed" in events[0].reason
    assert "TimeoutError" in events[0].reason


def test_fallback_skips_an_open_breaker_without_calling(rt: Runtime, clock: Clock) -> None:
    """An alternative whose breaker is open is skipped, and the skip is recorded."""
    broken = CircuitBreaker("model-a", BreakerConfig(failure_threshold=1), clock=clock)
    broken.open()
    calls = Counter[str]()

    def model_a() -> str:
        calls["a"] += 1
        return "a"

    def model_b() -> str:
        return "b"

    @rt.workflow(_name(), retry=RetryPolicy.none())
    def wf(ctx: RunContext) -> str:
        return ctx.step(model_a, name="answer", breaker=broken, fallback=[model_b])

    handle = rt.start(wf)
    assert handle.result(timeout=10) == "b"
    assert calls["a"] == 0
    (event,) = [e for e in rt.store.events(handle.id) if e.kind == "fallback"]
    assert "answer skipped" in event.reason


def test_fallback_flag_off_calls_only_the_primary(
    rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With fallback_enabled off, the primary's failure is the step's failure."""
    from agent_runtime import flags

    flags_file = tmp_path / "flags.toml"
    flags_file.write_text("fallback_enabled = false\n")
    store = FlagStore(environ={"AGENT_RUNTIME_FLAGS_FILE": str(flags_file)})
    monkeypatch.setattr(flags, "current", store.current)
    monkeypatch.setattr("agent_runtime.context.current_flags", store.current)

    def primary() -> str:
        raise KeyError("no")

    def backup() -> str:
        return "backup"

    @rt.workflow(_name(), retry=RetryPolicy.none())
    def wf(ctx: RunContext) -> str:
        try:
            return ctx.step(primary, fallback=[backup])
        except KeyError:
            return "primary failed"

    assert rt.run(wf) == "primary failed"


def test_step_limiter_bounds_concurrency_across_runs(sqlite_url: str) -> None:
    """Steps sharing a limiter never run more than max_concurrency at once, across runs."""
    rt = Runtime(sqlite_url, recover=False)
    limiter = Limiter("llm", LimiterConfig(max_concurrency=2, max_queue=20, queue_timeout=10))
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def call_llm(i: int) -> int:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return i

    name = _name()

    @rt.workflow(name)
    def wf(ctx: RunContext, i: int) -> int:
        return ctx.step(call_llm, i, limiter=limiter)

    handles = [rt.start(wf, i) for i in range(6)]
    assert sorted(h.result(timeout=20) for h in handles) == list(range(6))
    assert state["peak"] == 2
    rt.close()


def test_async_step_with_breaker_and_fallback(rt: Runtime, clock: Clock) -> None:
    """The async driver applies the same breaker and fallback rules."""
    breaker = CircuitBreaker("async-a", BreakerConfig(failure_threshold=1), clock=clock)

    async def primary() -> str:
        await asyncio.sleep(0)
        raise ConnectionError("down")

    async def backup() -> str:
        return "from backup"

    @rt.workflow(_name(), retry=RetryPolicy.none())
    async def wf(ctx: RunContext) -> list[str]:
        first = await ctx.step(primary, name="ask", breaker=breaker, fallback=[backup])
        second = await ctx.step(primary, name="ask-again", breaker=breaker, fallback=[backup])
        return [first, second]

    assert asyncio.run(wf()) == ["from backup", "from backup"]
    assert breaker.status == "open"
