"""Dashboards and rules use only metrics of the catalogue, only provisioned data sources, only
the runtime's Loki labels and ECS fields, and every PromQL query is accepted by a real
Prometheus."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from stack_tools import (
    DATASOURCES_FILE,
    LOKI_LABELS,
    PROMETHEUS_SYNTHETIC,
    TARGET_LABELS,
    Selector,
    ServerProcess,
    alerting_rules,
    catalogue_series,
    grafana_variable_values,
    http_json,
    iter_datasource_refs,
    iter_panels,
    iter_targets,
    load_dashboards,
    load_yaml,
    parse_matchers,
    promql_selectors,
    recorded_series,
    substitute_grafana_variables,
)

DASHBOARDS = load_dashboards()
# Label values that are fixed sets in the runtime (agent_runtime/events.py): a typo in a
# matcher would make a panel or an alert silently empty.
KNOWN_VALUES = {
    ("agent_runtime_runs_finished_total", "status"): {"success", "failed"},
    ("agent_runtime_run_duration_seconds_bucket", "status"): {"success", "failed"},
    ("agent_runtime_breaker_state", "state"): {"closed", "open", "half_open"},
    ("agent_runtime_sandbox_finished_total", "reason"): {
        "exited",
        "timeout",
        "oom",
        "disk_limit",
        "killed",
        "error",
    },
}
ECS_FIELDS = {"@timestamp", "message", "log.level", "service.name", "trace.id", "span.id"}
ES_RUN_ID_FIELD = "labels.run_id"


def _provisioned() -> dict[str, dict[str, Any]]:
    return {ds["uid"]: ds for ds in load_yaml(DATASOURCES_FILE)["datasources"]}


def _prometheus_queries() -> list[tuple[str, str, str, bool]]:
    """(dashboard, panel title, PromQL with variables substituted, exemplar?) per target."""
    queries = []
    for name, dashboard in DASHBOARDS.items():
        values = grafana_variable_values(dashboard)
        for panel, target in iter_targets(dashboard):
            if target["datasource"].get("type") == "prometheus":
                expr = substitute_grafana_variables(target["expr"], values)
                queries.append((name, panel["title"], expr, bool(target.get("exemplar"))))
    return queries


def _variable_queries() -> list[tuple[str, str]]:
    """(dashboard, metric selector inside label_values(...)) for Prometheus variables."""
    found = []
    for name, dashboard in DASHBOARDS.items():
        for variable in dashboard["templating"]["list"]:
            if (variable.get("datasource") or {}).get("type") != "prometheus":
                continue
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"])
            assert match, f"{name}: variable {variable['name']} is not label_values(...)"
            found.append((name, match.group(1)))
    return found


def _rule_exprs() -> list[tuple[str, str]]:
    return [(rule["alert"], rule["expr"]) for rule in alerting_rules()]


def _check_selector(selector: Selector, where: str) -> list[str]:
    """Problems with one selector: unknown metric, unknown label, impossible value."""
    series = catalogue_series()
    recorded = recorded_series()
    name = selector.metric
    if name in series:
        allowed = series[name] | TARGET_LABELS
    elif name in recorded:
        allowed = recorded[name]
    elif name in PROMETHEUS_SYNTHETIC:
        return []
    else:
        return [f"{where}: {name} is neither in observability/metrics.py nor a recording rule"]
    problems = []
    for label, op, value in selector.matchers:
        if label not in allowed:
            problems.append(f"{where}: {name} has no label {label!r} (has {sorted(allowed)})")
        known = KNOWN_VALUES.get((name, label))
        if known is None or "$" in value:
            continue
        values = set(value.split("|")) if op in ("=~", "!~") else {value}
        if not values <= known:
            problems.append(f"{where}: {name}{{{label}}} never takes {sorted(values - known)}")
    return problems


def test_dashboards_exist_and_have_unique_uids() -> None:
    """dashboards/ holds the overview and the logs dashboard, with distinct fixed uids."""
    uids = {d["uid"] for d in DASHBOARDS.values()}
    assert {"agent-runtime-overview", "agent-runtime-logs"} <= uids
    assert len(uids) == len(DASHBOARDS)
    for name, dashboard in DASHBOARDS.items():
        assert name == f"{dashboard['uid']}.json"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_panels_are_well_formed(name: str) -> None:
    """Panel ids are unique, every panel fits the 24-column grid, and none overlap."""
    dashboard = DASHBOARDS[name]
    panels = list(iter_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert 0 < grid["w"] <= 24 - grid["x"], panel["title"]
        for dx in range(grid["w"]):
            for dy in range(grid["h"]):
                cell = (grid["x"] + dx, grid["y"] + dy)
                assert cell not in cells, f"{panel['title']!r} overlaps {cells[cell]!r}"
                cells[cell] = panel["title"]
        if panel["type"] not in ("row", "text"):
            assert panel["title"], f"{name}: untitled panel"
            assert panel.get("description"), f"{name}: {panel['title']!r} has no description"
            assert panel.get("targets"), f"{name}: {panel['title']!r} has no query"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_uses_only_provisioned_datasources(name: str) -> None:
    """Every datasource reference is a provisioned uid of the same type."""
    provisioned = _provisioned()
    refs = list(iter_datasource_refs(DASHBOARDS[name]))
    assert refs
    for ref in refs:
        if ref["uid"] == "-- Grafana --":
            continue
        assert ref["uid"] in provisioned, f"{name}: datasource uid {ref['uid']!r} not provisioned"
        assert ref.get("type") == provisioned[ref["uid"]]["type"], ref


def test_overview_covers_the_issue_panels() -> None:
    """The overview shows every area the issue lists, by the metric each needs."""
    exprs = " ".join(
        target["expr"]
        for _, target in iter_targets(DASHBOARDS["agent-runtime-overview.json"])
        if "expr" in target
    )
    for metric in (
        "agent_runtime_runs_started_total",
        "agent_runtime_runs_finished_total",
        "agent_runtime_run_duration_seconds_bucket",
        "agent_runtime_step_duration_seconds_bucket",
        "agent_runtime_retries_total",
        "agent_runtime_breaker_state",
        "agent_runtime_dlq_depth",
        "agent_runtime_limiter_in_flight",
        "agent_runtime_limiter_queued",
        "agent_runtime_limiter_rejected_total",
        "agent_runtime_sandbox_starts_total",
        "agent_runtime_sandbox_finished_total",
        "agent_runtime_sandbox_egress_blocked_total",
        "agent_runtime_log_records_sent_total",
        "agent_runtime_log_records_dropped_total",
    ):
        assert metric in exprs, f"the overview has no panel on {metric}"


def test_duration_percentile_panels_show_exemplars() -> None:
    """Every histogram_quantile target of the run and step durations asks for exemplars."""
    checked = 0
    for _, target in iter_targets(DASHBOARDS["agent-runtime-overview.json"]):
        expr = target.get("expr", "")
        if "histogram_quantile" in expr and re.search(r"(run|step)_duration_seconds", expr):
            assert target.get("exemplar") is True, expr
            checked += 1
    assert checked >= 4


@pytest.mark.parametrize(("where", "expr"), _rule_exprs(), ids=[a for a, _ in _rule_exprs()])
def test_rule_uses_only_catalogue_metrics(where: str, expr: str) -> None:
    """Every metric and label an alert rule reads exists in the catalogue (or is recorded)."""
    selectors = promql_selectors(expr)
    problems = [p for s in selectors for p in _check_selector(s, where)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("dashboard", "title", "expr", "exemplar"),
    _prometheus_queries(),
    ids=[f"{d}:{t}" for d, t, _, _ in _prometheus_queries()],
)
def test_dashboard_query_uses_only_catalogue_metrics(
    dashboard: str, title: str, expr: str, exemplar: bool
) -> None:
    """Every metric and label a dashboard query reads exists in the catalogue."""
    selectors = promql_selectors(expr)
    assert selectors, f"{title}: no metric in {expr!r}"
    problems = [p for s in selectors for p in _check_selector(s, f"{dashboard}: {title}")]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("dashboard", "selector"), _variable_queries())
def test_dashboard_variable_uses_a_catalogue_metric(dashboard: str, selector: str) -> None:
    """The metric a Prometheus template variable reads its values from exists."""
    values = grafana_variable_values(DASHBOARDS[dashboard])
    selectors = promql_selectors(substitute_grafana_variables(selector, values))
    assert len(selectors) == 1
    problems = _check_selector(selectors[0], f"{dashboard}: variable")
    assert not problems, "\n".join(problems)


def test_selector_check_catches_unknown_metrics_labels_and_values() -> None:
    """The catalogue check reports a made-up metric, label and status (it can fail)."""
    bad = (
        'rate(agent_runtime_runs_finishd_total[5m]) + agent_runtime_dlq_depth{queue="x"}'
        ' + agent_runtime_runs_finished_total{status="failure"}'
    )
    problems = [p for s in promql_selectors(bad) for p in _check_selector(s, "bad")]
    assert len(problems) == 3
    assert "agent_runtime_runs_finishd_total is neither" in problems[0]
    assert "has no label 'queue'" in problems[1]
    assert "never takes ['failure']" in problems[2]


def test_promql_selector_parser_finds_metrics_not_functions_or_labels() -> None:
    """The PromQL scanner returns metric selectors only, with their matchers."""
    expr = (
        'histogram_quantile(0.95, sum by (le, step) (rate(a_bucket{x="1", y=~"p|q"}[5m])))'
        " / on (service) group_left(step) max without (instance) (b)"
        ' and absent(up{job="j"}) or vector(1) > bool 2 unless c offset 5m'
    )
    assert promql_selectors(expr) == [
        Selector("a_bucket", (("x", "=", "1"), ("y", "=~", "p|q"))),
        Selector("b", ()),
        Selector("up", (("job", "=", "j"),)),
        Selector("c", ()),
    ]


def test_grafana_variable_substitution_rejects_unknown_variables() -> None:
    """A query using an undefined template variable is reported, not sent half-substituted."""
    assert substitute_grafana_variables("rate(m[$__rate_interval])", {"__rate_interval": "5m"})
    with pytest.raises(KeyError, match=r"\$nope"):
        substitute_grafana_variables('m{a=~"$nope"}', {})


@pytest.mark.prometheus
@pytest.mark.parametrize(
    ("dashboard", "title", "expr", "exemplar"),
    _prometheus_queries(),
    ids=[f"{d}:{t}" for d, t, _, _ in _prometheus_queries()],
)
def test_dashboard_query_is_accepted_by_prometheus(
    prometheus_server: ServerProcess, dashboard: str, title: str, expr: str, exemplar: bool
) -> None:
    """POST /api/v1/query (and /api/v1/query_exemplars for exemplar panels) answers success."""
    answer = http_json(prometheus_server.url + "/api/v1/query", data={"query": expr})
    assert answer["status"] == "success", answer
    if exemplar:
        now = time.time()
        answer = http_json(
            prometheus_server.url + "/api/v1/query_exemplars",
            data={"query": expr, "start": str(now - 3600), "end": str(now)},
        )
        assert answer["status"] == "success", answer


@pytest.mark.prometheus
def test_prometheus_query_api_rejects_a_malformed_query(prometheus_server: ServerProcess) -> None:
    """The query API check can fail: a malformed expression answers 400 with an error."""
    with pytest.raises(AssertionError, match="400"):
        http_json(prometheus_server.url + "/api/v1/query", data={"query": "sum(rate(x[5m])"})


def _logql_targets() -> list[tuple[str, str, str]]:
    found = []
    for name, dashboard in DASHBOARDS.items():
        for panel, target in iter_targets(dashboard):
            if target["datasource"].get("type") == "loki":
                found.append((name, panel["title"], target["expr"]))
    return found


@pytest.mark.parametrize(("dashboard", "title", "expr"), _logql_targets())
def test_loki_queries_select_streams_by_the_sink_labels_only(
    dashboard: str, title: str, expr: str
) -> None:
    """Loki stream selectors use only service, level and env (ids are in the line)."""
    selectors = re.findall(r"\{([^{}]*)\}", expr)
    assert selectors, f"{title}: no stream selector"
    for body in selectors:
        labels = {label for label, _, _ in parse_matchers(body)}
        assert labels, f"{title}: empty stream selector"
        assert labels <= LOKI_LABELS, f"{title}: selects on {sorted(labels - LOKI_LABELS)}"


def test_logs_dashboard_follows_a_trace_and_a_run_in_loki_and_elasticsearch() -> None:
    """The logs view filters Loki on trace_id/run_id and Elasticsearch on trace.id/run id."""
    dashboard = DASHBOARDS["agent-runtime-logs.json"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["trace_id"]["type"] == "textbox"
    assert variables["run_id"]["type"] == "textbox"
    loki = [t["expr"] for _, t in iter_targets(dashboard) if t["datasource"]["type"] == "loki"]
    es = [
        t["query"] for _, t in iter_targets(dashboard) if t["datasource"]["type"] == "elasticsearch"
    ]
    assert any(
        "| json |" in e and 'trace_id="$trace_id"' in e and 'run_id="$run_id"' in e for e in loki
    )
    assert any('trace.id:"$trace_id"' in q and f'{ES_RUN_ID_FIELD}:"$run_id"' in q for q in es)
    tempo = [t for _, t in iter_targets(dashboard) if t["datasource"]["type"] == "tempo"]
    assert tempo
    assert tempo[0]["query"] == "$trace_id"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_elasticsearch_queries_use_ecs_fields(name: str) -> None:
    """Elasticsearch panels query the ECS fields the sink writes (and the run id field)."""
    for panel, target in iter_targets(DASHBOARDS[name]):
        if target["datasource"].get("type") != "elasticsearch":
            continue
        fields = set(re.findall(r"([\w@.]+):", target["query"]))
        unknown = fields - ECS_FIELDS - {ES_RUN_ID_FIELD}
        assert not unknown, f"{panel['title']}: unknown fields {sorted(unknown)}"
        assert target["timeField"] == "@timestamp"
