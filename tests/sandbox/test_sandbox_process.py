"""ProcessSandbox: the explicit fallback, with rlimits, its own network namespace and honesty."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from sandbox_helpers import Recorder

from agent_runtime.errors import ConfigurationError
from agent_runtime.events import SandboxFinished, SandboxOutput, SandboxStarted
from agent_runtime.sandbox import ProcessSandbox, Sandbox, SandboxSpec, TerminationReason

SPEC = SandboxSpec(memory="256m", disk="16m", tmp="8m", pids=256, timeout=20)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _spec(**changes: Any) -> SandboxSpec:
    return dataclasses.replace(SPEC, **changes)


@pytest.fixture(scope="module")
def process_sandbox(tmp_path_factory: pytest.TempPathFactory) -> ProcessSandbox:
    """A process sandbox with its own state directory."""
    return ProcessSandbox(SPEC, state_dir=tmp_path_factory.mktemp("process-state"))


def test_process_sandbox_implements_the_protocol(process_sandbox: ProcessSandbox) -> None:
    """ProcessSandbox is a Sandbox and says it is the process backend."""
    assert isinstance(process_sandbox, Sandbox)
    assert process_sandbox.backend == "process"


def test_runs_with_traceparent_events_and_a_weaker_isolation_report(
    process_sandbox: ProcessSandbox, recorder: Recorder, tmp_path: Path
) -> None:
    """A command runs, sees TRACEPARENT, streams events, and the result says it is weaker."""
    process_sandbox.put_file(tmp_path, "in.txt", b"from host")
    result = process_sandbox.run(
        'cat in.txt; echo; echo "tp=$TRACEPARENT"; echo made > out.txt',
        workspace=tmp_path,
        run_id="proc-1",
        traceparent=TRACEPARENT,
    )
    assert result.ok, result.stderr
    assert result.backend == "process"
    assert result.stdout.splitlines() == ["from host", f"tp={TRACEPARENT}"]
    assert process_sandbox.get_file(tmp_path, "out.txt") == b"made\n"
    assert result.workspace_synced
    assert "WEAKER than a container" in result.isolation
    assert "no seccomp" in result.isolation
    assert [e.run_id for e in recorder.of(SandboxOutput)] == ["proc-1", "proc-1"]
    assert recorder.of(SandboxStarted)[0].backend == "process"
    assert recorder.of(SandboxFinished)[0].reason == "exited"


def test_network_namespace_is_reported_truthfully(process_sandbox: ProcessSandbox) -> None:
    """With a fresh namespace only loopback exists; without one, the result says so."""
    result = process_sandbox.run(
        ["python3", "-c", "import socket; print([n for _, n in socket.if_nameindex()])"]
    )
    assert result.ok, result.stderr
    if process_sandbox.network_isolated:
        assert result.stdout.strip() == "['lo']"
        assert "fresh network namespace" in result.isolation
    else:
        assert "HOST'S NETWORK" in result.isolation


def test_memory_limit_ends_with_oom(process_sandbox: ProcessSandbox) -> None:
    """Allocating past RLIMIT_AS fails and is reported as oom."""
    result = process_sandbox.run(["python3", "-c", "b = bytearray(1 << 30)"])
    assert result.reason is TerminationReason.OOM
    assert "MemoryError" in result.stderr


def test_busy_loop_is_killed_at_the_deadline(process_sandbox: ProcessSandbox) -> None:
    """The whole process group is killed at the wall-clock deadline."""
    result = process_sandbox.run("while :; do :; done", spec=_spec(timeout=1))
    assert result.reason is TerminationReason.TIMEOUT
    assert 0.9 <= result.duration_s < 5


def test_stray_holding_the_pipes_does_not_hang_the_run(process_sandbox: ProcessSandbox) -> None:
    """A child that escapes the session and keeps stdout open does not block the result."""
    result = process_sandbox.run("setsid sleep 30 & echo started", spec=_spec(timeout=10))
    assert result.ok
    assert result.duration_s < 8


def test_disk_limit(process_sandbox: ProcessSandbox) -> None:
    """Writing past the disk cap ends with disk_limit, whatever mechanism capped it."""
    result = process_sandbox.run("dd if=/dev/zero of=fill bs=1M count=64", spec=_spec(disk="8m"))
    assert result.reason is TerminationReason.DISK_LIMIT
    assert str(result.disk_limit_mechanism) in ("loop-ext4", "rlimit-fsize")
    if str(result.disk_limit_mechanism) == "rlimit-fsize":
        assert "NOT capped" in result.isolation


def test_forks_are_limited(process_sandbox: ProcessSandbox) -> None:
    """RLIMIT_NPROC stops unbounded forking (it counts the uid's processes host-wide)."""
    bomb = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while n < 5000:\n"
        "        if os.fork() == 0:\n"
        "            os.close(1); os.close(2); time.sleep(3); os._exit(0)\n"
        "        n += 1\n"
        "except OSError as exc:\n"
        "    print('refused', exc.errno)\n"
    )
    result = process_sandbox.run(["python3", "-c", bomb], spec=_spec(pids=64))
    assert result.stdout.startswith("refused 11"), result.stdout + result.stderr


def test_allowlist_is_refused_rather_than_ignored(process_sandbox: ProcessSandbox) -> None:
    """A process cannot be held to an egress allowlist, so asking for one is an error."""
    with pytest.raises(ConfigurationError, match="DockerSandbox"):
        process_sandbox.run("true", spec=_spec(allow=("api.example.com",)))


def test_missing_executable_is_an_error_result(process_sandbox: ProcessSandbox) -> None:
    """A command that cannot start is an error result, not an exception."""
    result = process_sandbox.run(["/no/such/binary"])
    assert result.reason in (TerminationReason.ERROR, TerminationReason.EXITED)
    assert not result.ok
