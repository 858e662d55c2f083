"""Scene 4 of ``agent-runtime demo``: one trace id from the HTTP request to the sandbox's stdout.

The demo serves the runtime's own HTTP API (the app ``agent-runtime serve`` runs) and a small
helpdesk API, both on 127.0.0.1. A client span posts ``/runs``; the run's first step fetches the
ticket from the helpdesk through httpx (instrumented, so the request carries ``traceparent``);
its second step runs a sandbox command that prints ``$TRACEPARENT``. The scene then shows the
same trace id in the service's answer, the run, the header the helpdesk received, the sandbox's
output, every log record of the run in the embedded log search (what ``agent-runtime logs search
--run-id`` reads) and a latency exemplar on ``/metrics``.
"""

from __future__ import annotations

import http.server
import json
import re
import socket
import threading
import time
from typing import Any

import httpx
import uvicorn
from rich.console import Console

from agent_runtime.cli.demo_common import Checks, LoopbackServer, say, wait_for
from agent_runtime.context import RunContext
from agent_runtime.errors import AgentRuntimeError
from agent_runtime.resilience.policy import RetryPolicy
from agent_runtime.runtime import Runtime, Workflow
from agent_runtime.sandbox.spec import SandboxSpec
from agent_runtime.service import ServiceConfig, create_app
from observability import Observability
from observability.search import LocalLogStore
from observability.tracing import parse_traceparent, tracer

__all__ = ["TRACE_WORKFLOW", "register", "scene_trace"]

TRACE_WORKFLOW = "demo.traced_triage"
_SPEC = SandboxSpec(memory="128m", tmp="16m", disk="8m", pids=64, timeout=30)
_FETCH = RetryPolicy.http(max_attempts=3, initial=0.05, maximum=0.2)
_EXEMPLAR = re.compile(r'^(\S+)\{([^}]*)\} \S+ # \{trace_id="([0-9a-f]{32})"\}')


# -- the workflow ----------------------------------------------------------------------------


def fetch_ticket_http(base_url: str, ticket_id: str) -> dict[str, str]:
    """Read a ticket from the helpdesk API (a real HTTP call through httpx)."""
    with httpx.Client(base_url=base_url, timeout=5.0) as client:
        response = client.get(f"/tickets/{ticket_id}")
        response.raise_for_status()
        ticket: dict[str, str] = response.json()
        return ticket


def traced_triage(ctx: RunContext, base_url: str, ticket_id: str) -> dict[str, str]:
    """Fetch a ticket over HTTP, then score it in the sandbox (which prints its traceparent)."""
    ticket = ctx.step(fetch_ticket_http, base_url, ticket_id, retry=_FETCH)
    scored = ctx.sandbox.run(
        ["sh", "-c", 'echo "TRACEPARENT=$TRACEPARENT"; echo "score: 0.93"'],
        spec=_SPEC,
        name="sandbox:score",
    )
    return {"ticket": ticket["id"], "sandbox_stdout": scored.stdout, "reason": scored.reason}


def register(rt: Runtime) -> Workflow[Any, Any]:
    """Register the scene's workflow on ``rt``."""
    return rt.workflow(TRACE_WORKFLOW, timeout=120)(traced_triage)


# -- the servers -----------------------------------------------------------------------------


class _Helpdesk(http.server.BaseHTTPRequestHandler):
    """GET /tickets/<id>: a ticket as JSON; remembers the traceparent of every request."""

    received: list[str | None] = []
    lock = threading.Lock()

    def do_GET(self) -> None:
        with self.lock:
            self.received.append(self.headers.get("traceparent"))
        ticket_id = self.path.rsplit("/", 1)[-1]
        body = json.dumps(
            {"id": ticket_id, "text": "Export to PDF crashes since version 4.2."}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return  # the narrative says what matters


class _Service:
    """The runtime's HTTP service (the app of ``agent-runtime serve``) on a free loopback port."""

    def __init__(self, rt: Runtime, obs: Observability | None) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        app = create_app(
            rt, config=ServiceConfig(host="127.0.0.1", port=self.port), observability=obs
        )
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name="demo-service",
            daemon=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> _Service:
        self._thread.start()
        if not wait_for(lambda: self._server.started, 15):
            self.__exit__()
            raise AgentRuntimeError(
                "the demo's HTTP service did not start within 15 s; is 127.0.0.1 usable here?"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


# -- the scene -------------------------------------------------------------------------------


def _exemplar(metrics_text: str, metric: str, workflow: str) -> str | None:
    for line in metrics_text.splitlines():
        match = _EXEMPLAR.match(line)
        if match and match.group(1) == metric and f'workflow="{workflow}"' in match.group(2):
            return match.group(3)
    return None


def scene_trace(
    console: Console, checks: Checks, rt: Runtime, obs: Observability, log_db: str, backend: str
) -> dict[str, str]:
    """Run scene 4 (see the module docstring); return the trace id it followed."""
    _Helpdesk.received = []
    with LoopbackServer(_Helpdesk) as helpdesk, _Service(rt, obs) as service:
        say(console, f"the runtime's HTTP API (agent-runtime serve) listens on {service.url}")
        say(console, f"a helpdesk API the agent calls listens on {helpdesk.url}")
        with (
            tracer().start_as_current_span("demo client: start a triage run") as span,
            httpx.Client(base_url=service.url, timeout=10.0) as client,
        ):
            client_trace = format(span.get_span_context().trace_id, "032x")
            started = client.post(
                "/runs", json={"workflow": TRACE_WORKFLOW, "args": [helpdesk.url, "T-2001"]}
            )
            body = started.json()
            run_id = str(body.get("run_id", ""))
            say(
                console,
                f"POST /runs -> {started.status_code}; run {run_id}; "
                f"X-Trace-Id {started.headers.get('x-trace-id')}",
            )
            deadline = time.monotonic() + 60
            info: dict[str, Any] = {}
            while time.monotonic() < deadline:
                info = client.get(f"/runs/{run_id}").json()
                if info.get("status") in ("success", "failed"):
                    break
                time.sleep(0.05)
            metrics_text = client.get(
                "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
            ).text
    result = info.get("result") or {}
    run_trace = str(info.get("trace_id", ""))
    say(console, f"GET /runs/{run_id} -> {info.get('status')}; the run's trace id {run_trace}")
    received = [parse_traceparent(h) for h in _Helpdesk.received]
    helpdesk_traces = [p[0] for p in received if p is not None]
    say(console, f"the helpdesk received traceparent: {(_Helpdesk.received or [None])[-1]}")
    stdout = str(result.get("sandbox_stdout", ""))
    sandbox_line = next((ln for ln in stdout.splitlines() if ln.startswith("TRACEPARENT=")), "")
    sandbox_parsed = parse_traceparent(sandbox_line.partition("=")[2])
    say(console, f"the sandbox ({backend}) printed {sandbox_line or '(nothing)'}")
    obs.flush(5.0)
    with LocalLogStore(log_db, create=False) as store:
        records = store.search(run_id=run_id, limit=1000)
        by_trace = store.search(trace_id=client_trace, limit=1000)
    traces = {r.get("trace_id") for r in records}
    say(
        console,
        f"logs search --run-id {run_id[:12]}: {len(records)} records, "
        f"trace ids {sorted(map(str, traces))}",
    )
    output_lines = [r for r in records if r.get("logger") == "agent_runtime.sandbox.output"]
    if output_lines:
        say(console, f'  the sandbox\'s stdout is logged too: "{output_lines[-1].get("message")}"')
    access = [
        r
        for r in by_trace
        if r.get("logger") == "agent_runtime.service.access"
        and str(r.get("message", "")).startswith("POST /runs")
    ]
    if access:
        say(console, f'  the service\'s access log line: "{access[0].get("message")}"')
    exemplar = _exemplar(metrics_text, "agent_runtime_run_duration_seconds_bucket", TRACE_WORKFLOW)
    say(console, f"/metrics: the run-duration histogram's exemplar has trace_id {exemplar}")

    checks.check(info.get("status") == "success", "the run started over HTTP ended success")
    checks.check(
        started.headers.get("x-trace-id") == client_trace == run_trace,
        "the service continued the client's trace and the run carries the same trace id",
    )
    checks.check(
        bool(helpdesk_traces) and set(helpdesk_traces) == {run_trace},
        "the helpdesk server received that trace id in its traceparent header",
    )
    checks.check(
        sandbox_parsed is not None and sandbox_parsed[0] == run_trace,
        "the sandbox command saw that trace id in $TRACEPARENT",
    )
    checks.check(
        len(records) >= 5 and traces == {run_trace},
        "every log record of the run (found by the embedded log search) carries it",
    )
    checks.check(bool(access), "the service's access log line for POST /runs carries it too")
    checks.check(exemplar == run_trace, "the run-duration exemplar on /metrics links to it")
    return {"trace_id": run_trace}
