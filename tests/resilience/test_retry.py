"""The tenacity-driven retry drivers: retry_call, retry_call_async and @retry."""

from __future__ import annotations

import asyncio
import logging
import random
import threading

import httpx
import pytest
from resilience_helpers import FakeClock, Sleeps, http_error

from agent_runtime import errors
from agent_runtime.events import AttemptScope, RetryScheduled
from agent_runtime.resilience import RetryPolicy, retry, retry_call, retry_call_async


class Flaky:
    """Fails with the given errors in turn, then returns ``value``."""

    def __init__(self, *failures: BaseException, value: str = "ok") -> None:
        self.failures = list(failures)
        self.value = value
        self.calls = 0

    def __call__(self, *args: object, **kwargs: object) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return self.value

    async def acall(self, *args: object, **kwargs: object) -> str:
        """Async twin."""
        return self(*args, **kwargs)


def test_success_first_time_no_sleep(sleeps: Sleeps, clock: FakeClock) -> None:
    """A call that succeeds is called once and never sleeps."""
    fn = Flaky()
    assert retry_call(fn, policy=RetryPolicy.http(), sleep=sleeps, clock=clock) == "ok"
    assert fn.calls == 1
    assert sleeps.calls == []


def test_arguments_are_passed_through(sleeps: Sleeps) -> None:
    """Positional and keyword arguments reach the function."""

    def add(a: int, b: int, *, scale: int) -> int:
        return (a + b) * scale

    assert retry_call(add, 1, 2, scale=3, sleep=sleeps) == 9


def test_429_retry_after_7_is_recorded_not_slept(
    sleeps: Sleeps, clock: FakeClock, recorder
) -> None:
    """A 429 with Retry-After: 7 waits exactly 7 s (through the injected sleep) then succeeds."""
    fn = Flaky(http_error(429, {"Retry-After": "7"}))
    assert retry_call(fn, policy=RetryPolicy.http(), name="api", sleep=sleeps, clock=clock) == "ok"
    assert sleeps.calls == [7.0]
    (event,) = recorder.of(RetryScheduled)
    assert (event.step, event.attempt, event.delay_s, event.reason) == (
        "api",
        1,
        7.0,
        "rate_limited",
    )
    assert event.error_type == "HTTPStatusError"


def test_400_is_raised_at_once_unchanged(sleeps: Sleeps) -> None:
    """A 400 is not retried: the original HTTPStatusError is raised after one attempt."""
    error = http_error(400)
    fn = Flaky(error)
    with pytest.raises(httpx.HTTPStatusError) as caught:
        retry_call(fn, policy=RetryPolicy.http(), sleep=sleeps)
    assert caught.value is error
    assert fn.calls == 1
    assert sleeps.calls == []
    assert not getattr(error, "__notes__", None)


def test_non_retryable_after_retries_carries_a_note(sleeps: Sleeps) -> None:
    """A 400 after a 503 is raised as is, with a note listing the earlier attempt."""
    error = http_error(400)
    fn = Flaky(http_error(503), error)
    with pytest.raises(httpx.HTTPStatusError) as caught:
        retry_call(fn, policy=RetryPolicy.http(), sleep=sleeps)
    assert caught.value is error
    assert "#1 HTTPStatusError (server_error)" in caught.value.__notes__[0]


def test_same_value_error_twice_stops_with_history(sleeps: Sleeps, clock: FakeClock) -> None:
    """The same ValueError twice stops early: RetriesExhaustedError with both attempts."""
    fn = Flaky(ValueError("bad value 1"), ValueError("bad value 2"), ValueError("never"))
    with pytest.raises(errors.RetriesExhaustedError) as caught:
        retry_call(fn, policy=RetryPolicy(max_attempts=5), name="parse", sleep=sleeps, clock=clock)
    exc = caught.value
    assert fn.calls == 2
    assert exc.reason == "repeated_error"
    assert [a["attempt"] for a in exc.attempts] == [1, 2]
    assert exc.attempts[0]["fingerprint"] == exc.attempts[1]["fingerprint"]
    assert exc.attempts[1]["delay"] is None
    assert isinstance(exc.__cause__, ValueError)
    assert str(exc.__cause__) == "bad value 2"
    assert exc.last_error is exc.__cause__
    assert exc.step == "parse"
    assert "deterministic" in str(exc)


def test_max_attempts_exhausted(sleeps: Sleeps, clock: FakeClock) -> None:
    """Three 503s with the HTTP preset: three attempts, two sleeps, RetriesExhaustedError."""
    fn = Flaky(http_error(503), http_error(503), http_error(503))
    with pytest.raises(errors.RetriesExhaustedError) as caught:
        retry_call(fn, policy=RetryPolicy.http(), sleep=sleeps, clock=clock, rng=random.Random(3))
    assert caught.value.reason == "max_attempts"
    assert len(caught.value.attempts) == 3
    assert len(sleeps.calls) == 2
    assert 0.8 <= sleeps.calls[0] <= 1.2
    assert 1.6 <= sleeps.calls[1] <= 2.4
    assert [a["delay"] for a in caught.value.attempts[:2]] == sleeps.calls


def test_deadline_stops_retrying(sleeps: Sleeps, clock: FakeClock) -> None:
    """The injected clock drives the deadline: the retry that would start too late is not made."""
    policy = RetryPolicy(max_attempts=10, initial=4, jitter=0, deadline=10)
    fn = Flaky(*[http_error(503) for _ in range(10)])
    with pytest.raises(errors.RetriesExhaustedError) as caught:
        retry_call(fn, policy=policy, sleep=sleeps, clock=clock)
    assert caught.value.reason == "deadline"
    assert sleeps.calls == [4.0]  # 0 + 4 fits, 4 + 8 would pass the 10 s deadline
    assert fn.calls == 2


def test_attempt_scopes_and_events(sleeps: Sleeps, recorder) -> None:
    """Each attempt runs in an AttemptScope; each retry emits RetryScheduled."""
    fn = Flaky(http_error(502), httpx.ConnectError("refused"))
    retry_call(fn, policy=RetryPolicy.http(), name="call", sleep=sleeps)
    scopes = [s for s in recorder.scopes if isinstance(s, AttemptScope)]
    assert [(s.step, s.attempt) for s in scopes] == [("call", 1), ("call", 2), ("call", 3)]
    assert [e.reason for e in recorder.of(RetryScheduled)] == ["server_error", "connection"]


def test_keyboard_interrupt_is_not_retried(sleeps: Sleeps) -> None:
    """BaseExceptions propagate at once."""
    fn = Flaky(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        retry_call(fn, sleep=sleeps)
    assert fn.calls == 1


def test_sync_attempt_timeout_abandons_thread(sleeps: Sleeps, caplog) -> None:
    """A sync attempt over its timeout is abandoned with a warning and retried."""
    release = threading.Event()
    calls = []

    def slow_then_fast() -> str:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            release.wait(5)
            return "late"
        return "fast"

    policy = RetryPolicy(attempt_timeout=0.05, max_attempts=2, jitter=0, initial=0)
    with caplog.at_level(logging.WARNING, logger="agent_runtime.resilience.retry"):
        assert retry_call(slow_then_fast, policy=policy, name="slow", sleep=sleeps) == "fast"
    release.set()
    assert "may still be running" in caplog.text
    assert calls[0].startswith("agent-runtime-attempt-slow-1")


def test_sync_attempt_timeout_exhausts_as_step_timeout(sleeps: Sleeps) -> None:
    """Every attempt timing out ends in RetriesExhaustedError caused by StepTimeoutError."""
    release = threading.Event()
    policy = RetryPolicy(attempt_timeout=0.02, max_attempts=2, jitter=0, initial=0)
    with pytest.raises(errors.RetriesExhaustedError) as caught:
        retry_call(lambda: release.wait(5), policy=policy, name="hang", sleep=sleeps)
    release.set()
    cause = caught.value.__cause__
    assert isinstance(cause, errors.StepTimeoutError)
    assert (cause.step, cause.attempt, cause.timeout) == ("hang", 2, 0.02)
    assert [a["error_class"] for a in caught.value.attempts] == ["timeout", "timeout"]


def test_sync_timeout_worker_sees_callers_context(sleeps: Sleeps) -> None:
    """The worker thread runs in a copy of the caller's contextvars (trace context follows)."""
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("v", default="none")
    var.set("caller")
    policy = RetryPolicy(attempt_timeout=5)
    assert retry_call(var.get, policy=policy, sleep=sleeps) == "caller"


def test_sync_timeout_errors_propagate_from_worker(sleeps: Sleeps) -> None:
    """An error raised in the worker thread is the attempt's error."""
    error = http_error(400)
    with pytest.raises(httpx.HTTPStatusError) as caught:
        retry_call(Flaky(error), policy=RetryPolicy.http(attempt_timeout=5), sleep=sleeps)
    assert caught.value is error


async def test_async_retry_after_and_success(clock: FakeClock) -> None:
    """The async driver waits through the injected async sleep and returns the value."""
    sleeps = Sleeps(clock)
    fn = Flaky(http_error(429, {"Retry-After": "7"}), http_error(503))
    result = await retry_call_async(
        fn.acall,
        policy=RetryPolicy.http(),
        sleep=sleeps.async_sleep,
        clock=clock,
        rng=random.Random(0),
    )
    assert result == "ok"
    assert sleeps.calls[0] == 7.0
    assert len(sleeps.calls) == 2


async def test_async_repeated_error_stops(clock: FakeClock) -> None:
    """The async driver applies the same rules: the same ValueError twice stops."""
    sleeps = Sleeps(clock)
    fn = Flaky(ValueError("x"), ValueError("x"))
    with pytest.raises(errors.RetriesExhaustedError) as caught:
        await retry_call_async(fn.acall, sleep=sleeps.async_sleep, clock=clock)
    assert caught.value.reason == "repeated_error"


async def test_async_attempt_timeout_cancels(clock: FakeClock) -> None:
    """An async attempt over its timeout is cancelled, counted as a timeout and retried."""
    sleeps = Sleeps(clock)
    cancelled = []
    calls = 0

    async def slow() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
        return "done"

    policy = RetryPolicy(attempt_timeout=0.02, jitter=0, initial=0)
    assert await retry_call_async(slow, policy=policy, sleep=sleeps.async_sleep) == "done"
    assert cancelled == [True]


async def test_async_outer_cancellation_propagates(clock: FakeClock) -> None:
    """Cancelling the caller cancels the attempt and is not turned into a retry."""
    sleeps = Sleeps(clock)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.sleep(30)

    task = asyncio.create_task(
        retry_call_async(hang, policy=RetryPolicy(attempt_timeout=10), sleep=sleeps.async_sleep)
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sleeps.calls == []


async def test_concurrent_async_calls_keep_their_own_history(clock: FakeClock) -> None:
    """Fifty interleaved async calls do not share retry state (a fresh controller per call)."""
    sleeps = Sleeps()

    async def yielding_sleep(seconds: float) -> None:
        sleeps(seconds)
        await asyncio.sleep(0)

    async def one(i: int) -> list[int]:
        fn = Flaky(*[http_error(503) for _ in range(i % 3)], value=str(i))
        try:
            await retry_call_async(
                fn.acall,
                policy=RetryPolicy.http(max_attempts=3),
                sleep=yielding_sleep,
                clock=clock,
            )
        except errors.RetriesExhaustedError as exc:  # pragma: no cover - would be a bug
            return [a["attempt"] for a in exc.attempts]
        return [fn.calls]

    results = await asyncio.gather(*(one(i) for i in range(50)))
    assert results == [[i % 3 + 1] for i in range(50)]


def test_decorator_sync(sleeps: Sleeps) -> None:
    """@retry(policy) retries a sync function and keeps its metadata."""
    fn = Flaky(http_error(503))

    @retry(RetryPolicy.http(), sleep=sleeps)
    def fetch(x: int) -> str:
        """Doc."""
        return fn(x)

    assert fetch(1) == "ok"
    assert fetch.__doc__ == "Doc."
    assert fetch.__name__ == "fetch"
    assert fn.calls == 2
    assert len(sleeps.calls) == 1


async def test_decorator_async(clock: FakeClock) -> None:
    """@retry(policy) on an async def function gives an async function that retries."""
    sleeps = Sleeps(clock)
    fn = Flaky(httpx.ReadTimeout("slow"))

    @retry(RetryPolicy.http(), sleep=sleeps.async_sleep, clock=clock)
    async def fetch() -> str:
        return await fn.acall()

    assert asyncio.iscoroutinefunction(fetch)
    assert await fetch() == "ok"
    assert fn.calls == 2


def test_decorator_default_policy_and_name(sleeps: Sleeps, recorder) -> None:
    """@retry() uses the default policy and the function's qualified name."""
    fn = Flaky(RuntimeError("boom 1"))

    @retry(sleep=sleeps)
    def work() -> str:
        return fn()

    assert work() == "ok"
    (event,) = recorder.of(RetryScheduled)
    assert event.step.endswith("work")


def test_single_attempt_policy_raises_the_error_itself(sleeps: Sleeps) -> None:
    """RetryPolicy.none() makes one attempt and raises its error unwrapped (as steps do)."""
    error = ValueError("once")
    with pytest.raises(ValueError, match="once") as caught:
        retry_call(Flaky(error), policy=RetryPolicy.none(), sleep=sleeps)
    assert caught.value is error


async def test_single_attempt_policy_async(clock: FakeClock) -> None:
    """The async driver does the same."""
    with pytest.raises(TimeoutError):
        await retry_call_async(
            Flaky(TimeoutError("slow")).acall,
            policy=RetryPolicy.none(),
            sleep=Sleeps(clock).async_sleep,
        )
