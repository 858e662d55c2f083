"""Scene 5 of ``agent-runtime demo``: untrusted code in the sandbox, and a failed run rolled back.

Before the scene, :func:`prepare_sandbox` picks the sandbox backend the way a user must: Docker
when an engine answers (building the sandbox image first if it is missing, and saying so), or,
when none does, an explicit :class:`ProcessSandbox` with its weaker isolation spelled out. The
fallback is never silent: the narrative says what to do to get Docker, and the checks only a
container can pass are shown as skipped.

The scene runs two agent runs whose commands go through ``ctx.sandbox.run``:

* ``demo.untrusted``: a normal command writing a file in the workspace; an egress attempt
  refused by the allowlist proxy (only destinations the proxy refuses before dialling: a name
  that is not on the allowlist and an IP literal that is not either, so nothing outside this
  machine is ever contacted); a memory bomb ending ``oom``; a busy loop ending ``timeout`` at its
  deadline; a disk fill ending ``disk_limit``.
* ``demo.refactor``: an agent edits code in its workspace and the tests fail; the run fails and
  its workspace is rolled back by itself (a ``rollback`` run event). ``agent-runtime diff``
  still shows what the agent had changed, and ``agent-runtime rollback --to-step 0`` brings back
  the checkout, byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
from docker.errors import DockerException, ImageNotFound
from rich.console import Console

from agent_runtime.cli.demo_common import Checks, say
from agent_runtime.context import RunContext
from agent_runtime.errors import DockerUnavailableError, RunFailedError, SandboxError
from agent_runtime.runtime import Runtime, Workflow
from agent_runtime.sandbox import DockerSandbox, ProcessSandbox, Sandbox, build_image
from agent_runtime.sandbox.result import SandboxResult
from agent_runtime.sandbox.run_sandbox import rollback_reason
from agent_runtime.sandbox.spec import DEFAULT_IMAGE, SandboxSpec
from agent_runtime.workspace import diff_run, rollback_run
from agent_runtime.workspace.config import workspace_root_for
from agent_runtime.workspace.rollback import RollbackSummary

__all__ = [
    "REFACTOR_WORKFLOW",
    "UNTRUSTED_WORKFLOW",
    "SandboxChoice",
    "TestsFailedError",
    "prepare_sandbox",
    "register",
    "scene_sandbox",
]

UNTRUSTED_WORKFLOW = "demo.untrusted"
REFACTOR_WORKFLOW = "demo.refactor"

# Small limits keep every command quick; each command gets a fresh sandbox with its spec.
_NORMAL = SandboxSpec(memory="256m", tmp="16m", disk="16m", pids=64, timeout=30)
_MEMORY_BOMB = SandboxSpec(memory="96m", tmp="16m", disk="16m", pids=64, timeout=30)
_BUSY_LOOP = SandboxSpec(memory="256m", tmp="16m", disk="16m", pids=64, timeout=1.5)
_DISK_FILL = SandboxSpec(memory="256m", tmp="16m", disk="8m", pids=64, timeout=30)
# The allowlisted name is never contacted: the command only asks for destinations that are not
# on the list, which the proxy refuses before resolving or dialling anything.
_ALLOWED = "api.example.com"
_EGRESS = SandboxSpec(memory="256m", tmp="16m", disk="16m", pids=64, timeout=30, allow=[_ALLOWED])
_EGRESS_TARGETS = ("https://exfil.example.net/upload", "http://203.0.113.7/collect")

_WRITE_REPORT = (
    "import pathlib\n"
    "p = pathlib.Path('report.md')\n"
    "p.write_text('# Triage report\\nlabel: bug\\nscore: 0.93\\n')\n"
    "print(f'wrote {p} ({p.stat().st_size} bytes) in', pathlib.Path.cwd())\n"
)
_TRY_EGRESS = (
    "import sys, urllib.request\n"
    "for url in sys.argv[1:]:\n"
    "    try:\n"
    "        urllib.request.urlopen(url, timeout=10)\n"
    "        print('REACHED', url)\n"
    "    except Exception as exc:\n"
    "        print('refused', url, '-', str(exc)[:90])\n"
)
_MEMORY = "chunks = []\nwhile True:\n    chunks.append(bytearray(8 * 1024 * 1024))\n"
_BUSY = "while True:\n    pass\n"
_FILL = (
    "with open('fill.bin', 'wb') as f:\n"
    "    while True:\n"
    "        f.write(b'x' * 1024 * 1024)\n"
    "        f.flush()\n"
)

_APP_BEFORE = "def total(prices):\n    return sum(prices)\n"
_APP_AFTER = "def total(prices):\n    return sum(prices) * 1.2  # add VAT\n"
_TEST = "from app import total\nassert total([1, 2]) == 3, 'total([1, 2]) != 3'\nprint('ok')\n"
_CHECKOUT = (
    "import pathlib\n"
    f"pathlib.Path('app.py').write_text({_APP_BEFORE!r})\n"
    f"pathlib.Path('test_app.py').write_text({_TEST!r})\n"
    "print('checked out app.py, test_app.py')\n"
)
_EDIT = (
    "import pathlib\n"
    f"pathlib.Path('app.py').write_text({_APP_AFTER!r})\n"
    "pathlib.Path('NOTES.md').write_text('Added VAT to total().\\n')\n"
    "print('edited app.py, wrote NOTES.md')\n"
)


class TestsFailedError(Exception):
    """The agent's change broke the tests (raised by the demo's refactoring workflow)."""

    __test__ = False  # not a pytest test class, despite the name


def _summary(result: SandboxResult) -> dict[str, Any]:
    return {
        "reason": result.reason.value,
        "exit_code": result.exit_code,
        "duration_s": round(result.duration_s, 2),
        "peak_memory_bytes": result.peak_memory_bytes,
        "stdout": result.stdout[-400:],
        "stderr": result.stderr[-300:],
        "egress_blocked": list(result.egress_blocked),
        "isolation": result.isolation,
        "disk_limit_mechanism": result.disk_limit_mechanism.value,
        "backend": result.backend,
    }


# -- the workflows -----------------------------------------------------------------------------


def untrusted(ctx: RunContext, python: str, egress: bool) -> dict[str, dict[str, Any]]:
    """Run five untrusted commands, each in a fresh sandbox with hard limits."""
    box = ctx.sandbox
    done: dict[str, dict[str, Any]] = {}
    done["write"] = _summary(
        box.run([python, "-c", _WRITE_REPORT], spec=_NORMAL, name="sandbox:write-report")
    )
    if egress:
        done["egress"] = _summary(
            box.run(
                [python, "-c", _TRY_EGRESS, *_EGRESS_TARGETS], spec=_EGRESS, name="sandbox:egress"
            )
        )
    done["memory"] = _summary(
        box.run([python, "-c", _MEMORY], spec=_MEMORY_BOMB, name="sandbox:memory-bomb")
    )
    done["busy"] = _summary(
        box.run([python, "-c", _BUSY], spec=_BUSY_LOOP, name="sandbox:busy-loop")
    )
    done["disk"] = _summary(
        box.run([python, "-c", _FILL], spec=_DISK_FILL, name="sandbox:disk-fill")
    )
    return done


def refactor(ctx: RunContext, python: str) -> str:
    """Check out code, let the agent edit it, run the tests; fail the run when they fail."""
    ctx.sandbox.run([python, "-c", _CHECKOUT], spec=_NORMAL, name="sandbox:checkout")
    ctx.sandbox.run([python, "-c", _EDIT], spec=_NORMAL, name="sandbox:agent-edit")
    tests = ctx.sandbox.run([python, "test_app.py"], spec=_NORMAL, name="sandbox:tests")
    if not tests.ok:
        last = (tests.stderr.strip().splitlines() or ["no output"])[-1]
        raise TestsFailedError(f"the agent's change broke the tests: {last}")
    return "tests pass"


def register(rt: Runtime) -> dict[str, Workflow[Any, Any]]:
    """Register the scene's workflows on ``rt``."""
    from agent_runtime.resilience.policy import RetryPolicy

    return {
        "untrusted": rt.workflow(UNTRUSTED_WORKFLOW, timeout=300, retry=RetryPolicy.none())(
            untrusted
        ),
        "refactor": rt.workflow(REFACTOR_WORKFLOW, timeout=300, retry=RetryPolicy.none())(refactor),
    }


# -- choosing the backend ----------------------------------------------------------------------


@dataclass
class SandboxChoice:
    """The sandbox backend the demo runs its sandbox scenes on.

    Attributes:
        backend: The sandbox given to the runtime (``ctx.sandbox`` uses it).
        docker: Whether it is a ``DockerSandbox``.
        python: The interpreter commands run with (inside the image, or on the host).
        egress: Whether the egress allowlist can be shown (Docker, root, iptables).
        notes: Why something is not available, for the narrative.
    """

    backend: Sandbox
    docker: bool
    python: str
    egress: bool
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """``docker`` or ``process``."""
        return "docker" if self.docker else "process"

    def close(self) -> None:
        """Remove what the backend made (containers, networks, disks)."""
        self.backend.close()


def _process_fallback(console: Console, state_dir: Path, why: str) -> SandboxChoice:
    say(console, why)
    say(
        console,
        "to see the Docker sandbox: run scripts/demo as root (it installs docker.io and starts "
        "dockerd), or start a Docker engine or set DOCKER_HOST, then run the demo again",
    )
    say(console, "meanwhile the sandbox scenes run on ProcessSandbox, chosen explicitly here;")
    say(console, "its isolation is WEAKER than a container's (each result says how)")
    host_python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable
    return SandboxChoice(
        ProcessSandbox(state_dir=state_dir),
        docker=False,
        python=host_python,
        egress=False,
        notes=["ProcessSandbox cannot hold a command to an egress allowlist (Docker only)"],
    )


def _ensure_image(console: Console) -> str | None:
    """Build the sandbox image when it is missing; return an error message, or None."""
    client = docker.from_env()
    try:
        client.images.get(DEFAULT_IMAGE)
        say(console, f"sandbox image {DEFAULT_IMAGE} is ready")
        return None
    except ImageNotFound:
        pass
    except DockerException as exc:
        return f"cannot read the sandbox image from the Docker engine: {exc}"
    finally:
        client.close()
    offline = os.geteuid() == 0 and shutil.which("debootstrap") is not None
    how = (
        "offline, from a debootstrap Debian base (a few minutes the first time)"
        if offline
        else "FROM python:3.11-slim (needs a registry)"
    )
    say(console, f"sandbox image {DEFAULT_IMAGE} is missing: building it {how}")
    try:
        built = build_image(DEFAULT_IMAGE, offline=offline)
    except SandboxError as exc:
        return f"building the sandbox image failed: {exc}"
    say(console, f"built {built.image} in {built.seconds:.0f} s from {built.base}")
    return None


def prepare_sandbox(console: Console, state_dir: Path) -> SandboxChoice:
    """Pick the backend: Docker when an engine answers (image built if missing), else processes.

    Args:
        console: Where the narrative goes.
        state_dir: The runtime's state directory (sandbox disks live under it).

    Returns:
        The choice (close it at the end).
    """
    try:
        box = DockerSandbox(state_dir=state_dir)
    except DockerUnavailableError as exc:
        return _process_fallback(console, state_dir, f"no Docker engine: {exc}")
    except SandboxError as exc:
        return _process_fallback(console, state_dir, f"the Docker sandbox cannot start: {exc}")
    engine = box.engine
    say(console, f"sandbox: Docker {engine.server_version} at {engine.docker_host}")
    problem = _ensure_image(console)
    if problem is not None:
        box.close()
        return _process_fallback(console, state_dir, problem)
    notes = []
    egress = engine.local and os.geteuid() == 0 and shutil.which("iptables") is not None
    if not egress:
        notes.append(
            "an egress allowlist needs root, iptables and a local Docker engine (the proxy's "
            "firewall); without them an allowlisted run fails with EgressProxyError"
        )
    return SandboxChoice(box, docker=True, python="python3", egress=egress, notes=notes)


# -- the scene ---------------------------------------------------------------------------------


def _mb(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f} MiB"


def _untrusted(
    console: Console, checks: Checks, rt: Runtime, wfs: dict[str, Any], choice: SandboxChoice
) -> None:
    handle = rt.start(wfs["untrusted"], choice.python, choice.egress)
    results: dict[str, dict[str, Any]] = handle.result(timeout=240)
    say(console, f"run {handle.id} ({choice.name} sandbox, a fresh one per command):")
    write = results["write"]
    say(console, f"isolation: {write['isolation']}")
    report = workspace_root_for(handle.id, rt.state_dir) / "report.md"
    content = report.read_text(encoding="utf-8") if report.is_file() else ""
    say(
        console,
        f"write a file: {write['reason']} (exit {write['exit_code']}); on the host "
        f"{report.name} holds {len(content.encode())} bytes",
    )
    checks.check(
        write["reason"] == "exited" and write["exit_code"] == 0 and "score: 0.93" in content,
        "a normal command wrote report.md into the run's workspace",
    )
    if choice.docker:
        hardened = ("as user 1000:1000", "all capabilities dropped", "read-only root filesystem")
        checks.check(
            write["backend"] == "docker" and all(h in write["isolation"] for h in hardened),
            "it ran in a hardened container (non-root, no capabilities, read-only root)",
        )
    else:
        checks.skip("it ran in a hardened container", "no Docker: ProcessSandbox is weaker")
        checks.check(
            "WEAKER" in write["isolation"], "the result says its isolation is weaker than Docker's"
        )
    if "egress" in results:
        egress = results["egress"]
        for line in egress["stdout"].strip().splitlines():
            say(console, f"egress: {line}")
        say(console, f"egress: the proxy reported blocked {egress['egress_blocked']}")
        checks.check(
            "REACHED" not in egress["stdout"] and len(egress["egress_blocked"]) == 2,
            f"egress outside the allowlist ({_ALLOWED}) was refused by the proxy, both times",
        )
    else:
        for note in choice.notes:
            checks.skip("egress refused by the allowlist proxy", note)
    memory = results["memory"]
    say(
        console,
        f"memory bomb (limit 96 MiB): {memory['reason']} after {memory['duration_s']} s, "
        f"peak {_mb(memory['peak_memory_bytes'])}",
    )
    checks.check(memory["reason"] == "oom", "the memory bomb ended oom")
    busy = results["busy"]
    say(console, f"busy loop (timeout 1.5 s): {busy['reason']} after {busy['duration_s']} s")
    checks.check(
        busy["reason"] == "timeout" and 1.4 <= busy["duration_s"] < 5,
        "the busy loop was killed at its deadline (timeout)",
    )
    disk = results["disk"]
    fill = workspace_root_for(handle.id, rt.state_dir) / "fill.bin"
    size = fill.stat().st_size if fill.is_file() else 0
    say(
        console,
        f"disk fill (workspace capped at 8 MiB by {disk['disk_limit_mechanism']}): "
        f"{disk['reason']}; fill.bin stopped at {_mb(size)}",
    )
    checks.check(
        disk["reason"] == "disk_limit" and size <= 8 * 2**20,
        "the disk fill ended disk_limit and the host disk was not filled",
    )


def _refactor(
    console: Console, checks: Checks, rt: Runtime, wfs: dict[str, Any], choice: SandboxChoice
) -> str:
    handle = rt.start(wfs["refactor"], choice.python)
    try:
        handle.result(timeout=120)
        failed_with = ""
    except RunFailedError as exc:
        entry = rt.dlq.get(handle.id)
        failed_with = f"{exc.error_type}: {entry.message}"
    say(console, f"run {handle.id}: an agent edits app.py, then the tests run")
    say(console, f"the run failed: {failed_with or 'no, it succeeded'}")
    root = workspace_root_for(handle.id, rt.state_dir)
    rollbacks = [e.reason for e in rt.store.events(handle.id) if e.kind == "rollback"]
    for reason in rollbacks:
        say(console, f"run event: {reason}")
    left = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    say(console, f"the workspace now holds {left or 'nothing'}, as before the run")
    checks.check(
        "AssertionError: total([1, 2]) != 3" in failed_with,
        "the run failed because the agent's change broke the tests",
    )
    checks.check(
        bool(rollbacks) and not left,
        "the failed run's workspace was rolled back by itself (a rollback run event)",
    )
    changed = diff_run(rt.store.engine, handle.id, from_position=0, state_dir=rt.state_dir)
    say(console, f"agent-runtime diff {handle.id[:12]} --from 0 (what the agent had changed):")
    for line in changed.to_text().splitlines()[:14]:
        say(console, f"  | {line}")

    def record(summary: RollbackSummary) -> None:
        rt.store.record_event(handle.id, "rollback", rollback_reason(summary))

    restored = rollback_run(
        rt.store.engine, handle.id, to_step=0, state_dir=rt.state_dir, on_rollback=record
    )
    app = root / "app.py"
    digest = hashlib.sha256(app.read_bytes()).hexdigest() if app.is_file() else ""
    say(
        console,
        f"agent-runtime rollback {handle.id[:12]} --to-step 0: "
        f"{len(restored.recreated)} file(s) recreated; app.py sha256 {digest[:16]}",
    )
    checks.check(
        {c.change.path for c in changed.files} == {"app.py", "NOTES.md"},
        "the diff shows the agent's change (app.py modified, NOTES.md added)",
    )
    checks.check(
        digest == hashlib.sha256(_APP_BEFORE.encode()).hexdigest(),
        "a manual rollback to step 0 restores the checked-out app.py byte for byte",
    )
    return handle.id


def scene_sandbox(
    console: Console, checks: Checks, rt: Runtime, wfs: dict[str, Any], choice: SandboxChoice
) -> dict[str, str]:
    """Run scene 5 (see the module docstring); return the rolled-back run's id."""
    _untrusted(console, checks, rt, wfs, choice)
    return {"refactor_run": _refactor(console, checks, rt, wfs, choice)}
