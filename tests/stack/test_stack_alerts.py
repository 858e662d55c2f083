"""The alert rules are complete, documented and tested, a real Prometheus loads and evaluates
them, and a real Alertmanager delivers and inhibits them as configured."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from stack_tools import (
    RULE_TESTS_DIR,
    RUNBOOK_BASE_URL,
    RUNBOOKS,
    ServerProcess,
    WebhookReceiver,
    alerting_rules,
    http_json,
    markdown_anchors,
    render_alertmanager_config,
    start_alertmanager,
    wait_until,
)

SEVERITIES = {"critical", "warning", "none"}
REQUIRED_ANNOTATIONS = {"summary", "description", "runbook_url"}


def _rule_tests() -> list[dict[str, Any]]:
    cases = []
    for path in sorted(RULE_TESTS_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["tests"]:
            cases.extend(group.get("alert_rule_test", []))
    return cases


def test_alert_names_are_unique() -> None:
    """No two alerting rules share a name (routing and runbooks key on it)."""
    names = [rule["alert"] for rule in alerting_rules()]
    assert len(names) == len(set(names)), names


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda rule: rule["alert"])
def test_alert_has_severity_service_and_annotations(rule: dict[str, Any]) -> None:
    """Each alert has a known severity, a service to group on and the three annotations."""
    labels = rule.get("labels", {})
    assert labels.get("severity") in SEVERITIES, f"{rule['alert']}: severity {labels!r}"
    missing = REQUIRED_ANNOTATIONS - set(rule.get("annotations", {}))
    assert not missing, f"{rule['alert']} lacks annotations {sorted(missing)}"
    if rule["alert"] != "Watchdog":
        # The service label comes from `by (service)`, the target labels, or the rule itself.
        assert "service" in labels or re.search(r"\bservice\b|up\{", rule["expr"]), (
            f"{rule['alert']} would reach Alertmanager without a service label"
        )


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda rule: rule["alert"])
def test_alert_runbook_url_points_at_an_existing_runbook_section(rule: dict[str, Any]) -> None:
    """Each runbook_url is docs/runbooks.md#<anchor> and that heading exists."""
    url = rule["annotations"]["runbook_url"]
    assert url.startswith(RUNBOOK_BASE_URL), url
    anchor = url.removeprefix(RUNBOOK_BASE_URL)
    assert anchor == rule["alert"].lower(), f"anchor {anchor!r} is not the alert name"
    assert anchor in markdown_anchors(RUNBOOKS), f"docs/runbooks.md has no heading #{anchor}"


def test_every_runbook_section_belongs_to_an_alert() -> None:
    """Every alert-level section of docs/runbooks.md names an existing alert."""
    alerts = {rule["alert"] for rule in alerting_rules()}
    documented = set(re.findall(r"^## (\w+)\s*$", RUNBOOKS.read_text(), re.M))
    assert documented == alerts, (
        f"undocumented: {sorted(alerts - documented)}; stale: {sorted(documented - alerts)}"
    )


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_has_firing_and_silent_unit_tests(rule: dict[str, Any]) -> None:
    """alerts/tests has, for each alert, a case where it fires and a case where it must not."""
    cases = [case for case in _rule_tests() if case["alertname"] == rule["alert"]]
    assert any(case.get("exp_alerts") for case in cases), f"{rule['alert']}: no firing case"
    if rule["alert"] != "Watchdog":  # always fires by design
        assert any(not case.get("exp_alerts") for case in cases), (
            f"{rule['alert']}: no case proving it stays silent"
        )


@pytest.mark.prometheus
def test_prometheus_loads_and_evaluates_every_rule(prometheus_server: ServerProcess) -> None:
    """The session's real Prometheus has every alert and recording rule, all healthy."""
    expected = {rule["alert"] for rule in alerting_rules()}

    def all_evaluated() -> bool:
        groups = http_json(prometheus_server.url + "/api/v1/rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return bool(rules) and all(rule["lastEvaluation"][:4] != "0001" for rule in rules)

    wait_until(all_evaluated, timeout=15, what="every rule group to be evaluated once")
    groups = http_json(prometheus_server.url + "/api/v1/rules")["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    loaded = {rule["name"] for rule in rules if rule["type"] == "alerting"}
    assert loaded == expected
    unhealthy = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not unhealthy


@pytest.mark.prometheus
def test_prometheus_fires_the_watchdog_and_nothing_else_without_data(
    prometheus_server: ServerProcess,
) -> None:
    """With no runtime target only the Watchdog fires, and the absence alert once 5 minutes
    have passed: no rule misfires on an empty database."""

    def watchdog_firing() -> bool:
        alerts = http_json(prometheus_server.url + "/api/v1/alerts")["data"]["alerts"]
        return any(a["labels"]["alertname"] == "Watchdog" for a in alerts)

    wait_until(watchdog_firing, timeout=15, what="the Watchdog to fire")
    alerts = http_json(prometheus_server.url + "/api/v1/alerts")["data"]["alerts"]
    firing = {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}
    pending = {a["labels"]["alertname"] for a in alerts if a["state"] == "pending"}
    assert "Watchdog" in firing
    assert firing <= {"Watchdog", "AgentRuntimeAbsent"}
    assert pending <= {"AgentRuntimeAbsent"}


def _post_alerts(alertmanager: ServerProcess, alerts: list[dict[str, Any]]) -> None:
    http_json(alertmanager.url + "/api/v2/alerts", body=alerts)


def _alert(name: str, severity: str, service: str) -> dict[str, Any]:
    return {
        "labels": {"alertname": name, "severity": severity, "service": service},
        "annotations": {
            "summary": f"{name} test",
            "description": "posted by the stack test",
            "runbook_url": RUNBOOK_BASE_URL + name.lower(),
        },
    }


@pytest.mark.prometheus
def test_alertmanager_delivers_to_the_webhook_and_inhibits_warnings(tmp_path: Path) -> None:
    """A real Alertmanager with the shipped routing sends criticals and unrelated warnings to
    the webhook, holds back a warning of a service with a critical, and keeps the Watchdog off
    the webhook."""
    with WebhookReceiver() as receiver:
        config = render_alertmanager_config(
            tmp_path / "alertmanager.yml",
            webhook_url=receiver.url,
            group_wait="0s",
            group_interval="1s",
        )
        alertmanager = start_alertmanager(tmp_path, config)
        try:
            _post_alerts(
                alertmanager,
                [
                    _alert("AgentRuntimeDown", "critical", "checkout"),
                    _alert("AgentRuntimeDeadLetterQueueGrowing", "warning", "checkout"),
                    _alert("AgentRuntimeCircuitBreakerOpen", "warning", "search"),
                    {"labels": {"alertname": "Watchdog", "severity": "none"}},
                ],
            )

            def delivered() -> set[tuple[str, str]]:
                return {
                    (a["labels"]["alertname"], a["labels"]["service"]) for a in receiver.alerts()
                }

            wait_until(
                lambda: len(delivered()) >= 2, timeout=15, what="two notifications on the webhook"
            )
            time.sleep(2.5)  # two more group intervals: anything wrongly routed would show up
            assert delivered() == {
                ("AgentRuntimeDown", "checkout"),
                ("AgentRuntimeCircuitBreakerOpen", "search"),
            }
            down = next(
                a for a in receiver.alerts() if a["labels"]["alertname"] == "AgentRuntimeDown"
            )
            assert down["status"] == "firing"
            assert down["annotations"]["runbook_url"].endswith("#agentruntimedown")
            assert {p["receiver"] for p in receiver.payloads} == {"webhook"}

            states = http_json(alertmanager.url + "/api/v2/alerts")
            by_name = {a["labels"]["alertname"]: a["status"] for a in states}
            assert by_name["AgentRuntimeDeadLetterQueueGrowing"]["state"] == "suppressed"
            assert by_name["AgentRuntimeDeadLetterQueueGrowing"]["inhibitedBy"]
            assert not by_name["AgentRuntimeCircuitBreakerOpen"]["inhibitedBy"]
        finally:
            alertmanager.stop()
