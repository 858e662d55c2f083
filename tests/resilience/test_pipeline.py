"""resilient_call: the order limiter -> breaker -> retry (timeout) -> fallback, and the flags."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
from resilience_helpers import FakeClock, Sleeps, http_error

from agent_runtime import errors
from agent_runtime import flags as flags_module
from agent_runtime.events import FallbackServed, RetryScheduled
from agent_runtime.flags import Flags
from agent_runtime.resilience import (
    Alternative,
    BreakerConfig,
    CircuitBreaker,
    Limiter,
    LimiterConfig,
    RetryPolicy,
    resilient_call,
    resilient_call_async,
)

ALL_ON = Flags()


class Script:
    """A dependency that raises the scripted errors in turn, then answers."""

    def __init__(self, *failures: BaseException, value: str = "ok") -> None:
        self.failures = list(failures)
        self.value = value
        self.calls = 0

    def __call__(self, *args: object) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return self.value

    async def acall(self, *args: object) -> str:
        """Async twin."""
        return self(*args)


def test_success_passes_every_layer(sleeps: Sleeps, clock: FakeClock) -> None:
    """A healthy call goes through limiter, breaker and retry once and frees the slot."""
    limiter = Limiter("l")
    breaker = CircuitBreaker("b", clock=clock)
    seen: list[int] = []

    def fn(x: int) -> int:
        seen.append(limiter.in_flight)
        return x * 2

    result = resilient_call(
        fn, 21, limiter=limiter, breaker=breaker, flags=ALL_ON, sleep=sleeps, clock=clock
    )
    assert result == 42
    assert seen == [1]
    assert limiter.in_flight == 0
    assert sleeps.calls == []


def test_limiter_refuses_before_any_other_layer(sleeps: Sleeps, clock: FakeClock) -> None:
    """A saturated limiter refuses first: the function is not called, the breaker untouched."""
    limiter = Limiter("l", LimiterConfig(max_concurrency=1, max_queue=0))
    breaker = CircuitBreaker("b", BreakerConfig(failure_threshold=1), clock=clock)
    fn = Script()
    held = limiter.acquire()
    with pytest.raises(errors.LimiterRejectedError):
        resilient_call(
            fn, limiter=limiter, breaker=breaker, flags=ALL_ON, sleep=sleeps, clock=clock
        )
    limiter.release(held)
    assert fn.calls == 0
    assert breaker.snapshot().version == 0


def test_retries_transient_errors_then_succeeds(sleeps: Sleeps, clock: FakeClock, recorder) -> None:
    """Transient failures are retried per policy inside the limiter slot."""
    fn = Script(http_error(503), httpx.ConnectError("refused"))
    result = resilient_call(
        fn,
        name="api",
        retry=RetryPolicy.http(),
        limiter=Limiter("l"),
        flags=ALL_ON,
        sleep=sleeps,
        clock=clock,
    )
    assert result == "ok"
    assert fn.calls == 3
    assert [e.step for e in recorder.of(RetryScheduled)] == ["api", "api"]


def test_breaker_counts_each_attempt_and_stops_the_retry_loop(
    sleeps: Sleeps, clock: FakeClock, recorder
) -> None:
    """Two failed attempts open a threshold-2 breaker: no third attempt, the fallback serves."""
    breaker = CircuitBreaker("primary", BreakerConfig(failure_threshold=2), clock=clock)
    primary = Script(http_error(503), http_error(503), http_error(503))
    backup = Script(value="from backup")
    result = resilient_call(
        primary,
        name="primary",
        retry=RetryPolicy.http(max_attempts=5),
        breaker=breaker,
        fallbacks=[Alternative("backup", backup)],
        flags=ALL_ON,
        sleep=sleeps,
        clock=clock,
    )
    assert result == "from backup"
    assert primary.calls == 2
    assert len(sleeps.calls) == 1  # no sleep just to be refused by the open breaker
    (served,) = recorder.of(FallbackServed)
    assert served.served == "backup"
    assert served.skipped[0][0] == "primary"
    assert served.skipped[0][1].startswith("failed: CircuitOpenError")


def test_open_breaker_skips_without_retrying(sleeps: Sleeps, clock: FakeClock) -> None:
    """An alternative whose breaker is open is skipped at once: no attempt, no sleep."""
    breaker = CircuitBreaker("primary", clock=clock)
    breaker.open()
    primary = Script()
    result = resilient_call(
        primary,
        name="primary",
        breaker=breaker,
        fallbacks=[Alternative("backup", Script(value="b"))],
        flags=ALL_ON,
        sleep=sleeps,
        clock=clock,
    )
    assert result == "b"
    assert primary.calls == 0
    assert sleeps.calls == []


def test_without_fallbacks_errors_are_not_wrapped(sleeps: Sleeps, clock: FakeClock) -> None:
    """With only a primary: CircuitOpenError, RetriesExhaustedError or the 400 itself."""
    breaker = CircuitBreaker("p", clock=clock)
    breaker.open()
    with pytest.raises(errors.CircuitOpenError):
        resilient_call(Script(), breaker=breaker, flags=ALL_ON, sleep=sleeps, clock=clock)
    with pytest.raises(errors.RetriesExhaustedError):
        resilient_call(
            Script(ValueError("x"), ValueError("x")), flags=ALL_ON, sleep=sleeps, clock=clock
        )
    bad = http_error(400)
    with pytest.raises(httpx.HTTPStatusError) as caught:
        resilient_call(
            Script(bad), retry=RetryPolicy.http(), flags=ALL_ON, sleep=sleeps, clock=clock
        )
    assert caught.value is bad


def test_exhausted_fallbacks(sleeps: Sleeps, clock: FakeClock) -> None:
    """When every alternative fails the caller gets FallbackExhaustedError with outcomes."""
    with pytest.raises(errors.FallbackExhaustedError) as caught:
        resilient_call(
            Script(http_error(400)),
            name="a",
            retry=RetryPolicy.http(),
            fallbacks=[Alternative("b", Script(http_error(401)))],
            flags=ALL_ON,
            sleep=sleeps,
            clock=clock,
        )
    assert [o["name"] for o in caught.value.outcomes] == ["a", "b"]
    assert sleeps.calls == []


def test_attempt_timeout_counts_as_breaker_failure(sleeps: Sleeps, clock: FakeClock) -> None:
    """A hung attempt becomes a StepTimeoutError that the breaker counts."""
    release = threading.Event()
    breaker = CircuitBreaker("slow", BreakerConfig(failure_threshold=1), clock=clock)
    with pytest.raises(errors.CircuitOpenError) as caught:
        resilient_call(
            lambda: release.wait(5),
            name="slow",
            retry=RetryPolicy(attempt_timeout=0.02, max_attempts=3),
            breaker=breaker,
            flags=ALL_ON,
            sleep=sleeps,
            clock=clock,
        )
    release.set()
    assert isinstance(caught.value.__cause__, errors.StepTimeoutError)
    assert breaker.status == "open"


def test_flag_retry_off_means_one_attempt(sleeps: Sleeps, clock: FakeClock) -> None:
    """retry_enabled=false: one attempt, its own error raised."""
    fn = Script(http_error(503))
    with pytest.raises(httpx.HTTPStatusError):
        resilient_call(
            fn,
            retry=RetryPolicy.http(),
            flags=Flags(retry_enabled=False),
            sleep=sleeps,
            clock=clock,
        )
    assert fn.calls == 1


def test_flag_retry_off_keeps_attempt_timeout(sleeps: Sleeps, clock: FakeClock) -> None:
    """Switching retries off does not switch off the per-attempt timeout."""
    release = threading.Event()
    with pytest.raises(errors.StepTimeoutError):
        resilient_call(
            lambda: release.wait(5),
            retry=RetryPolicy(attempt_timeout=0.02),
            flags=Flags(retry_enabled=False),
            sleep=sleeps,
            clock=clock,
        )
    release.set()


def test_flag_breaker_off_bypasses_breakers(sleeps: Sleeps, clock: FakeClock) -> None:
    """breaker_enabled=false: an open breaker is ignored and failures are not recorded."""
    breaker = CircuitBreaker("b", clock=clock)
    breaker.open()
    version = breaker.snapshot().version
    off = Flags(breaker_enabled=False)
    assert resilient_call(Script(), breaker=breaker, flags=off, sleep=sleeps, clock=clock) == "ok"
    with pytest.raises(errors.RetriesExhaustedError):
        resilient_call(
            Script(OSError("x"), OSError("x")),
            breaker=breaker,
            flags=off,
            sleep=sleeps,
            clock=clock,
        )
    assert breaker.snapshot().version == version


def test_flag_limiter_off_bypasses_the_limiter(sleeps: Sleeps, clock: FakeClock) -> None:
    """limiter_enabled=false: a saturated limiter does not refuse."""
    limiter = Limiter("l", LimiterConfig(max_concurrency=1, max_queue=0))
    held = limiter.acquire()
    result = resilient_call(
        Script(), limiter=limiter, flags=Flags(limiter_enabled=False), sleep=sleeps, clock=clock
    )
    limiter.release(held)
    assert result == "ok"


def test_flag_fallback_off_calls_only_the_primary(sleeps: Sleeps, clock: FakeClock) -> None:
    """fallback_enabled=false: the fallback is never called and the primary's error surfaces."""
    backup = Script(value="b")
    with pytest.raises(errors.RetriesExhaustedError):
        resilient_call(
            Script(ValueError("x"), ValueError("x")),
            fallbacks=[Alternative("backup", backup)],
            flags=Flags(fallback_enabled=False),
            sleep=sleeps,
            clock=clock,
        )
    assert backup.calls == 0


def test_flags_are_read_at_call_time(
    monkeypatch: pytest.MonkeyPatch, sleeps: Sleeps, clock: FakeClock
) -> None:
    """Without flags=..., the process-wide flags in force are used; a reload takes effect."""
    monkeypatch.delenv("AGENT_RUNTIME_FLAGS_FILE", raising=False)
    monkeypatch.setenv("AGENT_RUNTIME_FLAG_RETRY_ENABLED", "false")
    flags_module.reload()
    try:
        fn = Script(http_error(503))
        with pytest.raises(httpx.HTTPStatusError):
            resilient_call(fn, retry=RetryPolicy.http(), sleep=sleeps, clock=clock)
        assert fn.calls == 1
    finally:
        monkeypatch.delenv("AGENT_RUNTIME_FLAG_RETRY_ENABLED")
        flags_module.reload()
    fn = Script(http_error(503))
    assert resilient_call(fn, retry=RetryPolicy.http(), sleep=sleeps, clock=clock) == "ok"


async def test_async_pipeline_with_fallback_and_limiter(clock: FakeClock) -> None:
    """The async pipeline: retries, then falls back, holding one limiter slot throughout."""
    sleeps = Sleeps(clock)
    limiter = Limiter("l")
    breaker = CircuitBreaker("a", BreakerConfig(failure_threshold=10), clock=clock)
    primary = Script(http_error(503), http_error(503), http_error(503))
    seen: list[int] = []

    async def backup(x: int) -> str:
        seen.append(limiter.in_flight)
        return f"backup {x}"

    result = await resilient_call_async(
        primary.acall,
        7,
        name="a",
        retry=RetryPolicy.http(),
        breaker=breaker,
        limiter=limiter,
        fallbacks=[Alternative("backup", backup)],
        flags=ALL_ON,
        sleep=sleeps.async_sleep,
        clock=clock,
    )
    assert result == "backup 7"
    assert primary.calls == 3
    assert len(sleeps.calls) == 2
    assert seen == [1]
    assert limiter.in_flight == 0


async def test_async_attempt_timeout_and_retry_off(clock: FakeClock) -> None:
    """Async attempts time out by cancellation, also with retries switched off."""
    sleeps = Sleeps(clock)

    async def hang() -> None:
        await asyncio.sleep(5)

    with pytest.raises(errors.StepTimeoutError):
        await resilient_call_async(
            hang,
            retry=RetryPolicy(attempt_timeout=0.02),
            flags=Flags(retry_enabled=False),
            sleep=sleeps.async_sleep,
            clock=clock,
        )
    with pytest.raises(errors.RetriesExhaustedError) as caught:
        await resilient_call_async(
            hang,
            retry=RetryPolicy(attempt_timeout=0.02, max_attempts=2),
            flags=ALL_ON,
            sleep=sleeps.async_sleep,
            clock=clock,
        )
    assert caught.value.reason == "max_attempts"


async def test_async_limiter_refusal(clock: FakeClock) -> None:
    """The async pipeline refuses at the limiter too."""
    limiter = Limiter("l", LimiterConfig(max_concurrency=1, max_queue=0))
    held = await limiter.acquire_async()
    with pytest.raises(errors.LimiterRejectedError):
        await resilient_call_async(Script().acall, limiter=limiter, flags=ALL_ON, clock=clock)
    limiter.release(held)


def test_fallback_with_the_primary_name_is_refused(sleeps: Sleeps, clock: FakeClock) -> None:
    """Outcomes are keyed by name, so a fallback may not reuse the primary's."""
    with pytest.raises(errors.ConfigurationError, match="primary's name"):
        resilient_call(
            Script(),
            name="model",
            fallbacks=[Alternative("model", Script())],
            flags=ALL_ON,
            sleep=sleeps,
            clock=clock,
        )
