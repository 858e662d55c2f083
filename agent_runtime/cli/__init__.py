"""The ``agent-runtime`` command line: a thin layer over the public API.

Every listing has ``--json``. ``--db URL`` (or ``AGENT_RUNTIME_DB``) selects the state database;
``--app MODULE`` (or ``AGENT_RUNTIME_APP``) imports the modules that register your workflows, for
the commands that execute runs (``runs resume``, ``dlq retry``, ``worker``).
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from agent_runtime.cli._common import State, console, errors_as_messages
from agent_runtime.cli.doctor import doctor
from agent_runtime.cli.logs import logs_app
from agent_runtime.cli.runs import dlq_app, runs_app
from agent_runtime.cli.workspace import diff, rollback
from agent_runtime.sandbox.cli import app as sandbox_app

__all__ = ["app", "main"]

app = typer.Typer(
    help="agent-runtime: sandboxed, retried and checkpointed agent runs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(runs_app, name="runs")
app.add_typer(dlq_app, name="dlq")
app.add_typer(logs_app, name="logs")
app.add_typer(sandbox_app, name="sandbox")
app.command()(rollback)
app.command()(diff)
app.command()(doctor)


@app.callback()
def _global(
    ctx: typer.Context,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            envvar="AGENT_RUNTIME_DB",
            help="State database URL (default sqlite:///.agent_runtime/state.db).",
        ),
    ] = None,
    app_modules: Annotated[
        list[str] | None,
        typer.Option("--app", help="Import this module to register workflows (repeatable)."),
    ] = None,
) -> None:
    ctx.obj = State(db=db, apps=tuple(app_modules or ()))


@app.command()
def demo(ctx: typer.Context) -> None:
    """Run the tour: retries, the dead-letter queue, a killed process resumed."""
    from agent_runtime.cli.demo import run_demo

    state: State = ctx.obj
    with errors_as_messages():
        code = run_demo(state.db, console)
    raise typer.Exit(code)


@app.command()
def worker(
    ctx: typer.Context,
    poll_interval: Annotated[float, typer.Option(help="Seconds between polls when idle.")] = 1.0,
) -> None:
    """Claim and execute enqueued runs, and recover orphans, until interrupted."""
    import observability

    state: State = ctx.obj
    observability.configure()
    state.import_apps()
    with errors_as_messages():
        rt = state.runtime(recover=True)
        console.print(f"worker {rt.owner} on {rt.store.url}; Ctrl-C to stop")
        try:
            rt.work(poll_interval=poll_interval)
        except KeyboardInterrupt:
            pass
        finally:
            rt.close()
            observability.shutdown()


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[
        str | None,
        typer.Option(
            help="Address to listen on (default 127.0.0.1; 0.0.0.0 to be scraped "
            "from the Docker stack). Env: AGENT_RUNTIME_SERVICE_HOST."
        ),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default 8787). Env: AGENT_RUNTIME_SERVICE_PORT.")
    ] = None,
) -> None:
    """Serve /metrics, /healthz, /readyz, the admin flags endpoints and the runs API."""
    import uvicorn

    import observability
    from agent_runtime.service import ServiceConfig, create_app

    state: State = ctx.obj
    obs = observability.configure()
    state.import_apps()
    with errors_as_messages():
        config = ServiceConfig.from_env(host=host, port=port)
        rt = state.runtime(recover=True)
        application = create_app(rt, config=config, observability=obs)
        server = uvicorn.Server(
            uvicorn.Config(
                application,
                host=config.host,
                port=config.port,
                log_config=None,
                access_log=False,
                lifespan="off",
            )
        )
        admin = "enabled" if config.admin_token else "disabled (no AGENT_RUNTIME_ADMIN_TOKEN)"
        logging.getLogger("agent_runtime.service").info(
            "serving on http://%s:%d (state %s; admin endpoints %s)",
            config.host,
            config.port,
            rt.store.url,
            admin,
        )
        try:
            server.run()
        finally:
            rt.close()
            observability.shutdown()


def main() -> None:
    """Entry point of the ``agent-runtime`` console script."""
    app()
