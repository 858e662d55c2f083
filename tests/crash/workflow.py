"""A 20-step workflow for the crash test, importable by the child process and the test.

Run as ``python -m tests.crash.workflow DB_URL RUN_ID``: the child resumes (executes) the run.
Each step appends ``<position> <pid>`` to the journal with one ``write`` on an ``O_APPEND`` file,
so lines from the killed child and the recovering parent never interleave.
"""

from __future__ import annotations

import os
import sys
import time

from agent_runtime import RunContext, Runtime

NAME = "crash-test.twenty-steps"
STEPS = 20
STEP_SECONDS = 0.012


def work(position: int, journal: str) -> int:
    """Do a little work, then journal that this position completed in this process."""
    time.sleep(STEP_SECONDS)
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{position} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return position * 3


def twenty_steps(ctx: RunContext, journal: str) -> int:
    """Run 20 journaled steps and return the sum of their values."""
    return sum(ctx.step(work, i, journal, name=f"work-{i}") for i in range(STEPS))


def register(rt: Runtime) -> None:
    """Register the workflow on ``rt``."""
    rt.workflow(NAME)(twenty_steps)


if __name__ == "__main__":
    runtime = Runtime(sys.argv[1], recover=False, observe=False)
    register(runtime)
    runtime.resume(sys.argv[2]).result()
