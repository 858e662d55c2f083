"""Retry drivers: run a call again per a :class:`RetryPolicy`, on tenacity.

The decision of whether, when and why to try again is :meth:`RetryPolicy.decide` (pure, shared
with the runtime's step loop). Tenacity executes it: its ``retry``, ``wait`` and ``stop``
callbacks all read one decision made per failed attempt, its ``before_sleep`` emits the
``RetryScheduled`` event and its ``retry_error_callback`` raises ``RetriesExhaustedError``. Tenacity
owns the loop, the sync/async split and the sleeping (``sleep=`` is injected, so tests never
sleep); this module adds the policy, the attempt history, per-attempt timeouts and the events.

Why a fresh ``Retrying``/``AsyncRetrying`` per call: tenacity keeps its ``statistics`` and its
per-iteration state on the controller object (thread-local, not task-local), so one controller
shared by concurrent calls corrupts both; two asyncio tasks on one thread interleave on the very
same state. A new controller is never shared.

Success costs no tenacity: the first attempt runs directly, and only when it fails is a fresh
controller engaged, whose first attempt replays that failure (so tenacity's loop sees attempt 1
fail and decides from there like any other). Building and running a controller costs 15 us sync
and 30 us async on the reference machine, more than the whole pipeline's budget for a call that
succeeds, which is nearly every call; on the failure path it is negligible next to the backoff.

Outcomes of a call:

* success: the value;
* a **non-retryable** error (rule 2 of the policy: a 400, a ``give_up_on`` type, an error the
  predicate rejects): the original exception, unchanged and at once, as a plain call would raise
  it, so ``except httpx.HTTPStatusError`` keeps working; when earlier attempts had failed, a note
  (PEP 678) lists them;
* retrying **stopped** (``max_attempts``, ``deadline``, ``repeated_error``):
  ``RetriesExhaustedError`` with the whole history in ``attempts`` and the last error as
  ``__cause__``; a policy of one attempt (``RetryPolicy.none()``) never retries, so its error is
  raised unchanged, as the runtime's step loop does;
* cancellation and other ``BaseException``\\ s propagate untouched and are never retried.

Per-attempt timeout (``RetryPolicy.attempt_timeout``): an async attempt is cancelled; a sync
attempt runs in a fresh daemon worker thread (in a copy of the caller's context, so the trace
context follows) and is abandoned at the deadline, with a warning that its thread may still be
running, because Python cannot kill a thread. Either way the attempt fails with
``StepTimeoutError`` (class ``timeout``: retried like any timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar, cast

from tenacity import AsyncRetrying, RetryCallState, Retrying

from agent_runtime import errors
from agent_runtime._threads import call_abandonable
from agent_runtime.events import AttemptScope, RetryScheduled, hooks
from agent_runtime.resilience.policy import AttemptRecord, RetryDecision, RetryPolicy

if TYPE_CHECKING:
    from agent_runtime.resilience.breaker import CircuitBreaker

__all__ = ["retry", "retry_call", "retry_call_async"]

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")

_log = logging.getLogger("agent_runtime.resilience.retry")
_NULL = contextlib.nullcontext()
_DEFAULT_POLICY = RetryPolicy()

_STOP_TEXT = {
    "max_attempts": "every allowed attempt failed; raise max_attempts or fix the dependency",
    "deadline": "the next attempt would start after the policy's deadline",
    "repeated_error": (
        "the same error came back on consecutive attempts, so it looks deterministic: "
        "retrying will not fix it, fix its cause"
    ),
}


class _Controller:
    """One call's retry state: its history and the current decision (never shared)."""

    __slots__ = (
        "breaker",
        "clock",
        "decision",
        "error",
        "history",
        "name",
        "policy",
        "rng",
        "run_id",
        "started_at",
    )

    def __init__(
        self,
        policy: RetryPolicy,
        name: str,
        clock: Callable[[], float],
        rng: random.Random | None,
        breaker: CircuitBreaker | None,
        run_id: str | None,
    ) -> None:
        self.policy = policy
        self.name = name
        self.clock = clock
        self.rng = rng
        self.breaker = breaker
        self.run_id = run_id
        self.history: list[AttemptRecord] = []
        self.started_at = clock()
        self.decision: RetryDecision | None = None
        self.error: BaseException | None = None

    @property
    def attempt(self) -> int:
        """The number of the attempt about to run (1-based)."""
        return len(self.history) + 1

    # -- tenacity callbacks ----------------------------------------------------------------

    def retry(self, state: RetryCallState) -> bool:
        """Decide after an attempt; True sends tenacity on to ``wait``/``stop``."""
        outcome = state.outcome
        if outcome is None or not outcome.failed:
            return False
        error = outcome.exception()
        if not isinstance(error, Exception):
            # Cancellation, KeyboardInterrupt, SystemExit: never retried, never recorded.
            return False
        if self.breaker is not None and isinstance(error, errors.CircuitOpenError):
            # The attempt's own breaker refused it: fail fast, do not wait for it here.
            if self.error is not None:
                error.__cause__ = self.error
            _note_history(error, self.history)
            return False
        now = self.clock()
        decision = self.policy.decide(
            error,
            self.history,
            step=self.name,
            now=now,
            started_at=self.started_at,
            rng=self.rng,
        )
        self.decision = decision
        self.error = error
        if decision.stop_reason == "non_retryable":
            _note_history(error, self.history)
            self.history.append(decision.record)
            return False
        self.history.append(decision.record)
        if decision.retry and self.breaker is not None:
            self._stop_if_breaker_opened(error, now + decision.delay)
        return True

    def _stop_if_breaker_opened(self, error: Exception, next_attempt_at: float) -> None:
        """Raise ``CircuitOpenError`` now when the next attempt would only be refused."""
        assert self.breaker is not None
        try:
            snap = self.breaker.snapshot()
        except Exception:  # the breaker fails open when its store is down; so do we
            return
        if snap.state == "open" and (snap.half_open_at or 0.0) > next_attempt_at:
            rejection = self.breaker.rejection(snap)
            _note_history(rejection, self.history)
            raise rejection from error

    def wait(self, state: RetryCallState) -> float:
        """Return the decided delay."""
        assert self.decision is not None
        return self.decision.delay

    def stop(self, state: RetryCallState) -> bool:
        """Return whether the decision was to stop."""
        assert self.decision is not None
        return not self.decision.retry

    def before_sleep(self, state: RetryCallState) -> None:
        """Emit ``RetryScheduled`` for the retry about to be waited for."""
        if not hooks.active:
            return
        record = self.history[-1]
        hooks.emit(
            RetryScheduled(
                step=self.name,
                attempt=record.attempt,
                delay_s=record.delay or 0.0,
                reason=record.error_class,
                error_type=record.error_type,
                message=record.message,
                run_id=self.run_id,
            )
        )

    def give_up(self, state: RetryCallState) -> NoReturn:
        """Raise ``RetriesExhaustedError`` with the history (tenacity's error callback)."""
        decision = self.decision
        assert decision is not None
        assert self.error is not None
        reason = decision.stop_reason or "max_attempts"
        last = self.history[-1]
        message = (
            f"{self.name!r} failed after {len(self.history)} attempt(s): "
            f"{_STOP_TEXT.get(reason, reason)}. Last error: {last.error_type}: "
            f"{last.message[:300]}. The attempts are in .attempts."
        )
        raise errors.RetriesExhaustedError(
            message,
            attempts=[record.as_dict() for record in self.history],
            reason=reason,
            run_id=self.run_id,
            step=self.name,
        ) from self.error

    # -- attempt scope -----------------------------------------------------------------------

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        """Return the ``AttemptScope`` context of the attempt about to run."""
        if not hooks.active:
            return _NULL
        return hooks.scope(AttemptScope(step=self.name, attempt=self.attempt, run_id=self.run_id))


def _note_history(error: BaseException, history: list[AttemptRecord]) -> None:
    if history:
        lines = ", ".join(f"#{r.attempt} {r.error_type} ({r.error_class})" for r in history)
        error.add_note(f"agent-runtime: not retried; earlier failed attempts: {lines}")


def _timeout_error(ctl: _Controller, timeout: float, how: str) -> errors.StepTimeoutError:
    return errors.StepTimeoutError(
        f"attempt {ctl.attempt} of {ctl.name!r} took longer than {timeout:g} s and was {how}; "
        "raise RetryPolicy(attempt_timeout=...) if the call legitimately needs longer",
        run_id=ctl.run_id,
        step=ctl.name,
        attempt=ctl.attempt,
        timeout=timeout,
    )


def _call_in_thread(
    ctl: _Controller, timeout: float, fn: Callable[..., T], args: Any, kwargs: Any
) -> T:
    """Run ``fn`` in a worker thread; abandon it after ``timeout`` seconds."""
    finished, value, thread = call_abandonable(
        fn, args, kwargs, timeout=timeout, name=f"agent-runtime-attempt-{ctl.name}-{ctl.attempt}"
    )
    if not finished:
        _log.warning(
            "attempt %d of %r exceeded its %.3g s timeout and was abandoned; its thread %r "
            "may still be running (Python cannot stop a thread)",
            ctl.attempt,
            ctl.name,
            timeout,
            thread,
        )
        raise _timeout_error(ctl, timeout, "abandoned (its thread may still be running)")
    return cast(T, value)


def _sync_attempt(
    ctl: _Controller,
    breaker: CircuitBreaker | None,
    fn: Callable[..., T],
    args: Any,
    kwargs: Any,
) -> T:
    timeout = ctl.policy.attempt_timeout
    with ctl.scope():
        if timeout is None:
            if breaker is None:
                return fn(*args, **kwargs)
            return breaker.call(fn, *args, **kwargs)
        if breaker is None:
            return _call_in_thread(ctl, timeout, fn, args, kwargs)
        result: T = breaker.call(_call_in_thread, ctl, timeout, fn, args, kwargs)
        return result


async def _timed_async(
    ctl: _Controller, seconds: float, fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any
) -> T:
    try:
        async with asyncio.timeout(seconds):
            return await fn(*args, **kwargs)
    except TimeoutError as exc:
        # asyncio.timeout turns only its own cancellation into TimeoutError; an outer
        # cancellation still propagates as CancelledError.
        raise _timeout_error(ctl, seconds, "cancelled") from exc


async def _async_attempt(
    ctl: _Controller,
    breaker: CircuitBreaker | None,
    fn: Callable[..., Awaitable[T]],
    args: Any,
    kwargs: Any,
) -> T:
    timeout = ctl.policy.attempt_timeout
    with ctl.scope():
        if timeout is None:
            if breaker is None:
                return await fn(*args, **kwargs)
            return await breaker.call_async(fn, *args, **kwargs)
        if breaker is None:
            return await _timed_async(ctl, timeout, fn, args, kwargs)
        return await breaker.call_async(_timed_async, ctl, timeout, fn, args, kwargs)


def _drive_sync(
    fn: Callable[..., T],
    args: Any,
    kwargs: Any,
    *,
    policy: RetryPolicy,
    name: str,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    rng: random.Random | None = None,
    breaker: CircuitBreaker | None = None,
    run_id: str | None = None,
) -> T:
    """Run ``fn`` under ``policy``; each attempt passes ``breaker`` when one is given.

    An open breaker stops the loop at once with ``CircuitOpenError`` (its ``__cause__`` the last
    attempt's error, if any): when an attempt is refused, and also right after the failure that
    opened it, instead of sleeping only to be refused. Failing fast is the breaker's point, and
    the caller (the fallback chain) moves on.
    """
    ctl = _Controller(policy, name, clock, rng, breaker, run_id)
    if policy.max_attempts == 1:
        return _sync_attempt(ctl, breaker, fn, args, kwargs)
    try:
        return _sync_attempt(ctl, breaker, fn, args, kwargs)
    except Exception as error:
        first = [error]
    retrying = Retrying(
        sleep=sleep,
        retry=ctl.retry,
        wait=ctl.wait,
        stop=ctl.stop,
        before_sleep=ctl.before_sleep,
        retry_error_callback=ctl.give_up,
    )
    return cast(T, retrying(_sync_replay, first, ctl, breaker, fn, args, kwargs))


def _sync_replay(
    first: list[Exception],
    ctl: _Controller,
    breaker: CircuitBreaker | None,
    fn: Callable[..., T],
    args: Any,
    kwargs: Any,
) -> T:
    """Tenacity's attempts: the first one replays the failure that made us engage tenacity."""
    if first:
        raise first.pop()
    return _sync_attempt(ctl, breaker, fn, args, kwargs)


async def _drive_async(
    fn: Callable[..., Awaitable[T]],
    args: Any,
    kwargs: Any,
    *,
    policy: RetryPolicy,
    name: str,
    sleep: Callable[[float], Awaitable[None]],
    clock: Callable[[], float],
    rng: random.Random | None = None,
    breaker: CircuitBreaker | None = None,
    run_id: str | None = None,
) -> T:
    """Async twin of :func:`_drive_sync`."""
    ctl = _Controller(policy, name, clock, rng, breaker, run_id)
    if policy.max_attempts == 1:
        return await _async_attempt(ctl, breaker, fn, args, kwargs)
    try:
        return await _async_attempt(ctl, breaker, fn, args, kwargs)
    except Exception as error:
        first = [error]
    retrying = AsyncRetrying(
        sleep=sleep,
        retry=ctl.retry,
        wait=ctl.wait,
        stop=ctl.stop,
        before_sleep=ctl.before_sleep,
        retry_error_callback=ctl.give_up,
    )
    result: T = await retrying(_async_replay, first, ctl, breaker, fn, args, kwargs)
    return result


async def _async_replay(
    first: list[Exception],
    ctl: _Controller,
    breaker: CircuitBreaker | None,
    fn: Callable[..., Awaitable[T]],
    args: Any,
    kwargs: Any,
) -> T:
    """Async twin of :func:`_sync_replay`."""
    if first:
        raise first.pop()
    return await _async_attempt(ctl, breaker, fn, args, kwargs)


def _name_of(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def retry_call(
    fn: Callable[..., T],
    /,
    *args: Any,
    policy: RetryPolicy | None = None,
    name: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
    rng: random.Random | None = None,
    **kwargs: Any,
) -> T:
    """Call ``fn(*args, **kwargs)`` and retry it per ``policy``.

    Args:
        fn: The function to call.
        *args: Its positional arguments.
        policy: The retry policy (default ``RetryPolicy()``).
        name: The call's name in fingerprints, events and errors (default: ``fn``'s name).
        sleep: How to wait between attempts (tests pass a recorder).
        clock: Epoch seconds now (for the history and the deadline).
        rng: Random source for the jitter.
        **kwargs: Its keyword arguments (``policy``, ``name``, ``sleep``, ``clock`` and ``rng``
            are taken by ``retry_call``: wrap ``fn`` in ``functools.partial`` to pass those).

    Returns:
        What ``fn`` returned.

    Raises:
        RetriesExhaustedError: Retrying stopped (max attempts, deadline, repeated error).
        Exception: A non-retryable error, unchanged (see the module docstring).
    """
    return _drive_sync(
        fn,
        args,
        kwargs,
        policy=policy or _DEFAULT_POLICY,
        name=name or _name_of(fn),
        sleep=sleep,
        clock=clock,
        rng=rng,
    )


async def retry_call_async(
    fn: Callable[..., Awaitable[T]],
    /,
    *args: Any,
    policy: RetryPolicy | None = None,
    name: str | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.time,
    rng: random.Random | None = None,
    **kwargs: Any,
) -> T:
    """Await ``fn(*args, **kwargs)`` and retry it per ``policy``.

    Args:
        fn: The coroutine function to call.
        *args: Its positional arguments.
        policy: The retry policy (default ``RetryPolicy()``).
        name: The call's name in fingerprints, events and errors (default: ``fn``'s name).
        sleep: How to wait between attempts (an async function; tests pass a recorder).
        clock: Epoch seconds now (for the history and the deadline).
        rng: Random source for the jitter.
        **kwargs: Its keyword arguments (the names above are reserved, as for
            :func:`retry_call`).

    Returns:
        What ``fn`` returned.

    Raises:
        RetriesExhaustedError: Retrying stopped (max attempts, deadline, repeated error).
        Exception: A non-retryable error, unchanged (see the module docstring).
    """
    return await _drive_async(
        fn,
        args,
        kwargs,
        policy=policy or _DEFAULT_POLICY,
        name=name or _name_of(fn),
        sleep=sleep,
        clock=clock,
        rng=rng,
    )


def retry(
    policy: RetryPolicy | None = None,
    *,
    name: str | None = None,
    sleep: Callable[[float], Any] | None = None,
    clock: Callable[[], float] = time.time,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function (sync or ``async def``) so every call is retried per ``policy``.

    Example::

        @retry(RetryPolicy.http())
        async def fetch(client: httpx.AsyncClient, url: str) -> str:
            response = await client.get(url)
            response.raise_for_status()
            return response.text

    Args:
        policy: The retry policy (default ``RetryPolicy()``).
        name: The call's name (default: the function's qualified name).
        sleep: How to wait between attempts: ``time.sleep``-like for a sync function, an async
            function for a coroutine function (defaults: ``time.sleep`` / ``asyncio.sleep``).
        clock: Epoch seconds now.

    Returns:
        A decorator that keeps the function's signature.
    """
    chosen = policy or _DEFAULT_POLICY

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        call_name = name or _name_of(fn)
        if inspect.iscoroutinefunction(fn):
            async_fn = cast(Callable[..., Coroutine[Any, Any, Any]], fn)
            async_sleep = cast(Callable[[float], Awaitable[None]], sleep or asyncio.sleep)

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await _drive_async(
                    async_fn,
                    args,
                    kwargs,
                    policy=chosen,
                    name=call_name,
                    sleep=async_sleep,
                    clock=clock,
                )

            return cast(Callable[P, R], async_wrapper)

        sync_sleep = cast(Callable[[float], None], sleep or time.sleep)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            return _drive_sync(
                fn, args, kwargs, policy=chosen, name=call_name, sleep=sync_sleep, clock=clock
            )

        return wrapper

    return decorate
