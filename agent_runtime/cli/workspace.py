"""``agent-runtime rollback`` and ``agent-runtime diff``: a run's workspace by hand."""

from __future__ import annotations

from typing import Annotated

import typer

from agent_runtime.cli._common import (
    State,
    console,
    errors_as_messages,
    print_json,
    resolve_run_id,
)

__all__ = ["diff", "rollback"]


def _state_dir() -> str:
    import os

    from agent_runtime.workspace.config import DEFAULT_STATE_DIR

    return os.environ.get("AGENT_RUNTIME_STATE_DIR") or str(DEFAULT_STATE_DIR)


def rollback(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    to_step: Annotated[
        int | None,
        typer.Option("--to-step", help="Restore the state after this step (default: initial)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Restore a run's workspace to its initial state or to the state after step N."""
    from agent_runtime.sandbox.run_sandbox import rollback_reason
    from agent_runtime.workspace import rollback_run
    from agent_runtime.workspace.rollback import RollbackSummary

    state: State = ctx.find_root().obj
    with errors_as_messages():
        store = state.store()
        rid = resolve_run_id(store, run_id)

        def record(summary: RollbackSummary) -> None:
            store.record_event(rid, "rollback", rollback_reason(summary))

        summary = rollback_run(
            store.engine, rid, to_step=to_step, state_dir=_state_dir(), on_rollback=record
        )
    if as_json:
        print_json(
            {
                "run_id": rid,
                "position": summary.position,
                "step": summary.step,
                "restored": list(summary.restored),
                "recreated": list(summary.recreated),
                "deleted": list(summary.deleted),
                "duration_s": summary.duration_s,
            }
        )
        return
    target = "the initial state" if summary.position < 0 else f"step {summary.position}"
    console.print(f"run {rid}: workspace restored to {target} ({summary.step})")
    for label, paths in (
        ("restored", summary.restored),
        ("recreated", summary.recreated),
        ("deleted", summary.deleted),
    ):
        for path in paths:
            console.print(f"  {label:<9} {path}")
    if not summary.changed:
        console.print("  nothing to do: the workspace already matched")


def diff(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    from_step: Annotated[
        int, typer.Option("--from", help="Earlier step position (-1: the initial state).")
    ] = -1,
    to_step: Annotated[
        int | None, typer.Option("--to", help="Later step position (default: the latest).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show what a run changed in its workspace: added, modified, deleted files, text diffs."""
    from agent_runtime.workspace import diff_run

    state: State = ctx.find_root().obj
    with errors_as_messages():
        store = state.store()
        rid = resolve_run_id(store, run_id)
        result = diff_run(
            store.engine,
            rid,
            from_position=from_step,
            to_position=to_step,
            state_dir=_state_dir(),
        )
    if as_json:
        typer.echo(result.to_json())
    else:
        console.print(result.to_text(), markup=False, highlight=False)
