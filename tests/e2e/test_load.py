"""Load: 10 concurrent clients start real runs for a while; only explicit 503s are allowed."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from tests.e2e.conftest import Served

pytestmark = pytest.mark.slow

CLIENTS = 10
SECONDS = float(os.environ.get("AGENT_RUNTIME_LOAD_SECONDS", "60"))


def test_ten_clients_for_a_minute(
    serve: Callable[..., Served], capsys: pytest.CaptureFixture[str]
) -> None:
    """10 clients POST /runs for 60 s: every answer is 202 or an explicit 503 with Retry-After."""
    served = serve(
        AGENT_RUNTIME_RUN_CONCURRENCY="8",
        AGENT_RUNTIME_RUN_QUEUE="8",
        AGENT_RUNTIME_RUN_QUEUE_TIMEOUT="2",
        AGENT_RUNTIME_LOG_STREAM="none",
    )
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    problems: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + SECONDS

    def client() -> None:
        with httpx.Client(base_url=served.url, timeout=30) as http:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                try:
                    response = http.post(
                        "/runs", json={"workflow": "e2e.work", "kwargs": {"ms": 30}}
                    )
                except httpx.HTTPError as exc:
                    with lock:
                        problems.append(f"{type(exc).__name__}: {exc}")
                    continue
                elapsed = time.perf_counter() - t0
                with lock:
                    latencies.append(elapsed)
                    statuses[response.status_code] += 1
                    if response.status_code == 503 and "retry-after" not in response.headers:
                        problems.append("503 without Retry-After")
                    elif response.status_code not in (202, 503):
                        problems.append(f"{response.status_code}: {response.text[:200]}")

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not problems, problems[:5]
    assert statuses[202] > 0
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p95 = ordered[int(0.95 * (len(ordered) - 1))] * 1000
    with httpx.Client(base_url=served.url, timeout=30) as http:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pending = http.get("/runs", params={"status": ["pending", "running"], "limit": 5})
            if not pending.json()["runs"]:
                break
            time.sleep(0.2)
        failed = http.get("/runs", params={"status": "failed", "limit": 5}).json()["runs"]
    assert failed == []
    with capsys.disabled():
        print(
            f"\nload: {CLIENTS} clients x {SECONDS:.0f} s: {sum(statuses.values())} requests, "
            f"202={statuses[202]} 503={statuses[503]}, POST /runs p50 {p50:.1f} ms, "
            f"p95 {p95:.1f} ms"
        )
