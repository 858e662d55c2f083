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

The workflows are module-level so that any process (the child, ``runs resume``) can import them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console

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


class _Checks:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.failed: list[str] = []

    def check(self, ok: bool, what: str) -> None:
        mark = "[green]✓[/]" if ok else "[red]✗[/]"
        self.console.print(f"  {mark} {what}")
        if not ok:
            self.failed.append(what)


def run_demo(db: str | None, console: Console, *, workdir: Path | None = None) -> int:
    """Run every scene against the database ``db``; return the exit code (0 = all as shown)."""
    workdir = workdir or Path(".agent_runtime") / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    _calls.clear()
    _gateway_fixed["value"] = False
    rt = Runtime(db, recover=False)
    wfs = _register(rt)
    checks = _Checks(console)
    console.print(f"[bold]agent-runtime demo[/]  state database: {rt.store.url}")

    # 1 -----------------------------------------------------------------------------------
    console.rule("1. a flaky model call is retried")
    handle = rt.start(wfs["triage"], "T-1042")
    result = handle.result(timeout=30)
    events = rt.store.events(handle.id)
    moves = [f"{e.from_status or '(new)'}→{e.to_status}" for e in events if e.kind == "transition"]
    console.print(f"  run {handle.id}  trace {handle.trace_id}")
    console.print(f"  transitions: {' '.join(moves)}")
    console.print(f"  result: {result}")
    checks.check(result["queue"] == "engineering", "the ticket was routed to engineering")
    checks.check(
        moves.count("running→retrying") == 2, "two failed attempts put the run in retrying"
    )
    checks.check(handle.status.value == "success", "the run ended success")

    # 2 -----------------------------------------------------------------------------------
    console.rule("2. a run that fails for good lands in the dead-letter queue")
    handle = rt.start(wfs["order"], "O-77", "SKU-9", 2, 49.9)
    try:
        handle.result(timeout=30)
        checks.check(False, "the order run failed")
    except RunFailedError as exc:
        console.print(f"  run {handle.id} failed: {exc.error_type}")
    entry = rt.dlq.get(handle.id)
    console.print(
        f"  dead letter {entry.id}: {entry.error_type}; {len(entry.attempts)} attempts; last good "
        f"checkpoint #{entry.last_checkpoint_position} {entry.last_checkpoint_step}"
    )
    for a in entry.attempts:
        console.print(f"    attempt {a['attempt']}: {a['error_type']}: {a['message']}")
    checks.check(entry.status == "open", "the entry is open in `agent-runtime dlq list`")
    checks.check(len(entry.attempts) >= 2, "every attempt is recorded with its error")
    console.print("  the operator fixes the gateway configuration and retries the entry…")
    _gateway_fixed["value"] = True
    retried = rt.dlq.retry(entry.id)
    result = retried.result(timeout=30)
    console.print(f"  result: {result}")
    checks.check(retried.status.value == "success", "the retried run ended success")
    checks.check(
        _calls["reserve_stock"] == 1, "stock was reserved once: the retry resumed after it"
    )

    # 3 -----------------------------------------------------------------------------------
    console.rule("3. a process is killed mid-run; the run resumes")
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
    console.print(
        f"  child {child.pid} killed with SIGKILL after {done_before} committed step(s); run is "
        f"{rt.store.get_run(queued.id).status}"
    )
    recovered = rt.recover()
    checks.check(
        [h.id for h in recovered] == [queued.id], "recovery took the run over from the dead owner"
    )
    total = rt.get(queued.id).result(timeout=60)
    lines = journal.read_text(encoding="utf-8").split()
    done = Counter(int(lines[i + 1]) for i in range(0, len(lines), 3) if lines[i] == "done")
    pids = {lines[i + 2] for i in range(0, len(lines), 3)}
    console.print(f"  result: {total} (steps ran in processes {', '.join(sorted(pids))})")
    checks.check(total == sum(i * i for i in range(6)), "the run finished with the right result")
    checks.check(
        all(done[i] == 1 for i in range(done_before)),
        "steps committed before the kill did not run again",
    )
    checks.check(all(done[i] >= 1 for i in range(6)), "every step completed")

    rt.close()
    console.rule()
    if checks.failed:
        console.print(f"[red]demo: {len(checks.failed)} check(s) failed[/]")
        return 1
    console.print("[green]demo: everything behaved as described[/]")
    console.print("next: `agent-runtime runs list`, `agent-runtime dlq list --all`")
    return 0


if __name__ == "__main__":  # pragma: no cover - the crash scene's child process
    _child_main(sys.argv[1], sys.argv[2])
