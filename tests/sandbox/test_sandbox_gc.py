"""The orphan sweep: a runtime killed with SIGKILL leaves nothing running after the next sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sandbox_helpers import SMALL, lan_address
from typer.testing import CliRunner

from agent_runtime.sandbox import DockerSandbox, HostFirewall, sweep
from agent_runtime.sandbox.cli import app
from agent_runtime.sandbox.labels import LABEL_CREATOR, LABEL_OWNER

pytestmark = pytest.mark.docker

CHILD = r"""
import contextlib, dataclasses, sys, threading, time
from pathlib import Path
from agent_runtime._process import current_identity
from agent_runtime.events import SandboxStarted, hooks
from agent_runtime.sandbox import DockerSandbox, SandboxSpec
from agent_runtime.sandbox._disk import LoopDisk

owner, other_owner, state, target = sys.argv[1:5]
spec = SandboxSpec(memory="128m", disk="16m", tmp="8m", pids=64, timeout=300)
started = threading.Event()

class Hook:
    def on_event(self, event):
        if isinstance(event, SandboxStarted):
            started.set()
    def scope(self, scope):
        return contextlib.nullcontext()

hooks.subscribe(Hook())
mine = DockerSandbox(spec, warm=1, owner=owner, state_dir=state, sweep_on_start=False)
other = DockerSandbox(spec, warm=1, owner=other_owner, state_dir=state, sweep_on_start=False)
assert mine.wait_warm(spec, 1, 120) and other.wait_warm(spec, 1, 120)
allowed = dataclasses.replace(spec, allow=(target,))
runner = threading.Thread(target=mine.run, args=("sleep 300",), kwargs={"spec": allowed})
runner.daemon = True
runner.start()
assert started.wait(120)
# A disk whose container was never created (as if the runtime died in between).
LoopDisk.create(Path(state) / "sandbox" / "disks", 4 << 20, uid=1000, gid=1000,
                owner=owner, creator=str(current_identity()))
print("READY", mine._egress.bridge, flush=True)
time.sleep(600)
"""


def _containers(box: DockerSandbox, owner: str) -> list[dict[str, object]]:
    return list(box._api.containers(all=True, filters={"label": f"{LABEL_OWNER}={owner}"}))


def _creator(container: dict[str, object]) -> str:
    labels = container.get("Labels") or {}
    return str(labels.get(LABEL_CREATOR)) if isinstance(labels, dict) else ""


def _mounts_under(path: Path) -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line.split()[4] for line in lines if line.split()[4].startswith(str(path))]


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    return lines[0] if lines else ""


def test_sigkilled_runtime_leaves_nothing_after_the_sweep(
    sandbox_image: str, owner: str, tmp_path: Path, host_server: int
) -> None:
    """A SIGKILLed runtime's containers, network, chain and disks are swept; others stay."""
    mine, other = f"{owner}-gc", f"{owner}-gc-other"
    state = tmp_path / "state"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, mine, other, str(state), f"{lan_address()}:{host_server}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    live = DockerSandbox(SMALL, warm=1, owner=mine, state_dir=state, sweep_on_start=False)
    try:
        line = _read_line(child, timeout=180)
        if not line.startswith("READY"):
            child.kill()
            pytest.fail(f"the child runtime did not start: {child.communicate()[1][-2000:]}")
        bridge = line.split()[1]
        assert live.wait_warm(SMALL, 1, timeout=60)
        before = _containers(live, mine)
        by_child = [c for c in before if f"/{child.pid}/" in _creator(c)]
        assert len(by_child) == 2  # the warm one and the one running `sleep 300`
        assert HostFirewall().installed(bridge)

        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        assert any(c.get("State") == "running" for c in by_child)  # nothing cleaned up by itself

        report = sweep(owner=mine, state_dir=state)
        assert sorted(report.containers) == sorted(str(c["Id"])[:12] for c in by_child)
        assert len(report.networks) == 1
        assert bridge in report.firewall_chains
        assert len(report.disks) == 3  # two containers' disks and the orphan one
        assert report.kept >= 1  # the live sandbox of this process
        assert report.errors == ()
        remaining = _containers(live, mine)
        assert {c["Id"] for c in remaining}.isdisjoint(c["Id"] for c in by_child)
        assert all(f"/{os.getpid()}/" in _creator(c) for c in remaining)
        assert not HostFirewall().installed(bridge)
        # The other owner's orphan is not this owner's business.
        assert len(_containers(live, other)) == 1
        assert sweep(owner=mine, state_dir=state).removed == 0  # idempotent
        assert len(sweep(owner=other, state_dir=state).containers) == 1
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        live.close()
        sweep(owner=mine, state_dir=state)
        sweep(owner=other, state_dir=state)
        child.stdout.close()  # type: ignore[union-attr]
        child.stderr.close()  # type: ignore[union-attr]
    assert _mounts_under(state) == []


def test_sweep_keeps_resources_of_live_or_unknown_creators(
    sandbox_image: str, owner: str, tmp_path: Path
) -> None:
    """Resources whose creator is alive, or on another host (unknown), are never removed."""
    mine = f"{owner}-keep"
    with DockerSandbox(SMALL, warm=1, owner=mine, state_dir=tmp_path) as box:
        assert box.wait_warm(SMALL, 1, timeout=60)
        assert sweep(owner=mine, state_dir=tmp_path).removed == 0
        unknown = sweep(owner=mine, state_dir=tmp_path, alive=lambda creator: None)
        assert unknown.removed == 0
        assert unknown.kept >= 1
        assert len(_containers(box, mine)) >= 1


def test_gc_cli_prints_a_json_report(sandbox_image: str, owner: str, tmp_path: Path) -> None:
    """`sandbox gc --json` prints what was removed and kept."""
    result = CliRunner().invoke(
        app, ["gc", "--json", "--owner", f"{owner}-cli", "--state-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["owner"] == f"{owner}-cli"
    assert report["removed"] == 0
    assert set(report) >= {"containers", "networks", "disks", "firewall_chains", "kept", "errors"}


def test_gc_cli_table(sandbox_image: str, owner: str, tmp_path: Path) -> None:
    """Without --json, gc prints a table."""
    result = CliRunner().invoke(
        app, ["gc", "--owner", f"{owner}-cli", "--state-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "containers" in result.output
    assert "firewall chains" in result.output
