"""Scene 7 of ``agent-runtime demo``: log shipping loses nothing and blocks nothing in an outage.

A Loki sink ships an order service's log records to a log endpoint on 127.0.0.1 that is down
(its port is reserved, so connections are refused). Logging calls return at once; the sink
spools the records to disk and retries with backoff. Then the endpoint comes up and every record
arrives, in order. The endpoint is the demo's own small receiver speaking Loki's documented push
API (``POST /loki/api/v1/push``, gzipped JSON streams): Loki itself is not running here. With
the shipped stack up, ``AGENT_RUNTIME_LOKI_URL`` points the runtime at the real one.
"""

from __future__ import annotations

import gzip
import http.server
import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY
from rich.console import Console

from agent_runtime.cli.demo_common import Checks, LoopbackServer, reserved_port, say, wait_for
from observability.logging import StructuredHandler
from observability.sinks.loki import PUSH_PATH, DeliveryConfig, LokiConfig, LokiSink

__all__ = ["scene_logs"]

RECORDS = 300
_LOGGER = "agent_runtime.demo.orders"
_LABELS = frozenset({"service", "level", "env"})


class _LokiReceiver(http.server.BaseHTTPRequestHandler):
    """Accepts Loki pushes (gzipped JSON streams); keeps every (labels, time, line) received."""

    received: list[tuple[dict[str, str], int, dict[str, Any]]] = []
    problems: list[str] = []
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        try:
            streams = json.loads(body)["streams"]
            entries = [
                (dict(s["stream"]), int(v[0]), json.loads(v[1]))
                for s in streams
                for v in s["values"]
            ]
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            with self.lock:
                self.problems.append(f"{self.path}: not a Loki push payload ({exc})")
            self.send_response(400)
            self.end_headers()
            return
        with self.lock:
            if self.path != PUSH_PATH:
                self.problems.append(f"pushed to {self.path}, not {PUSH_PATH}")
            self.received.extend(entries)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


def _retried() -> float:
    value = REGISTRY.get_sample_value("agent_runtime_log_batches_retried_total", {"sink": "loki"})
    return value or 0.0


def scene_logs(console: Console, checks: Checks, workdir: Path, service: str) -> None:
    """Run scene 7 (see the module docstring)."""
    _LokiReceiver.received = []
    _LokiReceiver.problems = []
    spool = workdir / f"spool-{time.time_ns()}"
    retried_before = _retried()
    logger = logging.getLogger(_LOGGER)
    with reserved_port() as sock:
        port = int(sock.getsockname()[1])
        sink = LokiSink(
            LokiConfig(
                url=f"http://127.0.0.1:{port}",
                env="demo",
                timeout=2.0,
                delivery=DeliveryConfig(
                    linger=0.05, initial_backoff=0.2, max_backoff=0.4, spool_dir=str(spool)
                ),
            )
        )
        handler = StructuredHandler(service, sinks=[sink]).without_stream()
        logger.addHandler(handler)
        try:
            say(console, f"a Loki sink ships the order service's logs to 127.0.0.1:{port}: down")
            durations = []
            for number in range(RECORDS):
                before = time.perf_counter()
                logger.info("order %d shipped", number, extra={"order": number})
                durations.append(time.perf_counter() - before)
            durations.sort()
            say(
                console,
                f"{RECORDS} records logged while it is down: median "
                f"{durations[len(durations) // 2] * 1e6:.0f} µs per call, slowest "
                f"{durations[-1] * 1e3:.1f} ms (a call only queues the record)",
            )
            wait_for(lambda: sink.health().spooled >= RECORDS and _retried() > retried_before, 5)
            health = sink.health()
            say(
                console,
                f"sink health: {'healthy' if health.healthy else 'unhealthy'}; "
                f"{health.spooled} records spooled on disk; "
                f"batches retried so far: {_retried() - retried_before:g}",
            )
            spooled = health.spooled
            with LoopbackServer(_LokiReceiver, sock):
                say(console, "the log endpoint comes up (a receiver speaking Loki's push API)")
                wait_for(lambda: len(_LokiReceiver.received) >= RECORDS, 15)
                sink.flush(5.0)
                after = sink.health()
        finally:
            logger.removeHandler(handler)
            handler.close()
            shutil.rmtree(spool, ignore_errors=True)
    orders = [entry[2].get("order") for entry in _LokiReceiver.received]
    times = [entry[1] for entry in _LokiReceiver.received]
    labels = set().union(*(entry[0].keys() for entry in _LokiReceiver.received))
    say(
        console,
        f"delivered {len(orders)} of {RECORDS} records; stream labels {sorted(labels)}; "
        f"spool now {after.spooled}",
    )
    checks.check(spooled >= RECORDS, "while the endpoint was down, every record was spooled")
    checks.check(
        orders == list(range(RECORDS)) and times == sorted(times),
        "once it came back, every record arrived exactly once, in order",
    )
    checks.check(
        labels <= _LABELS and not _LokiReceiver.problems and after.spooled == 0,
        "pushes used Loki's v1 API with low-cardinality labels only; the spool drained",
    )
