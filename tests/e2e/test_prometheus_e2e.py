"""A real Prometheus scrapes a real `agent-runtime serve`; a failure alert reaches a webhook."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Served
from tests.stack.stack_tools import (
    RUNBOOK_BASE_URL,
    WebhookReceiver,
    http_json,
    render_alertmanager_config,
    render_prometheus_config,
    start_alertmanager,
    start_prometheus,
    wait_until,
)

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]


def _start_runs(served: Served, workflow: str, count: int, **kwargs: Any) -> list[str]:
    ids = []
    for _ in range(count):
        body = {"workflow": workflow, "kwargs": kwargs}
        answer = http_json(served.url + "/runs", body=body)
        ids.append(answer["run_id"])
    return ids


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    answer = http_json(f"{prometheus}/api/v1/query", data={"query": expr})
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def test_prometheus_scrapes_metrics_and_exemplars(
    serve: Callable[..., Served], tmp_path: Path
) -> None:
    """Prometheus 2.42 scrapes serve's /metrics: run counters and trace_id exemplars arrive."""
    served = serve()
    config = render_prometheus_config(
        tmp_path / "prometheus.yml",
        scrape_targets=[f"127.0.0.1:{served.port}"],
        scrape_interval="1s",
    )
    prometheus = start_prometheus(tmp_path, config)
    try:
        started = http_json(
            served.url + "/runs", body={"workflow": "e2e.work", "kwargs": {"ms": 5}}
        )
        wait_until(
            lambda: bool(
                _query(prometheus.url, 'agent_runtime_runs_finished_total{status="success"}')
            ),
            timeout=30,
            what="the success counter in Prometheus",
        )
        (up,) = _query(prometheus.url, 'up{job="agent-runtime"}')
        assert up["value"][1] == "1"
        assert up["metric"]["service"] == "agent-runtime"

        def exemplar_seen() -> bool:
            answer = http_json(
                f"{prometheus.url}/api/v1/query_exemplars",
                data={
                    "query": "agent_runtime_run_duration_seconds_bucket",
                    "start": "0",
                    "end": "9999999999",
                },
            )
            ids = {e["labels"].get("trace_id") for s in answer["data"] for e in s["exemplars"]}
            return started["trace_id"] in ids

        wait_until(exemplar_seen, timeout=30, what="the run's trace_id exemplar in Prometheus")
    finally:
        prometheus.stop()


def test_failing_runs_fire_an_alert_delivered_to_a_webhook(
    serve: Callable[..., Served], tmp_path: Path
) -> None:
    """Runs failing on purpose fire the burn-rate alert; Alertmanager delivers it to a webhook."""
    served = serve()
    with WebhookReceiver() as receiver:
        am_config = render_alertmanager_config(
            tmp_path / "alertmanager.yml",
            webhook_url=receiver.url,
            group_wait="0s",
            group_interval="1s",
            repeat_interval="1h",
        )
        alertmanager = start_alertmanager(tmp_path, am_config)
        prom_config = render_prometheus_config(
            tmp_path / "prometheus.yml",
            scrape_targets=[f"127.0.0.1:{served.port}"],
            scrape_interval="1s",
            evaluation_interval="1s",
            alertmanager_address=f"127.0.0.1:{alertmanager.port}",
        )
        prometheus = start_prometheus(tmp_path, prom_config)
        try:
            _start_runs(served, "e2e.work", 3, ms=1)
            # Let Prometheus see the counters before the failures, so rate() has two points.
            wait_until(
                lambda: bool(_query(prometheus.url, "agent_runtime_runs_finished_total")),
                timeout=30,
                what="the first scrape",
            )
            for _ in range(3):  # failures over a few scrapes, as a real outage looks
                _start_runs(served, "e2e.fail", 5, order="O-1")
                time.sleep(1.5)

            def delivered() -> bool:
                return any(
                    a["labels"].get("alertname") == "AgentRuntimeRunErrorBudgetBurnFast"
                    for a in receiver.alerts()
                )

            wait_until(delivered, timeout=90, interval=0.5, what="the alert at the webhook")
        finally:
            prometheus.stop()
            alertmanager.stop()
    alert = next(
        a
        for a in receiver.alerts()
        if a["labels"]["alertname"] == "AgentRuntimeRunErrorBudgetBurnFast"
    )
    assert alert["status"] == "firing"
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["service"] == "agent-runtime"
    assert "error budget" in alert["annotations"]["summary"]
    assert alert["annotations"]["runbook_url"] == (
        RUNBOOK_BASE_URL + "agentruntimerunerrorbudgetburnfast"
    )
    entries = http_json(served.url + "/runs?status=failed&limit=100")["runs"]
    assert len(entries) == 15
