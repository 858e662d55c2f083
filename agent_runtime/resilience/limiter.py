"""Concurrency limiter: at most N calls at once, a bounded FIFO queue behind them, then refusal.

Modelled on the JavaScript library Bottleneck's ``maxConcurrent`` with a bounded queue: up to
``max_concurrency`` calls hold a slot; up to ``max_queue`` more wait in line for at most
``queue_timeout`` seconds; anything beyond is refused at once with ``LimiterRejectedError``
(reason ``queue_full``), and a call that waited too long is refused with reason
``queue_timeout``. The service maps the refusal to HTTP 503 with ``Retry-After``.

One limiter serves threads and asyncio tasks alike (and several event loops): its bookkeeping
sits under a ``threading.Lock`` held for a few instructions, never while anyone waits. A waiting
thread blocks on its own ``threading.Event``; a waiting task awaits a future of its own loop,
resolved with ``call_soon_threadsafe``. Either kind joins the same FIFO line.

Fair: a released slot is handed straight to the head of the line (the slot never becomes free
in between), so a newcomer cannot overtake anyone waiting. Cancellation-safe: a waiter that
times out or is cancelled leaves the line under the lock; if the slot was handed to it in that
very instant, it passes the slot on (cancelled) or keeps it (timed out), so no slot leaks.

``retry_after`` on a refusal estimates when trying again makes sense: the time the calls ahead
need, ``ceil(queued / max_concurrency)`` rounds of the observed mean call duration (an
exponentially weighted average; 1 s until a call has finished), at least one round divided by
``max_concurrency``.

Events: ``LimiterChanged`` (in-flight and queued counts, for gauges) on every change, emitted
under the lock so gauges never see counts out of order; ``LimiterRejected`` per refusal;
``LimiterWaitScope`` around the time a call spends queued (calls that get a slot at once do
not wait and open no scope).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from agent_runtime import errors
from agent_runtime.events import LimiterChanged, LimiterRejected, LimiterWaitScope, hooks

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_QUEUE_TIMEOUT",
    "Limiter",
    "LimiterConfig",
]

T = TypeVar("T")

DEFAULT_MAX_CONCURRENCY: Final = 5
DEFAULT_MAX_QUEUE: Final = 20
DEFAULT_QUEUE_TIMEOUT: Final = 30.0

_INITIAL_HOLD_ESTIMATE: Final = 1.0
_EWMA_WEIGHT: Final = 0.2


@dataclass(frozen=True, slots=True)
class LimiterConfig:
    """Limits of a :class:`Limiter`.

    Args:
        max_concurrency: Calls that may run at once.
        max_queue: Calls that may wait for a slot (0: refuse as soon as all slots are taken).
        queue_timeout: Seconds a call may wait in the queue before it is refused.

    Raises:
        ConfigurationError: When a value is out of range.
    """

    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_queue: int = DEFAULT_MAX_QUEUE
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT

    def __post_init__(self) -> None:
        problems = []
        if self.max_concurrency < 1:
            problems.append(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.max_queue < 0:
            problems.append(f"max_queue must be >= 0, got {self.max_queue}")
        if not self.queue_timeout > 0:
            problems.append(f"queue_timeout must be > 0 seconds, got {self.queue_timeout}")
        if problems:
            raise errors.ConfigurationError("invalid LimiterConfig: " + "; ".join(problems))


class _Waiter:
    """One call waiting in line: a thread (``event``) or an asyncio task (``future``)."""

    __slots__ = ("event", "future", "granted", "loop")

    def __init__(self) -> None:
        self.granted = False
        self.event: threading.Event | None = None
        self.future: asyncio.Future[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> bool:
        """Tell the waiter it holds a slot; False if it can no longer be told (loop closed)."""
        if self.event is not None:
            self.event.set()
            return True
        assert self.loop is not None
        assert self.future is not None
        try:
            self.loop.call_soon_threadsafe(_resolve, self.future)
        except RuntimeError:  # its event loop is closed: nobody will ever take this slot
            return False
        return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Limiter:
    """A fair, cancellation-safe concurrency limiter for threads and asyncio tasks.

    Example::

        limiter = Limiter("llm", LimiterConfig(max_concurrency=5, max_queue=20))
        with limiter.slot():
            answer = client.complete(prompt)
        async with limiter.slot_async():
            answer = await async_client.complete(prompt)

    Args:
        name: The limiter's name in events and errors.
        config: Its limits.
        clock: Monotonic seconds (for the call-duration estimate behind ``retry_after``).

    Raises:
        ConfigurationError: When ``name`` is empty.
    """

    def __init__(
        self,
        name: str,
        config: LimiterConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not name:
            raise errors.ConfigurationError("a limiter needs a non-empty name")
        self.name = name
        self.config = config or LimiterConfig()
        self.clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self._queue: collections.deque[_Waiter] = collections.deque()
        self._hold_estimate = _INITIAL_HOLD_ESTIMATE
        self._rejected = 0

    # -- introspection ---------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Calls holding a slot now."""
        return self._in_flight

    @property
    def queued(self) -> int:
        """Calls waiting for a slot now."""
        return len(self._queue)

    @property
    def rejected(self) -> int:
        """Calls refused since this limiter was made."""
        return self._rejected

    def retry_after(self) -> float:
        """Return the current estimate of when a refused call should try again.

        Returns:
            Seconds (see the module docstring for the formula).
        """
        with self._lock:
            return self._estimate(len(self._queue))

    # -- bookkeeping (all under self._lock) ---------------------------------------------------

    def _changed(self) -> None:
        if hooks.active:
            hooks.emit(
                LimiterChanged(
                    limiter=self.name, in_flight=self._in_flight, queued=len(self._queue)
                )
            )

    def _estimate(self, ahead: int) -> float:
        per_call = self._hold_estimate
        slots = self.config.max_concurrency
        return max(per_call / slots, per_call * math.ceil(ahead / slots))

    def _enter(self, make_waiter: Callable[[], _Waiter]) -> _Waiter | None:
        """Take a free slot (None) or a place in line (the waiter); refuse when full."""
        with self._lock:
            if self._in_flight < self.config.max_concurrency and not self._queue:
                self._in_flight += 1
                self._changed()
                return None
            if len(self._queue) >= self.config.max_queue:
                self._rejected += 1
                retry_after = self._estimate(len(self._queue))
                queued = len(self._queue)
            else:
                waiter = make_waiter()
                self._queue.append(waiter)
                self._changed()
                return waiter
        raise self._refuse(
            "queue_full",
            f"limiter {self.name!r} is saturated: {self.config.max_concurrency} calls running "
            f"and {queued} waiting (the queue holds {self.config.max_queue})",
            retry_after,
        )

    def _leave(self, waiter: _Waiter) -> bool:
        """Take ``waiter`` out of line; True if a slot had been handed to it meanwhile."""
        with self._lock:
            if waiter.granted:
                return True
            with contextlib.suppress(ValueError):
                self._queue.remove(waiter)
            self._changed()
            return False

    def _release(self, held: float) -> None:
        """Give the slot to the head of the line, or free it."""
        with self._lock:
            if held >= 0:
                self._hold_estimate += _EWMA_WEIGHT * (held - self._hold_estimate)
            while self._queue:
                waiter = self._queue.popleft()
                waiter.granted = True
                if waiter.wake():
                    self._changed()
                    return
                # Its loop is gone: nobody will use this slot; offer it to the next one.
            self._in_flight -= 1
            self._changed()

    def _timed_out(self, waited: float) -> errors.LimiterRejectedError:
        with self._lock:
            self._rejected += 1
            retry_after = self._estimate(len(self._queue))
        return self._refuse(
            "queue_timeout",
            f"limiter {self.name!r}: no slot became free within {waited:.3g} s "
            f"(queue_timeout {self.config.queue_timeout:g} s)",
            retry_after,
        )

    def _refuse(self, reason: str, what: str, retry_after: float) -> errors.LimiterRejectedError:
        if hooks.active:
            hooks.emit(LimiterRejected(limiter=self.name, reason=reason))
        return errors.LimiterRejectedError(
            f"{what}; the call was refused. Retry after about {retry_after:.1f} s, or raise "
            "LimiterConfig(max_concurrency/max_queue/queue_timeout) if the dependency can take "
            "more.",
            limiter=self.name,
            reason=reason,
            retry_after=retry_after,
        )

    # -- threads -----------------------------------------------------------------------------

    def acquire(self) -> float:
        """Wait for a slot (blocking the thread); pair with :meth:`release`.

        Returns:
            The monotonic time the slot was taken (pass it to :meth:`release`).

        Raises:
            LimiterRejectedError: The queue is full, or no slot came within ``queue_timeout``.
        """
        waiter = self._enter(_thread_waiter)
        if waiter is not None:
            self._wait_thread(waiter)
        return self.clock()

    def _wait_thread(self, waiter: _Waiter) -> None:
        assert waiter.event is not None
        timeout = self.config.queue_timeout
        started = time.monotonic()
        with hooks.scope(LimiterWaitScope(limiter=self.name)) if hooks.active else _NULL:
            try:
                got = waiter.event.wait(timeout)
            except BaseException:
                if self._leave(waiter):
                    self._release(-1.0)
                raise
        if not got and not self._leave(waiter):
            raise self._timed_out(time.monotonic() - started)

    def release(self, acquired_at: float | None = None) -> None:
        """Give back a slot taken with :meth:`acquire` (or :meth:`acquire_async`).

        Args:
            acquired_at: What ``acquire`` returned (feeds the call-duration estimate).
        """
        self._release(-1.0 if acquired_at is None else self.clock() - acquired_at)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a slot for the duration of the ``with`` block (threads).

        Yields:
            Nothing.

        Raises:
            LimiterRejectedError: On entry, when the call is refused.
        """
        acquired_at = self.acquire()
        try:
            yield
        finally:
            self.release(acquired_at)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` holding a slot.

        Args:
            fn: The function.
            *args: Its positional arguments.
            **kwargs: Its keyword arguments.

        Returns:
            What ``fn`` returned.

        Raises:
            LimiterRejectedError: When the call is refused (``fn`` was not called).
        """
        acquired_at = self.acquire()
        try:
            return fn(*args, **kwargs)
        finally:
            self.release(acquired_at)

    # -- asyncio -----------------------------------------------------------------------------

    async def acquire_async(self) -> float:
        """Wait for a slot without blocking the event loop; pair with :meth:`release`.

        Returns:
            The monotonic time the slot was taken.

        Raises:
            LimiterRejectedError: The queue is full, or no slot came within ``queue_timeout``.
        """
        waiter = self._enter(_task_waiter)
        if waiter is not None:
            await self._wait_task(waiter)
        return self.clock()

    async def _wait_task(self, waiter: _Waiter) -> None:
        assert waiter.future is not None
        started = time.monotonic()
        with hooks.scope(LimiterWaitScope(limiter=self.name)) if hooks.active else _NULL:
            try:
                async with asyncio.timeout(self.config.queue_timeout):
                    await waiter.future
            except TimeoutError:
                if not self._leave(waiter):
                    raise self._timed_out(time.monotonic() - started) from None
            except BaseException:
                # Cancelled (or worse) while waiting: never keep a slot nobody will release.
                if self._leave(waiter):
                    self._release(-1.0)
                raise

    @contextlib.asynccontextmanager
    async def slot_async(self) -> AsyncIterator[None]:
        """Hold a slot for the duration of the ``async with`` block.

        Yields:
            Nothing.

        Raises:
            LimiterRejectedError: On entry, when the call is refused.
        """
        acquired_at = await self.acquire_async()
        try:
            yield
        finally:
            self.release(acquired_at)

    async def call_async(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args, **kwargs)`` holding a slot.

        Args:
            fn: The coroutine function.
            *args: Its positional arguments.
            **kwargs: Its keyword arguments.

        Returns:
            What ``fn`` returned.

        Raises:
            LimiterRejectedError: When the call is refused (``fn`` was not called).
        """
        acquired_at = await self.acquire_async()
        try:
            return await fn(*args, **kwargs)
        finally:
            self.release(acquired_at)

    def __repr__(self) -> str:
        return (
            f"Limiter({self.name!r}, in_flight={self._in_flight}, queued={len(self._queue)}, "
            f"max_concurrency={self.config.max_concurrency}, max_queue={self.config.max_queue})"
        )


_NULL = contextlib.nullcontext()


def _thread_waiter() -> _Waiter:
    waiter = _Waiter()
    waiter.event = threading.Event()
    return waiter


def _task_waiter() -> _Waiter:
    waiter = _Waiter()
    waiter.loop = asyncio.get_running_loop()
    waiter.future = waiter.loop.create_future()
    return waiter
