"""``agent-runtime logs search``: query the embedded log store."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from agent_runtime.cli._common import (
    State,
    console,
    errors_as_messages,
    fail,
    print_json,
    resolve_run_id,
)

__all__ = ["logs_app"]

logs_app = typer.Typer(help="Search the runtime's own log records.", no_args_is_help=True)

_LEVEL_STYLE = {"DEBUG": "dim", "INFO": "cyan", "WARNING": "yellow", "ERROR": "red"}


@logs_app.command("search")
def search(
    ctx: typer.Context,
    text: Annotated[
        str | None, typer.Argument(help="Words to find in messages (word* for a prefix).")
    ] = None,
    trace_id: Annotated[str | None, typer.Option("--trace-id", help="Only this trace.")] = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="Only this run.")] = None,
    level: Annotated[
        str | None, typer.Option(help="This level and above: DEBUG, INFO, WARNING, ERROR.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Newer than: 15m, 2h, 7d, or an RFC 3339 time.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Older than (same forms as --since).")] = None,
    logger: Annotated[str | None, typer.Option(help="This logger and its children.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many records (newest first).")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON records.")] = False,
) -> None:
    """Search log records kept in the embedded store (AGENT_RUNTIME_LOG_DB)."""
    from observability.search import LocalLogStore, LocalSearchConfig

    if run_id is not None and len(run_id) < 32:
        # A short prefix as `runs list` shows it: resolve it in the state database.
        state: State = ctx.find_root().obj
        with errors_as_messages():
            run_id = resolve_run_id(state.store(), run_id)
    try:
        config = LocalSearchConfig.from_env()
        with LocalLogStore.from_config(config, create=False) as store:
            records = store.search(
                text,
                trace_id=trace_id,
                run_id=run_id,
                level=level,
                since=since,
                until=until,
                logger=logger,
                limit=limit,
            )
    except FileNotFoundError:
        fail(
            f"no log store at {config.path}: nothing was logged there yet, or the records went "
            "to Loki/Elasticsearch (AGENT_RUNTIME_LOG_DB selects another file)"
        )
    except (ValueError, OSError) as exc:
        fail(str(exc))
    if as_json:
        print_json(records)
        return
    table = Table(title=f"{len(records)} record(s), newest first")
    for col in ("time (UTC)", "level", "logger", "message", "run", "trace"):
        table.add_column(col, overflow="fold")
    for rec in records:
        table.add_row(*_row(rec))
    console.print(table)


def _row(rec: dict[str, Any]) -> tuple[str, ...]:
    level = str(rec.get("level", ""))
    style = _LEVEL_STYLE.get(level, "bold red")
    message = str(rec.get("message", ""))
    exc = rec.get("exception")
    if isinstance(exc, dict) and exc.get("type"):
        message += f"  [{exc['type']}: {exc.get('message', '')}]"
    return (
        str(rec.get("timestamp", ""))[:23].replace("T", " "),
        f"[{style}]{level}[/]",
        str(rec.get("logger", "")),
        message,
        str(rec.get("run_id", ""))[:12],
        str(rec.get("trace_id", "")),
    )
