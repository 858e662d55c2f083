"""Shared plumbing of the CLI: global options, the runtime, output, error handling."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import typer
from rich.console import Console

from agent_runtime.errors import AgentRuntimeError, RunNotFoundError

__all__ = ["STATUS_STYLE", "State", "console", "err_console", "fail", "fmt_time", "print_json"]

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

STATUS_STYLE = {
    "pending": "dim",
    "running": "cyan",
    "retrying": "yellow",
    "success": "green",
    "failed": "red",
    "open": "red",
    "retried": "dim",
}


@dataclass
class State:
    """Options given before the command (``--db``, ``--app``)."""

    db: str | None = None
    apps: tuple[str, ...] = ()

    def import_apps(self) -> None:
        """Import the modules that register the user's workflows."""
        names = list(self.apps)
        env = os.environ.get("AGENT_RUNTIME_APP")
        if env:
            names.extend(n.strip() for n in env.split(",") if n.strip())
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        for name in names:
            try:
                importlib.import_module(name)
            except Exception as exc:
                fail(
                    f"cannot import {name!r} (from --app / AGENT_RUNTIME_APP): {exc}; run from "
                    "your project directory or set PYTHONPATH"
                )

    def runtime(self, *, recover: bool = False) -> Any:
        """Open the runtime on the selected database."""
        from agent_runtime.runtime import Runtime

        return Runtime(self.db, recover=recover)

    def store(self) -> Any:
        """Open the store only (read-only commands: no maintenance thread)."""
        from agent_runtime.state.store import DEFAULT_DB_URL, Store

        return Store(self.db or os.environ.get("AGENT_RUNTIME_DB") or DEFAULT_DB_URL)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` as an error and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@contextlib.contextmanager
def errors_as_messages() -> Iterator[None]:
    """Turn agent-runtime errors into a one-line message and exit code 1 (no traceback)."""
    try:
        yield
    except AgentRuntimeError as exc:
        fail(str(exc))


def resolve_run_id(store: Any, ref: str) -> str:
    """Accept a full run id or a unique prefix of at least 6 characters."""
    if len(ref) >= 32:
        return ref
    if len(ref) < 6:
        fail(f"run id {ref!r} is too short; give at least 6 characters")
    matches = store.find_runs(ref, limit=3)
    if len(matches) == 1:
        return str(matches[0])
    if not matches:
        raise RunNotFoundError(
            f"no run id starts with {ref!r}; list runs with `agent-runtime runs list`",
            run_id=ref,
        )
    fail(f"run id prefix {ref!r} is ambiguous: {', '.join(matches)}")
    raise AssertionError  # unreachable: fail() raised


def fmt_time(value: datetime | None) -> str:
    """Format a datetime for tables (UTC, seconds)."""
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout (for ``--json``)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
