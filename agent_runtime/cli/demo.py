"""``agent-runtime demo``: the README's main job, a tour of what the runtime does.

Scenes (each checks what it shows and the demo exits 1 if anything is off):

1. **Retries**: a triage agent whose classifier call fails twice with a connection error, then
   succeeds; the run is ``retrying`` between attempts and ends ``success``.
2. **Dead-letter queue**: an order workflow whose payment step fails for good; the run lands in
   the DLQ with every attempt; the cause is fixed and the entry retried: the run resumes from its
   last good checkpoint (the stock reservation is not made twice).
3. **Crash and resume**: a 6-step ingest run in a child process is killed with SIGKILL mid-way;
   the runtime sees the owner is dead, recovers the run and finishes it; committed steps never run
   again.
4. **One trace id end to end** (:mod:`.demo_trace`): a run started over the runtime's HTTP API
   calls a local HTTP server through httpx and runs a sandbox command; the same trace id is in
   the request, the run, the server's ``traceparent``, the sandbox's ``$TRACEPARENT``, the run's
   log records and a ``/metrics`` exemplar.
5. **Untrusted code in the sandbox** (:mod:`.demo_sandbox`): a file written, egress refused by
   the allowlist, a memory bomb ``oom``, a busy loop ``timeout``, a disk fill ``disk_limit``, and
   a failed run's workspace rolled back.
6. **Resilience** (:mod:`.demo_resilience`): a circuit breaker opening, a fallback model serving,
   the breaker half-opening and closing; a limiter refusing; a guardrail stopping a tool loop;
   feature flags reloaded.
7. **Log shipping in an outage** (:mod:`.demo_logs`): records spooled while the log endpoint is
   down, delivered in order when it is back, and no logging call ever blocked.

The demo configures observability itself (JSON records into the embedded log search in the state
directory's ``logs.db``, no console stream so the narrative stays readable, tracing on) and
shuts it down at the end. The workflows are module-level so that any process (the child,
``runs resume``) can import them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from agent_runtime.cli.demo_common import Checks, say
from agent_runtime.context import RunContext
from agent_runtime.errors import RunFailedError
from agent_runtime.resilience.policy import RetryPolicy
from agent_runtime.runtime import Runtime

__all__ = ["run_demo"]

FAST = RetryPolicy(max_attempts=4, initial=0.05, maximum=0.2, jitter=0.1)

# Process-local stand-ins for the outside world the agents talk to.
_calls: Counter[str] = Counter()
_gateway_fixed = {"value": False}
_journal = {"path": ""}


# -- scene 1: retries --------------------------------------------------------------------------


def fetch_ticket(ticket_id: str) -> dict[str, str]:
    """Read the ticket (stands in for a helpdesk API call)."""
    _calls["fetch_ticket"] += 1
    return {"id": ticket_id, "text": "The export button crashes the app since the update."}


def classify(text: str, run_id: str) -> str:
    """Ask the model for a label; the first two calls fail like a flaky network would."""
    _calls[f"classify:{run_id}"] += 1
    if _calls[f"classify:{run_id}"] <= 2:
        raise ConnectionError("model endpoint reset the connection")
    return "bug" if "crash" in text else "question"


def route(label: str) -> str:
    """Pick the queue for a label."""
    return {"bug": "engineering", "question": "support"}[label]


def triage(ctx: RunContext, ticket_id: str) -> dict[str, str]:
    """Fetch a ticket, classify it (flaky), route it."""
    ticket = ctx.step(fetch_ticket, ticket_id)
    label = ctx.step(classify, ticket["text"], ctx.run_id, retry=FAST)
    queue = ctx.step(route, label)
    return {"ticket": ticket_id, "label": label, "queue": queue}


# -- scene 2: dead-letter queue ----------------------------------------------------------------


class PaymentDeclinedError(Exception):
    """The payment provider refused the charge."""


def reserve_stock(sku: str, qty: int) -> str:
    """Reserve stock (must not happen twice for one order)."""
    _calls["reserve_stock"] += 1
    return f"reservation-{sku}-{qty}"


def charge_card(order_id: str, amount: float) -> str:
    """Charge the customer; declined until the gateway configuration is fixed."""
    _calls["charge_card"] += 1
    if not _gateway_fixed["value"]:
        raise PaymentDeclinedError(f"gateway rejected merchant id for order {order_id}")
    return f"charge-{order_id}"


def order(ctx: RunContext, order_id: str, sku: str, qty: int, amount: float) -> dict[str, str]:
    """Reserve stock, then charge the card."""
    reservation = ctx.step(reserve_stock, sku, qty)
    charge = ctx.step(charge_card, order_id, amount, retry=FAST)
    return {"order": order_id, "reservation": reservation, "charge": charge}


# -- scene 3: crash and resume -----------------------------------------------------------------


def ingest_chunk(index: int) -> int:
    """Process one chunk: slow, and journaled so the demo can count executions."""
    with open(_journal["path"], "a", encoding="utf-8") as fh:
        fh.write(f"start {index} {os.getpid()}\n")
    time.sleep(0.25)
    with open(_journal["path"], "a", encoding="utf-8") as fh:
        fh.write(f"done {index} {os.getpid()}\n")
    return index * index


def ingest(ctx: RunContext, chunks: int, journal: str) -> int:
    """Process ``chunks`` chunks, one step each, and return the sum."""
    _journal["path"] = journal
    return sum(ctx.step(ingest_chunk, i, name=f"chunk-{i}") for i in range(chunks))


def _register(rt: Runtime) -> dict[str, Any]:
    return {
        "triage": rt.workflow("demo.triage", retry=FAST)(triage),
        "order": rt.workflow("demo.order", retry=FAST)(order),
        "ingest": rt.workflow("demo.ingest", timeout=120)(ingest),
    }


def _child_main(db: str, run_id: str) -> None:  # pragma: no cover - runs in the child process
    rt = Runtime(db, recover=False)
    _register(rt)
    rt.resume(run_id).result()


# -- the narrative -----------------------------------------------------------------------------


def _scene_retries(console: Console, checks: Checks, rt: Runtime, wfs: dict[str, Any]) -> None:
    handle = rt.start(wfs["triage"], "T-1042")
    result = handle.result(timeout=30)
    events = rt.store.events(handle.id)
    moves = [f"{e.from_status or '(new)'}→{e.to_status}" for e in events if e.kind == "transition"]
    say(console, f"run {handle.id}  trace {handle.trace_id}")
    say(console, f"transitions: {' '.join(moves)}")
    say(console, f"result: {result}")
    checks.check(result["queue"] == "engineering", "the ticket was routed to engineering")
    checks.check(
        moves.count("running→retrying") == 2, "two failed attempts put the run in retrying"
    )
    checks.check(handle.status.value == "success", "the run ended success")


def _scene_dlq(console: Console, checks: Checks, rt: Runtime, wfs: dict[str, Any]) -> None:
    handle = rt.start(wfs["order"], "O-77", "SKU-9", 2, 49.9)
    try:
        handle.result(timeout=30)
        checks.check(False, "the order run failed")
    except RunFailedError as exc:
        say(console, f"run {handle.id} failed: {exc.error_type}")
    entry = rt.dlq.get(handle.id)
    say(
        console,
        f"dead letter {entry.id}: {entry.error_type}; {len(entry.attempts)} attempts; last good "
        f"checkpoint #{entry.last_checkpoint_position} {entry.last_checkpoint_step}",
    )
    for a in entry.attempts:
        say(console, f"  attempt {a['attempt']}: {a['error_type']}: {a['message']}")
    checks.check(entry.status == "open", "the entry is open in `agent-runtime dlq list`")
    checks.check(len(entry.attempts) >= 2, "every attempt is recorded with its error")
    say(console, "the operator fixes the gateway configuration and retries the entry…")
    _gateway_fixed["value"] = True
    retried = rt.dlq.retry(entry.id)
    result = retried.result(timeout=30)
    say(console, f"result: {result}")
    checks.check(retried.status.value == "success", "the retried run ended success")
    checks.check(
        _calls["reserve_stock"] == 1, "stock was reserved once: the retry resumed after it"
    )


def _scene_crash(
    console: Console, checks: Checks, rt: Runtime, wfs: dict[str, Any], workdir: Path
) -> None:
    journal = workdir / f"ingest-{int(time.time() * 1000)}.log"
    journal.write_text("", encoding="utf-8")
    queued = rt.enqueue(wfs["ingest"], 6, str(journal))
    child = subprocess.Popen(
        [sys.executable, "-m", "agent_runtime.cli.demo", rt.store.url, queued.id],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while len(rt.store.load_steps(queued.id)) < 3 and time.monotonic() < deadline:
        if child.poll() is not None:
            break
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    done_before = len(rt.store.load_steps(queued.id))
    say(
        console,
        f"child {child.pid} killed with SIGKILL after {done_before} committed step(s); run is "
        f"{rt.store.get_run(queued.id).status}",
    )
    recovered = rt.recover()
    checks.check(
        [h.id for h in recovered] == [queued.id], "recovery took the run over from the dead owner"
    )
    total = rt.get(queued.id).result(timeout=60)
    lines = journal.read_text(encoding="utf-8").split()
    done = Counter(int(lines[i + 1]) for i in range(0, len(lines), 3) if lines[i] == "done")
    pids = {lines[i + 2] for i in range(0, len(lines), 3)}
    say(console, f"result: {total} (steps ran in processes {', '.join(sorted(pids))})")
    checks.check(total == sum(i * i for i in range(6)), "the run finished with the right result")
    checks.check(
        all(done[i] == 1 for i in range(done_before)),
        "steps committed before the kill did not run again",
    )
    checks.check(all(done[i] >= 1 for i in range(6)), "every step completed")


def _state_dir(state_dir: Path | str | None) -> Path:
    from agent_runtime.workspace.config import DEFAULT_STATE_DIR

    return Path(state_dir or os.environ.get("AGENT_RUNTIME_STATE_DIR") or DEFAULT_STATE_DIR)


def run_demo(
    db: str | None,
    console: Console,
    *,
    state_dir: Path | str | None = None,
    workdir: Path | None = None,
) -> int:
    """Run every scene; return the exit code (0 = everything behaved as shown).

    Args:
        db: The state database URL (None: ``AGENT_RUNTIME_DB`` or the embedded default).
        console: Where the narrative goes.
        state_dir: The runtime's state directory: workspaces, blobs, sandbox disks and the
            log store ``logs.db`` (default ``AGENT_RUNTIME_STATE_DIR``, else ``.agent_runtime``).
        workdir: Scratch files of the demo (default ``<state_dir>/demo``).

    Returns:
        0 when every check passed, 1 otherwise.
    """
    import observability
    from agent_runtime.cli import demo_logs, demo_resilience, demo_sandbox, demo_trace

    started = time.monotonic()
    state = _state_dir(state_dir)
    workdir = workdir or state / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    log_db = os.environ.get("AGENT_RUNTIME_LOG_DB") or str(state / "logs.db")
    _calls.clear()
    _gateway_fixed["value"] = False
    checks = Checks(console)
    # Records go to the embedded search store (and to Loki/Elasticsearch when the environment
    # names them); no console stream: the narrative is the demo's output.
    try:
        obs = observability.configure(
            environ={**os.environ, "AGENT_RUNTIME_LOG_DB": log_db},
            stream="none",
            level="INFO",
            local_search=True,
            tracing=True,
        )
    except (ValueError, OSError) as exc:
        console.print(f"[red]error:[/] cannot set up logging for the demo: {escape(str(exc))}")
        return 1
    console.print("[bold]agent-runtime demo[/]")
    choice: demo_sandbox.SandboxChoice | None = None
    rt: Runtime | None = None
    trace_id = refactor_id = ""
    try:
        choice = demo_sandbox.prepare_sandbox(console, state)
        rt = Runtime(db, recover=False, state_dir=state, sandbox=choice.backend)
        say(console, f"state database {rt.store.url}; state directory {state}; logs {log_db}")
        wfs = _register(rt)
        wfs["trace"] = demo_trace.register(rt)
        wfs.update(demo_sandbox.register(rt))
        wfs.update(demo_resilience.register(rt))
        runtime, sandbox = rt, choice
        scenes: list[tuple[str, Callable[[], Any]]] = [
            (
                "1. a flaky model call is retried",
                lambda: _scene_retries(console, checks, runtime, wfs),
            ),
            (
                "2. a run that fails for good lands in the dead-letter queue",
                lambda: _scene_dlq(console, checks, runtime, wfs),
            ),
            (
                "3. a process is killed mid-run; the run resumes",
                lambda: _scene_crash(console, checks, runtime, wfs, workdir),
            ),
            (
                "4. one trace id from the HTTP request to the sandbox's stdout",
                lambda: demo_trace.scene_trace(console, checks, runtime, obs, log_db, sandbox.name),
            ),
            (
                "5. untrusted code runs in the sandbox; a failed run is rolled back",
                lambda: demo_sandbox.scene_sandbox(console, checks, runtime, wfs, sandbox),
            ),
            (
                "6. breaker, fallback, limiter, guardrail, flags",
                lambda: demo_resilience.scene_resilience(console, checks, runtime, wfs, workdir),
            ),
            (
                "7. logs survive a log-server outage",
                lambda: demo_logs.scene_logs(console, checks, workdir, obs.config.service_name),
            ),
        ]
        for title, scene in scenes:
            console.rule(title)
            try:
                outcome = scene()
            except Exception as exc:
                checks.check(False, f"the scene ran to its end ({type(exc).__name__}: {exc})")
                continue
            if isinstance(outcome, dict):
                trace_id = outcome.get("trace_id", trace_id)
                refactor_id = outcome.get("refactor_run", refactor_id)
    finally:
        if rt is not None:
            rt.close()
        if choice is not None:
            choice.close()
        observability.shutdown()
    console.rule()
    elapsed = time.monotonic() - started
    if checks.skipped:
        console.print(
            f"[yellow]{len(checks.skipped)} check(s) skipped: they need a Docker engine "
            "(see above)[/]"
        )
    if checks.failed:
        console.print(f"[red]demo: {len(checks.failed)} check(s) failed[/] ({elapsed:.0f} s)")
        return 1
    console.print(f"[green]demo: everything behaved as described[/] ({elapsed:.0f} s)")
    console.print(
        "next: `agent-runtime runs list`, `agent-runtime dlq list --all`", highlight=False
    )
    if trace_id:
        console.print(f"      `agent-runtime logs search --trace-id {trace_id}`", highlight=False)
    if refactor_id:
        console.print(f"      `agent-runtime diff {refactor_id}`", highlight=False)
    return 0


if __name__ == "__main__":  # pragma: no cover - the crash scene's child process
    _child_main(sys.argv[1], sys.argv[2])
