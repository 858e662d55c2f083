"""Cost of one ``logger.info(...)`` call: stdlib logging vs StructuredHandler with both sinks.

Run: ``.venv/bin/python bench/bench_logging.py [--calls N]``

Every scenario writes to a file on disk. The sinks point at local fake Loki and Elasticsearch
servers (``tests/observability/fakes.py``) running in a separate process, so their request
handling does not share this process's CPU time. The numbers are per call, in the thread that
logs, as the caller sees them; shipping happens in the sinks' background threads and is
checked at the end (every record must have arrived). Target: p50 under 25 µs with both sinks.

By default the loop sleeps 2 ms every 200 calls (a busy service rather than a tight loop, so
the shippers keep up); ``--pace-every 0`` measures the tight loop.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from observability.logging import StructuredHandler
from observability.sinks._shipper import Shipper
from observability.sinks.elasticsearch import ElasticsearchConfig, ElasticsearchSink
from observability.sinks.loki import DeliveryConfig, LokiConfig, LokiSink

ROOT = Path(__file__).resolve().parent.parent


def _measure(logger: logging.Logger, calls: int, pace_every: int) -> list[int]:
    timings: list[int] = []
    clock = time.perf_counter_ns
    for n in range(calls):
        start = clock()
        logger.info("step %s finished in %d ms", "fetch_ticket", n)
        timings.append(clock() - start)
        if pace_every and n % pace_every == pace_every - 1:
            time.sleep(0.002)  # a busy service, not a tight loop: lets the shippers keep up
    return timings


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger


def _percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


def main() -> None:
    """Run the scenarios and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="timed calls per scenario")
    parser.add_argument("--pace-every", type=int, default=200, help="sleep 2 ms every N calls")
    args = parser.parse_args()

    fakes = subprocess.Popen(
        [sys.executable, "-m", "tests.observability.fakes"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    if fakes.stdout is None or fakes.stdin is None:
        raise RuntimeError("could not talk to the fake servers")
    urls = dict(part.split("=", 1) for part in fakes.stdout.readline().split())
    workdir = Path(tempfile.mkdtemp(prefix="bench-logging-"))
    delivery = DeliveryConfig(spool_dir=str(workdir / "spool"))
    sinks: list[Shipper] = [
        LokiSink(LokiConfig(url=urls["loki"], delivery=delivery)),
        ElasticsearchSink(ElasticsearchConfig(url=urls["elasticsearch"], delivery=delivery)),
    ]

    files: list[IO[str]] = []

    def file_stream(name: str) -> IO[str]:
        stream = (workdir / name).open("w", encoding="utf-8")
        files.append(stream)
        return stream

    stdlib = logging.FileHandler(workdir / "stdlib.log")
    stdlib.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    scenarios: list[tuple[str, Callable[[], logging.Handler]]] = [
        ("stdlib logging, FileHandler", lambda: stdlib),
        (
            "StructuredHandler JSON, no sinks",
            lambda: StructuredHandler("bench", stream=file_stream("json.log")),
        ),
        (
            "StructuredHandler JSON + Loki + Elasticsearch",
            lambda: StructuredHandler("bench", stream=file_stream("sinks.log"), sinks=sinks),
        ),
    ]
    results: list[tuple[str, float, float]] = []
    for label, make in scenarios:
        handler = make()
        logger = _logger(f"bench.{len(results)}", handler)
        _measure(logger, 2_000, args.pace_every)  # warm up
        timings = _measure(logger, args.calls, args.pace_every)
        results.append((label, _percentile(timings, 0.5), _percentile(timings, 0.95)))
        logger.removeHandler(handler)

    delivered = all(sink.flush(60.0) for sink in sinks)
    healths = [sink.health() for sink in sinks]
    for sink in sinks:
        sink.close(5.0)
    for stream in files:
        stream.close()
    fakes.stdin.close()
    received = fakes.stdout.read().strip()
    fakes.wait(10)

    base = results[0][1]
    print(f"{args.calls} timed calls per scenario, Python {sys.version.split()[0]}")
    print(f"{'scenario':<48} {'p50 µs':>8} {'p95 µs':>8} {'p50 ratio':>10}")
    for label, p50, p95 in results:
        print(f"{label:<48} {p50:>8.1f} {p95:>8.1f} {p50 / base:>9.2f}x")
    expected = 2_000 + args.calls
    print(
        f"shipped: all flushed={delivered}, {received} (expected {expected} each), "
        + ", ".join(f"{h.name} dropped={h.dropped}" for h in healths)
    )
    print(f"target p50 with both sinks < 25 µs: {'met' if results[2][1] < 25 else 'MISSED'}")


if __name__ == "__main__":
    main()
