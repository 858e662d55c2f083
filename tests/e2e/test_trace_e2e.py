"""One trace id from the HTTP request to the sandbox's stdout, the logs, the metrics and the sinks.

A request to the service starts a run whose step calls a local HTTP server through httpx and then
runs a sandbox command that prints ``TRACEPARENT``. The same trace id must appear in the response
header, in the traceparent the local server received, in the sandbox's output, in every log record
of the run, in a histogram exemplar on ``/metrics``, and in the payloads the Loki and
Elasticsearch sinks send (to local servers that check their documented wire formats: no Loki or
Elasticsearch can run on this machine).
"""

from __future__ import annotations

import io
import json
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

import observability
from agent_runtime import RunContext, Runtime
from agent_runtime.sandbox import DockerSandbox, SandboxSpec, build_image
from agent_runtime.sandbox.spec import DEFAULT_IMAGE
from agent_runtime.service import ServiceConfig, create_app
from observability.sinks.elasticsearch import ElasticsearchConfig, ElasticsearchSink
from observability.sinks.loki import DeliveryConfig, LokiConfig, LokiSink
from tests.observability.fakes import FakeElasticsearch, FakeLoki

pytestmark = [pytest.mark.docker]


class _Upstream:
    """A local HTTP server recording the traceparent of every request."""

    def __init__(self) -> None:
        self.traceparents: list[str | None] = []
        received = self.traceparents

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                received.append(self.headers.get("traceparent"))
                body = b'{"label": "bug"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[_Upstream]:
    """The local HTTP server the run's step calls."""
    server = _Upstream()
    yield server
    server.close()


def classify_remote(url: str) -> str:
    """Ask the (local) classifier service through httpx."""
    response = httpx.get(url + "/classify", timeout=10)
    response.raise_for_status()
    return str(response.json()["label"])


async def test_one_trace_id_from_request_to_sandbox(tmp_path: Path, upstream: _Upstream) -> None:
    """The request's trace id is in the response, upstream call, sandbox, logs, exemplar, sinks."""
    build_image(DEFAULT_IMAGE, offline=True)
    loki = FakeLoki().start()
    elastic = FakeElasticsearch().start()
    stream = io.StringIO()
    delivery = DeliveryConfig(linger=0.05, spool_dir=str(tmp_path / "spool-loki"))
    sinks = [
        LokiSink(LokiConfig(url=loki.url, env="test", delivery=delivery)),
        ElasticsearchSink(
            ElasticsearchConfig(
                url=elastic.url,
                env="test",
                delivery=DeliveryConfig(linger=0.05, spool_dir=str(tmp_path / "spool-es")),
            )
        ),
    ]
    obs = observability.configure("trace-e2e", stream=stream, sinks=sinks)
    sandbox = DockerSandbox(state_dir=tmp_path / "state", owner=f"test-{secrets.token_hex(4)}")
    rt = Runtime(
        f"sqlite:///{tmp_path}/state.db",
        recover=False,
        state_dir=tmp_path / "state",
        sandbox=sandbox,
    )
    name = "trace_" + secrets.token_hex(3)

    @rt.workflow(name)
    def triage(ctx: RunContext, url: str) -> dict[str, str]:
        label = ctx.step(classify_remote, url, name="classify")
        out = ctx.sandbox.run(
            ["python", "-c", "import os; print(os.environ['TRACEPARENT'])"],
            spec=SandboxSpec(memory="128m", timeout=30),
        )
        return {"label": label, "sandbox": out.stdout.strip()}

    app = create_app(rt, config=ServiceConfig(), observability=obs)
    trace_id = secrets.token_hex(16)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://svc"
        ) as client:
            response = await client.post(
                "/runs",
                json={"workflow": name, "args": [upstream.url]},
                headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
            )
            assert response.status_code == 202
            run_id = response.json()["run_id"]
            result = rt.get(run_id).result(timeout=60)
            metrics = await client.get(
                "/metrics", headers={"Accept": "application/openmetrics-text"}
            )
        assert obs.flush(10)
    finally:
        rt.close()
        sandbox.close()
        observability.shutdown()
        loki.stop()
        elastic.stop()

    # The response header and the run.
    assert response.headers["x-trace-id"] == trace_id
    assert rt.store.get_run(run_id).trace_id == trace_id
    # The local server's received traceparent (httpx is instrumented).
    assert len(upstream.traceparents) == 1
    assert upstream.traceparents[0] is not None
    assert upstream.traceparents[0].split("-")[1] == trace_id
    # The sandbox's output.
    assert result["label"] == "bug"
    assert result["sandbox"].split("-")[1] == trace_id
    # Every log record of the run.
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    of_run = [r for r in records if r.get("run_id") == run_id]
    assert len(of_run) >= 5
    assert {r["trace_id"] for r in of_run} == {trace_id}
    loggers = {r["logger"] for r in of_run}
    assert {"agent_runtime.run", "agent_runtime.sandbox.output"} <= loggers
    # A histogram exemplar on /metrics.
    assert f'# {{trace_id="{trace_id}"}}' in metrics.text
    # The Loki payload: trace id in structured metadata and in the line, never in labels.
    assert loki.violations == []
    pushed = [e for e in loki.entries if e.metadata and e.metadata.get("run_id") == run_id]
    assert pushed
    assert {e.metadata["trace_id"] for e in pushed if e.metadata} == {trace_id}
    assert {e.record["trace_id"] for e in pushed} == {trace_id}
    assert all(set(e.labels) == {"service", "level", "env"} for e in loki.entries)
    # The Elasticsearch documents: ECS trace.id.
    assert elastic.violations == []
    docs = [d.source for d in elastic.documents if _run_of(d.source) == run_id]
    assert docs
    assert {d["trace"]["id"] for d in docs} == {trace_id}
    assert all(d["service"]["name"] == "trace-e2e" for d in docs)


def _run_of(source: dict[str, Any]) -> str | None:
    labels = source.get("labels") or {}
    value = labels.get("run_id") if isinstance(labels, dict) else None
    if value is None:
        value = source.get("run_id")
    return None if value is None else str(value)
