"""Workflows the end-to-end tests serve: imported by ``agent-runtime --app tests.e2e.app``."""

from __future__ import annotations

import os
import time

import httpx

from agent_runtime import RetryPolicy, RunContext, Runtime

rt = Runtime(recover=False)


class UpstreamRejectedError(Exception):
    """The (simulated) upstream refused the request for good."""


def work(ms: int) -> int:
    """Pretend to work for ``ms`` milliseconds."""
    time.sleep(ms / 1000)
    return ms


def reject(order: str) -> None:
    """Always fail: an order the upstream never accepts."""
    raise UpstreamRejectedError(f"upstream rejected order {order}")


def fetch(url: str) -> dict[str, str]:
    """GET ``url`` through httpx (instrumented: the request carries traceparent)."""
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    return {"status": str(response.status_code), "body": response.text[:200]}


@rt.workflow("e2e.work", retry=RetryPolicy.none())
def work_flow(ctx: RunContext, ms: int = 20) -> int:
    """One short step."""
    return ctx.step(work, ms)


@rt.workflow("e2e.fail", retry=RetryPolicy.none())
def fail_flow(ctx: RunContext, order: str = "O-1") -> None:
    """A step that fails for good: the run lands in the DLQ."""
    ctx.step(work, 1)
    ctx.step(reject, order)


@rt.workflow("e2e.fetch", retry=RetryPolicy.http())
def fetch_flow(ctx: RunContext, url: str) -> dict[str, str]:
    """Call a local HTTP server from a step."""
    return ctx.step(fetch, url)


PID = os.getpid()
