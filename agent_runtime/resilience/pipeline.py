"""The resilience pipeline: limiter -> breaker -> retry (per-attempt timeout) -> fallback.

One call of :func:`resilient_call` meets the layers in this order::

    limiter slot                                  1. admission: a slot, a place in line, or 503
      for alternative in (primary, *fallbacks):    4. fallback: next one when one fails
          breaker open? -> skip, no attempt        2. breaker: fail fast, no retry budget spent
          retry loop per policy                    3. retry with context, after each failure
              breaker.call(timeout(fn))               each attempt passes the breaker and has
                                                      its own timeout

Why this order:

1. **Limiter first (outermost).** It is admission control: a refused call must cost nothing,
   touch no breaker and spend no retry; that refusal is what the service turns into 503 with
   ``Retry-After``. The slot is held through retries and fallbacks, so the concurrency bound
   includes retries (retry storms are the classic amplifier of an overload) and a retrying call
   never loses its place to newcomers.
2. **Breaker before retry, and around each attempt.** An open breaker skips its alternative
   at once, without sleeping through backoff, so the fallback answers fast. Inside the loop each
   attempt is one call to the dependency: its outcome is what the breaker counts (a call with
   three failed attempts is three failures), and the half-open probe is a single request, not
   a whole retry loop. When the breaker opens mid-loop, the loop stops (``CircuitOpenError`` is
   not retried here) and the chain moves on.
3. **Retry inside the breaker's view, timeout inside the attempt.** A hung attempt becomes a
   ``StepTimeoutError`` that the breaker counts and the policy retries.
4. **Fallback last.** It is what answers when the rest has given up on an alternative; each
   alternative has its own breaker and the same retry policy.

Each layer can be switched off by a feature flag (:mod:`agent_runtime.flags`, read at every
call): ``limiter_enabled``, ``breaker_enabled``, ``retry_enabled`` (off: one attempt, timeout
kept, the original error raised), ``fallback_enabled`` (off: primary only). A layer that is off,
or not configured, is transparent: with only a primary, its error is raised as is rather than
wrapped in ``FallbackExhaustedError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

from agent_runtime import errors
from agent_runtime import flags as flags_module
from agent_runtime.flags import Flags
from agent_runtime.resilience.breaker import CircuitBreaker
from agent_runtime.resilience.fallback import Alternative, run_chain, run_chain_async
from agent_runtime.resilience.limiter import Limiter
from agent_runtime.resilience.policy import RetryPolicy
from agent_runtime.resilience.retry import (
    _async_attempt,
    _Controller,
    _drive_async,
    _drive_sync,
    _sync_attempt,
)

__all__ = ["resilient_call", "resilient_call_async"]

T = TypeVar("T")

_DEFAULT_POLICY = RetryPolicy()
_NULL = contextlib.nullcontext()


class _Plan:
    """Which layers apply to one call, decided from the flags before anything runs."""

    __slots__ = ("alternatives", "limiter", "policy", "retrying", "use_breakers")

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str,
        retry: RetryPolicy | None,
        breaker: CircuitBreaker | None,
        limiter: Limiter | None,
        fallbacks: Sequence[Alternative[Any]],
        flags: Flags,
    ) -> None:
        self.policy = retry or _DEFAULT_POLICY
        self.retrying = flags.retry_enabled and self.policy.max_attempts > 1
        self.use_breakers = flags.breaker_enabled
        self.limiter = limiter if flags.limiter_enabled else None
        primary = Alternative(name, fn, breaker)
        if fallbacks and flags.fallback_enabled:
            if any(alt.name == name for alt in fallbacks):
                raise errors.ConfigurationError(
                    f"resilient_call {name!r}: a fallback has the primary's name; name them apart"
                )
            self.alternatives: tuple[Alternative[Any], ...] = (primary, *fallbacks)
        else:
            self.alternatives = (primary,)

    def breaker_of(self, alt: Alternative[Any]) -> CircuitBreaker | None:
        return alt.breaker if self.use_breakers else None

    def single_policy(self) -> RetryPolicy:
        """The policy of a one-attempt call (retry off): keeps the attempt timeout."""
        return RetryPolicy(max_attempts=1, attempt_timeout=self.policy.attempt_timeout)


def _name_of(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def resilient_call(
    fn: Callable[..., T],
    /,
    *args: Any,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    breaker: CircuitBreaker | None = None,
    limiter: Limiter | None = None,
    fallbacks: Sequence[Alternative[T]] = (),
    flags: Flags | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
    rng: random.Random | None = None,
    **kwargs: Any,
) -> T:
    """Call ``fn(*args, **kwargs)`` through limiter, breaker, retry and fallback.

    Args:
        fn: The primary function.
        *args: Positional arguments (for the primary and every fallback).
        name: The primary's name in events, errors and fallback outcomes (default: ``fn``'s).
        retry: The retry policy for every alternative (default ``RetryPolicy()``;
            ``RetryPolicy.none()`` for a single attempt).
        breaker: The primary's circuit breaker (None: none).
        limiter: The limiter in front of the whole call (None: none).
        fallbacks: Alternatives tried in order when the primary fails or is skipped.
        flags: The feature flags (default: ``agent_runtime.flags.current()`` at call time).
        sleep: How to wait between attempts.
        clock: Epoch seconds now.
        rng: Random source for the jitter.
        **kwargs: Keyword arguments (for the primary and every fallback); the names above are
            reserved (wrap ``fn`` in ``functools.partial`` to pass those).

    Returns:
        What the serving alternative returned.

    Raises:
        ConfigurationError: A fallback has the primary's name.
        LimiterRejectedError: The limiter refused the call.
        FallbackExhaustedError: With fallbacks: none of the alternatives answered.
        CircuitOpenError: Without fallbacks: the primary's breaker is open.
        RetriesExhaustedError: Without fallbacks: retrying the primary stopped.
        Exception: Without fallbacks: the primary's non-retryable error, unchanged.
    """
    plan = _Plan(
        fn,
        name or _name_of(fn),
        retry,
        breaker,
        limiter,
        fallbacks,
        flags or flags_module.current(),
    )

    def invoke(alt: Alternative[Any]) -> Any:
        alt_fn = cast(Callable[..., Any], alt.fn)
        if not plan.retrying:
            ctl = _Controller(plan.single_policy(), alt.name, clock, None, None, None)
            return _sync_attempt(ctl, plan.breaker_of(alt), alt_fn, args, kwargs)
        return _drive_sync(
            alt_fn,
            args,
            kwargs,
            policy=plan.policy,
            name=alt.name,
            sleep=sleep,
            clock=clock,
            rng=rng,
            breaker=plan.breaker_of(alt),
        )

    with plan.limiter.slot() if plan.limiter is not None else _NULL:
        if len(plan.alternatives) == 1:
            return cast(T, invoke(plan.alternatives[0]))
        return cast(T, run_chain(plan.alternatives[0].name, plan.alternatives, invoke)[0])


async def resilient_call_async(
    fn: Callable[..., Awaitable[T]],
    /,
    *args: Any,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    breaker: CircuitBreaker | None = None,
    limiter: Limiter | None = None,
    fallbacks: Sequence[Alternative[T]] = (),
    flags: Flags | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.time,
    rng: random.Random | None = None,
    **kwargs: Any,
) -> T:
    """Await ``fn(*args, **kwargs)`` through limiter, breaker, retry and fallback.

    The async twin of :func:`resilient_call`; fallbacks must be ``async def`` functions.

    Args:
        fn: The primary coroutine function.
        *args: Positional arguments (for the primary and every fallback).
        name: The primary's name (default: ``fn``'s).
        retry: The retry policy for every alternative (default ``RetryPolicy()``).
        breaker: The primary's circuit breaker (None: none).
        limiter: The limiter in front of the whole call (None: none).
        fallbacks: Alternatives tried in order when the primary fails or is skipped.
        flags: The feature flags (default: ``agent_runtime.flags.current()`` at call time).
        sleep: How to wait between attempts (an async function).
        clock: Epoch seconds now.
        rng: Random source for the jitter.
        **kwargs: Keyword arguments (for the primary and every fallback); the names above are
            reserved (wrap ``fn`` in ``functools.partial`` to pass those).

    Returns:
        What the serving alternative returned.

    Raises:
        ConfigurationError: A fallback has the primary's name.
        LimiterRejectedError: The limiter refused the call.
        FallbackExhaustedError: With fallbacks: none of the alternatives answered.
        CircuitOpenError: Without fallbacks: the primary's breaker is open.
        RetriesExhaustedError: Without fallbacks: retrying the primary stopped.
        Exception: Without fallbacks: the primary's non-retryable error, unchanged.
    """
    plan = _Plan(
        fn,
        name or _name_of(fn),
        retry,
        breaker,
        limiter,
        fallbacks,
        flags or flags_module.current(),
    )

    async def invoke(alt: Alternative[Any]) -> Any:
        alt_fn = cast(Callable[..., Awaitable[Any]], alt.fn)
        if not plan.retrying:
            ctl = _Controller(plan.single_policy(), alt.name, clock, None, None, None)
            return await _async_attempt(ctl, plan.breaker_of(alt), alt_fn, args, kwargs)
        return await _drive_async(
            alt_fn,
            args,
            kwargs,
            policy=plan.policy,
            name=alt.name,
            sleep=sleep,
            clock=clock,
            rng=rng,
            breaker=plan.breaker_of(alt),
        )

    async with plan.limiter.slot_async() if plan.limiter is not None else _NULL:
        if len(plan.alternatives) == 1:
            return cast(T, await invoke(plan.alternatives[0]))
        result = await run_chain_async(plan.alternatives[0].name, plan.alternatives, invoke)
        return cast(T, result[0])
