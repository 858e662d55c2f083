"""The limiter: concurrency, a bounded FIFO queue, timeouts, cancellation, threads and tasks."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from resilience_helpers import FakeClock

from agent_runtime import errors
from agent_runtime.events import LimiterChanged, LimiterRejected, LimiterWaitScope
from agent_runtime.resilience import Limiter, LimiterConfig


def test_defaults_match_the_issue() -> None:
    """Max concurrency 5, queue 20, queue timeout 30 s."""
    config = LimiterConfig()
    assert (config.max_concurrency, config.max_queue, config.queue_timeout) == (5, 20, 30.0)


async def _hold(limiter: Limiter, release: asyncio.Event, entered: list[int], i: int) -> int:
    async with limiter.slot_async():
        entered.append(i)
        await release.wait()
    return i


async def _until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


async def test_at_most_max_concurrency_run_the_rest_queue() -> None:
    """Seven tasks with max_concurrency=5: five run, two wait, all finish."""
    limiter = Limiter("llm")
    release = asyncio.Event()
    entered: list[int] = []
    tasks = [asyncio.create_task(_hold(limiter, release, entered, i)) for i in range(7)]
    await _until(lambda: limiter.queued == 2)
    assert limiter.in_flight == 5
    assert sorted(entered) == [0, 1, 2, 3, 4]
    release.set()
    assert await asyncio.gather(*tasks) == list(range(7))
    assert (limiter.in_flight, limiter.queued) == (0, 0)


async def test_queue_full_is_rejected(recorder) -> None:
    """With every slot taken and the queue full, a call is refused at once (queue_full)."""
    limiter = Limiter("llm", LimiterConfig(max_concurrency=1, max_queue=2))
    release = asyncio.Event()
    entered: list[int] = []
    tasks = [asyncio.create_task(_hold(limiter, release, entered, i)) for i in range(3)]
    await _until(lambda: limiter.queued == 2)
    with pytest.raises(errors.LimiterRejectedError) as caught:
        async with limiter.slot_async():
            pass  # pragma: no cover - never entered
    exc = caught.value
    assert (exc.limiter, exc.reason) == ("llm", "queue_full")
    assert exc.retry_after > 0
    assert "Retry after about" in str(exc)
    assert limiter.rejected == 1
    assert [(e.limiter, e.reason) for e in recorder.of(LimiterRejected)] == [("llm", "queue_full")]
    release.set()
    await asyncio.gather(*tasks)


def test_queue_full_is_rejected_for_threads() -> None:
    """Threads get the same refusal when the queue is full."""
    limiter = Limiter("t", LimiterConfig(max_concurrency=1, max_queue=0))
    with limiter.slot():
        with pytest.raises(errors.LimiterRejectedError) as caught:
            limiter.acquire()
        assert caught.value.reason == "queue_full"
    assert limiter.in_flight == 0


def test_queue_timeout_is_rejected_for_threads() -> None:
    """A thread that waits longer than queue_timeout is refused and leaves the queue."""
    limiter = Limiter("t", LimiterConfig(max_concurrency=1, queue_timeout=0.05))
    with limiter.slot():
        with pytest.raises(errors.LimiterRejectedError) as caught:
            limiter.call(lambda: "never")
        assert caught.value.reason == "queue_timeout"
        assert "within" in str(caught.value)
        assert limiter.queued == 0
    assert limiter.in_flight == 0


async def test_queue_timeout_is_rejected_for_tasks(recorder) -> None:
    """A task that waits longer than queue_timeout is refused; the wait had its scope."""
    limiter = Limiter("a", LimiterConfig(max_concurrency=1, queue_timeout=0.05))
    release = asyncio.Event()
    holder = asyncio.create_task(_hold(limiter, release, [], 0))
    await _until(lambda: limiter.in_flight == 1)
    with pytest.raises(errors.LimiterRejectedError) as caught:
        await limiter.call_async(asyncio.sleep, 0)
    assert caught.value.reason == "queue_timeout"
    assert limiter.queued == 0
    assert [s.limiter for s in recorder.scopes if isinstance(s, LimiterWaitScope)] == ["a"]
    release.set()
    await holder
    assert limiter.in_flight == 0


async def test_cancelled_waiter_frees_its_place() -> None:
    """Cancelling a queued task removes it; the slot goes to the next waiter, nothing leaks."""
    limiter = Limiter("c", LimiterConfig(max_concurrency=1))
    release = asyncio.Event()
    entered: list[int] = []
    holder = asyncio.create_task(_hold(limiter, release, entered, 0))
    await _until(lambda: limiter.in_flight == 1)
    doomed = asyncio.create_task(_hold(limiter, release, entered, 1))
    survivor = asyncio.create_task(_hold(limiter, release, entered, 2))
    await _until(lambda: limiter.queued == 2)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert limiter.queued == 1
    release.set()
    await asyncio.gather(holder, survivor)
    assert entered == [0, 2]
    assert (limiter.in_flight, limiter.queued) == (0, 0)


async def test_cancelled_holder_releases_its_slot() -> None:
    """A task cancelled while holding a slot gives it back."""
    limiter = Limiter("c", LimiterConfig(max_concurrency=1))
    holder = asyncio.create_task(_hold(limiter, asyncio.Event(), [], 0))
    await _until(lambda: limiter.in_flight == 1)
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder
    assert limiter.in_flight == 0
    assert await limiter.call_async(asyncio.sleep, 0, "free") == "free"


async def test_cancel_right_after_grant_passes_the_slot_on() -> None:
    """A waiter cancelled in the instant its slot was handed over passes the slot on."""
    limiter = Limiter("race", LimiterConfig(max_concurrency=1))
    acquired_at = await limiter.acquire_async()
    waiter = asyncio.create_task(limiter.acquire_async())
    await _until(lambda: limiter.queued == 1)
    limiter.release(acquired_at)  # hands the slot to the waiter (resolution is scheduled)
    waiter.cancel()  # ... and the waiter is cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (limiter.in_flight, limiter.queued) == (0, 0)


def test_fifo_order_for_threads() -> None:
    """Threads get slots in the order they queued; a newcomer cannot overtake."""
    limiter = Limiter("fifo", LimiterConfig(max_concurrency=1))
    order: list[int] = []
    first = limiter.acquire()
    threads = []
    for i in range(6):
        t = threading.Thread(target=limiter.call, args=(order.append, i))
        t.start()
        threads.append(t)
        deadline = time.monotonic() + 5
        while limiter.queued != i + 1:  # enqueue strictly one after the other
            assert time.monotonic() < deadline
            time.sleep(0.001)
    limiter.release(first)
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3, 4, 5]


async def test_fifo_order_for_tasks() -> None:
    """Tasks get slots in the order they queued."""
    limiter = Limiter("fifo", LimiterConfig(max_concurrency=1))
    order: list[int] = []
    first = await limiter.acquire_async()

    async def record(i: int) -> None:
        order.append(i)

    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(limiter.call_async(record, i)))
        await _until(lambda n=i + 1: limiter.queued == n)
    limiter.release(first)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4, 5]


async def test_threads_and_tasks_share_one_limiter() -> None:
    """A thread's release wakes a waiting asyncio task, and the other way round."""
    limiter = Limiter("mixed", LimiterConfig(max_concurrency=1))
    thread_has_slot = threading.Event()
    thread_release = threading.Event()

    def thread_holder() -> None:
        with limiter.slot():
            thread_has_slot.set()
            thread_release.wait(5)

    t = threading.Thread(target=thread_holder)
    t.start()
    await asyncio.to_thread(thread_has_slot.wait, 5)
    task = asyncio.create_task(limiter.call_async(asyncio.sleep, 0, "task ran"))
    await _until(lambda: limiter.queued == 1)
    thread_release.set()
    assert await task == "task ran"
    t.join(5)

    acquired_at = await limiter.acquire_async()
    got: list[str] = []
    t2 = threading.Thread(target=lambda: got.append(limiter.call(lambda: "thread ran")))
    t2.start()
    await _until(lambda: limiter.queued == 1)
    limiter.release(acquired_at)
    await asyncio.to_thread(t2.join, 5)
    assert got == ["thread ran"]
    assert (limiter.in_flight, limiter.queued) == (0, 0)


def test_changed_events_track_gauges(recorder) -> None:
    """LimiterChanged reports in-flight and queued counts on every change, in order."""
    limiter = Limiter("g", LimiterConfig(max_concurrency=1, queue_timeout=5))
    first = limiter.acquire()
    t = threading.Thread(target=limiter.call, args=(lambda: None,))
    t.start()
    deadline = time.monotonic() + 5
    while limiter.queued != 1:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    limiter.release(first)
    t.join(5)
    counts = [(e.in_flight, e.queued) for e in recorder.of(LimiterChanged)]
    assert counts == [(1, 0), (1, 1), (1, 0), (0, 0)]


def test_retry_after_follows_observed_call_durations() -> None:
    """retry_after = rounds of calls ahead x mean call duration (EWMA, 1 s to start with)."""
    clock = FakeClock(0.0)
    limiter = Limiter("est", LimiterConfig(max_concurrency=2, max_queue=0), clock=clock)
    assert limiter.retry_after() == 0.5  # one round of 1 s shared by 2 slots
    for _ in range(2):
        acquired_at = limiter.acquire()
        clock.advance(6.0)
        limiter.release(acquired_at)
    assert limiter.retry_after() == pytest.approx((1.0 + 0.2 * 5.0 + 0.2 * (6 - 2.0)) / 2)
    a, b = limiter.acquire(), limiter.acquire()
    with pytest.raises(errors.LimiterRejectedError) as caught:
        limiter.acquire()
    assert caught.value.retry_after == pytest.approx(limiter.retry_after())
    limiter.release(a)
    limiter.release(b)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_queue": -1}, "max_queue"),
        ({"queue_timeout": 0}, "queue_timeout"),
    ],
)
def test_invalid_config_is_rejected(kwargs: dict[str, float], needle: str) -> None:
    """Out-of-range limits raise ConfigurationError naming the field."""
    with pytest.raises(errors.ConfigurationError, match=needle):
        LimiterConfig(**kwargs)  # type: ignore[arg-type]
