"""The stack's files pass the real tools: promtool, amtool, Compose, and the Alertmanager
render script under dash and BusyBox (the shell of the Alertmanager image)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from stack_tools import (
    ALERTMANAGER_CONFIG,
    ALERTMANAGER_RENDER_SCRIPT,
    COMPOSE_FILE,
    PROMETHEUS_CONFIG,
    RULE_TESTS_DIR,
    RULES_DIR,
    docker_compose,
    render_alertmanager_config,
    render_prometheus_config,
    require_binary,
    run_tool,
)

DEFAULT_WEBHOOK_URL = "http://host.docker.internal:9099/alerts"


def _webhook_urls(config_path: Path) -> list[str]:
    config = yaml.safe_load(config_path.read_text())
    return [
        hook["url"]
        for receiver in config["receivers"]
        for hook in receiver.get("webhook_configs", [])
    ]


@pytest.mark.prometheus
def test_promtool_check_config_accepts_the_shipped_prometheus_config() -> None:
    """promtool checks stack/prometheus/prometheus.yml and the rule files it references."""
    promtool = require_binary("promtool", "prometheus")
    result = run_tool([promtool, "check", "config", PROMETHEUS_CONFIG])
    assert "1 rule files found" in result.stdout + result.stderr


@pytest.mark.prometheus
def test_promtool_check_rules_accepts_every_rule_file() -> None:
    """promtool checks every file in alerts/rules."""
    promtool = require_binary("promtool", "prometheus")
    files = sorted(RULES_DIR.glob("*.yml"))
    assert files, "alerts/rules holds no rule file"
    run_tool([promtool, "check", "rules", *files])


@pytest.mark.prometheus
def test_promtool_check_rules_rejects_a_broken_rule(tmp_path: Path) -> None:
    """promtool rejects a rule with a PromQL syntax error, so the check above can fail."""
    promtool = require_binary("promtool", "prometheus")
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "groups:\n  - name: g\n    rules:\n      - alert: Broken\n"
        "        expr: sum by (service (agent_runtime_dlq_depth)\n"
    )
    result = run_tool([promtool, "check", "rules", broken], check=False)
    assert result.returncode != 0
    assert "parse error" in result.stdout + result.stderr


@pytest.mark.prometheus
def test_promtool_test_rules_passes_every_alert_unit_test() -> None:
    """promtool runs alerts/tests/*.yml (firing and not-firing cases) and all pass."""
    promtool = require_binary("promtool", "prometheus")
    files = sorted(RULE_TESTS_DIR.glob("*.yml"))
    assert files, "alerts/tests holds no promtool test file"
    result = run_tool([promtool, "test", "rules", *files], cwd=RULE_TESTS_DIR)
    assert "SUCCESS" in result.stdout


@pytest.mark.prometheus
def test_promtool_test_rules_fails_when_an_expectation_is_wrong(tmp_path: Path) -> None:
    """promtool fails a unit test that expects the Watchdog to be silent, so tests can fail."""
    promtool = require_binary("promtool", "prometheus")
    test_file = tmp_path / "wrong.test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(RULES_DIR / "agent-runtime.yml")],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": [],
                        "alert_rule_test": [
                            {"eval_time": "1m", "alertname": "Watchdog", "exp_alerts": []}
                        ],
                    }
                ],
            }
        )
    )
    result = run_tool([promtool, "test", "rules", test_file], check=False)
    assert result.returncode != 0
    assert "Watchdog" in result.stdout + result.stderr


@pytest.mark.prometheus
def test_amtool_check_config_accepts_the_shipped_alertmanager_config() -> None:
    """amtool checks alerts/alertmanager.yml as shipped."""
    amtool = require_binary("amtool", "prometheus-alertmanager")
    result = run_tool([amtool, "check-config", ALERTMANAGER_CONFIG])
    assert "SUCCESS" in result.stdout


@pytest.mark.prometheus
def test_amtool_check_config_accepts_a_rendered_config_with_a_custom_webhook(
    tmp_path: Path,
) -> None:
    """The config rendered with another webhook URL is valid and carries exactly that URL."""
    amtool = require_binary("amtool", "prometheus-alertmanager")
    url = "https://hooks.example.test:8443/alert?team=a&x=%2F\\1"
    rendered = render_alertmanager_config(tmp_path / "am.yml", webhook_url=url)
    run_tool([amtool, "check-config", rendered])
    assert _webhook_urls(rendered) == [url]


@pytest.mark.prometheus
@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=Watchdog", "severity=none"], "deadmans-switch"),
        (["alertname=AgentRuntimeDown", "severity=critical", "service=s"], "webhook"),
        (["alertname=AgentRuntimeCircuitBreakerOpen", "severity=warning", "service=s"], "webhook"),
        (["alertname=SomethingElse"], "webhook"),
    ],
)
def test_amtool_routes_each_alert_to_the_expected_receiver(
    labels: list[str], receiver: str
) -> None:
    """amtool routes the Watchdog to the dead man's switch and everything else to the webhook."""
    amtool = require_binary("amtool", "prometheus-alertmanager")
    result = run_tool(
        [amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", *labels]
    )
    assert result.stdout.split() == [receiver]


def test_docker_compose_config_accepts_the_stack() -> None:
    """`docker-compose -f stack/docker-compose.yml config -q` passes (Compose v2 from PyPI)."""
    run_tool([docker_compose(), "-f", COMPOSE_FILE, "config", "-q"])


def test_docker_compose_config_rejects_an_undefined_dependency(tmp_path: Path) -> None:
    """Compose rejects a file whose depends_on names a missing service, so the check can fail."""
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(
        "name: t\nservices:\n  a:\n    image: busybox:1\n    depends_on:\n"
        "      missing:\n        condition: service_healthy\n"
    )
    result = run_tool([docker_compose(), "-f", bad, "config", "-q"], check=False)
    assert result.returncode != 0
    assert "missing" in result.stderr


def test_render_script_keeps_the_default_webhook_without_a_url(tmp_path: Path) -> None:
    """With ALERTMANAGER_WEBHOOK_URL unset the rendered file keeps the shipped default URL."""
    out = tmp_path / "am.yml"
    result = run_tool(
        ["/bin/sh", ALERTMANAGER_RENDER_SCRIPT, "echo", "started"],
        env={
            "ALERTMANAGER_WEBHOOK_URL": "",
            "ALERTMANAGER_CONFIG_SOURCE": str(ALERTMANAGER_CONFIG),
            "ALERTMANAGER_CONFIG_RENDERED": str(out),
        },
    )
    assert result.stdout.strip() == "started"
    assert _webhook_urls(out) == [DEFAULT_WEBHOOK_URL]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.test/alerts", "must be an http:// or https:// URL"),
        ("http://example.test/a b", "must not contain spaces or quotes"),
        ("http://example.test/'x", "must not contain spaces or quotes"),
        ("example.test/alerts", "must be an http:// or https:// URL"),
    ],
)
def test_render_script_refuses_a_bad_webhook_url(tmp_path: Path, url: str, message: str) -> None:
    """A malformed ALERTMANAGER_WEBHOOK_URL stops the container with a message naming it."""
    out = tmp_path / "am.yml"
    result = run_tool(
        ["/bin/sh", ALERTMANAGER_RENDER_SCRIPT, "true"],
        env={
            "ALERTMANAGER_WEBHOOK_URL": url,
            "ALERTMANAGER_CONFIG_SOURCE": str(ALERTMANAGER_CONFIG),
            "ALERTMANAGER_CONFIG_RENDERED": str(out),
        },
        check=False,
    )
    assert result.returncode == 64
    assert message in result.stderr
    assert not out.exists()


def test_render_script_refuses_a_template_without_the_default_url(tmp_path: Path) -> None:
    """A template whose webhook URL was edited away fails instead of alerting nowhere."""
    template = tmp_path / "template.yml"
    template.write_text(ALERTMANAGER_CONFIG.read_text().replace(DEFAULT_WEBHOOK_URL, "http://x/"))
    out = tmp_path / "am.yml"
    result = run_tool(
        ["/bin/sh", ALERTMANAGER_RENDER_SCRIPT, "true"],
        env={
            "ALERTMANAGER_WEBHOOK_URL": "http://127.0.0.1:1/alerts",
            "ALERTMANAGER_CONFIG_SOURCE": str(template),
            "ALERTMANAGER_CONFIG_RENDERED": str(out),
        },
        check=False,
    )
    assert result.returncode == 65
    assert "exactly once" in result.stderr
    assert not out.exists()
    assert not (tmp_path / "am.yml.tmp").exists()


def test_render_script_refuses_a_missing_template(tmp_path: Path) -> None:
    """A missing template (alerts/ not mounted) is reported as such."""
    result = run_tool(
        ["/bin/sh", ALERTMANAGER_RENDER_SCRIPT, "true"],
        env={
            "ALERTMANAGER_CONFIG_SOURCE": str(tmp_path / "nope.yml"),
            "ALERTMANAGER_CONFIG_RENDERED": str(tmp_path / "am.yml"),
        },
        check=False,
    )
    assert result.returncode == 66
    assert "is alerts/ mounted?" in result.stderr


def test_render_script_works_under_busybox(tmp_path: Path) -> None:
    """The script renders the same file with BusyBox sh and awk, as in the Alertmanager image."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox is not installed: scripts/test installs it (apt-get install busybox)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for applet in ("sh", "awk", "mv", "rm", "true"):
        (bin_dir / applet).symlink_to(busybox)
    url = "https://hooks.example.test/a?b=1&c=\\2"
    out = tmp_path / "am.yml"
    run_tool(
        [bin_dir / "sh", ALERTMANAGER_RENDER_SCRIPT, bin_dir / "true"],
        env={
            "PATH": str(bin_dir),
            "ALERTMANAGER_WEBHOOK_URL": url,
            "ALERTMANAGER_CONFIG_SOURCE": str(ALERTMANAGER_CONFIG),
            "ALERTMANAGER_CONFIG_RENDERED": str(out),
        },
    )
    assert _webhook_urls(out) == [url]


@pytest.mark.prometheus
def test_rendered_test_prometheus_config_scrapes_and_alerts_locally(tmp_path: Path) -> None:
    """The config an end-to-end test renders keeps the shipped job and rules and passes promtool."""
    promtool = require_binary("promtool", "prometheus")
    rendered = render_prometheus_config(
        tmp_path / "prometheus.yml",
        scrape_targets=["127.0.0.1:18787"],
        scrape_interval="1s",
        evaluation_interval="1s",
        alertmanager_address="127.0.0.1:19093",
    )
    result = run_tool([promtool, "check", "config", rendered])
    assert "1 rule files found" in result.stdout + result.stderr
    config = yaml.safe_load(rendered.read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "agent-runtime"
    assert job["static_configs"] == [
        {"targets": ["127.0.0.1:18787"], "labels": {"service": "agent-runtime"}}
    ]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "127.0.0.1:19093"
    ]
    assert config["storage"]["exemplars"]["max_exemplars"] > 0
