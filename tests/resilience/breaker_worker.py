"""A separate process hitting a half-open breaker through the SQL store (for test_breaker_sql).

Usage: python breaker_worker.py DB_URL TABLE BREAKER THREADS RELEASE_FILE

Prints ``ready`` and waits for a line on stdin; then THREADS threads call the breaker at once.
An admitted call (the probe) holds until RELEASE_FILE exists. Once every thread has either been
refused or is holding the probe, prints ``tried``; at the end, one JSON line with the counts.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from agent_runtime import errors
from agent_runtime.resilience import BreakerConfig, CircuitBreaker, SqlBreakerStore


def main() -> None:
    """Run the worker."""
    url, table, name, threads_arg, release_arg = sys.argv[1:6]
    threads, release = int(threads_arg), Path(release_arg)
    engine = sa.create_engine(url)
    store = SqlBreakerStore(engine, table_name=table, create_table=False, cache_ttl=0)
    breaker = CircuitBreaker(name, BreakerConfig(failure_threshold=1), store=store)
    ran = rejected = 0
    other: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def probe() -> None:
        nonlocal ran
        with lock:
            ran += 1
        deadline = time.monotonic() + 30
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.005)

    def caller() -> None:
        nonlocal rejected
        start.wait()
        try:
            breaker.call(probe)
        except errors.CircuitOpenError:
            with lock:
                rejected += 1
        except Exception as exc:
            with lock:
                other.append(repr(exc))

    print("ready", flush=True)
    sys.stdin.readline()
    workers = [threading.Thread(target=caller) for _ in range(threads)]
    for worker in workers:
        worker.start()
    while True:
        with lock:
            if ran + rejected + len(other) >= threads:
                break
        time.sleep(0.005)
    print("tried", flush=True)
    for worker in workers:
        worker.join()
    print(json.dumps({"ran": ran, "rejected": rejected, "other": other}), flush=True)
    engine.dispose()


if __name__ == "__main__":
    main()
