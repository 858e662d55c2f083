"""WarmPool bookkeeping: fill to target, hand out once, refill, retry failures, close."""

from __future__ import annotations

import itertools
import threading

import pytest

from agent_runtime.sandbox import WarmPool


class _Factory:
    """Creates numbered boxes; can be told to fail."""

    def __init__(self) -> None:
        self.counter = itertools.count(1)
        self.destroyed: list[int] = []
        self.fail = 0
        self.lock = threading.Lock()

    def create(self, key: str) -> int:
        with self.lock:
            if self.fail:
                self.fail -= 1
                raise RuntimeError("engine hiccup")
            return next(self.counter)

    def destroy(self, box: int) -> None:
        with self.lock:
            self.destroyed.append(box)


def test_pool_fills_hands_out_once_and_refills() -> None:
    """Taken boxes are never handed out again and the pool refills to its target."""
    factory = _Factory()
    pool: WarmPool[str, int] = WarmPool(factory.create, factory.destroy)
    pool.set_target("k", 2)
    assert pool.wait_ready("k", 2, timeout=5)
    taken = {pool.take("k"), pool.take("k")}
    assert None not in taken
    assert pool.wait_ready("k", 2, timeout=5)
    again = {pool.take("k"), pool.take("k")}
    assert taken.isdisjoint(again)
    assert pool.created >= 4
    pool.close()
    assert len(factory.destroyed) <= 2


def test_pool_take_returns_none_for_unknown_or_empty_key() -> None:
    """With nothing ready the caller gets None (and starts a cold sandbox)."""
    factory = _Factory()
    pool: WarmPool[str, int] = WarmPool(factory.create, factory.destroy)
    assert pool.take("nothing") is None
    pool.close()


def test_pool_retries_failed_starts_with_backoff_without_sleeping() -> None:
    """A failing create is retried after the injected wait and the error is reported."""
    factory = _Factory()
    factory.fail = 2
    waits: list[float] = []

    def fake_wait(event: threading.Event, timeout: float) -> bool:
        waits.append(timeout)
        return event.is_set()

    pool: WarmPool[str, int] = WarmPool(
        factory.create, factory.destroy, retry_delay=1.0, wait=fake_wait
    )
    pool.set_target("k", 1)
    assert pool.wait_ready("k", 1, timeout=5)
    assert waits == [1.0, 2.0]
    assert pool.last_error("k") is None
    pool.close()


def test_pool_close_destroys_ready_boxes_and_stops() -> None:
    """Closing destroys what is ready and later targets are ignored."""
    factory = _Factory()
    pool: WarmPool[str, int] = WarmPool(factory.create, factory.destroy)
    pool.set_target("k", 3)
    assert pool.wait_ready("k", 3, timeout=5)
    pool.close()
    assert sorted(factory.destroyed) == [1, 2, 3]
    pool.set_target("k", 3)
    assert pool.take("k") is None
    assert not pool.wait_ready("k", 1, timeout=0.1)


@pytest.mark.parametrize("target", [0, -3])
def test_pool_zero_target_creates_nothing(target: int) -> None:
    """A zero (or negative) target starts nothing."""
    factory = _Factory()
    pool: WarmPool[str, int] = WarmPool(factory.create, factory.destroy)
    pool.set_target("k", target)
    assert not pool.wait_ready("k", 1, timeout=0.2)
    assert pool.created == 0
    pool.close()
