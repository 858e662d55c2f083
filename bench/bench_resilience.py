"""Resilience overhead: the full pipeline and its layers vs a plain call, raw tenacity, pybreaker.

Measured, each as the median (p50) of many single calls timed with ``perf_counter_ns``:

* the **success path** of a no-op function (sync and async): a plain call; raw tenacity (a fresh
  ``Retrying``/``AsyncRetrying`` per call, as our drivers use it, and a shared one); raw
  pybreaker; our ``retry_call``, ``CircuitBreaker.call``, ``Limiter.call``; and the full
  ``resilient_call`` (limiter + breaker + retry with a fallback configured, all flags on);
* the **retry decision**: ``RetryPolicy.decide`` on a real httpx 503 carrying ``Retry-After``,
  and one complete retry through the tenacity driver (fail, decide, no-op sleep, succeed) minus
  the plain cost of the two calls, i.e. everything but the sleep itself; raw tenacity doing the
  same retry (with its own stop/wait, no policy) beside it shows how much of that is tenacity's;
* **breaker throughput**: 8 threads calling a 10 ms function through one breaker for a fixed
  time, ours vs pybreaker (whose ``call`` holds a lock for the whole call).

No event hook is subscribed (the runtime's observability hook adds its own cost, measured by
the observability benchmarks). Targets (from the issue): full pipeline p50 < 50 us; retry
decision overhead < 100 us; breaker throughput >= 6x pybreaker's.

Usage: ``python bench/bench_resilience.py [--calls 20000] [--seconds 2]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import pybreaker
from tenacity import AsyncRetrying, Retrying, stop_after_attempt

from agent_runtime.flags import Flags
from agent_runtime.resilience import (
    Alternative,
    CircuitBreaker,
    Limiter,
    RetryPolicy,
    resilient_call,
    resilient_call_async,
    retry_call,
    retry_call_async,
)

ALL_ON = Flags()


def noop() -> int:
    """The wrapped call."""
    return 1


async def anoop() -> int:
    """The wrapped async call."""
    return 1


def p50_sync(fn: Callable[[], Any], calls: int) -> float:
    """Median microseconds of ``fn()``."""
    for _ in range(min(2000, calls)):
        fn()
    samples = []
    perf = time.perf_counter_ns
    gc.collect()
    for _ in range(calls):
        start = perf()
        fn()
        samples.append(perf() - start)
    samples.sort()
    return samples[len(samples) // 2] / 1000


async def p50_async(fn: Callable[[], Awaitable[Any]], calls: int) -> float:
    """Median microseconds of ``await fn()``."""
    for _ in range(min(2000, calls)):
        await fn()
    samples = []
    perf = time.perf_counter_ns
    gc.collect()
    for _ in range(calls):
        start = perf()
        await fn()
        samples.append(perf() - start)
    samples.sort()
    return samples[len(samples) // 2] / 1000


def throughput(call: Callable[[], Any], threads: int, seconds: float) -> float:
    """Calls per second completed by ``threads`` threads looping on ``call``."""
    stop = time.monotonic() + seconds
    counts = [0] * threads
    start = threading.Barrier(threads + 1)

    def loop(i: int) -> None:
        start.wait()
        n = 0
        while time.monotonic() < stop:
            call()
            n += 1
        counts[i] = n

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    begin = time.monotonic()
    start.wait()
    for w in workers:
        w.join()
    return sum(counts) / (time.monotonic() - begin)


def main() -> None:
    """Run every measurement and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    n = args.calls

    policy = RetryPolicy.http()
    breaker = CircuitBreaker("bench")
    limiter = Limiter("bench")
    pyb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    shared = Retrying(stop=stop_after_attempt(3))
    backup = [Alternative("backup", noop)]
    abackup = [Alternative("backup", anoop)]
    rows: list[tuple[str, str, float, str, str]] = []

    plain = p50_sync(noop, n)

    def add(group: str, name: str, value: float, base: float | None, target: str = "") -> None:
        ratio = f"{value / base:.1f}x" if base else ""
        rows.append((group, name, value, ratio, target))

    add("sync success path", "plain call", plain, None)
    add(
        "sync success path",
        "raw tenacity (fresh Retrying)",
        p50_sync(lambda: Retrying(stop=stop_after_attempt(3))(noop), n),
        plain,
    )
    add(
        "sync success path",
        "raw tenacity (shared Retrying)",
        p50_sync(lambda: shared(noop), n),
        plain,
    )
    add("sync success path", "raw pybreaker", p50_sync(lambda: pyb.call(noop), n), plain)
    add(
        "sync success path",
        "retry_call",
        p50_sync(lambda: retry_call(noop, policy=policy), n),
        plain,
    )
    add("sync success path", "CircuitBreaker.call", p50_sync(lambda: breaker.call(noop), n), plain)
    add("sync success path", "Limiter.call", p50_sync(lambda: limiter.call(noop), n), plain)
    full = p50_sync(
        lambda: resilient_call(
            noop, retry=policy, breaker=breaker, limiter=limiter, fallbacks=backup, flags=ALL_ON
        ),
        n,
    )
    add("sync success path", "full pipeline (resilient_call)", full, plain, "p50 < 50 us")

    async def async_rows() -> None:
        aplain = await p50_async(anoop, n)
        add("async success path", "plain await", aplain, None)
        add(
            "async success path",
            "raw tenacity (fresh AsyncRetrying)",
            await p50_async(lambda: AsyncRetrying(stop=stop_after_attempt(3))(anoop), n),
            aplain,
        )
        add(
            "async success path",
            "retry_call_async",
            await p50_async(lambda: retry_call_async(anoop, policy=policy), n),
            aplain,
        )
        add(
            "async success path",
            "CircuitBreaker.call_async",
            await p50_async(lambda: breaker.call_async(anoop), n),
            aplain,
        )
        add(
            "async success path",
            "Limiter.call_async",
            await p50_async(lambda: limiter.call_async(anoop), n),
            aplain,
        )
        afull = await p50_async(
            lambda: resilient_call_async(
                anoop,
                retry=policy,
                breaker=breaker,
                limiter=limiter,
                fallbacks=abackup,
                flags=ALL_ON,
            ),
            n,
        )
        add(
            "async success path",
            "full pipeline (resilient_call_async)",
            afull,
            aplain,
            "p50 < 50 us",
        )

    asyncio.run(async_rows())

    # -- retry decision ------------------------------------------------------------------------
    request = httpx.Request("GET", "https://api.test/")
    response = httpx.Response(503, headers={"Retry-After": "2"}, request=request)
    error = httpx.HTTPStatusError("503", request=request, response=response)
    rng = random.Random(0)
    decide = p50_sync(lambda: policy.decide(error, [], step="s", now=time.time(), rng=rng), n)
    add("retry decision", "RetryPolicy.decide (httpx 503 + Retry-After)", decide, None, "< 100 us")

    def fail_once() -> Callable[[], int]:
        state = {"failed": False}

        def fn() -> int:
            if not state["failed"]:
                state["failed"] = True
                # A fresh error each time: re-raising one object grows its traceback forever.
                raise httpx.HTTPStatusError("503", request=request, response=response)
            return 1

        return fn

    def raw_two_calls() -> None:
        fn = fail_once()
        # A bare try/except, like tenacity's own: contextlib.suppress would inflate the baseline.
        try:  # noqa: SIM105
            fn()
        except httpx.HTTPStatusError:
            pass
        fn()

    base_two = p50_sync(raw_two_calls, n)

    def sleepless(_: float) -> None:
        return None

    one_retry = p50_sync(lambda: retry_call(fail_once(), policy=policy, sleep=sleepless), n)
    add(
        "retry decision",
        "one retry through retry_call, sleep excluded",
        one_retry - base_two,
        None,
        "< 100 us",
    )
    raw_retry = p50_sync(
        lambda: Retrying(sleep=sleepless, stop=stop_after_attempt(3))(fail_once()), n
    )
    add(
        "retry decision",
        "one retry through raw tenacity, sleep excluded",
        raw_retry - base_two,
        None,
    )

    # -- breaker throughput ---------------------------------------------------------------------
    def io_call() -> None:
        time.sleep(0.01)

    ours = throughput(lambda: breaker.call(io_call), 8, args.seconds)
    theirs = throughput(lambda: pyb.call(io_call), 8, args.seconds)
    ideal = 8 / 0.01

    print(f"\nagent-runtime resilience benchmark ({n} calls per row; p50 in microseconds)\n")
    width = max(len(r[1]) for r in rows) + 2
    print(f"{'group':<20} {'measurement':<{width}} {'p50 us':>9} {'vs plain':>9}  target")
    print("-" * (20 + width + 34))
    for group, name, value, ratio, target in rows:
        verdict = ""
        if target:
            limit = 50.0 if "50" in target else 100.0
            verdict = f"{target}: {'met' if value < limit else 'MISSED'}"
        print(f"{group:<20} {name:<{width}} {value:>9.2f} {ratio:>9}  {verdict}")
    print("-" * (20 + width + 34))
    ratio = ours / theirs
    print(
        f"{'breaker throughput':<20} {'8 threads x 10 ms call: ours':<{width}} "
        f"{ours:>9.0f} calls/s (ideal {ideal:.0f})"
    )
    print(f"{'':<20} {'8 threads x 10 ms call: pybreaker':<{width}} {theirs:>9.0f} calls/s")
    print(
        f"{'':<20} {'ratio ours / pybreaker':<{width}} {ratio:>9.1f}x  "
        f">= 6x: {'met' if ratio >= 6 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
