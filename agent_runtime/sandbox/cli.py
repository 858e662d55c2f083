"""``agent-runtime sandbox``: build the sandbox image, sweep orphaned sandboxes.

A thin typer layer over ``build_image`` and ``sweep``; the main CLI mounts ``app`` as the
``sandbox`` command group.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from agent_runtime.errors import SandboxError
from agent_runtime.sandbox.gc import GcReport, sweep
from agent_runtime.sandbox.image import DEFAULT_PYTHON, build_image
from agent_runtime.sandbox.spec import DEFAULT_IMAGE

__all__ = ["app"]

app = typer.Typer(
    name="sandbox",
    help="Sandbox image and garbage collection.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command("build-image")
def build_image_command(
    offline: Annotated[
        bool,
        typer.Option(
            "--offline", help="Build from a debootstrap Debian base (no registry; needs root)."
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even when cached.")] = False,
    image: Annotated[str, typer.Option("--image", help="Image reference to tag.")] = DEFAULT_IMAGE,
    python: Annotated[
        str, typer.Option("--python", help="Python version of the online base image.")
    ] = DEFAULT_PYTHON,
) -> None:
    """Build the sandbox image (FROM python:<version>-slim, or offline from debootstrap)."""
    console = Console()
    err = Console(stderr=True)
    try:
        result = build_image(
            image,
            offline=offline,
            force=force,
            python=python,
            progress=lambda line: console.print(line, markup=False, highlight=False),
        )
    except SandboxError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    state = "[green]built[/green]" if result.built else "[cyan]cached[/cyan]"
    console.print(
        f"{result.image}: {state} in {result.seconds:.1f}s from {result.base}", highlight=False
    )


def _table(report: GcReport) -> Table:
    table = Table(title=f"sandbox gc (owner {report.owner})")
    table.add_column("kind")
    table.add_column("removed", justify="right")
    table.add_column("items")
    for kind, items in (
        ("containers", report.containers),
        ("networks", report.networks),
        ("disks", report.disks),
        ("firewall chains", report.firewall_chains),
    ):
        table.add_row(kind, str(len(items)), ", ".join(items) or "-")
    table.add_row("kept (creator alive or elsewhere)", str(report.kept), "")
    return table


@app.command("gc")
def gc_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    owner: Annotated[
        str | None, typer.Option("--owner", help="Owner id (default: this installation's).")
    ] = None,
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="State directory holding sandbox disks.")
    ] = None,
) -> None:
    """Remove this installation's sandboxes whose creating process is dead."""
    err = Console(stderr=True)
    try:
        report = sweep(owner=owner, state_dir=state_dir)
    except SandboxError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        Console().print(_table(report))
        for line in report.errors:
            err.print(f"[yellow]not removed:[/yellow] {line}", highlight=False)
    if report.errors:
        raise typer.Exit(1)
