"""Fallback chain: try ordered alternatives (model A, then B, then C) until one answers.

Each alternative may sit behind its own circuit breaker. An alternative whose breaker is open is
*skipped* without being called (and without waiting); one that raises is *failed*; the first
that returns *served*. The :class:`FallbackResult` carries the value and one
:class:`AlternativeOutcome` per alternative, so callers and logs can say which alternative
answered and why the ones before it did not. When none answers, ``FallbackExhaustedError``
carries the same outcomes and the last error as ``__cause__``. A ``FallbackServed`` event is
emitted either way (``served=None`` when the chain is exhausted).

Only exceptions matching ``fallback_on`` (default: every ``Exception``) move on to the next
alternative; anything else, and cancellation, propagates at once.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, cast

from agent_runtime import errors
from agent_runtime.events import FallbackServed, hooks

if TYPE_CHECKING:
    from agent_runtime.resilience.breaker import CircuitBreaker

__all__ = [
    "OUTCOMES",
    "Alternative",
    "AlternativeOutcome",
    "FallbackChain",
    "FallbackResult",
    "run_chain",
    "run_chain_async",
]

T = TypeVar("T")

OUTCOMES: Final = ("served", "failed", "skipped", "not_tried")


@dataclass(frozen=True, slots=True)
class Alternative(Generic[T]):
    """One way of getting the answer.

    Args:
        name: Its name in results, events and errors (e.g. ``"gpt-small"``).
        fn: The function (sync, or ``async def`` for :meth:`FallbackChain.call_async`); every
            alternative of a chain receives the same arguments.
        breaker: Its circuit breaker (None: none).

    Raises:
        ConfigurationError: When ``name`` is empty.
    """

    name: str
    fn: Callable[..., T] | Callable[..., Awaitable[T]]
    breaker: CircuitBreaker | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise errors.ConfigurationError("a fallback alternative needs a non-empty name")


@dataclass(frozen=True, slots=True)
class AlternativeOutcome:
    """What happened to one alternative in one call of a chain.

    Attributes:
        name: The alternative.
        outcome: ``served``, ``failed``, ``skipped`` (breaker open, not called) or
            ``not_tried`` (an earlier one served).
        reason: Why, in words (empty for ``served``).
        error_type: The exception type name for ``failed``/``skipped``.
    """

    name: str
    outcome: str
    reason: str = ""
    error_type: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return the outcome as a JSON-ready dict.

        Returns:
            ``name``, ``outcome``, ``reason`` and ``error_type``.
        """
        return {
            "name": self.name,
            "outcome": self.outcome,
            "reason": self.reason,
            "error_type": self.error_type,
        }


@dataclass(frozen=True, slots=True)
class FallbackResult(Generic[T]):
    """The answer of a fallback chain and how it was obtained.

    Attributes:
        value: What the serving alternative returned.
        served: The name of the alternative that served.
        outcomes: One outcome per alternative, in chain order.
    """

    value: T
    served: str
    outcomes: tuple[AlternativeOutcome, ...]

    @property
    def fell_back(self) -> bool:
        """Whether an alternative other than the first one served."""
        return bool(self.outcomes) and self.outcomes[0].name != self.served


def _reason(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


class _Run:
    """The bookkeeping of one call of a chain, made only once an alternative has missed."""

    __slots__ = ("chain", "last_error", "names", "outcomes")

    def __init__(self, chain: str, names: Sequence[str]) -> None:
        self.chain = chain
        self.names = names
        self.outcomes: list[AlternativeOutcome] = []
        self.last_error: BaseException | None = None

    def missed(self, name: str, error: Exception) -> None:
        # An open breaker that refused before any attempt: skipped. One that opened during
        # the alternative's attempts carries their last error as its cause: failed.
        skipped = isinstance(error, errors.CircuitOpenError) and error.__cause__ is None
        self.outcomes.append(
            AlternativeOutcome(
                name, "skipped" if skipped else "failed", _reason(error), type(error).__name__
            )
        )
        self.last_error = error

    def served(self, name: str) -> None:
        self.outcomes.append(AlternativeOutcome(name, "served"))
        done = len(self.outcomes)
        self.outcomes.extend(
            AlternativeOutcome(rest, "not_tried", f"{name!r} served") for rest in self.names[done:]
        )
        _emit(self.chain, name, self.outcomes)

    def exhausted(self) -> errors.FallbackExhaustedError:
        _emit(self.chain, None, self.outcomes)
        summary = "; ".join(f"{o.name}: {o.outcome} ({o.reason})" for o in self.outcomes)
        error = errors.FallbackExhaustedError(
            f"fallback chain {self.chain!r}: no alternative answered ({summary}). "
            "Check the dependencies named above; each outcome is in .outcomes.",
            outcomes=[o.as_dict() for o in self.outcomes],
        )
        error.__cause__ = self.last_error
        return error


def _emit(chain: str, served: str | None, outcomes: Sequence[AlternativeOutcome]) -> None:
    if hooks.active:
        hooks.emit(
            FallbackServed(
                chain=chain,
                served=served,
                skipped=tuple(
                    (o.name, f"{o.outcome}: {o.reason}")
                    for o in outcomes
                    if o.outcome in ("failed", "skipped")
                ),
            )
        )


def run_chain(
    chain: str,
    alternatives: Sequence[Alternative[T]],
    invoke: Callable[[Alternative[T]], T],
    fallback_on: tuple[type[Exception], ...] = (Exception,),
) -> tuple[T, str, list[AlternativeOutcome] | None]:
    """Try ``alternatives`` in order through ``invoke`` (the engine of :class:`FallbackChain`).

    Args:
        chain: The chain's name for events and errors.
        alternatives: The alternatives, first choice first.
        invoke: Calls one alternative and returns its value.
        fallback_on: Exception types that move on to the next alternative.

    Returns:
        The value, the name of the alternative that served, and the outcomes (None when the
        first alternative served: nothing else happened).

    Raises:
        FallbackExhaustedError: Every alternative failed or was skipped.
    """
    run: _Run | None = None
    for alt in alternatives:
        try:
            value = invoke(alt)
        except fallback_on as exc:
            if run is None:
                run = _Run(chain, [a.name for a in alternatives])
            run.missed(alt.name, exc)
            continue
        if run is None:
            _emit(chain, alt.name, ())
            return value, alt.name, None
        run.served(alt.name)
        return value, alt.name, run.outcomes
    assert run is not None
    raise run.exhausted()


async def run_chain_async(
    chain: str,
    alternatives: Sequence[Alternative[T]],
    invoke: Callable[[Alternative[T]], Awaitable[T]],
    fallback_on: tuple[type[Exception], ...] = (Exception,),
) -> tuple[T, str, list[AlternativeOutcome] | None]:
    """Async twin of :func:`run_chain`.

    Args:
        chain: The chain's name for events and errors.
        alternatives: The alternatives, first choice first.
        invoke: Awaits one alternative and returns its value.
        fallback_on: Exception types that move on to the next alternative.

    Returns:
        The value, the serving alternative's name, and the outcomes (None: the first served).

    Raises:
        FallbackExhaustedError: Every alternative failed or was skipped.
    """
    run: _Run | None = None
    for alt in alternatives:
        try:
            value = await invoke(alt)
        except fallback_on as exc:
            if run is None:
                run = _Run(chain, [a.name for a in alternatives])
            run.missed(alt.name, exc)
            continue
        if run is None:
            _emit(chain, alt.name, ())
            return value, alt.name, None
        run.served(alt.name)
        return value, alt.name, run.outcomes
    assert run is not None
    raise run.exhausted()


class FallbackChain(Generic[T]):
    """Ordered alternatives, each behind its own breaker (see the module docstring).

    Example::

        chain = FallbackChain("answer", [
            Alternative("model-a", ask_a, breaker=CircuitBreaker("model-a")),
            Alternative("model-b", ask_b, breaker=CircuitBreaker("model-b")),
            Alternative("canned", lambda prompt: "Sorry, try again later."),
        ])
        result = chain.call(prompt)
        result.value, result.served, result.outcomes

    Args:
        name: The chain's name in events and errors.
        alternatives: The alternatives, first choice first.
        fallback_on: Exception types that move on to the next alternative.

    Raises:
        ConfigurationError: No alternatives, or two with the same name.
    """

    def __init__(
        self,
        name: str,
        alternatives: Sequence[Alternative[T]],
        *,
        fallback_on: tuple[type[Exception], ...] = (Exception,),
    ) -> None:
        if not alternatives:
            raise errors.ConfigurationError(f"fallback chain {name!r} needs an alternative")
        names = [alt.name for alt in alternatives]
        if len(set(names)) != len(names):
            raise errors.ConfigurationError(
                f"fallback chain {name!r} has duplicate alternative names: {names}"
            )
        self.name = name
        self.alternatives = tuple(alternatives)
        self.fallback_on = fallback_on
        first = names[0]
        self._first_served = (
            AlternativeOutcome(first, "served"),
            *(AlternativeOutcome(rest, "not_tried", f"{first!r} served") for rest in names[1:]),
        )

    def call(self, *args: Any, **kwargs: Any) -> FallbackResult[T]:
        """Call the alternatives in order until one returns.

        Args:
            *args: Positional arguments for every alternative.
            **kwargs: Keyword arguments for every alternative.

        Returns:
            The value and the outcome of every alternative.

        Raises:
            FallbackExhaustedError: Every alternative failed or was skipped.
        """
        return self.run(lambda alt: _invoke_sync(alt, args, kwargs))

    async def call_async(self, *args: Any, **kwargs: Any) -> FallbackResult[T]:
        """Await the alternatives in order until one returns (sync ones are called directly).

        Args:
            *args: Positional arguments for every alternative.
            **kwargs: Keyword arguments for every alternative.

        Returns:
            The value and the outcome of every alternative.

        Raises:
            FallbackExhaustedError: Every alternative failed or was skipped.
        """
        return await self.run_async(lambda alt: _invoke_async(alt, args, kwargs))

    def run(self, invoke: Callable[[Alternative[T]], T]) -> FallbackResult[T]:
        """Run the chain with a custom way of invoking one alternative (sync).

        The resilience pipeline uses this to call each alternative through retry and its
        breaker.

        Args:
            invoke: Calls one alternative and returns its value.

        Returns:
            The value and the outcome of every alternative.

        Raises:
            FallbackExhaustedError: Every alternative failed or was skipped.
        """
        value, served, outcomes = run_chain(self.name, self.alternatives, invoke, self.fallback_on)
        return FallbackResult(value, served, self._outcomes(outcomes))

    async def run_async(
        self, invoke: Callable[[Alternative[T]], Awaitable[T]]
    ) -> FallbackResult[T]:
        """Async twin of :meth:`run`.

        Args:
            invoke: Awaits one alternative and returns its value.

        Returns:
            The value and the outcome of every alternative.

        Raises:
            FallbackExhaustedError: Every alternative failed or was skipped.
        """
        value, served, outcomes = await run_chain_async(
            self.name, self.alternatives, invoke, self.fallback_on
        )
        return FallbackResult(value, served, self._outcomes(outcomes))

    def _outcomes(
        self, outcomes: list[AlternativeOutcome] | None
    ) -> tuple[AlternativeOutcome, ...]:
        return self._first_served if outcomes is None else tuple(outcomes)


def _invoke_sync(alt: Alternative[T], args: Any, kwargs: Any) -> T:
    fn = cast(Callable[..., T], alt.fn)
    if alt.breaker is None:
        return fn(*args, **kwargs)
    return alt.breaker.call(fn, *args, **kwargs)


async def _invoke_async(alt: Alternative[T], args: Any, kwargs: Any) -> T:
    if inspect.iscoroutinefunction(alt.fn):
        afn = cast(Callable[..., Awaitable[T]], alt.fn)
        if alt.breaker is None:
            return await afn(*args, **kwargs)
        return await alt.breaker.call_async(afn, *args, **kwargs)
    return _invoke_sync(alt, args, kwargs)
