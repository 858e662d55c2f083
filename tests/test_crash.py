"""Kill -9 at random points: recovery completes the run; committed steps ran exactly once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from agent_runtime import RunStatus, Runtime
from tests.crash import workflow

ROOT = Path(__file__).resolve().parent.parent


def _crash_once(db_url: str, journal: Path, rng: random.Random) -> tuple[int, int]:
    """Start the run in a child, SIGKILL it at a random moment, recover it here.

    Returns:
        How many checkpoints were committed at the kill, and the position in flight.
    """
    rt = Runtime(db_url, recover=False)
    workflow.register(rt)
    handle = rt.enqueue(workflow.NAME, str(journal))
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.crash.workflow", db_url, handle.id],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # Wait until the child executes the run, then let it go on for a random while.
    deadline = time.monotonic() + 60
    while rt.store.get_run(handle.id).status != RunStatus.RUNNING.value:
        assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
        assert time.monotonic() < deadline, "the child never started the run"
        time.sleep(0.005)
    time.sleep(rng.uniform(0, workflow.STEPS * workflow.STEP_SECONDS * 1.2))
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.stderr is not None
    child.stderr.close()
    committed = sorted(rt.store.load_steps(handle.id))
    assert committed == list(range(len(committed))), "checkpoints are committed in order"

    recovered = rt.recover()
    if rt.store.get_run(handle.id).status == RunStatus.SUCCESS.value:
        assert recovered == []  # the child finished before the kill landed
    else:
        assert [h.id for h in recovered] == [handle.id]
    result = rt.get(handle.id).result(timeout=60)
    assert result == sum(i * 3 for i in range(workflow.STEPS))

    done = Counter(int(line.split()[0]) for line in journal.read_text().splitlines())
    in_flight = len(committed)
    for position in range(workflow.STEPS):
        if position < in_flight:
            assert done[position] == 1, f"committed step {position} ran {done[position]} times"
        elif position == in_flight:
            assert done[position] in (1, 2), f"in-flight step ran {done[position]} times"
        else:
            assert done[position] == 1, f"step {position} after the kill ran {done[position]}x"
    rt.close()
    return len(committed), in_flight


def _crash_many(db_url: str, tmp_path: Path, times: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    points = []
    for i in range(times):
        committed, _ = _crash_once(db_url, tmp_path / f"journal-{i}.log", rng)
        points.append(committed)
    return points


@pytest.mark.slow
def test_sigkill_at_random_points_on_sqlite(sqlite_url: str, tmp_path: Path) -> None:
    """Twelve kills at random points on SQLite: every run completes with exactly-once commits."""
    points = _crash_many(sqlite_url, tmp_path, 12, seed=20261122)
    assert len(set(points)) >= 4, f"kill points did not spread: {points}"


@pytest.mark.slow
@pytest.mark.postgres
def test_sigkill_at_random_points_on_postgres(pg_url: str, tmp_path: Path) -> None:
    """Six kills at random points on PostgreSQL: every run completes with exactly-once commits."""
    points = _crash_many(pg_url, tmp_path, 6, seed=7)
    assert len(set(points)) >= 2, f"kill points did not spread: {points}"
