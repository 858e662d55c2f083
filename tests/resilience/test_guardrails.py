"""Agent-loop guardrails: soft warnings, hard limits, repeats, cycles and the run budget."""

from __future__ import annotations

import threading

import pytest
from resilience_helpers import FakeClock

from agent_runtime import errors
from agent_runtime.events import GuardrailTriggered
from agent_runtime.resilience import (
    BudgetConfig,
    GuardrailConfig,
    LoopGuard,
    RunBudget,
)


def guard(clock: FakeClock | None = None, budget: BudgetConfig | None = None, **config: object):  # type: ignore[no-untyped-def]
    """A LoopGuard with its own budget on ``clock``."""
    run_budget = RunBudget(budget or BudgetConfig(), clock=clock or FakeClock(), run_id="r1")
    return LoopGuard(GuardrailConfig(**config), budget=run_budget)  # type: ignore[arg-type]


def test_iteration_soft_then_hard_limit(recorder) -> None:
    """Iteration 8 of 10 warns once (soft 80 %); iteration 11 raises LoopLimitExceededError."""
    g = guard(max_iterations=10)
    notes = [g.iteration() for _ in range(10)]
    warned = [i + 1 for i, n in enumerate(notes) if n]
    assert warned == [8]
    (warning,) = notes[7]
    assert warning.limit == "iterations"
    assert "iteration 8 (2 left)" in str(warning)
    with pytest.raises(errors.LoopLimitExceededError) as caught:
        g.iteration()
    exc = caught.value
    assert (exc.limit, exc.value, exc.threshold, exc.run_id) == ("iterations", 11, 10, "r1")
    events = recorder.of(GuardrailTriggered)
    assert [(e.limit, e.hard) for e in events] == [("iterations", False), ("iterations", True)]
    assert g.warnings == (warning,)


def test_tool_call_soft_and_hard_limits() -> None:
    """Tool calls of the loop have their own soft and hard limits."""
    g = guard(max_tool_calls=5, soft_tool_calls=3, max_repeats=None, max_cycles=None)
    notes = [g.tool_call("search", {"q": i}) for i in range(5)]
    assert [bool(n) for n in notes] == [False, False, True, False, False]
    assert notes[2][0].limit == "tool_calls"
    with pytest.raises(errors.LoopLimitExceededError) as caught:
        g.tool_call("search", {"q": 99})
    assert caught.value.limit == "tool_calls"


def test_same_tool_same_arguments_n_times() -> None:
    """The third identical call warns, the fifth raises; argument order does not matter."""
    g = guard()
    assert g.tool_call("read", {"path": "a", "mode": "r"}) == ()
    assert g.tool_call("read", {"mode": "r", "path": "a"}) == ()
    (warning,) = g.tool_call("read", {"path": "a", "mode": "r"})
    assert warning.limit == "repeated_call"
    assert "exactly the same arguments 3 times" in str(warning)
    g.tool_call("read", {"path": "a", "mode": "r"})
    with pytest.raises(errors.LoopLimitExceededError) as caught:
        g.tool_call("read", {"path": "a", "mode": "r"})
    assert (caught.value.limit, caught.value.value, caught.value.threshold) == (
        "repeated_call",
        5,
        5,
    )


def test_different_arguments_are_progress() -> None:
    """The same tool with new arguments each time never trips the repeat check."""
    g = guard(max_cycles=None)
    for i in range(20):
        assert g.tool_call("read", {"path": f"file{i}"}) == ()


def test_a_b_a_cycle_warns_then_stops(recorder) -> None:
    """A -> B -> A -> B -> A warns (two rounds); a third round raises."""
    g = guard(max_repeats=None, soft_repeats=None)
    a, b = ("read", {"path": "x"}), ("write", {"path": "x", "text": "same"})
    assert g.tool_call(*a) == ()
    assert g.tool_call(*b) == ()
    assert g.tool_call(*a) == ()  # A -> B -> A once: normal (read, edit, read back)
    assert g.tool_call(*b) == ()
    (warning,) = g.tool_call(*a)
    assert warning.limit == "cycle"
    assert "read -> write -> read" in str(warning)
    assert "2 times" in str(warning)
    g.tool_call(*b)
    with pytest.raises(errors.LoopLimitExceededError) as caught:
        g.tool_call(*a)
    assert (caught.value.limit, caught.value.value, caught.value.threshold) == ("cycle", 3, 3)
    assert [e.hard for e in recorder.of(GuardrailTriggered) if e.limit == "cycle"] == [
        False,
        True,
    ]


def test_three_step_cycle() -> None:
    """A -> B -> C -> A repeated is a cycle of length 3."""
    g = guard(max_repeats=None, soft_repeats=None, soft_cycles=1, max_cycles=2)
    calls = [("a", 1), ("b", 2), ("c", 3)]
    for call in calls:
        assert g.tool_call(*call) == ()
    (warning,) = g.tool_call(*calls[0])
    assert "a -> b -> c -> a" in str(warning)
    g.tool_call(*calls[1])
    g.tool_call(*calls[2])
    with pytest.raises(errors.LoopLimitExceededError):
        g.tool_call(*calls[0])


def test_cycle_needs_identical_arguments() -> None:
    """Alternating read/write where every read has new arguments never makes a cycle."""
    g = guard(max_repeats=None, soft_repeats=None)
    for i in range(10):
        assert g.tool_call("read", {"v": i}) == ()
        assert g.tool_call("write", {"v": "same"}) == ()


def test_wall_clock_budget_soft_and_hard(recorder) -> None:
    """80 % of the time budget warns once; past it, BudgetExceededError."""
    clock = FakeClock(0)
    g = guard(clock, BudgetConfig(wall_clock=100))
    clock.advance(79)
    assert g.iteration() == ()
    clock.advance(1)
    (warning,) = g.iteration()
    assert warning.limit == "wall_clock"
    assert "20 s left" in str(warning)
    assert g.iteration() == ()  # warned once
    clock.advance(21)
    with pytest.raises(errors.BudgetExceededError) as caught:
        g.tool_call("x")
    exc = caught.value
    assert (exc.budget, exc.used, exc.allowed) == ("wall_clock", 101, 100)


def test_tool_call_budget_is_shared_by_loops_of_a_run() -> None:
    """Two loops share one run budget of 5 tool calls; the sixth call raises."""
    budget = RunBudget(BudgetConfig(tool_calls=5), clock=FakeClock())
    planner = LoopGuard(GuardrailConfig(max_repeats=None), budget=budget)
    worker = LoopGuard(GuardrailConfig(max_repeats=None), budget=budget)
    notes = []
    for i in range(5):
        notes.append((planner if i % 2 else worker).tool_call("t", i))
    assert [n[0].limit for n in notes if n] == ["tool_call_budget"]
    with pytest.raises(errors.BudgetExceededError) as caught:
        planner.tool_call("t", 99)
    assert (caught.value.budget, caught.value.used, caught.value.allowed) == ("tool_calls", 6, 5)
    assert budget.tool_calls == 6


def test_budget_is_thread_safe() -> None:
    """Loops in several threads charge one budget without losing counts."""
    budget = RunBudget(BudgetConfig(tool_calls=None), clock=FakeClock())

    def work() -> None:
        for _ in range(500):
            budget.charge_tool_call()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budget.tool_calls == 2000


def test_limits_can_be_switched_off() -> None:
    """None disables a limit: 200 iterations and identical calls pass."""
    g = guard(
        None,
        BudgetConfig(wall_clock=None, tool_calls=None),
        max_iterations=None,
        max_tool_calls=None,
        max_repeats=None,
        soft_repeats=None,
        max_cycles=None,
        soft_cycles=None,
    )
    for _ in range(200):
        assert g.iteration() == ()
        assert g.tool_call("same", {}) == ()
    assert (g.iterations, g.tool_calls) == (200, 200)


def test_unserialisable_arguments_are_compared_by_repr() -> None:
    """Arguments that JSON cannot encode still identify a repeated call."""
    g = guard(soft_repeats=2, max_repeats=3)
    arg = {1: object, "a": 2}
    g.tool_call("t", arg)
    assert g.tool_call("t", arg)[0].limit == "repeated_call"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"max_iterations": 0}, "max_iterations"),
        ({"soft_iterations": 9, "max_iterations": 5}, "soft_iterations"),
        ({"max_cycle_length": 1}, "max_cycle_length"),
        ({"soft_fraction": 0}, "soft_fraction"),
    ],
)
def test_invalid_guardrail_config(kwargs: dict[str, int], needle: str) -> None:
    """Inconsistent limits raise ConfigurationError naming the field."""
    with pytest.raises(errors.ConfigurationError, match=needle):
        GuardrailConfig(**kwargs)  # type: ignore[arg-type]


def test_invalid_budget_config() -> None:
    """A zero budget is a configuration error."""
    with pytest.raises(errors.ConfigurationError, match="wall_clock"):
        BudgetConfig(wall_clock=0)
    with pytest.raises(errors.ConfigurationError, match="tool_calls"):
        BudgetConfig(tool_calls=0)
