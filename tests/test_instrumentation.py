"""Runtime events become logs, spans and metrics: one trace id across a run and its resumes."""

from __future__ import annotations

import io
import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

import observability
from agent_runtime import RetryPolicy, RunContext, RunFailedError, Runtime
from observability.tracing import configure_tracing

FAST = RetryPolicy(max_attempts=3, initial=0.001, jitter=0.0)


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """Every span finished in this module's tests."""
    exporter = InMemorySpanExporter()
    configure_tracing("instrumentation-tests", processor=SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """Structured JSON log lines written while the test runs (no sinks)."""
    stream = io.StringIO()
    observability.configure("instrumentation-tests", stream=stream, sinks=[], level="DEBUG")
    yield stream
    observability.shutdown()


def _records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def _value(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_every_log_line_of_a_run_carries_its_ids(
    sqlite_url: str, lines: io.StringIO, spans: InMemorySpanExporter
) -> None:
    """Records logged during a run carry its run id, workflow and trace id; step lines the step."""
    rt = Runtime(sqlite_url, recover=False)
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("reset by peer")
        import logging

        logging.getLogger("user.code").info("inside the step")
        return "ok"

    name = "logs_" + secrets.token_hex(3)

    @rt.workflow(name, retry=FAST)
    def wf(ctx: RunContext) -> str:
        ctx.log.info("workflow says hello")
        return ctx.step(flaky, name="flaky")

    handle = rt.start(wf)
    assert handle.result(timeout=10) == "ok"
    rt.close()
    records = [r for r in _records(lines) if r.get("run_id") == handle.id]
    assert {r["trace_id"] for r in records} == {handle.trace_id}
    messages = {r["message"]: r for r in records}
    user = messages["inside the step"]
    assert user["step"] == "flaky"
    assert user["workflow"] == name
    assert user["span_id"]
    retry = next(r for r in records if r["message"].startswith("attempt 1 of flaky failed"))
    assert retry["step"] == "flaky"
    assert retry["level"] == "WARNING"
    assert retry["error_class"] == "connection"
    assert "workflow says hello" in messages
    transitions = [r["message"] for r in records if r["logger"] == "agent_runtime.run"]
    assert any("running -> success" in m for m in transitions)
    for record in records:
        assert record["service"] == "instrumentation-tests"
        assert record["timestamp"].endswith("Z")


def test_spans_share_the_trace_across_a_resume(
    sqlite_url: str, spans: InMemorySpanExporter
) -> None:
    """Run, step and attempt spans share the run's trace id, also after a DLQ retry resumes it."""
    rt = Runtime(sqlite_url, recover=False)
    broken = {"value": True}

    def first() -> int:
        return 1

    def second() -> int:
        if broken["value"]:
            raise KeyError("not yet")
        return 2

    name = "spans_" + secrets.token_hex(3)

    @rt.workflow(name, retry=RetryPolicy.none())
    def wf(ctx: RunContext) -> int:
        return ctx.step(first, name="first") + ctx.step(second, name="second")

    handle = rt.start(wf)
    with pytest.raises(RunFailedError):
        handle.result(timeout=10)
    broken["value"] = False
    assert rt.dlq.retry(handle.id).result(timeout=10) == 3
    rt.close()
    mine = [
        s
        for s in spans.get_finished_spans()
        if format(s.context.trace_id, "032x") == handle.trace_id
    ]
    names = [s.name for s in mine]
    assert names.count(f"run {name}") == 1
    assert names.count(f"run {name} (resumed)") == 1
    assert "step first" in names
    assert names.count("step second") == 2
    run_span = next(s for s in mine if s.name == f"run {name}")
    step_span = next(s for s in mine if s.name == "step first")
    assert step_span.parent is not None
    assert step_span.parent.span_id == run_span.context.span_id
    assert run_span.attributes is not None
    assert run_span.attributes["run.id"] == handle.id


def test_metrics_follow_runs_and_carry_exemplars(
    sqlite_url: str, spans: InMemorySpanExporter
) -> None:
    """Run, step, retry and DLQ metrics move; the run histogram's exemplar is the run's trace."""
    rt = Runtime(sqlite_url, recover=False)
    name = "metrics_" + secrets.token_hex(3)
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise TimeoutError("slow upstream")
        return "ok"

    def broken() -> None:
        raise ValueError("always")

    @rt.workflow(name, retry=FAST)
    def wf(ctx: RunContext, fail: bool) -> str:
        out = ctx.step(flaky, name="flaky")
        if fail:
            ctx.step(broken, name="broken")
        return out

    ok = rt.start(wf, False)
    ok.result(timeout=10)
    bad = rt.start(wf, True)
    with pytest.raises(RunFailedError):
        bad.result(timeout=10)
    assert _value("agent_runtime_runs_finished_total", {"workflow": name, "status": "success"}) == 1
    assert _value("agent_runtime_runs_finished_total", {"workflow": name, "status": "failed"}) == 1
    assert _value("agent_runtime_retries_total", {"step": "flaky", "reason": "timeout"}) >= 2
    assert _value("agent_runtime_dlq_entries_total", {"workflow": name}) == 1
    assert _value("agent_runtime_steps_total", {"workflow": name, "outcome": "failed"}) == 1
    assert _value("agent_runtime_dlq_depth", {}) >= 1
    exposition = observability.metrics.exposition().decode()
    assert f'trace_id="{ok.trace_id}"' in exposition or f'trace_id="{bad.trace_id}"' in exposition
    rt.close()
