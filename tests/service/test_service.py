"""The HTTP service in-process: health, readiness, admin auth, runs API, limits, tracing headers."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from agent_runtime import RunContext, Runtime
from agent_runtime.flags import FlagStore
from agent_runtime.resilience.limiter import LimiterConfig
from agent_runtime.service import ServiceConfig, create_app
from tests.conftest import pg_base_url

TOKEN = "s3cret-admin-token-0123456789"
RELEASE = threading.Event()


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def _register(rt: Runtime, name: str) -> None:
    @rt.workflow(name)
    def summing(ctx: RunContext, a: int, b: int) -> int:
        return ctx.step(add, a, b)

    @rt.workflow(f"{name}.blocking")
    def blocking(ctx: RunContext) -> str:
        return ctx.step(RELEASE.wait, 10, name="wait") and "released"


@pytest.fixture
def rt(sqlite_url: str) -> Iterator[Runtime]:
    """A runtime with two workflows."""
    runtime = Runtime(sqlite_url, recover=False)
    yield runtime
    RELEASE.set()
    runtime.close(timeout=5)
    RELEASE.clear()


@pytest.fixture
def flags_file(tmp_path: Path) -> Path:
    """A valid flags file."""
    path = tmp_path / "flags.toml"
    path.write_text("retry_enabled = true\nsandbox_warm_pool_size = 2\n")
    return path


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")


@pytest.fixture
async def client(rt: Runtime, flags_file: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the service with an admin token and a flags file."""
    name = "svc_" + secrets.token_hex(3)
    _register(rt, name)
    rt.test_workflow = name  # type: ignore[attr-defined]
    store = FlagStore(environ={"AGENT_RUNTIME_FLAGS_FILE": str(flags_file)})
    app = create_app(rt, config=ServiceConfig(admin_token=TOKEN), flags=store)
    async with _client(app) as c:
        yield c


async def _wait_success(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    for _ in range(200):
        body = (await client.get(f"/runs/{run_id}")).json()
        if body["status"] in ("success", "failed"):
            return dict(body)
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} did not finish")


async def test_healthz_answers(client: httpx.AsyncClient) -> None:
    """GET /healthz is 200 while the process answers."""
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_checks_the_database(client: httpx.AsyncClient) -> None:
    """GET /readyz is 200 with the database check when everything answers."""
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"]["database"] == {"ok": True}


@pytest.mark.postgres
async def test_readyz_is_503_when_the_database_refuses(tmp_path: Path) -> None:
    """With the real PostgreSQL refusing connections, /readyz says 503 and why."""
    name = "ready_" + secrets.token_hex(4)
    admin = sa.create_engine(pg_base_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = pg_base_url().rsplit("/", 1)[0] + f"/{name}"
    runtime = Runtime(url, recover=False)
    try:
        runtime.store.engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
            conn.exec_driver_sql(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
            )
        async with _client(create_app(runtime, config=ServiceConfig())) as c:
            response = await c.get("/readyz")
        assert response.status_code == 503
        check = response.json()["checks"]["database"]
        assert check["ok"] is False
        assert "not currently accepting connections" in check["detail"]
    finally:
        runtime.close(timeout=1)
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
        admin.dispose()


async def test_readyz_reports_an_unhealthy_sink(rt: Runtime, tmp_path: Path) -> None:
    """A Loki sink that cannot deliver makes /readyz 503 naming the sink."""
    import logging

    from observability.sinks.loki import DeliveryConfig, LokiConfig, LokiSink
    from tests.stack.stack_tools import free_port

    sink = LokiSink(
        LokiConfig(
            url=f"http://127.0.0.1:{free_port()}",
            delivery=DeliveryConfig(linger=0.01, spool_dir=str(tmp_path / "spool")),
            timeout=0.5,
        )
    )
    from observability import Observability, ObservabilityConfig
    from observability.logging import StructuredHandler

    obs = Observability(
        ObservabilityConfig(), StructuredHandler("t", sinks=[sink]).without_stream(), [sink]
    )
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "hello", None, None)
    obs.handler.handle(record)
    async with _client(create_app(rt, config=ServiceConfig(), observability=obs)) as c:
        for _ in range(100):
            response = await c.get("/readyz")
            if response.status_code == 503:
                break
            await asyncio.sleep(0.05)
    sink.close(timeout=1)
    assert response.status_code == 503
    assert response.json()["checks"]["sink:loki"]["ok"] is False


async def test_admin_disabled_without_a_token(rt: Runtime) -> None:
    """With no admin token configured the admin endpoints refuse and say how to enable them."""
    async with _client(create_app(rt, config=ServiceConfig())) as c:
        response = await c.get("/admin/flags", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 403
    assert "AGENT_RUNTIME_ADMIN_TOKEN" in response.json()["error"]


async def test_admin_needs_the_right_bearer_token(client: httpx.AsyncClient) -> None:
    """No token is 401 with a challenge; a wrong token is 403; the right one is 200."""
    missing = await client.get("/admin/flags")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = await client.get("/admin/flags", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    basic = await client.get("/admin/flags", headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    ok = await client.get("/admin/flags", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    assert ok.json()["flags"]["sandbox_warm_pool_size"] == 2


async def test_reload_flags_rejects_a_bad_file_and_keeps_the_old_flags(
    client: httpx.AsyncClient, flags_file: Path
) -> None:
    """A malformed flags file is rejected (422) and the previous flags stay in force."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    await asyncio.to_thread(flags_file.write_text, "sandbox_warm_pool_size = 5\n")
    good = await client.post("/admin/reload-flags", headers=auth)
    assert good.status_code == 200
    assert good.json()["flags"]["sandbox_warm_pool_size"] == 5
    await asyncio.to_thread(flags_file.write_text, "sandbox_warm_pool_size = [not toml\n")
    bad = await client.post("/admin/reload-flags", headers=auth)
    assert bad.status_code == 422
    assert bad.json()["flags"]["sandbox_warm_pool_size"] == 5
    assert "previous flags stay" in bad.json()["note"]
    after = await client.get("/admin/flags", headers=auth)
    assert after.json()["flags"]["sandbox_warm_pool_size"] == 5


async def test_start_a_run_and_read_it(client: httpx.AsyncClient, rt: Runtime) -> None:
    """POST /runs starts a registered workflow (202); GET /runs/{id} returns its result."""
    name = rt.test_workflow  # type: ignore[attr-defined]
    response = await client.post("/runs", json={"workflow": name, "args": [2, 3]})
    assert response.status_code == 202
    body = response.json()
    assert response.headers["location"] == f"/runs/{body['run_id']}"
    assert response.headers["x-trace-id"] == body["trace_id"]
    done = await _wait_success(client, body["run_id"])
    assert done["status"] == "success"
    assert done["result"] == 5
    listed = await client.get("/runs", params={"status": "success"})
    assert body["run_id"] in [r["id"] for r in listed.json()["runs"]]


async def test_incoming_traceparent_is_continued(client: httpx.AsyncClient, rt: Runtime) -> None:
    """A valid traceparent's trace id is the run's and the response's trace id."""
    trace_id = secrets.token_hex(16)
    headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    name = rt.test_workflow  # type: ignore[attr-defined]
    response = await client.post("/runs", json={"workflow": name, "args": [1, 1]}, headers=headers)
    assert response.status_code == 202
    assert response.headers["x-trace-id"] == trace_id
    assert response.headers["traceresponse"].split("-")[1] == trace_id
    assert response.json()["trace_id"] == trace_id


@pytest.mark.parametrize(
    "value",
    ["garbage", "00-" + "0" * 32 + "-" + "1" * 16 + "-01", "00-XYZ-abc-01", "ff-" + "a" * 55],
)
async def test_malformed_traceparent_starts_a_new_trace(
    client: httpx.AsyncClient, value: str
) -> None:
    """A malformed traceparent is ignored: a new trace id, never an error."""
    response = await client.get("/healthz", headers={"traceparent": value})
    assert response.status_code == 200
    trace_id = response.headers["x-trace-id"]
    assert len(trace_id) == 32
    assert int(trace_id, 16) != 0
    assert trace_id not in value


async def test_unknown_workflow_is_404_with_the_known_ones(
    client: httpx.AsyncClient, rt: Runtime
) -> None:
    """Starting a workflow nobody registered is 404 and lists the registered names."""
    response = await client.post("/runs", json={"workflow": "no.such.thing"})
    assert response.status_code == 404
    assert rt.test_workflow in response.json()["known"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"[1, 2]", 422),
        (b'{"workflow": 3}', 422),
        (b'{"workflow": "x", "args": {"a": 1}}', 422),
        (b'{"workflow": "x", "extra": 1}', 422),
    ],
)
async def test_bad_run_requests(client: httpx.AsyncClient, body: bytes, status: int) -> None:
    """Malformed JSON is 400; a well-formed body of the wrong shape is 422; both say why."""
    response = await client.post("/runs", content=body)
    assert response.status_code == status
    assert response.json()["error"]


async def test_oversized_bodies_are_413(rt: Runtime) -> None:
    """A body over the limit is refused with 413, by Content-Length or while streaming."""
    app = create_app(rt, config=ServiceConfig(max_body_bytes=100))
    async with _client(app) as c:
        declared = await c.post("/runs", content=b"x" * 500)
        assert declared.status_code == 413

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"y" * 50

        streamed = await c.post("/runs", content=chunks())
        assert streamed.status_code == 413


async def test_saturated_limiter_answers_503_with_retry_after(rt: Runtime) -> None:
    """When every run slot is taken and the queue is full, POST /runs is 503 + Retry-After."""
    name = "sat_" + secrets.token_hex(3)
    _register(rt, name)
    config = ServiceConfig(run_limiter=LimiterConfig(max_concurrency=1, max_queue=0))
    async with _client(create_app(rt, config=config)) as c:
        first = await c.post("/runs", json={"workflow": f"{name}.blocking"})
        assert first.status_code == 202
        second = await c.post("/runs", json={"workflow": f"{name}.blocking"})
        assert second.status_code == 503
        assert int(second.headers["retry-after"]) >= 1
        RELEASE.set()
        await _wait_success(c, first.json()["run_id"])
        for _ in range(100):  # the slot is given back when the run ends
            third = await c.post("/runs", json={"workflow": name, "args": [1, 2]})
            if third.status_code == 202:
                break
            await asyncio.sleep(0.02)
        assert third.status_code == 202


async def test_unknown_run_is_404(client: httpx.AsyncClient) -> None:
    """GET /runs/{id} of an unknown run is 404."""
    response = await client.get("/runs/does-not-exist")
    assert response.status_code == 404
    assert "runs list" in response.json()["error"]


async def test_bad_list_parameters(client: httpx.AsyncClient) -> None:
    """An unknown status or a bad limit is 422."""
    assert (await client.get("/runs", params={"status": "paused"})).status_code == 422
    assert (await client.get("/runs", params={"limit": "many"})).status_code == 422
    assert (await client.get("/runs", params={"limit": "0"})).status_code == 422


async def test_metrics_are_valid_openmetrics_with_exemplars(
    client: httpx.AsyncClient, rt: Runtime, tmp_path: Path
) -> None:
    """/metrics passes promtool's lint and carries a trace_id exemplar in OpenMetrics."""
    name = rt.test_workflow  # type: ignore[attr-defined]
    started = await client.post("/runs", json={"workflow": name, "args": [1, 2]})
    await _wait_success(client, started.json()["run_id"])
    text = await client.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain")
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes from Debian's prometheus package (scripts/test installs it)"
    lint = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=text.content,
        capture_output=True,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
    om = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    trace_id = started.json()["trace_id"]
    assert f'# {{trace_id="{trace_id}"}}' in om.text
    for line in om.text.splitlines():  # no unbounded label values (exemplars aside)
        sample = line.split(" # ")[0]
        assert 'run_id="' not in sample
        assert 'trace_id="' not in sample


async def test_method_not_allowed_keeps_the_route_template(client: httpx.AsyncClient) -> None:
    """A wrong method on a known path is 405 and counted under that route, not 'unmatched'."""
    from prometheus_client import REGISTRY

    response = await client.delete("/runs")
    assert response.status_code == 405
    value = REGISTRY.get_sample_value(
        "agent_runtime_http_requests_total",
        {"method": "DELETE", "route": "/runs", "status": "405"},
    )
    assert value is not None
    assert value >= 1
