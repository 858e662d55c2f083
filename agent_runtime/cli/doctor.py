"""``agent-runtime doctor``: check what the runtime depends on, and say how to fix what is not.

Checks (each ``ok``, ``warn`` or ``fail``, with a hint):

* the state database: reachable, schema version, runs per state, open dead letters;
* the Docker engine: reachable, version, seccomp, OCI runtimes; the sandbox image present;
* ``iptables`` (egress allowlists need it to close the sandbox's path to host services);
* log shipping: Loki and Elasticsearch answer when configured, else the embedded search store;
* the feature-flags file parses.

Exit code 1 when any check fails (warnings do not fail), so it fits a deploy pipeline.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from typing import Annotated

import typer
from rich.table import Table

from agent_runtime.cli._common import State, console, print_json

__all__ = ["Check", "doctor", "run_checks"]


@dataclass(frozen=True, slots=True)
class Check:
    """One check's outcome."""

    name: str
    status: str
    detail: str
    hint: str = ""


def _database(state: State) -> list[Check]:
    from agent_runtime.errors import AgentRuntimeError
    from agent_runtime.state.store import mask_url

    try:
        store = state.store()
    except AgentRuntimeError as exc:
        return [Check("state database", "fail", str(exc), "see the message")]
    try:
        counts = store.count_runs()
        open_dlq = store.dlq_depth()
        detail = f"{mask_url(store.url)} schema v{store.schema_version()}; runs: " + (
            ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
        )
        checks = [Check("state database", "ok", detail)]
        if open_dlq:
            checks.append(
                Check(
                    "dead-letter queue",
                    "warn",
                    f"{open_dlq} open entr{'y' if open_dlq == 1 else 'ies'}",
                    "inspect with `agent-runtime dlq list`; retry with `agent-runtime dlq "
                    "retry ID`",
                )
            )
        return checks
    finally:
        store.close()


def _docker() -> list[Check]:
    from agent_runtime.errors import DockerUnavailableError
    from agent_runtime.sandbox._engine import connect
    from agent_runtime.sandbox.spec import DEFAULT_IMAGE

    try:
        client, engine = connect()
    except DockerUnavailableError as exc:
        return [
            Check(
                "docker engine",
                "fail",
                str(exc).split(" (")[0],
                "start dockerd (scripts/demo does), or set DOCKER_HOST; without Docker only an "
                "explicit ProcessSandbox can run commands",
            )
        ]
    checks = []
    seccomp = any("seccomp" in opt for opt in engine.security_options)
    checks.append(
        Check(
            "docker engine",
            "ok" if seccomp else "warn",
            f"{engine.docker_host} v{engine.server_version}; runtimes "
            f"{', '.join(engine.runtimes)}; seccomp {'on' if seccomp else 'off'}",
            "" if seccomp else "the engine runs containers without a seccomp profile",
        )
    )
    try:
        client.images.get(DEFAULT_IMAGE)
        checks.append(Check("sandbox image", "ok", DEFAULT_IMAGE))
    except Exception:
        checks.append(
            Check(
                "sandbox image",
                "fail",
                f"{DEFAULT_IMAGE} is not on the engine",
                "agent-runtime sandbox build-image (--offline without a registry)",
            )
        )
    finally:
        client.close()
    return checks


def _firewall() -> Check:
    path = shutil.which("iptables")
    if path:
        return Check("iptables", "ok", path)
    return Check(
        "iptables",
        "warn",
        "not installed",
        "egress allowlists need it (apt-get install iptables); sandboxes without allow= do not",
    )


def _http_ok(url: str) -> tuple[bool, str]:
    import httpx

    try:
        response = httpx.get(url, timeout=3)
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return response.status_code < 400, f"HTTP {response.status_code}"


def _logging() -> list[Check]:
    checks = []
    loki = os.environ.get("AGENT_RUNTIME_LOKI_URL")
    elastic = os.environ.get("AGENT_RUNTIME_ELASTICSEARCH_URL")
    if loki:
        ok, detail = _http_ok(loki.rstrip("/").removesuffix("/loki/api/v1/push") + "/ready")
        checks.append(
            Check(
                "loki",
                "ok" if ok else "fail",
                f"{loki}: {detail}",
                ""
                if ok
                else "records are spooled on disk until Loki answers; check the URL and the stack",
            )
        )
    if elastic:
        ok, detail = _http_ok(elastic)
        checks.append(
            Check(
                "elasticsearch",
                "ok" if ok else "fail",
                f"{elastic}: {detail}",
                ""
                if ok
                else "records are spooled on disk until Elasticsearch answers; check the URL",
            )
        )
    if not loki and not elastic:
        from observability.search import LocalSearchConfig

        config = LocalSearchConfig.from_env()
        checks.append(
            Check(
                "log search",
                "ok",
                f"embedded store {config.path} (no Loki or Elasticsearch configured)",
            )
        )
    return checks


def _flags() -> Check:
    from agent_runtime import errors, flags

    store = flags.FlagStore()
    try:
        current = store.reload()
    except errors.FlagsError as exc:
        return Check("feature flags", "fail", str(exc), "fix the file; the defaults stay in force")
    off = [name for name, value in current.as_dict().items() if value is False]
    return Check(
        "feature flags",
        "ok",
        f"from {store.source}" + (f"; off: {', '.join(off)}" if off else ""),
    )


def run_checks(state: State) -> list[Check]:
    """Run every check."""
    return [*_database(state), *_docker(), _firewall(), *_logging(), _flags()]


_STYLE = {"ok": "green", "warn": "yellow", "fail": "red"}


def doctor(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check the database, Docker, the sandbox image, log shipping and flags."""
    state: State = ctx.find_root().obj
    checks = run_checks(state)
    if as_json:
        print_json([asdict(c) for c in checks])
    else:
        table = Table(title="agent-runtime doctor")
        for col in ("check", "status", "detail", "what to do"):
            table.add_column(col, overflow="fold")
        for c in checks:
            table.add_row(c.name, f"[{_STYLE[c.status]}]{c.status}[/]", c.detail, c.hint)
        console.print(table)
    if any(c.status == "fail" for c in checks):
        raise typer.Exit(1)
