"""A separate process hitting a half-open breaker through the SQL store (for test_breaker_sql).

Usage: python breaker_worker.py DB_URL TABLE BREAKER THREADS HOLD_SECONDS

Prints ``ready``, waits for a line on stdin, then lets THREADS threads call the breaker at once.
Each admitted call holds for HOLD_SECONDS. Prints one JSON line: ran, rejected, other errors.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import sqlalchemy as sa

from agent_runtime import errors
from agent_runtime.resilience import BreakerConfig, CircuitBreaker, SqlBreakerStore


def main() -> None:
    """Run the worker."""
    url, table, name, threads, hold = sys.argv[1:6]
    engine = sa.create_engine(url)
    store = SqlBreakerStore(engine, table_name=table, create_table=False, cache_ttl=0)
    breaker = CircuitBreaker(name, BreakerConfig(failure_threshold=1), store=store)
    counts = {"ran": 0, "rejected": 0, "other": []}
    lock = threading.Lock()
    start = threading.Barrier(int(threads))

    def probe() -> None:
        with lock:
            counts["ran"] += 1  # type: ignore[operator]
        time.sleep(float(hold))

    def caller() -> None:
        start.wait()
        try:
            breaker.call(probe)
        except errors.CircuitOpenError:
            with lock:
                counts["rejected"] += 1  # type: ignore[operator]
        except Exception as exc:
            with lock:
                counts["other"].append(repr(exc))  # type: ignore[union-attr]

    print("ready", flush=True)
    sys.stdin.readline()
    workers = [threading.Thread(target=caller) for _ in range(int(threads))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    print(json.dumps(counts), flush=True)
    engine.dispose()


if __name__ == "__main__":
    main()
