"""The fallback chain: order, per-alternative breakers, recorded outcomes, exhaustion."""

from __future__ import annotations

import asyncio

import pytest
from resilience_helpers import FakeClock, http_error

from agent_runtime import errors
from agent_runtime.events import FallbackServed
from agent_runtime.resilience import (
    Alternative,
    BreakerConfig,
    CircuitBreaker,
    FallbackChain,
)


def model(name: str, fail: BaseException | None = None):  # type: ignore[no-untyped-def]
    """A fake model endpoint that answers or raises."""
    calls: list[str] = []

    def ask(prompt: str) -> str:
        calls.append(prompt)
        if fail is not None:
            raise fail
        return f"{name}: {prompt}"

    ask.calls = calls  # type: ignore[attr-defined]
    return ask


def test_first_alternative_serves() -> None:
    """When A answers, B and C are not tried."""
    a, b = model("a"), model("b")
    chain = FallbackChain("answer", [Alternative("a", a), Alternative("b", b)])
    result = chain.call("hi")
    assert (result.value, result.served, result.fell_back) == ("a: hi", "a", False)
    assert [(o.name, o.outcome) for o in result.outcomes] == [("a", "served"), ("b", "not_tried")]
    assert b.calls == []  # type: ignore[attr-defined]


def test_falls_back_and_records_why(recorder) -> None:
    """A fails, B's breaker is open, C serves: the result says so and an event is emitted."""
    clock = FakeClock()
    b_breaker = CircuitBreaker("b", BreakerConfig(failure_threshold=1), clock=clock)
    b_breaker.open()
    b = model("b")
    chain = FallbackChain(
        "answer",
        [
            Alternative("a", model("a", http_error(503))),
            Alternative("b", b, breaker=b_breaker),
            Alternative("c", model("c")),
        ],
    )
    result = chain.call("hi")
    assert result.value == "c: hi"
    assert result.served == "c"
    assert result.fell_back
    outcomes = {o.name: o for o in result.outcomes}
    assert outcomes["a"].outcome == "failed"
    assert outcomes["a"].error_type == "HTTPStatusError"
    assert "503" in outcomes["a"].reason
    assert outcomes["b"].outcome == "skipped"
    assert outcomes["b"].error_type == "CircuitOpenError"
    assert "is open" in outcomes["b"].reason
    assert b.calls == []  # type: ignore[attr-defined]
    (event,) = recorder.of(FallbackServed)
    assert event.chain == "answer"
    assert event.served == "c"
    assert [name for name, _ in event.skipped] == ["a", "b"]


def test_breaker_of_each_alternative_counts_its_failures() -> None:
    """Each alternative's own breaker opens from its failures; later calls skip it."""
    clock = FakeClock()
    a_breaker = CircuitBreaker("a", BreakerConfig(failure_threshold=2), clock=clock)
    a = model("a", ConnectionError("a down"))
    chain = FallbackChain("answer", [Alternative("a", a, a_breaker), Alternative("b", model("b"))])
    for _ in range(3):
        assert chain.call("q").served == "b"
    assert len(a.calls) == 2  # type: ignore[attr-defined]
    assert a_breaker.status == "open"


def test_exhausted_chain_raises_with_every_outcome(recorder) -> None:
    """When nothing answers: FallbackExhaustedError with all outcomes, last error as cause."""
    last = TimeoutError("c slow")
    chain = FallbackChain(
        "answer",
        [
            Alternative("a", model("a", ValueError("a broken"))),
            Alternative("c", model("c", last)),
        ],
    )
    with pytest.raises(errors.FallbackExhaustedError) as caught:
        chain.call("hi")
    exc = caught.value
    assert [(o["name"], o["outcome"]) for o in exc.outcomes] == [("a", "failed"), ("c", "failed")]
    assert exc.__cause__ is last
    assert "no alternative answered" in str(exc)
    (event,) = recorder.of(FallbackServed)
    assert event.served is None


def test_errors_outside_fallback_on_propagate() -> None:
    """Only fallback_on errors move on; others are raised from the alternative at once."""
    b = model("b")
    chain = FallbackChain(
        "answer",
        [Alternative("a", model("a", KeyError("bug"))), Alternative("b", b)],
        fallback_on=(ConnectionError,),
    )
    with pytest.raises(KeyError):
        chain.call("hi")
    assert b.calls == []  # type: ignore[attr-defined]


async def test_async_chain_mixes_async_and_sync_alternatives() -> None:
    """call_async awaits async alternatives (through their breakers) and calls sync ones."""

    async def a(prompt: str) -> str:
        raise ConnectionError("a down")

    async def b(prompt: str) -> str:
        await asyncio.sleep(0)
        return f"b: {prompt}"

    chain = FallbackChain(
        "answer",
        [
            Alternative("a", a, breaker=CircuitBreaker("a-async")),
            Alternative("b", b, breaker=CircuitBreaker("b-async")),
            Alternative("c", model("c")),
        ],
    )
    result = await chain.call_async("hi")
    assert (result.value, result.served) == ("b: hi", "b")
    assert [o.outcome for o in result.outcomes] == ["failed", "served", "not_tried"]


def test_chain_validation() -> None:
    """A chain needs alternatives with distinct, non-empty names."""
    with pytest.raises(errors.ConfigurationError, match="needs an alternative"):
        FallbackChain("x", [])
    with pytest.raises(errors.ConfigurationError, match="duplicate"):
        FallbackChain("x", [Alternative("a", model("a")), Alternative("a", model("b"))])
    with pytest.raises(errors.ConfigurationError, match="non-empty name"):
        Alternative("", model("a"))


def test_outcome_as_dict() -> None:
    """Outcomes serialise for logs and the DLQ."""
    result = FallbackChain("x", [Alternative("a", model("a"))]).call("q")
    assert result.outcomes[0].as_dict() == {
        "name": "a",
        "outcome": "served",
        "reason": "",
        "error_type": None,
    }
