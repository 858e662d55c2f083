"""The Prometheus metrics of agent-runtime: one catalogue, one prefix, bounded labels.

Every metric is defined here, once per process, on prometheus-client's default registry (so an
application's own metrics appear on the same ``/metrics``). Names follow Prometheus conventions:
``agent_runtime_`` prefix, base units (seconds, bytes), ``_total`` for counters. Label values are
bounded sets (workflow and step names come from code, reasons and states from fixed lists); no
run id, trace id or user input is ever a label value. Histograms take a ``trace_id`` exemplar,
shown in the OpenMetrics exposition, so a slow bucket links to its trace.

The README's "Metrics" table is generated from ``CATALOGUE`` (``python -m observability.metrics``
prints it) and a test checks that both agree.
"""

from __future__ import annotations

import sys
from typing import Final

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT
from prometheus_client.openmetrics.exposition import generate_latest as _om_generate

__all__ = [
    "BREAKER_REJECTIONS",
    "BREAKER_STATE",
    "BREAKER_TRANSITIONS",
    "BUILD_INFO",
    "CATALOGUE",
    "CHECKPOINT_WRITE_SECONDS",
    "DLQ_DEPTH",
    "DLQ_ENTRIES",
    "FALLBACK_SERVED",
    "FLAGS_RELOADS",
    "GUARDRAIL_TRIGGERED",
    "HTTP_REQUESTS",
    "HTTP_REQUEST_SECONDS",
    "LIMITER_IN_FLIGHT",
    "LIMITER_QUEUED",
    "LIMITER_REJECTED",
    "LIMITER_WAIT_SECONDS",
    "LOG_DROPPED",
    "LOG_RETRIED",
    "LOG_SENT",
    "LOG_SPOOLED",
    "OPENMETRICS_CONTENT",
    "PREFIX",
    "RETRIES",
    "RUNS_ACTIVE",
    "RUNS_FINISHED",
    "RUNS_RECOVERED",
    "RUNS_STARTED",
    "RUN_DURATION_SECONDS",
    "RUN_TRANSITIONS",
    "SANDBOX_DURATION_SECONDS",
    "SANDBOX_EGRESS_BLOCKED",
    "SANDBOX_FINISHED",
    "SANDBOX_STARTS",
    "STEPS",
    "STEP_DURATION_SECONDS",
    "WORKSPACE_ROLLBACKS",
    "exposition",
]

PREFIX: Final = "agent_runtime"

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


def _name(suffix: str) -> str:
    return f"{PREFIX}_{suffix}"


# -- runs and steps ----------------------------------------------------------------------------

RUNS_STARTED = Counter(
    _name("runs_started"),
    "Runs this process began executing (fresh starts and resumes).",
    ["workflow", "resumed"],
)
RUNS_FINISHED = Counter(
    _name("runs_finished"),
    "Runs that reached a final state in this process, by status (success, failed).",
    ["workflow", "status"],
)
RUN_TRANSITIONS = Counter(
    _name("run_transitions"),
    "Run state transitions, by from and to state.",
    ["from_status", "to_status"],
)
RUNS_RECOVERED = Counter(
    _name("runs_recovered"),
    "Runs taken over from a dead owner or an expired lease.",
    ["workflow"],
)
RUNS_ACTIVE = Gauge(
    _name("runs_active"),
    "Runs executing in this process right now.",
    ["workflow"],
)
RUN_DURATION_SECONDS = Histogram(
    _name("run_duration_seconds"),
    "Wall-clock time of one execution of a run in this process, until success or failure.",
    ["workflow", "status"],
    buckets=_DURATION_BUCKETS,
)
STEPS = Counter(
    _name("steps"),
    "Step calls, by outcome (success, replayed from checkpoint, failed).",
    ["workflow", "outcome"],
)
STEP_DURATION_SECONDS = Histogram(
    _name("step_duration_seconds"),
    "Wall-clock time of a step call including its retries (replays excluded).",
    ["workflow", "step"],
    buckets=_DURATION_BUCKETS,
)
RETRIES = Counter(
    _name("retries"),
    "Retries scheduled after a failed attempt, by error class.",
    ["step", "reason"],
)
CHECKPOINT_WRITE_SECONDS = Histogram(
    _name("checkpoint_write_seconds"),
    "Time to serialize and durably commit one step checkpoint.",
    buckets=_FAST_BUCKETS,
)

# -- dead-letter queue ---------------------------------------------------------------------------

DLQ_ENTRIES = Counter(
    _name("dlq_entries"),
    "Dead-letter entries written (runs that failed for good).",
    ["workflow"],
)
DLQ_DEPTH = Gauge(
    _name("dlq_depth"),
    "Open dead-letter entries in the state database (read at scrape time).",
)

# -- resilience --------------------------------------------------------------------------------

BREAKER_STATE = Gauge(
    _name("breaker_state"),
    "Circuit breaker state: 1 for the current state of each breaker, 0 for the others.",
    ["breaker", "state"],
)
BREAKER_TRANSITIONS = Counter(
    _name("breaker_transitions"),
    "Circuit breaker state transitions.",
    ["breaker", "from_state", "to_state"],
)
BREAKER_REJECTIONS = Counter(
    _name("breaker_rejections"),
    "Calls refused by an open (or probing) circuit breaker.",
    ["breaker"],
)
LIMITER_IN_FLIGHT = Gauge(
    _name("limiter_in_flight"),
    "Calls holding a limiter slot.",
    ["limiter"],
)
LIMITER_QUEUED = Gauge(
    _name("limiter_queued"),
    "Calls waiting in a limiter queue.",
    ["limiter"],
)
LIMITER_REJECTED = Counter(
    _name("limiter_rejected"),
    "Calls a limiter refused, by reason (queue_full, queue_timeout).",
    ["limiter", "reason"],
)
LIMITER_WAIT_SECONDS = Histogram(
    _name("limiter_wait_seconds"),
    "Time a call waited in a limiter queue before getting a slot.",
    ["limiter"],
    buckets=(*_FAST_BUCKETS, 2.5, 5, 10, 30),
)
FALLBACK_SERVED = Counter(
    _name("fallback_served"),
    "Fallback chain answers, by the alternative that served (none if all failed).",
    ["chain", "alternative"],
)
GUARDRAIL_TRIGGERED = Counter(
    _name("guardrail_triggered"),
    "Agent-loop guardrails tripped, by limit and whether it was hard (raised) or soft.",
    ["limit", "hard"],
)
FLAGS_RELOADS = Counter(
    _name("flags_reloads"),
    "Feature-flag reloads, by outcome (ok, rejected).",
    ["outcome"],
)

# -- sandbox -----------------------------------------------------------------------------------

SANDBOX_STARTS = Counter(
    _name("sandbox_starts"),
    "Sandboxes started, by backend (docker, process) and whether they came from the warm pool.",
    ["backend", "warm"],
)
SANDBOX_FINISHED = Counter(
    _name("sandbox_finished"),
    "Sandboxed commands ended, by termination reason (exited, timeout, oom, disk_limit, "
    "killed, error).",
    ["backend", "reason"],
)
SANDBOX_DURATION_SECONDS = Histogram(
    _name("sandbox_duration_seconds"),
    "Wall-clock time of one sandboxed command.",
    ["backend"],
    buckets=_DURATION_BUCKETS,
)
SANDBOX_EGRESS_BLOCKED = Counter(
    _name("sandbox_egress_blocked"),
    "Sandbox connections the egress proxy refused (destination not on the allowlist).",
)
WORKSPACE_ROLLBACKS = Counter(
    _name("workspace_rollbacks"),
    "Workspace rollbacks, automatic (after a failed run) or manual.",
    ["automatic"],
)

# -- log shipping ------------------------------------------------------------------------------

LOG_SENT = Counter(
    _name("log_records_sent"),
    "Log records a sink delivered.",
    ["sink"],
)
LOG_DROPPED = Counter(
    _name("log_records_dropped"),
    "Log records a sink gave up on, by reason (queue_full, spool_full, spool_error, "
    "spool_corrupt, rejected, closed, shutdown).",
    ["sink", "reason"],
)
LOG_RETRIED = Counter(
    _name("log_batches_retried"),
    "Log batches a sink sent again after a 429, a 5xx or a connection error.",
    ["sink"],
)
LOG_SPOOLED = Gauge(
    _name("log_records_spooled"),
    "Log records waiting in a sink's on-disk spool for the sink to come back.",
    ["sink"],
)

# -- service -----------------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    _name("http_requests"),
    "Requests the service answered, by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    _name("http_request_duration_seconds"),
    "Time the service took to answer a request, by method and route template.",
    ["method", "route"],
    buckets=(*_FAST_BUCKETS, 2.5, 5, 10),
)
BUILD_INFO = Info(_name("build"), "Version of agent-runtime in this process.")

CATALOGUE: Final = (
    RUNS_STARTED,
    RUNS_FINISHED,
    RUN_TRANSITIONS,
    RUNS_RECOVERED,
    RUNS_ACTIVE,
    RUN_DURATION_SECONDS,
    STEPS,
    STEP_DURATION_SECONDS,
    RETRIES,
    CHECKPOINT_WRITE_SECONDS,
    DLQ_ENTRIES,
    DLQ_DEPTH,
    BREAKER_STATE,
    BREAKER_TRANSITIONS,
    BREAKER_REJECTIONS,
    LIMITER_IN_FLIGHT,
    LIMITER_QUEUED,
    LIMITER_REJECTED,
    LIMITER_WAIT_SECONDS,
    FALLBACK_SERVED,
    GUARDRAIL_TRIGGERED,
    FLAGS_RELOADS,
    SANDBOX_STARTS,
    SANDBOX_FINISHED,
    SANDBOX_DURATION_SECONDS,
    SANDBOX_EGRESS_BLOCKED,
    WORKSPACE_ROLLBACKS,
    LOG_SENT,
    LOG_DROPPED,
    LOG_RETRIED,
    LOG_SPOOLED,
    HTTP_REQUESTS,
    HTTP_REQUEST_SECONDS,
    BUILD_INFO,
)


def exposition(registry: CollectorRegistry = REGISTRY) -> bytes:
    """Return the OpenMetrics exposition (with exemplars) of ``registry``."""
    data: bytes = _om_generate(registry)  # type: ignore[no-untyped-call]
    return data


def _markdown_table() -> str:
    rows = ["| metric | type | labels | meaning |", "| --- | --- | --- | --- |"]
    for metric in CATALOGUE:
        kind = type(metric).__name__.lower()
        name = metric._name
        if kind == "counter":
            name += "_total"
        elif kind == "info":
            name += "_info"
        labels = ", ".join(metric._labelnames) or "-"
        rows.append(f"| `{name}` | {kind} | {labels} | {metric._documentation} |")
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover - documentation helper
    sys.stdout.write(_markdown_table() + "\n")
