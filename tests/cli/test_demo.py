"""``agent-runtime demo`` runs every scene against real Docker, and after it every metric the
dashboards and alert rules read has been exported by the runtime with at least one sample."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from rich.console import Console

from agent_runtime.cli.demo import run_demo
from observability.metrics import exposition

# The dashboard and rule parsers live with the stack tests (see tests/stack/conftest.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stack"))

from stack_tools import (
    PROMETHEUS_SYNTHETIC,
    RULES_DIR,
    alerting_rules,
    catalogue_series,
    grafana_variable_values,
    iter_targets,
    load_dashboards,
    promql_selectors,
    recorded_series,
    substitute_grafana_variables,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _used_metrics() -> dict[str, set[str]]:
    """Every metric name the dashboards and the rules read, with where it is read."""
    used: dict[str, set[str]] = defaultdict(set)
    for name, dashboard in load_dashboards().items():
        values = grafana_variable_values(dashboard)
        for panel, target in iter_targets(dashboard):
            if target["datasource"].get("type") == "prometheus":
                expr = substitute_grafana_variables(target["expr"], values)
                for selector in promql_selectors(expr):
                    used[selector.metric].add(f"{name}: {panel['title']}")
        for variable in dashboard.get("templating", {}).get("list", []):
            if (variable.get("datasource") or {}).get("type") == "prometheus":
                expr = substitute_grafana_variables(variable["definition"], values)
                inner = expr[expr.index("(") + 1 : expr.rindex(",")]
                for selector in promql_selectors(inner):
                    used[selector.metric].add(f"{name}: variable {variable['name']}")
    for rule in alerting_rules():
        for selector in promql_selectors(rule["expr"]):
            used[selector.metric].add(f"alert {rule['alert']}")
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    for selector in promql_selectors(rule["expr"]):
                        used[selector.metric].add(f"recording rule {rule['record']}")
    recorded = recorded_series()
    return {
        metric: places
        for metric, places in used.items()
        if metric not in recorded and metric not in PROMETHEUS_SYNTHETIC
    }


USED = _used_metrics()


def _samples() -> dict[str, list[float]]:
    """Sample values by sample name, from the OpenMetrics exposition of this process."""
    found: dict[str, list[float]] = defaultdict(list)
    families = text_string_to_metric_families(exposition().decode())  # type: ignore[no-untyped-call]
    for family in families:
        for sample in family.samples:
            found[sample.name].append(sample.value)
    return found


@dataclass(frozen=True)
class DemoRun:
    """What the in-process demo left: its exit code, its output and the metric samples."""

    code: int
    output: str
    after: dict[str, list[float]]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """Run the whole demo once, in this process, on a temporary SQLite DB and state dir."""
    root = tmp_path_factory.mktemp("demo")
    buffer = io.StringIO()
    console = Console(file=buffer, width=120, highlight=False)
    code = run_demo(
        f"sqlite:///{root}/state.db",
        console,
        state_dir=root / "state",
        workdir=root / "work",
    )
    return DemoRun(code, buffer.getvalue(), _samples())


def test_demo_passes_every_check(demo_run: DemoRun) -> None:
    """The in-process demo exits 0 and no check in its narrative failed or was skipped."""
    assert demo_run.code == 0, demo_run.output
    assert "✗" not in demo_run.output
    assert "check(s) skipped" not in demo_run.output
    assert "everything behaved as described" in demo_run.output


def test_dashboards_and_rules_read_catalogue_metrics() -> None:
    """The list checked below is not empty and names only series of the metric catalogue."""
    series = catalogue_series()
    assert len(USED) >= 20
    assert set(USED) <= set(series), sorted(set(USED) - set(series))


@pytest.mark.parametrize("metric", sorted(USED))
def test_metric_is_exported_after_the_demo(demo_run: DemoRun, metric: str) -> None:
    """A metric a dashboard or an alert rule reads has a sample after the demo workload."""
    where = ", ".join(sorted(USED[metric]))
    assert demo_run.after.get(metric), f"{metric} (read by {where}) has no sample after the demo"


def test_demo_command_in_a_fresh_directory(tmp_path: Path) -> None:
    """`python -m agent_runtime demo` in an empty directory exits 0 and tells the story."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENT_RUNTIME_", "OTEL_")) or k == "AGENT_RUNTIME_OWNER"
    }
    env["COLUMNS"] = "120"
    done = subprocess.run(
        [sys.executable, "-m", "agent_runtime", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for line in (
        "1. a flaky model call is retried",
        "4. one trace id from the HTTP request to the sandbox's stdout",
        "✓ the sandbox command saw that trace id in $TRACEPARENT",
        "✓ the memory bomb ended oom",
        "✓ the failed run's workspace was rolled back by itself",
        "✓ it half-opened, one probe to model A succeeded, and it closed again",
        "✓ once it came back, every record arrived exactly once, in order",
        "demo: everything behaved as described",
    ):
        assert line in out, f"missing {line!r} in:\n{out}"
    assert (tmp_path / ".agent_runtime" / "state.db").is_file()
    assert (tmp_path / ".agent_runtime" / "logs.db").is_file()
