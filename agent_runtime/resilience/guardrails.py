"""Tool-loop guardrails: stop an agent loop that runs away, warn it before that.

An agent loop calls :meth:`LoopGuard.iteration` at the top of each turn and
:meth:`LoopGuard.tool_call` before running each tool. Both return the *warnings* that have just
become due (soft limits), worded for the model: put them into its next prompt so it can change
course. A *hard* limit raises instead: ``LoopLimitExceededError`` for a loop limit,
``BudgetExceededError`` for the run's budget. Every soft or hard trip emits
``GuardrailTriggered``; each soft warning is given once.

What is watched:

* **iterations** and **tool calls** of this loop (soft and hard limits);
* **repeated calls**: the same tool with the same arguments (compared as canonical JSON) N
  times in this loop;
* **cycles**: the agent goes round the same sequence of calls, like A -> B -> A. A cycle of
  length ``p`` (2 to ``max_cycle_length`` distinct steps) is counted in *completions*: each time
  the agent comes back to where the cycle started. ``A, B, A`` completes the cycle A -> B -> A
  once, ``A, B, A, B, A`` twice. Tools and arguments must both match, so reading a file, editing
  it and reading it again with different content in between is not a cycle; only identical
  calls are;
* the **run budget** (:class:`RunBudget`): wall-clock seconds since the run started and tool
  calls across every loop of the run (share one budget among a run's loops and sub-agents).

Example::

    guard = LoopGuard(GuardrailConfig(max_iterations=30), budget=RunBudget(BudgetConfig(600)))
    while True:
        notes = guard.iteration()
        reply = model.chat(messages + [{"role": "system", "content": str(n)} for n in notes])
        for call in reply.tool_calls:
            notes = guard.tool_call(call.name, call.arguments)
            ...
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from agent_runtime import errors
from agent_runtime.events import GuardrailTriggered, hooks

__all__ = [
    "DEFAULT_MAX_CYCLES",
    "DEFAULT_MAX_CYCLE_LENGTH",
    "DEFAULT_MAX_ITERATIONS",
    "DEFAULT_MAX_REPEATS",
    "DEFAULT_MAX_TOOL_CALLS",
    "DEFAULT_SOFT_CYCLES",
    "DEFAULT_SOFT_FRACTION",
    "DEFAULT_SOFT_REPEATS",
    "DEFAULT_TOOL_CALL_BUDGET",
    "DEFAULT_WALL_CLOCK_BUDGET",
    "BudgetConfig",
    "GuardrailConfig",
    "GuardrailWarning",
    "LoopGuard",
    "RunBudget",
]

DEFAULT_MAX_ITERATIONS: Final = 50
DEFAULT_MAX_TOOL_CALLS: Final = 100
DEFAULT_SOFT_FRACTION: Final = 0.8
DEFAULT_SOFT_REPEATS: Final = 3
DEFAULT_MAX_REPEATS: Final = 5
DEFAULT_SOFT_CYCLES: Final = 2
DEFAULT_MAX_CYCLES: Final = 3
DEFAULT_MAX_CYCLE_LENGTH: Final = 4
DEFAULT_WALL_CLOCK_BUDGET: Final = 900.0
DEFAULT_TOOL_CALL_BUDGET: Final = 500


def _soft(explicit: int | None, hard: int | None, fraction: float) -> int | None:
    if explicit is not None:
        return explicit
    if hard is None:
        return None
    return max(1, int(hard * fraction))


def _check_pair(soft: int | None, hard: int | None, what: str, problems: list[str]) -> None:
    if hard is not None and hard < 1:
        problems.append(f"max_{what} must be >= 1 or None, got {hard}")
    if soft is not None and soft < 1:
        problems.append(f"soft_{what} must be >= 1 or None, got {soft}")
    if soft is not None and hard is not None and soft > hard:
        problems.append(f"soft_{what} ({soft}) must not exceed max_{what} ({hard})")


@dataclass(frozen=True, slots=True)
class GuardrailConfig:
    """Limits of one agent loop. ``None`` switches a limit off.

    Args:
        max_iterations: Hard limit: iteration ``max_iterations + 1`` raises.
        soft_iterations: Warn at this iteration (default ``soft_fraction`` of the hard limit).
        max_tool_calls: Hard limit on tool calls of this loop.
        soft_tool_calls: Warn at this tool call (default ``soft_fraction`` of the hard limit).
        max_repeats: The same tool with the same arguments this many times raises.
        soft_repeats: ... this many times warns.
        max_cycles: A cycle completed this many times in a row raises.
        soft_cycles: ... this many times warns.
        max_cycle_length: Longest cycle looked for (distinct steps before coming back).
        soft_fraction: Fraction of a hard limit at which its default soft limit sits.

    Raises:
        ConfigurationError: When a value is out of range.
    """

    max_iterations: int | None = DEFAULT_MAX_ITERATIONS
    soft_iterations: int | None = None
    max_tool_calls: int | None = DEFAULT_MAX_TOOL_CALLS
    soft_tool_calls: int | None = None
    max_repeats: int | None = DEFAULT_MAX_REPEATS
    soft_repeats: int | None = DEFAULT_SOFT_REPEATS
    max_cycles: int | None = DEFAULT_MAX_CYCLES
    soft_cycles: int | None = DEFAULT_SOFT_CYCLES
    max_cycle_length: int = DEFAULT_MAX_CYCLE_LENGTH
    soft_fraction: float = DEFAULT_SOFT_FRACTION

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not 0 < self.soft_fraction <= 1:
            problems.append(f"soft_fraction must be in (0, 1], got {self.soft_fraction}")
        for what in ("iterations", "tool_calls", "repeats", "cycles"):
            _check_pair(getattr(self, f"soft_{what}"), getattr(self, f"max_{what}"), what, problems)
        if self.max_cycle_length < 2:
            problems.append(f"max_cycle_length must be >= 2, got {self.max_cycle_length}")
        if problems:
            raise errors.ConfigurationError("invalid GuardrailConfig: " + "; ".join(problems))

    @property
    def effective_soft_iterations(self) -> int | None:
        """The iteration at which the soft warning fires."""
        return _soft(self.soft_iterations, self.max_iterations, self.soft_fraction)

    @property
    def effective_soft_tool_calls(self) -> int | None:
        """The tool call at which the soft warning fires."""
        return _soft(self.soft_tool_calls, self.max_tool_calls, self.soft_fraction)


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    """A run's budget, shared by all its loops. ``None`` switches a budget off.

    Args:
        wall_clock: Seconds since the budget was created.
        tool_calls: Tool calls across every loop of the run.
        soft_fraction: Warn when this fraction of a budget is used.

    Raises:
        ConfigurationError: When a value is out of range.
    """

    wall_clock: float | None = DEFAULT_WALL_CLOCK_BUDGET
    tool_calls: int | None = DEFAULT_TOOL_CALL_BUDGET
    soft_fraction: float = DEFAULT_SOFT_FRACTION

    def __post_init__(self) -> None:
        problems = []
        if self.wall_clock is not None and not self.wall_clock > 0:
            problems.append(f"wall_clock must be > 0 seconds or None, got {self.wall_clock}")
        if self.tool_calls is not None and self.tool_calls < 1:
            problems.append(f"tool_calls must be >= 1 or None, got {self.tool_calls}")
        if not 0 < self.soft_fraction <= 1:
            problems.append(f"soft_fraction must be in (0, 1], got {self.soft_fraction}")
        if problems:
            raise errors.ConfigurationError("invalid BudgetConfig: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class GuardrailWarning:
    """A soft limit reached: a message for the agent (``str()`` gives it).

    Attributes:
        limit: ``iterations``, ``tool_calls``, ``repeated_call``, ``cycle``, ``wall_clock`` or
            ``tool_call_budget``.
        message: What happened and what to do, addressed to the model.
        value: The count (or seconds) reached.
        threshold: The soft limit.
    """

    limit: str
    message: str
    value: float
    threshold: float

    def __str__(self) -> str:
        return self.message


def _trip(
    limit: str, value: float, threshold: float, hard: bool, detail: str, run_id: str | None
) -> None:
    if hooks.active:
        hooks.emit(
            GuardrailTriggered(
                limit=limit,
                value=value,
                threshold=threshold,
                hard=hard,
                detail=detail,
                run_id=run_id,
            )
        )


class RunBudget:
    """The wall-clock and tool-call budget of one run (thread-safe; share it across loops).

    Args:
        config: The budget.
        clock: Monotonic seconds (the budget starts now).
        run_id: The run, for events and errors.
    """

    def __init__(
        self,
        config: BudgetConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        run_id: str | None = None,
    ) -> None:
        self.config = config or BudgetConfig()
        self.clock = clock
        self.run_id = run_id
        self._started = clock()
        self._tool_calls = 0
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    @property
    def elapsed(self) -> float:
        """Seconds since the budget started."""
        return self.clock() - self._started

    @property
    def tool_calls(self) -> int:
        """Tool calls charged so far."""
        return self._tool_calls

    def check(self) -> tuple[GuardrailWarning, ...]:
        """Check the wall-clock budget.

        Returns:
            The warning that became due, if any.

        Raises:
            BudgetExceededError: The wall-clock budget is spent.
        """
        allowed = self.config.wall_clock
        if allowed is None:
            return ()
        used = self.elapsed
        if used > allowed:
            detail = f"the run used {used:.1f} s of its {allowed:g} s wall-clock budget"
            _trip("wall_clock", used, allowed, True, detail, self.run_id)
            raise errors.BudgetExceededError(
                f"{detail}; the loop was stopped. Raise BudgetConfig(wall_clock=...) if the "
                "task legitimately needs longer.",
                budget="wall_clock",
                used=used,
                allowed=allowed,
                run_id=self.run_id,
            )
        soft = allowed * self.config.soft_fraction
        if used >= soft:
            with self._lock:
                if "wall_clock" in self._warned:
                    return ()
                self._warned.add("wall_clock")
            detail = f"{used:.0f} s of the {allowed:g} s time budget used"
            _trip("wall_clock", used, soft, False, detail, self.run_id)
            return (
                GuardrailWarning(
                    "wall_clock",
                    f"Guardrail: {detail}; {allowed - used:.0f} s left. Finish the task now: "
                    "give your best answer with what you have.",
                    used,
                    soft,
                ),
            )
        return ()

    def charge_tool_call(self) -> tuple[GuardrailWarning, ...]:
        """Count one tool call against the budget (and check the wall clock).

        Returns:
            Warnings that became due.

        Raises:
            BudgetExceededError: A budget is spent.
        """
        notes = self.check()
        allowed = self.config.tool_calls
        with self._lock:
            self._tool_calls += 1
            used = self._tool_calls
            if allowed is None:
                return notes
            soft = max(1, int(allowed * self.config.soft_fraction))
            warn = used >= soft and used <= allowed and "tool_calls" not in self._warned
            if warn:
                self._warned.add("tool_calls")
        if used > allowed:
            detail = f"the run made {used} tool calls; its budget is {allowed}"
            _trip("tool_call_budget", used, allowed, True, detail, self.run_id)
            raise errors.BudgetExceededError(
                f"{detail}; the loop was stopped. Raise BudgetConfig(tool_calls=...) if the "
                "task legitimately needs more.",
                budget="tool_calls",
                used=used,
                allowed=allowed,
                run_id=self.run_id,
            )
        if warn:
            detail = f"{used} of the run's {allowed} tool calls used"
            _trip("tool_call_budget", used, soft, False, detail, self.run_id)
            notes += (
                GuardrailWarning(
                    "tool_call_budget",
                    f"Guardrail: {detail}; {allowed - used} left. Use them for what is "
                    "essential and then answer.",
                    used,
                    soft,
                ),
            )
        return notes


def _canonical(arguments: Any) -> str:
    try:
        return json.dumps(arguments, sort_keys=True, separators=(",", ":"), default=repr)
    except (TypeError, ValueError):  # e.g. non-string dict keys mixed with strings
        return repr(arguments)


class LoopGuard:
    """Guardrails of one agent loop (see the module docstring). Not shared across threads.

    Args:
        config: The loop's limits.
        budget: The run's budget (default: a new one with ``BudgetConfig()`` defaults, starting
            now). Pass the same budget to every loop of a run.
        run_id: The run, for events and errors.
    """

    def __init__(
        self,
        config: GuardrailConfig | None = None,
        *,
        budget: RunBudget | None = None,
        run_id: str | None = None,
    ) -> None:
        self.config = config or GuardrailConfig()
        self.budget = budget if budget is not None else RunBudget(run_id=run_id)
        self.run_id = run_id if run_id is not None else self.budget.run_id
        self._iterations = 0
        self._tool_calls = 0
        self._seen: Counter[tuple[str, str]] = Counter()
        history = self.config.max_cycle_length * ((self.config.max_cycles or 1) + 1) + 1
        self._history: deque[tuple[str, str]] = deque(maxlen=history)
        self._warned: set[Any] = set()
        self._warnings: list[GuardrailWarning] = []

    @property
    def iterations(self) -> int:
        """Iterations so far."""
        return self._iterations

    @property
    def tool_calls(self) -> int:
        """Tool calls of this loop so far."""
        return self._tool_calls

    @property
    def warnings(self) -> tuple[GuardrailWarning, ...]:
        """Every warning given so far, oldest first."""
        return tuple(self._warnings)

    def iteration(self) -> tuple[GuardrailWarning, ...]:
        """Count one turn of the loop; call it at the top of each turn.

        Returns:
            Warnings that became due (show them to the model).

        Raises:
            LoopLimitExceededError: The iteration limit is passed.
            BudgetExceededError: The run's wall-clock budget is spent.
        """
        notes = list(self.budget.check())
        self._iterations += 1
        count = self._iterations
        hard = self.config.max_iterations
        if hard is not None and count > hard:
            self._hard(
                "iterations",
                count,
                hard,
                f"the loop reached iteration {count}; at most {hard} are allowed",
                "Raise GuardrailConfig(max_iterations=...) if the task legitimately needs more.",
            )
        soft = self.config.effective_soft_iterations
        if soft is not None and count == soft:
            left = f"{hard - count} left" if hard is not None else "no hard limit"
            notes.append(
                self._warn(
                    "iterations",
                    count,
                    soft,
                    f"Guardrail: this is iteration {count} ({left}). Converge: give your answer "
                    "soon instead of exploring further.",
                )
            )
        return self._record(notes)

    def tool_call(self, name: str, arguments: Any = None) -> tuple[GuardrailWarning, ...]:
        """Count one tool call; call it *before* running the tool.

        Args:
            name: The tool's name.
            arguments: Its arguments (any JSON-like value; compared canonically).

        Returns:
            Warnings that became due (show them to the model).

        Raises:
            LoopLimitExceededError: A loop limit is hit (tool calls, repeated call, cycle);
                the tool should not be run.
            BudgetExceededError: The run's budget is spent.
        """
        notes = list(self.budget.charge_tool_call())
        self._tool_calls += 1
        key = (name, hashlib.blake2b(_canonical(arguments).encode(), digest_size=8).hexdigest())
        self._history.append(key)
        self._seen[key] += 1
        notes += self._check_tool_calls()
        notes += self._check_repeats(name, self._seen[key], key)
        notes += self._check_cycle()
        return self._record(notes)

    # -- checks ---------------------------------------------------------------------------------

    def _check_tool_calls(self) -> list[GuardrailWarning]:
        count = self._tool_calls
        hard = self.config.max_tool_calls
        if hard is not None and count > hard:
            self._hard(
                "tool_calls",
                count,
                hard,
                f"the loop made {count} tool calls; at most {hard} are allowed",
                "Raise GuardrailConfig(max_tool_calls=...) if the task legitimately needs more.",
            )
        soft = self.config.effective_soft_tool_calls
        if soft is not None and count == soft:
            left = f"{hard - count} left" if hard is not None else "no hard limit"
            return [
                self._warn(
                    "tool_calls",
                    count,
                    soft,
                    f"Guardrail: {count} tool calls made ({left}). Use the results you have; "
                    "call tools only for what is still missing.",
                )
            ]
        return []

    def _check_repeats(self, name: str, count: int, key: tuple[str, str]) -> list[GuardrailWarning]:
        hard = self.config.max_repeats
        if hard is not None and count >= hard:
            self._hard(
                "repeated_call",
                count,
                hard,
                f"tool {name!r} was called {count} times with the same arguments",
                "The agent is stuck repeating itself; look at its prompt or its tool results.",
            )
        soft = self.config.soft_repeats
        if soft is not None and count == soft and ("repeat", key) not in self._warned:
            self._warned.add(("repeat", key))
            return [
                self._warn(
                    "repeated_call",
                    count,
                    soft,
                    f"Guardrail: you called {name} with exactly the same arguments {count} "
                    "times; the result will not change. Use the result you already have or "
                    f"change the arguments (at {hard} identical calls the run is stopped)."
                    if hard is not None
                    else f"Guardrail: you called {name} with exactly the same arguments "
                    f"{count} times; the result will not change.",
                )
            ]
        return []

    def _cycle(self) -> tuple[int, int] | None:
        """Return (length, completions) of the cycle the last call continues, if any."""
        calls = list(self._history)
        last = len(calls) - 1
        for length in range(2, self.config.max_cycle_length + 1):
            if last - length < 0 or calls[last] != calls[last - length]:
                continue
            if len(set(calls[last - length : last])) < 2:
                continue  # one call repeated back to back: the repeat check's business
            run = 0
            while last - run - length >= 0 and calls[last - run] == calls[last - run - length]:
                run += 1
            # run = calls that repeat the call ``length`` before them; every ``length`` of
            # them completes the cycle once more (A,B,A -> 1; A,B,A,B,A -> 2).
            if run % length != 1:
                return None  # mid-cycle: counted when it comes back to its start
            return length, (run + length - 1) // length
        return None

    def _check_cycle(self) -> list[GuardrailWarning]:
        found = self._cycle()
        if found is None:
            return []
        length, completions = found
        steps = list(self._history)[-length - 1 :]
        path = " -> ".join(name for name, _ in steps)
        hard = self.config.max_cycles
        if hard is not None and completions >= hard:
            self._hard(
                "cycle",
                completions,
                hard,
                f"the agent went round the cycle {path} {completions} times in a row",
                "The agent is looping between the same calls; look at its prompt or tools.",
            )
        soft = self.config.soft_cycles
        if soft is not None and completions == soft:
            return [
                self._warn(
                    "cycle",
                    completions,
                    soft,
                    f"Guardrail: you are going in circles ({path}, {completions} times with "
                    "the same arguments). Stop and try a different approach"
                    + (f" (at {hard} rounds the run is stopped)." if hard is not None else "."),
                )
            ]
        return []

    # -- helpers ----------------------------------------------------------------------------------

    def _warn(self, limit: str, value: int, threshold: int, message: str) -> GuardrailWarning:
        _trip(limit, value, threshold, False, message, self.run_id)
        return GuardrailWarning(limit, message, value, threshold)

    def _hard(self, limit: str, value: int, threshold: int, detail: str, advice: str) -> None:
        _trip(limit, value, threshold, True, detail, self.run_id)
        raise errors.LoopLimitExceededError(
            f"{detail}; the loop was stopped. {advice}",
            limit=limit,
            value=value,
            threshold=threshold,
            run_id=self.run_id,
        )

    def _record(self, notes: list[GuardrailWarning]) -> tuple[GuardrailWarning, ...]:
        self._warnings.extend(notes)
        return tuple(notes)
