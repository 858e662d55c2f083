"""``agent-runtime runs`` and ``agent-runtime dlq``: inspect, resume and retry runs."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from agent_runtime.cli._common import (
    STATUS_STYLE,
    State,
    console,
    errors_as_messages,
    fail,
    fmt_time,
    print_json,
    resolve_run_id,
)
from agent_runtime.state.machine import RunStatus
from agent_runtime.state.views import DeadLetter, RunEventInfo, RunInfo, StepInfo

__all__ = ["dlq_app", "runs_app"]

runs_app = typer.Typer(help="List, inspect and resume runs.", no_args_is_help=True)
dlq_app = typer.Typer(
    help="The dead-letter queue: runs that failed for good.", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _state(ctx: typer.Context) -> State:
    state: State = ctx.find_root().obj
    return state


def _styled(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, '')}]{status}[/]"


@runs_app.command("list")
def runs_list(
    ctx: typer.Context,
    status: Annotated[
        list[str] | None,
        typer.Option("--status", "-s", help="Only runs in this state (repeatable)."),
    ] = None,
    workflow: Annotated[str | None, typer.Option(help="Only runs of this workflow.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many runs.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List runs, newest first."""
    for s in status or []:
        if s not in {x.value for x in RunStatus}:
            fail(f"unknown status {s!r}; use one of {', '.join(x.value for x in RunStatus)}", 2)
    with errors_as_messages():
        store = _state(ctx).store()
        rows = store.list_runs(status=status or None, workflow=workflow, limit=limit)
        counts = store.count_runs()
    runs = [RunInfo.from_row(r) for r in rows]
    if as_json:
        print_json([r.as_dict() for r in runs])
        return
    table = Table(title=f"runs ({len(runs)} shown)")
    for col in ("id", "workflow", "status", "created (UTC)", "duration", "gen", "error"):
        table.add_column(col, overflow="fold")
    for r in runs:
        duration = "-" if r.duration_s is None else f"{r.duration_s:.2f}s"
        error = f"{r.error_type}: {r.error_message}"[:80] if r.error_type else ""
        table.add_row(
            r.id[:12],
            r.workflow,
            _styled(r.status.value),
            fmt_time(r.created_at),
            duration,
            str(r.generation),
            error,
        )
    console.print(table)
    summary = "  ".join(f"{_styled(k)} {v}" for k, v in sorted(counts.items()))
    console.print(f"all runs: {summary or 'none'}")


@runs_app.command("show")
def runs_show(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    as_json: JsonOpt = False,
) -> None:
    """Show a run: status, steps, events, attempts and error."""
    with errors_as_messages():
        store = _state(ctx).store()
        rid = resolve_run_id(store, run_id)
        info = RunInfo.from_row(store.get_run(rid))
        steps = [StepInfo.from_row(s) for s in store.load_steps(rid).values()]
        events = [RunEventInfo.from_row(e) for e in store.events(rid)]
        attempts = store.attempts(rid)
    if as_json:
        print_json(
            {
                "run": info.as_dict(),
                "steps": [s.as_dict() for s in steps],
                "events": [e.as_dict() for e in events],
                "attempts": [a.model_dump() for a in attempts],
            }
        )
        return
    console.print(f"[bold]run[/] {info.id}  {_styled(info.status.value)}")
    console.print(f"workflow    {info.workflow}")
    console.print(f"trace id    {info.trace_id}")
    console.print(
        f"created     {fmt_time(info.created_at)}   finished {fmt_time(info.finished_at)}"
    )
    console.print(f"owner       {info.owner or '-'}   generation {info.generation}")
    if info.error_type:
        console.print(f"[red]error       {info.error_type}: {info.error_message}[/]")
    steps_table = Table(title="steps (checkpoints)")
    for col in ("#", "name", "attempts", "duration", "output"):
        steps_table.add_column(col, overflow="fold")
    for s in steps:
        steps_table.add_row(
            str(s.position), s.name, str(s.attempts), f"{s.duration_s:.3f}s", s.output_preview[:60]
        )
    console.print(steps_table)
    if attempts:
        at = Table(title="failed attempts")
        for col in ("gen", "#", "step", "attempt", "class", "error"):
            at.add_column(col, overflow="fold")
        for a in attempts:
            at.add_row(
                str(a.generation),
                str(a.position),
                a.step,
                str(a.attempt),
                a.error_class,
                f"{a.error_type}: {a.message}"[:100],
            )
        console.print(at)
    et = Table(title="events")
    for col in ("time (UTC)", "kind", "transition", "reason"):
        et.add_column(col, overflow="fold")
    for e in events:
        move = f"{e.from_status or '(new)'} -> {e.to_status}" if e.kind == "transition" else ""
        et.add_row(fmt_time(e.at), e.kind, move, e.reason[:120])
    console.print(et)


@runs_app.command("resume")
def runs_resume(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    wait: Annotated[bool, typer.Option(help="Wait for the run to finish.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Resume a run that is not executing anywhere (completed steps are not run again)."""
    state = _state(ctx)
    state.import_apps()
    with errors_as_messages():
        rt = state.runtime()
        rid = resolve_run_id(rt.store, run_id)
        handle = rt.resume(rid)
        outcome = _wait(handle) if wait else {"run_id": handle.id, "status": handle.status.value}
        rt.close()
    _report(outcome, as_json)


def _wait(handle: Any) -> dict[str, Any]:
    from agent_runtime.errors import RunFailedError

    try:
        result = handle.result()
        return {"run_id": handle.id, "status": "success", "result": result}
    except RunFailedError as exc:
        return {"run_id": handle.id, "status": "failed", "error": str(exc)}


def _report(outcome: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(outcome)
    else:
        console.print(f"run {outcome['run_id']}: {_styled(outcome['status'])}")
        if "result" in outcome:
            console.print(f"result: {outcome['result']!r}")
        if "error" in outcome:
            console.print(f"[red]{outcome['error']}[/]")
    if outcome["status"] == "failed":
        raise typer.Exit(1)


@dlq_app.command("list")
def dlq_list(
    ctx: typer.Context,
    include_all: Annotated[
        bool, typer.Option("--all", help="Include entries already retried.")
    ] = False,
    limit: Annotated[int, typer.Option(help="At most this many entries.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List dead-letter entries, newest first."""
    with errors_as_messages():
        store = _state(ctx).store()
        rows = store.list_dead_letters(status=None if include_all else "open", limit=limit)
    entries = [DeadLetter.from_row(r) for r in rows]
    if as_json:
        print_json([e.as_dict() for e in entries])
        return
    table = Table(title=f"dead letters ({len(entries)} shown)")
    for col in ("id", "run", "workflow", "status", "failed (UTC)", "step", "attempts", "error"):
        table.add_column(col, overflow="fold")
    for e in entries:
        table.add_row(
            str(e.id),
            e.run_id[:12],
            e.workflow,
            _styled(e.status),
            fmt_time(e.created_at),
            e.step or "-",
            str(len(e.attempts)),
            f"{e.error_type}: {e.message}"[:80],
        )
    console.print(table)


@dlq_app.command("show")
def dlq_show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Entry id, or a run id (its newest entry).")],
    as_json: JsonOpt = False,
) -> None:
    """Show a dead-letter entry: error, traceback, every attempt, last checkpoint, inputs."""
    with errors_as_messages():
        store = _state(ctx).store()
        if not ref.isdigit():
            ref = resolve_run_id(store, ref)
        entry = DeadLetter.from_row(store.get_dead_letter(ref))
    if as_json:
        print_json(entry.as_dict())
        return
    console.print(f"[bold]dead letter {entry.id}[/]  {_styled(entry.status)}  run {entry.run_id}")
    console.print(f"workflow     {entry.workflow} (generation {entry.generation})")
    console.print(f"failed at    {fmt_time(entry.created_at)}")
    console.print(f"[red]error        {entry.error_type}: {entry.message}[/]")
    console.print(f"failed step  {entry.step or '-'}")
    last = (
        "none"
        if entry.last_checkpoint_position is None
        else f"#{entry.last_checkpoint_position} {entry.last_checkpoint_step}"
    )
    console.print(f"last good checkpoint  {last}")
    console.print(f"inputs       {entry.inputs}")
    table = Table(title="attempts")
    for col in ("step", "attempt", "time (UTC)", "class", "error", "next delay"):
        table.add_column(col, overflow="fold")
    from agent_runtime.state.views import to_datetime

    for a in entry.attempts:
        delay = "-" if a.get("delay") is None else f"{a['delay']:.2f}s"
        table.add_row(
            f"#{a['position']} {a['step']}",
            str(a["attempt"]),
            fmt_time(to_datetime(a["at"])),
            a["error_class"],
            f"{a['error_type']}: {a['message']}"[:100],
            delay,
        )
    console.print(table)
    console.print("[dim]traceback:[/]")
    console.print(entry.traceback.rstrip(), markup=False)
    console.print(f"\nretry with: agent-runtime dlq retry {entry.id}")


@dlq_app.command("retry")
def dlq_retry(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Entry id, or a run id (its newest entry).")],
    wait: Annotated[
        bool, typer.Option(help="Resume the run here and wait (else leave it for a worker).")
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Retry a dead-lettered run from its last good checkpoint."""
    state = _state(ctx)
    state.import_apps()
    with errors_as_messages():
        rt = state.runtime()
        if not ref.isdigit():
            ref = resolve_run_id(rt.store, ref)
        entry = rt.store.get_dead_letter(ref)
        if wait:
            # Find the workflow before moving the entry, so a missing module changes nothing.
            rt._workflow_for_run(rt.store.get_run(entry.run_id), import_entrypoint=True)
        handle = rt.dlq.retry(int(entry.id or 0), execute=wait)
        outcome = _wait(handle) if wait else {"run_id": handle.id, "status": "pending"}
        rt.close()
    _report(outcome, as_json)
