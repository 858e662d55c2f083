"""Chaos: 500 runs whose steps fail transiently at random (20 %) all end ``success`` unaided."""

from __future__ import annotations

import random
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest
from resilience_helpers import http_error

from agent_runtime import RetryPolicy, RunStatus, Runtime
from agent_runtime.events import RetryScheduled

RUNS = 500
FAILURE_RATE = 0.2


class ChaosDependency:
    """A remote dependency failing 20 % of calls with timeouts, 429s and 503s.

    The schedule is deterministic per (step, run, attempt), so the test is reproducible however
    the runs interleave across worker threads.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.lock = threading.Lock()
        self.attempts: Counter[tuple[str, int]] = Counter()
        self.calls = 0
        self.failures: Counter[str] = Counter()

    def call(self, step: str, run: int) -> str:
        """One call: an answer, or a transient failure."""
        with self.lock:
            self.attempts[(step, run)] += 1
            attempt = self.attempts[(step, run)]
            self.calls += 1
        draw = random.Random(f"{self.seed}:{step}:{run}:{attempt}")
        if draw.random() < FAILURE_RATE:
            kind = draw.choice(["timeout", "429", "503"])
            with self.lock:
                self.failures[kind] += 1
            if kind == "timeout":
                raise httpx.ReadTimeout("upstream read timed out")
            if kind == "429":
                headers = {"Retry-After": "1"} if draw.random() < 0.5 else None
                raise http_error(429, headers)
            raise http_error(503)
        return f"{step}-{run}"


@pytest.mark.slow
def test_500_runs_with_transient_failures_all_succeed(
    tmp_path: Path, recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every run ends success without manual action; the retries are reported."""
    slept: list[float] = []
    dependency = ChaosDependency(seed=2024)
    rt = Runtime(
        db=f"sqlite:///{tmp_path}/chaos.db",
        retry=RetryPolicy.http(max_attempts=8, maximum=8.0),
        sleep=slept.append,  # backoff is recorded, never slept
        recover=False,
        observe=False,
        max_concurrent_runs=8,
        sqlite_synchronous="normal",
    )
    try:

        @rt.workflow(name="chaos.triage")
        def triage(ctx, run: int) -> dict[str, str]:  # type: ignore[no-untyped-def]
            fetched = ctx.step(dependency.call, "fetch", run, name="fetch")
            label = ctx.step(dependency.call, "classify", run, name="classify")
            score = ctx.step(dependency.call, "score", run, name="score")
            return {"fetched": fetched, "label": label, "score": score}

        handles = [rt.start(triage, i) for i in range(RUNS)]
        results = [h.result(timeout=300) for h in handles]
        statuses = Counter(h.status for h in handles)
    finally:
        rt.close()

    assert statuses == Counter({RunStatus.SUCCESS: RUNS})
    assert results[7] == {"fetched": "fetch-7", "label": "classify-7", "score": "score-7"}
    failure_share = sum(dependency.failures.values()) / dependency.calls
    assert 0.15 < failure_share < 0.25  # the chaos really happened
    assert set(dependency.failures) == {"timeout", "429", "503"}

    retries = Counter(e.run_id for e in recorder.of(RetryScheduled))
    assert sum(retries.values()) == sum(dependency.failures.values())
    assert len(slept) == sum(retries.values())
    retried_runs = [h.id for h in handles if retries[h.id]]
    recovered = sum(1 for h in handles if retries[h.id] and h.status == RunStatus.SUCCESS)
    distribution = Counter(retries[h.id] for h in handles)
    with capsys.disabled():
        print(
            f"\nchaos: {RUNS} runs, {dependency.calls} dependency calls, "
            f"{sum(dependency.failures.values())} transient failures "
            f"({failure_share:.1%}: {dict(dependency.failures)})"
        )
        print(
            f"chaos: recovery rate {recovered}/{len(retried_runs)} runs that hit a failure "
            f"({recovered / len(retried_runs):.1%}); all {RUNS} runs ended success"
        )
        print(
            "chaos: retries per run -> runs: "
            + ", ".join(f"{k}: {v}" for k, v in sorted(distribution.items()))
        )
