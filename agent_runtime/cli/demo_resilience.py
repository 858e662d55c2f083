"""Scene 6 of ``agent-runtime demo``: circuit breaker, fallback, limiter, guardrails, flags.

* A support bot asks "model A" through a circuit breaker, with "model B" as its fallback. Model
  A answers 503: each question falls back to B (the run's ``fallback`` events say why), the
  breaker opens on the third failure and A is then skipped without being called. A comes back;
  after the breaker's short ``reset_timeout`` it half-opens, one probe goes through, succeeds,
  and the breaker closes: A answers again.
* A limiter (one call at a time, one waiting) refuses a third concurrent call at once with
  ``LimiterRejectedError`` instead of letting it pile up.
* A coding agent that goes round in circles (read_file -> run_tests -> read_file ...) gets a
  soft warning worded for the model, ignores it, and is stopped by ``LoopGuard`` with
  ``LoopLimitExceededError``; its run fails and lands in the dead-letter queue.
* Feature flags are reloaded without a restart; a broken flags file is refused and the flags in
  force stay.

Model A and B are local functions that stand in for model APIs (A raises a real
``httpx.HTTPStatusError`` for a 503, built without any network call), so the scene is the same
on every machine.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from agent_runtime import errors, flags
from agent_runtime.cli.demo_common import Checks, EventTap, say, wait_for
from agent_runtime.context import RunContext
from agent_runtime.events import BreakerStateChanged, GuardrailTriggered
from agent_runtime.resilience import (
    Alternative,
    BreakerConfig,
    CircuitBreaker,
    FallbackChain,
    GuardrailConfig,
    Limiter,
    LimiterConfig,
    LoopGuard,
    RetryPolicy,
)
from agent_runtime.runtime import Runtime, Workflow

__all__ = ["AGENT_WORKFLOW", "SUPPORT_WORKFLOW", "register", "scene_resilience"]

SUPPORT_WORKFLOW = "demo.support_bot"
AGENT_WORKFLOW = "demo.coding_agent"
RESET_TIMEOUT = 1.0

# The outside world of this scene, process-local: whether model A is up, and the breakers and
# chain every run of the support bot shares (a breaker protects a dependency, not a run).
_model_a_up = {"value": False}
_chain: dict[str, FallbackChain[dict[str, str]]] = {}


def ask_model_a(question: str) -> dict[str, str]:
    """Model A: the preferred model; answers 503 while it is down."""
    if not _model_a_up["value"]:
        request = httpx.Request("POST", "https://model-a.invalid/v1/chat")
        response = httpx.Response(503, request=request, text="overloaded")
        raise httpx.HTTPStatusError(
            "503 Service Unavailable from model A", request=request, response=response
        )
    return {"model": "model-a", "answer": f"A: {question.rstrip('?')}: see the help center."}


def ask_model_b(question: str) -> dict[str, str]:
    """Model B: the fallback model, always up."""
    return {"model": "model-b", "answer": f"B: {question.rstrip('?')}: a human will follow up."}


def support_bot(ctx: RunContext, questions: list[str]) -> list[dict[str, str]]:
    """Answer each question with model A, falling back to model B (one step per question)."""
    chain = _chain["answer"]
    return [
        ctx.step(ask_model_a, q, name=f"answer {i + 1}", fallback=chain, retry=RetryPolicy.none())
        for i, q in enumerate(questions)
    ]


# -- the coding agent ----------------------------------------------------------------------------


def use_tool(tool: str, arguments: dict[str, str]) -> str:
    """Run one of the agent's tools (stand-ins: the tests keep failing)."""
    if tool == "read_file":
        return f"{arguments['path']}: def total(prices): return sum(prices) * 1.2"
    return "1 failed: total([1, 2]) == 3.6, expected 3"


def coding_agent(ctx: RunContext, max_turns: int) -> str:
    """A scripted agent loop that keeps reading the file and running the tests, guarded."""
    guard = LoopGuard(GuardrailConfig(), run_id=ctx.run_id)
    for turn in range(max_turns):
        guard.iteration()
        # The stuck "model": it alternates the same two calls whatever the warnings say.
        tool, args = ("read_file", {"path": "app.py"}) if turn % 2 == 0 else ("run_tests", {})
        for note in guard.tool_call(tool, args):
            ctx.log.warning("the model was told: %s", note)
        ctx.step(use_tool, tool, args, name=f"tool {tool}")
    return "gave up"


def register(rt: Runtime) -> dict[str, Workflow[Any, Any]]:
    """Register the scene's workflows on ``rt``."""
    return {
        "support": rt.workflow(SUPPORT_WORKFLOW, timeout=60)(support_bot),
        "agent": rt.workflow(AGENT_WORKFLOW, timeout=60)(coding_agent),
    }


# -- the scene -----------------------------------------------------------------------------------


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _breaker_and_fallback(
    console: Console, checks: Checks, rt: Runtime, wfs: dict[str, Any], tap: EventTap
) -> None:
    breaker_a = CircuitBreaker(
        "model-a", BreakerConfig(failure_threshold=3, window=30, reset_timeout=RESET_TIMEOUT)
    )
    _chain["answer"] = FallbackChain(
        "answer",
        [
            Alternative("model-a", ask_model_a, breaker=breaker_a),
            Alternative("model-b", ask_model_b, breaker=CircuitBreaker("model-b")),
        ],
    )
    _model_a_up["value"] = False
    say(
        console,
        f"model A is down (503); its breaker opens after 3 failures in 30 s, half-opens after "
        f"{RESET_TIMEOUT:g} s",
    )
    questions = ["Where is my invoice?", "Can I get a refund?", "How do I export?", "Is it down?"]
    first = rt.start(wfs["support"], questions)
    answers = first.result(timeout=30)
    for i, answer in enumerate(answers, start=1):
        say(console, f"question {i}: answered by {answer['model']}")
    fallbacks = [e.reason for e in rt.store.events(first.id) if e.kind == "fallback"]
    for reason in (fallbacks[0], fallbacks[-1]) if fallbacks else ():
        say(console, f"run event (fallback): {_clip(reason, 120)}")
    opened = tap.of(BreakerStateChanged, lambda e: e.breaker == "model-a")
    checks.check(
        [a["model"] for a in answers] == ["model-b"] * 4 and len(fallbacks) == 4,
        "while model A failed, model B served every answer (a fallback event per step)",
    )
    checks.check(
        [e.to_state for e in opened] == ["open"] and "skipped" in fallbacks[-1],
        "the breaker opened on the 3rd failure; then model A was skipped without a call",
    )

    _model_a_up["value"] = True
    half_open_at = breaker_a.snapshot().half_open_at or time.time()
    time.sleep(max(0.0, half_open_at - time.time()) + 0.05)
    say(console, "model A is back; the breaker's reset timeout has passed")
    second = rt.start(wfs["support"], ["Do you ship to Norway?", "What are your hours?"])
    later = second.result(timeout=30)
    for i, answer in enumerate(later, start=5):
        say(console, f"question {i}: answered by {answer['model']}")
    moves = [
        f"{e.from_state} -> {e.to_state}"
        for e in tap.of(BreakerStateChanged, lambda e: e.breaker == "model-a")
    ]
    say(console, f"breaker model-a went {', '.join(moves)}; it is {breaker_a.status} now")
    checks.check(
        moves == ["closed -> open", "open -> half_open", "half_open -> closed"]
        and [a["model"] for a in later] == ["model-a", "model-a"],
        "it half-opened, one probe to model A succeeded, and it closed again",
    )


def _limiter(console: Console, checks: Checks) -> None:
    limiter = Limiter("embeddings", LimiterConfig(max_concurrency=1, max_queue=1, queue_timeout=10))
    release = threading.Event()

    def embed(text: str) -> int:
        release.wait(10)
        return len(text)

    threads = [
        threading.Thread(target=limiter.call, args=(embed, text), daemon=True)
        for text in ("first", "second")
    ]
    threads[0].start()
    wait_for(lambda: limiter.in_flight == 1, 5)
    threads[1].start()
    wait_for(lambda: limiter.queued == 1, 5)
    say(
        console,
        f"limiter 'embeddings' (1 at a time, 1 waiting): {limiter.in_flight} running, "
        f"{limiter.queued} queued; a third call arrives",
    )
    try:
        limiter.call(embed, "third")
        rejected: errors.LimiterRejectedError | None = None
    except errors.LimiterRejectedError as exc:
        rejected = exc
    finally:
        release.set()
        for thread in threads:
            thread.join(timeout=10)
    if rejected is not None:
        say(
            console,
            f"LimiterRejectedError ({rejected.reason}): retry after {rejected.retry_after:.1f} s",
        )
    checks.check(
        rejected is not None and rejected.reason == "queue_full",
        "the limiter refused the call past its queue at once (LimiterRejectedError)",
    )


def _guardrail(
    console: Console, checks: Checks, rt: Runtime, wfs: dict[str, Any], tap: EventTap
) -> None:
    handle = rt.start(wfs["agent"], 20)
    try:
        handle.result(timeout=30)
        stopped = None
    except errors.RunFailedError as exc:
        stopped = exc
    trips = tap.of(GuardrailTriggered, lambda e: e.run_id == handle.id)
    say(console, f"run {handle.id}: a coding agent alternates read_file and run_tests")
    for trip in trips:
        if trip.hard:
            say(console, f"{trip.limit} limit hit, the loop is STOPPED: {trip.detail}")
        else:
            say(console, f"{trip.limit} soft warning, told the model: {_clip(trip.detail, 110)}")
    entry = rt.dlq.get(handle.id) if stopped is not None else None
    if entry is not None:
        say(console, f"the run failed: {entry.error_type}; dead letter {entry.id} is open")
    checks.check(
        any(not t.hard for t in trips) and bool(trips) and trips[-1].hard,
        "the guardrail warned the model first, then stopped the loop",
    )
    checks.check(
        entry is not None and entry.error_type == "LoopLimitExceededError",
        "the run ended with LoopLimitExceededError (never retried) in the dead-letter queue",
    )


def _flags(console: Console, checks: Checks, workdir: Path) -> None:
    current = flags.reload()
    names = ("retry_enabled", "breaker_enabled", "limiter_enabled", "fallback_enabled")
    on = [name for name in names if getattr(current, name)]
    say(console, f"feature flags reloaded without a restart: {', '.join(on)} on")
    bad = workdir / "bad-flags.toml"
    bad.write_text("breaker_enabled = maybe\n", encoding="utf-8")
    try:
        flags.FlagStore(bad).reload()
        refused = None
    except errors.FlagsError as exc:
        refused = exc
    if refused is not None:
        say(console, f"a broken flags file is refused: {str(refused)[:120]}")
    checks.check(
        refused is not None and flags.current() is current,
        "a broken flags file was refused and the flags in force stayed",
    )


def scene_resilience(
    console: Console, checks: Checks, rt: Runtime, wfs: dict[str, Any], workdir: Path
) -> None:
    """Run scene 6 (see the module docstring)."""
    with EventTap() as tap:
        _breaker_and_fallback(console, checks, rt, wfs, tap)
        _limiter(console, checks)
        _guardrail(console, checks, rt, wfs, tap)
        _flags(console, checks, workdir)
