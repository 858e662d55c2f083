"""The circuit breaker: windowed opening, one probe, no serialisation, asyncio, pybreaker API."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import pybreaker
import pytest
from resilience_helpers import FakeClock, http_error

from agent_runtime import errors
from agent_runtime.events import BreakerRejected, BreakerStateChanged
from agent_runtime.resilience import (
    BreakerConfig,
    BreakerSnapshot,
    BreakerStore,
    CircuitBreaker,
    MemoryBreakerStore,
)


def boom(message: str = "down") -> None:
    """A failing dependency."""
    raise ConnectionError(message)


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    """Record ``times`` failures through real calls."""
    for _ in range(times):
        with pytest.raises(ConnectionError):
            breaker.call(boom)


def test_opens_on_fifth_failure_within_60_seconds(clock: FakeClock) -> None:
    """Failures at 0, 15, 30, 45, 59 s: closed after four, open after the fifth."""
    breaker = CircuitBreaker("svc", BreakerConfig(), clock=clock)
    for i in range(4):
        fail(breaker)
        assert breaker.status == "closed", i
        clock.advance(14.75)
    fail(breaker)  # the tripping call raises its own error, not CircuitOpenError
    assert breaker.status == "open"
    with pytest.raises(errors.CircuitOpenError) as caught:
        breaker.call(lambda: "never")
    assert caught.value.breaker == "svc"
    assert caught.value.half_open_at == clock.now + 30
    assert "5 failures within 60 s" in str(caught.value)
    assert "ConnectionError: down" in str(caught.value)


def test_does_not_open_on_five_failures_over_five_minutes(clock: FakeClock) -> None:
    """Five failures spread 75 s apart never put five inside one 60 s window."""
    breaker = CircuitBreaker("svc", clock=clock)
    for _ in range(5):
        fail(breaker)
        clock.advance(75)
    assert breaker.status == "closed"
    assert breaker.call(lambda: "fine") == "fine"


def test_successes_do_not_reset_the_window(clock: FakeClock) -> None:
    """Unlike pybreaker's consecutive count, successes in between do not forgive failures."""
    breaker = CircuitBreaker("svc", BreakerConfig(failure_threshold=3), clock=clock)
    for _ in range(2):
        fail(breaker)
        assert breaker.call(lambda: 1) == 1
        clock.advance(1)
    fail(breaker)
    assert breaker.status == "open"


def test_failures_leave_the_window(clock: FakeClock) -> None:
    """Old failures age out: four failures, 61 s later one more does not open it."""
    breaker = CircuitBreaker("svc", clock=clock)
    fail(breaker, 4)
    assert breaker.fail_counter == 4
    clock.advance(61)
    assert breaker.fail_counter == 0
    fail(breaker)
    assert breaker.status == "closed"


def test_half_open_probe_success_closes(clock: FakeClock, recorder) -> None:
    """After reset_timeout one probe goes through; its success closes the breaker."""
    breaker = CircuitBreaker("svc", BreakerConfig(failure_threshold=2), clock=clock)
    fail(breaker, 2)
    clock.advance(29.9)
    with pytest.raises(errors.CircuitOpenError):
        breaker.call(lambda: 1)
    clock.advance(0.2)
    assert breaker.call(lambda: "probe") == "probe"
    assert breaker.status == "closed"
    changes = [(e.from_state, e.to_state) for e in recorder.of(BreakerStateChanged)]
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    reasons = [e.reason for e in recorder.of(BreakerStateChanged)]
    assert "2 failures within 60 s" in reasons[0]
    assert "probe" in reasons[1]
    assert "succeeded" in reasons[2]
    assert [(e.breaker, e.state) for e in recorder.of(BreakerRejected)] == [("svc", "open")]


def test_half_open_probe_failure_reopens(clock: FakeClock) -> None:
    """A failed probe opens the breaker for another reset_timeout."""
    breaker = CircuitBreaker("svc", BreakerConfig(failure_threshold=1), clock=clock)
    fail(breaker)
    clock.advance(31)
    fail(breaker)
    assert breaker.status == "open"
    assert breaker.half_open_at == clock.now + 30
    snap = breaker.snapshot()
    assert "probe call failed" in snap.reason


def test_success_threshold_needs_several_probes(clock: FakeClock) -> None:
    """success_threshold=2: the first good probe keeps it half-open, the second closes it."""
    breaker = CircuitBreaker(
        "svc", BreakerConfig(failure_threshold=1, success_threshold=2), clock=clock
    )
    fail(breaker)
    clock.advance(31)
    breaker.call(lambda: 1)
    assert breaker.status == "half_open"
    breaker.call(lambda: 2)
    assert breaker.status == "closed"


def _open_and_ripe(clock: FakeClock, **config: Any) -> CircuitBreaker:
    breaker = CircuitBreaker("svc", BreakerConfig(failure_threshold=1, **config), clock=clock)
    fail(breaker)
    clock.advance(31)
    return breaker


def test_one_probe_under_50_concurrent_threads(clock: FakeClock) -> None:
    """Fifty threads hit a half-open breaker at once: exactly one call runs."""
    breaker = _open_and_ripe(clock)
    start = threading.Barrier(50)
    all_tried = threading.Event()
    ran: list[int] = []
    rejected: list[errors.CircuitOpenError] = []
    lock = threading.Lock()

    def probe(i: int) -> None:
        with lock:
            ran.append(i)
        all_tried.wait(5)  # hold the probe until every other caller has tried

    def caller(i: int) -> None:
        start.wait()
        try:
            breaker.call(probe, i)
        except errors.CircuitOpenError as exc:
            with lock:
                rejected.append(exc)
                if len(rejected) == 49:
                    all_tried.set()

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(ran) == 1
    assert len(rejected) == 49
    assert all("probe call is in flight" in str(e) for e in rejected)
    assert breaker.status == "closed"


async def test_one_probe_under_50_concurrent_tasks(clock: FakeClock) -> None:
    """Fifty asyncio tasks hit a half-open breaker at once: exactly one call runs."""
    breaker = _open_and_ripe(clock)
    release = asyncio.Event()
    ran = []

    async def probe() -> str:
        ran.append(1)
        await release.wait()
        return "ok"

    async def caller() -> str:
        try:
            return await breaker.call_async(probe)
        except errors.CircuitOpenError:
            return "rejected"

    tasks = [asyncio.create_task(caller()) for _ in range(50)]
    await asyncio.sleep(0.01)
    release.set()
    results = await asyncio.gather(*tasks)
    assert results.count("ok") == 1
    assert results.count("rejected") == 49
    assert ran == [1]


def test_concurrent_calls_are_not_serialised() -> None:
    """Five threads are inside the breaker at the same time (pybreaker would run them in turn)."""
    breaker = CircuitBreaker("svc")
    inside = threading.Barrier(5, timeout=5)  # breaks unless all five are inside together
    results: list[str] = []

    def call() -> None:
        results.append(breaker.call(lambda: str(inside.wait())))

    threads = [threading.Thread(target=call) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == ["0", "1", "2", "3", "4"]


async def test_async_calls_are_not_serialised() -> None:
    """Async calls overlap inside the breaker too."""
    breaker = CircuitBreaker("svc")
    entered = 0
    all_in = asyncio.Event()

    async def call() -> None:
        nonlocal entered
        entered += 1
        if entered == 5:
            all_in.set()
        await asyncio.wait_for(all_in.wait(), 5)

    await asyncio.gather(*(breaker.call_async(call) for _ in range(5)))
    assert entered == 5


async def test_async_opens_and_rejects(clock: FakeClock) -> None:
    """call_async counts failures and fails fast once open."""
    breaker = CircuitBreaker("svc", BreakerConfig(failure_threshold=2), clock=clock)

    async def down() -> None:
        raise TimeoutError("slow")

    for _ in range(2):
        with pytest.raises(TimeoutError):
            await breaker.call_async(down)
    with pytest.raises(errors.CircuitOpenError):
        await breaker.call_async(down)


async def test_cancelled_probe_frees_the_probe_slot(clock: FakeClock) -> None:
    """A cancelled probe gives no verdict: the next call becomes the probe at once."""
    breaker = _open_and_ripe(clock)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.sleep(30)

    task = asyncio.create_task(breaker.call_async(hang))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.status == "half_open"
    assert await breaker.call_async(asyncio.sleep, 0, "second probe") == "second probe"
    assert breaker.status == "closed"


def test_lost_probe_is_replaced_after_probe_timeout(clock: FakeClock) -> None:
    """A probe that never reports (its process died) stops blocking after probe_timeout."""
    breaker = _open_and_ripe(clock, probe_timeout=10)
    ticket = breaker._admit()  # a probe that will never report
    assert ticket.probe is not None
    with pytest.raises(errors.CircuitOpenError) as caught:
        breaker.call(lambda: 1)
    assert caught.value.half_open_at == clock.now + 10
    clock.advance(10)
    assert breaker.call(lambda: "new probe") == "new probe"
    assert breaker.status == "closed"
    assert breaker.snapshot().reason.startswith("1 probe call")


def test_client_errors_are_not_failures(clock: FakeClock) -> None:
    """HTTP 400s mean the caller was wrong: they never open the breaker."""
    breaker = CircuitBreaker("svc", BreakerConfig(failure_threshold=2), clock=clock)
    for _ in range(5):
        with pytest.raises(Exception, match="400"):
            breaker.call(lambda: (_ for _ in ()).throw(http_error(400)))
    assert breaker.status == "closed"
    for status in (429, 503):
        with pytest.raises(Exception, match=str(status)):
            breaker.call(lambda s=status: (_ for _ in ()).throw(http_error(s)))
    assert breaker.status == "open"


def test_exclude_and_is_failure(clock: FakeClock) -> None:
    """Excluded types and a custom is_failure keep errors from counting."""
    breaker = CircuitBreaker(
        "svc",
        BreakerConfig(
            failure_threshold=1, exclude=(KeyError,), is_failure=lambda e: "ignore" not in str(e)
        ),
        clock=clock,
    )
    with pytest.raises(KeyError):
        breaker.call(lambda: {}["x"])
    with pytest.raises(ConnectionError):
        breaker.call(boom, "please ignore")
    assert breaker.status == "closed"
    fail(breaker)
    assert breaker.status == "open"


def test_excluded_error_in_probe_closes(clock: FakeClock) -> None:
    """A probe answered with a 404 proves the dependency is up: the breaker closes."""
    breaker = _open_and_ripe(clock)
    with pytest.raises(Exception, match="404"):
        breaker.call(lambda: (_ for _ in ()).throw(http_error(404)))
    assert breaker.status == "closed"


def test_shared_store_shares_state(clock: FakeClock) -> None:
    """Two breakers with one name and one store see the same failures and state."""
    store = MemoryBreakerStore()
    a = CircuitBreaker("shared", BreakerConfig(failure_threshold=4), store=store, clock=clock)
    b = CircuitBreaker("shared", BreakerConfig(failure_threshold=4), store=store, clock=clock)
    other = CircuitBreaker("other", BreakerConfig(failure_threshold=4), store=store, clock=clock)
    fail(a, 2)
    fail(b, 2)
    assert a.status == "open"
    with pytest.raises(errors.CircuitOpenError):
        b.call(lambda: 1)
    assert other.status == "closed"


def test_transitions_seen_through_a_shared_store_are_marked_observed(
    clock: FakeClock, recorder
) -> None:
    """The breaker that opens reports the transition; one that only notices it marks it observed."""
    store = MemoryBreakerStore()
    a = CircuitBreaker("seen", BreakerConfig(failure_threshold=2), store=store, clock=clock)
    b = CircuitBreaker("seen", BreakerConfig(failure_threshold=2), store=store, clock=clock)
    fail(a, 2)
    with pytest.raises(errors.CircuitOpenError):
        b.call(lambda: 1)
    opened = [e for e in recorder.of(BreakerStateChanged) if e.to_state == "open"]
    assert [e.observed for e in opened] == [False, True]


def test_manual_open_close_half_open(clock: FakeClock, recorder) -> None:
    """open(), half_open() and close() force the state and are reported."""
    breaker = CircuitBreaker("svc", clock=clock)
    breaker.open()
    assert breaker.status == "open"
    assert breaker.current_state == pybreaker.STATE_OPEN
    breaker.half_open()
    assert breaker.current_state == pybreaker.STATE_HALF_OPEN
    breaker.close()
    assert breaker.status == "closed"
    reasons = [e.reason for e in recorder.of(BreakerStateChanged)]
    assert reasons == ["opened by hand", "half-opened by hand", "closed by hand"]


def test_pybreaker_listeners_are_called(clock: FakeClock) -> None:
    """Custom pybreaker listeners get before_call, success, failure and state_change."""
    seen: list[str] = []

    class Listener(pybreaker.CircuitBreakerListener):
        def before_call(self, cb: Any, func: Any, *args: Any, **kwargs: Any) -> None:
            seen.append("before")

        def success(self, cb: Any) -> None:
            seen.append("success")

        def failure(self, cb: Any, exc: BaseException) -> None:
            seen.append("failure")

        def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
            seen.append(f"{old_state.name}->{new_state.name}")

    breaker = CircuitBreaker(
        "svc", BreakerConfig(failure_threshold=1), clock=clock, listeners=[Listener()]
    )
    breaker.call(lambda: 1)
    fail(breaker)
    assert seen == ["before", "success", "before", "failure", "closed->open"]
    assert isinstance(breaker, pybreaker.CircuitBreaker)
    assert breaker.fail_max == 1


def test_decorator_sync_and_async(clock: FakeClock) -> None:
    """The breaker decorates sync and async functions."""
    breaker = CircuitBreaker("svc", BreakerConfig(failure_threshold=1), clock=clock)

    @breaker
    def sync_fn() -> int:
        return 1

    @breaker
    async def async_fn() -> int:
        return 2

    assert sync_fn() == 1
    assert asyncio.run(async_fn()) == 2
    breaker.open()
    with pytest.raises(errors.CircuitOpenError):
        sync_fn()
    with pytest.raises(errors.CircuitOpenError):
        asyncio.run(async_fn())


def test_calling_context_managers(clock: FakeClock) -> None:
    """calling() and calling_async() record the block's outcome."""
    breaker = CircuitBreaker("svc", BreakerConfig(failure_threshold=2), clock=clock)
    with breaker.calling():
        pass
    with pytest.raises(ConnectionError), breaker.calling():
        boom()

    async def run() -> None:
        with pytest.raises(ConnectionError):
            async with breaker.calling_async():
                boom()

    asyncio.run(run())
    assert breaker.status == "open"


class BrokenStore:
    """A store whose backend is down."""

    blocking = False

    def load(self, name: str) -> BreakerSnapshot:
        raise OSError("store unreachable")

    def update(self, name: str, change: Callable[..., Any]) -> Any:
        raise OSError("store unreachable")


def test_failing_store_fails_open(caplog: pytest.LogCaptureFixture) -> None:
    """When the store is down, calls still run (unrecorded) and one warning is logged."""
    store = BrokenStore()
    assert isinstance(store, BreakerStore)
    breaker = CircuitBreaker("svc", BreakerConfig(failure_threshold=1), store=store)
    with caplog.at_level(logging.WARNING, logger="agent_runtime.resilience.breaker"):
        assert breaker.call(lambda: "still works") == "still works"
        with pytest.raises(ConnectionError):
            breaker.call(boom)
        assert breaker.call(lambda: "again") == "again"
    warnings = [r for r in caplog.records if "fail open" in r.getMessage()]
    assert len(warnings) == 1
    assert "store unreachable" in warnings[0].getMessage()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"window": 0}, "window"),
        ({"reset_timeout": -1}, "reset_timeout"),
        ({"success_threshold": 0}, "success_threshold"),
        ({"probe_timeout": 0}, "probe_timeout"),
    ],
)
def test_invalid_config_is_rejected(kwargs: dict[str, float], needle: str) -> None:
    """Out-of-range settings raise ConfigurationError naming the field."""
    with pytest.raises(errors.ConfigurationError, match=needle):
        BreakerConfig(**kwargs)  # type: ignore[arg-type]


def test_breaker_needs_a_name() -> None:
    """An empty name is refused (it is the key of the shared state)."""
    with pytest.raises(errors.ConfigurationError, match="name"):
        CircuitBreaker("")


def test_repr_does_not_touch_the_store() -> None:
    """repr() shows the last seen state without reading a (possibly down) store."""
    breaker = CircuitBreaker("svc", store=BrokenStore())
    assert repr(breaker) == "CircuitBreaker('svc', last_seen='closed')"
