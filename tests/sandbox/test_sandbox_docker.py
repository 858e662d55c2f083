"""DockerSandbox against the real engine: limits, hardening, reasons, output, workspace."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from sandbox_helpers import SMALL, Recorder

from agent_runtime.errors import ConfigurationError, NotFoundError, SandboxImageError
from agent_runtime.events import SandboxFinished, SandboxOutput, SandboxScope, SandboxStarted
from agent_runtime.sandbox import DockerSandbox, SandboxSpec, TerminationReason
from agent_runtime.sandbox.labels import LABEL_OWNER

pytestmark = pytest.mark.docker

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _spec(**changes: Any) -> SandboxSpec:
    return dataclasses.replace(SMALL, **changes)


def test_commands_run_hardened_by_default(docker_sandbox: DockerSandbox) -> None:
    """Non-root, no capabilities, no-new-privileges, seccomp filter, tini as PID 1."""
    result = docker_sandbox.run(
        "id -u; id -g; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; "
        "tr '\\0' ' ' < /proc/1/cmdline; echo; pwd"
    )
    assert result.ok, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0:2] == ["1000", "1000"]
    status = dict(line.split(":\t") for line in lines[2:5])
    assert status["CapEff"] == "0000000000000000"
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == ("2" if docker_sandbox.engine.seccomp else "0")
    assert "docker-init" in lines[5]
    assert "/bin/sh -c" in lines[5]  # the launcher, under the init
    assert lines[6] == "/workspace"
    assert result.backend == "docker"
    if docker_sandbox.engine.seccomp:
        assert f"seccomp profile {docker_sandbox.engine.seccomp}" in result.isolation
    assert "all capabilities dropped" in result.isolation
    assert "no network" in result.isolation


def test_memory_bomb_ends_with_oom(docker_sandbox: DockerSandbox) -> None:
    """A process allocating past the memory limit is OOM-killed and reported as oom."""
    result = docker_sandbox.run(
        ["python3", "-c", "b = bytearray(1 << 30)"], spec=_spec(memory="96m", tmp="8m")
    )
    assert result.reason is TerminationReason.OOM
    assert result.exit_code == 137
    assert result.peak_memory_bytes is not None
    assert 64 << 20 <= result.peak_memory_bytes <= 96 << 20


def test_fork_bomb_is_contained_by_the_pids_limit(docker_sandbox: DockerSandbox) -> None:
    """Forking without end stops at the pids limit; the sandbox stays in charge."""
    bomb = (
        "import os, time\n"
        "children = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        children += 1\n"
        "except OSError as exc:\n"
        "    print(children, exc.errno)\n"
    )
    result = docker_sandbox.run(["python3", "-c", bomb], spec=_spec(pids=24, timeout=20))
    assert result.ok, result.stderr
    children, errno = (int(part) for part in result.stdout.split())
    assert children < 24
    assert errno == 11  # EAGAIN: fork refused at the limit


def test_shell_fork_bomb_ends_at_the_deadline(docker_sandbox: DockerSandbox) -> None:
    """The classic shell fork bomb neither escapes nor outlives its deadline."""
    started = time.monotonic()
    # The outer shell then loops without forking, so only the deadline can end it.
    result = docker_sandbox.run(
        "b() { b | b & }; b; while :; do :; done", spec=_spec(pids=32, timeout=2)
    )
    assert result.reason is TerminationReason.TIMEOUT
    assert time.monotonic() - started < 10


def test_busy_loop_is_killed_at_the_deadline(docker_sandbox: DockerSandbox) -> None:
    """A busy loop is killed at its wall-clock timeout."""
    result = docker_sandbox.run("while :; do :; done", spec=_spec(timeout=1.5))
    assert result.reason is TerminationReason.TIMEOUT
    assert 1.4 <= result.duration_s < 4
    assert not result.ok


def test_workspace_disk_fill_ends_with_disk_limit(
    docker_sandbox: DockerSandbox, tmp_path: Path
) -> None:
    """Filling the workspace past its cap fails with disk_limit; the host keeps its space."""
    before = shutil.disk_usage(tmp_path).free
    result = docker_sandbox.run(
        "dd if=/dev/zero of=fill bs=1M count=200", spec=_spec(disk="16m"), workspace=tmp_path
    )
    assert result.reason is TerminationReason.DISK_LIMIT
    assert "No space left on device" in result.stderr
    assert (tmp_path / "fill").stat().st_size <= 16 << 20
    assert before - shutil.disk_usage(tmp_path).free < 64 << 20
    assert str(result.disk_limit_mechanism) in ("loop-ext4", "tmpfs")
    assert result.disk_limit_mechanism is docker_sandbox.disk_limit_mechanism


def test_tmp_fill_ends_with_disk_limit(docker_sandbox: DockerSandbox) -> None:
    """/tmp is a size-capped tmpfs: filling it fails with disk_limit."""
    result = docker_sandbox.run(
        "dd if=/dev/zero of=/tmp/fill bs=1M count=100", spec=_spec(tmp="8m")
    )
    assert result.reason is TerminationReason.DISK_LIMIT


def test_sparse_file_bomb_does_not_reach_the_host(
    docker_sandbox: DockerSandbox, tmp_path: Path
) -> None:
    """A huge sparse file is not copied back (it would write its full size on the host)."""
    result = docker_sandbox.run("truncate -s 10G sparse && echo made", workspace=tmp_path)
    assert result.ok, result.stderr
    assert not result.workspace_synced
    assert not (tmp_path / "sparse").exists()


def test_writes_outside_the_workspace_fail(docker_sandbox: DockerSandbox) -> None:
    """The root filesystem is read-only and /tmp is noexec."""
    result = docker_sandbox.run(
        "for p in /etc/x /usr/x /x /home/x; do echo x > $p || echo DENIED $p; done; "
        "cp /bin/true /tmp/t && /tmp/t || echo NOEXEC"
    )
    assert result.stdout.split("\n")[:4] == [
        f"DENIED {p}" for p in ("/etc/x", "/usr/x", "/x", "/home/x")
    ]
    assert "NOEXEC" in result.stdout
    assert "Read-only file system" in result.stderr


def test_init_reaps_orphaned_zombies(docker_sandbox: DockerSandbox) -> None:
    """Orphans that exit are reaped by the init process, leaving no zombies."""
    script = (
        "import os, time\n"
        "for _ in range(5):\n"
        "    if os.fork() == 0:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(0.2)\n"
        "            os._exit(0)\n"
        "        os._exit(0)\n"
        "    os.wait()\n"
        "time.sleep(0.8)\n"
        "states = []\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        "        states.append(open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[0])\n"
        "    except OSError:\n"
        "        pass\n"
        "print(states.count('Z'))\n"
    )
    result = docker_sandbox.run(["python3", "-c", script])
    assert result.ok, result.stderr
    assert result.stdout.strip() == "0"


def test_traceparent_goes_in_and_lines_come_out_as_events(
    docker_sandbox: DockerSandbox, recorder: Recorder
) -> None:
    """TRACEPARENT is in the environment; each line is a SandboxOutput event with the run id."""
    result = docker_sandbox.run(
        'echo "tp=$TRACEPARENT"; echo warn >&2; echo "$GREETING $WHO"',
        spec=_spec(env={"GREETING": "hello", "WHO": "spec"}),
        env={"WHO": "run"},
        run_id="run-42",
        traceparent=TRACEPARENT,
    )
    assert result.ok
    assert f"tp={TRACEPARENT}" in result.stdout
    assert "hello run" in result.stdout
    outputs = recorder.of(SandboxOutput)
    assert ("stdout", f"tp={TRACEPARENT}", "run-42") in [
        (e.stream, e.line, e.run_id) for e in outputs
    ]
    assert ("stderr", "warn") in [(e.stream, e.line) for e in outputs]
    assert set(result.lines) == {(e.stream, e.line) for e in outputs}
    (started,) = recorder.of(SandboxStarted)
    (finished,) = recorder.of(SandboxFinished)
    assert started.run_id == finished.run_id == "run-42"
    assert finished.reason == "exited"
    assert finished.exit_code == 0
    scope = next(s for s in recorder.scopes if isinstance(s, SandboxScope))
    assert scope.run_id == "run-42"
    assert scope.command[:2] == ("/bin/sh", "-c")


def test_large_output_is_bounded_with_a_marker(docker_sandbox: DockerSandbox) -> None:
    """Output past output_limit keeps head and tail around a truncation marker."""
    result = docker_sandbox.run(
        ["python3", "-c", "print('start'); print('x' * 3_000_000); print('end')"],
        spec=_spec(output_limit=64 * 1024),
    )
    assert result.ok
    assert result.stdout.startswith("start\n")
    assert result.stdout.rstrip().endswith("end")
    assert result.stdout_truncated_bytes > 2_900_000
    assert "bytes truncated]" in result.stdout
    assert len(result.stdout) < 70 * 1024


def test_exit_codes_and_signals_are_reported(docker_sandbox: DockerSandbox) -> None:
    """A plain failure is exited with its code; a signal death is killed (128 + signal)."""
    failed = docker_sandbox.run("exit 3")
    assert (failed.reason, failed.exit_code, failed.ok) == (TerminationReason.EXITED, 3, False)
    killed = docker_sandbox.run("kill -TERM $$")
    assert (killed.reason, killed.exit_code) == (TerminationReason.KILLED, 143)


def test_missing_executable_is_an_error_result(docker_sandbox: DockerSandbox) -> None:
    """A command that cannot start ends with reason error and says why."""
    result = docker_sandbox.run(["no-such-binary-here"])
    assert result.reason is TerminationReason.ERROR
    assert "no-such-binary-here" in result.stdout + result.stderr


def test_workspace_files_go_in_and_come_back(docker_sandbox: DockerSandbox, tmp_path: Path) -> None:
    """put_file before, the command sees and changes /workspace, get_file after."""
    docker_sandbox.put_file(tmp_path, "data/input.txt", b"41\n")
    (tmp_path / "remove-me").write_text("bye")
    result = docker_sandbox.run(
        "n=$(cat data/input.txt); echo $((n + 1)) > data/output.txt; rm remove-me; "
        "chmod 750 data/output.txt; ln -s /etc/passwd leak",
        workspace=tmp_path,
    )
    assert result.ok, result.stderr
    assert result.workspace_synced
    assert docker_sandbox.get_file(tmp_path, "data/output.txt") == b"42\n"
    assert (tmp_path / "data" / "output.txt").stat().st_mode & 0o777 == 0o750
    assert not (tmp_path / "remove-me").exists()
    assert (tmp_path / "leak").is_symlink()
    with pytest.raises(NotFoundError, match="symlink"):
        docker_sandbox.get_file(tmp_path, "leak")


def test_workspace_owner_on_the_host_is_kept(docker_sandbox: DockerSandbox, tmp_path: Path) -> None:
    """Files a sandbox creates belong to the workspace's owner on the host, not to uid 1000."""
    result = docker_sandbox.run("echo new > made.txt", workspace=tmp_path)
    assert result.ok
    made = (tmp_path / "made.txt").stat()
    assert (made.st_uid, made.st_gid) == (tmp_path.stat().st_uid, tmp_path.stat().st_gid)


def test_no_network_by_default(docker_sandbox: DockerSandbox) -> None:
    """Without an allowlist the sandbox has only a loopback interface."""
    result = docker_sandbox.run(
        ["python3", "-c", "import socket; print([n for _, n in socket.if_nameindex()])"]
    )
    assert result.ok
    assert result.stdout.strip() == "['lo']"


def test_missing_image_says_how_to_build_it(docker_sandbox: DockerSandbox) -> None:
    """An image that is not on the engine raises SandboxImageError naming build-image."""
    with pytest.raises(SandboxImageError, match="build-image"):
        docker_sandbox.run("true", spec=_spec(image="agent-runtime-no-such-image:never"))


def test_runtime_must_be_installed(docker_sandbox: DockerSandbox) -> None:
    """runsc is used when the engine has it; otherwise the error lists what it has."""
    if "runsc" in docker_sandbox.engine.runtimes:
        result = docker_sandbox.run("dmesg | head -1", spec=_spec(runtime="runsc"))
        assert "gVisor" in result.stdout
        assert "runtime runsc" in result.isolation
    else:
        with pytest.raises(ConfigurationError, match="runc"):
            docker_sandbox.run("true", spec=_spec(runtime="runsc"))


def test_cpus_beyond_the_engine_are_refused(docker_sandbox: DockerSandbox) -> None:
    """Asking for more CPUs than the engine has is a configuration error."""
    with pytest.raises(ConfigurationError, match="CPUs"):
        docker_sandbox.run("true", spec=_spec(cpus=docker_sandbox.engine.ncpu + 1))


@pytest.mark.parametrize(
    ("command", "env"),
    [
        ([], None),
        (["ok", 1], None),
        ("", None),
        (["true"], {"BAD-NAME": "x"}),
        (["true"], {"A": 1}),
    ],
)
def test_bad_command_or_env_is_refused(
    docker_sandbox: DockerSandbox, command: Any, env: Any
) -> None:
    """Empty commands, non-string arguments and bad variable names are configuration errors."""
    with pytest.raises(ConfigurationError):
        docker_sandbox.run(command, env=env)


def test_bad_workspace_is_refused(docker_sandbox: DockerSandbox, tmp_path: Path) -> None:
    """A workspace that is not a directory is a configuration error."""
    with pytest.raises(ConfigurationError, match="existing directory"):
        docker_sandbox.run("true", workspace=tmp_path / "missing")


async def test_cancelling_arun_kills_the_sandbox(docker_sandbox: DockerSandbox) -> None:
    """Cancelling an awaited run kills its container promptly."""
    task = asyncio.ensure_future(docker_sandbox.arun("sleep 60", run_id="cancel-me"))
    await asyncio.sleep(1.0)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 5


async def test_arun_returns_the_result(docker_sandbox: DockerSandbox) -> None:
    """The async driver returns the same result as run."""
    result = await docker_sandbox.arun(["echo", "async"])
    assert result.ok
    assert result.stdout == "async\n"


def test_tmpfs_fallback_caps_and_round_trips(
    sandbox_image: str, owner: str, state_dir: Path, tmp_path: Path
) -> None:
    """The tmpfs workspace (no loop mounts) is capped, copied in and out, and says so."""
    with DockerSandbox(SMALL, owner=owner, state_dir=state_dir, disk_mode="tmpfs") as box:
        assert str(box.disk_limit_mechanism) == "tmpfs"
        (tmp_path / "in.txt").write_text("in")
        result = box.run("cat in.txt > out.txt; mkdir d; echo x > d/f", workspace=tmp_path)
        assert result.ok, result.stderr
        assert result.workspace_synced
        assert (tmp_path / "out.txt").read_text() == "in"
        assert (tmp_path / "d" / "f").read_text() == "x\n"
        full = box.run("dd if=/dev/zero of=fill bs=1M count=100", spec=_spec(disk="8m"))
        assert full.reason is TerminationReason.DISK_LIMIT
        assert str(full.disk_limit_mechanism) == "tmpfs"
        assert "by tmpfs" in full.isolation


def test_close_kills_running_commands_and_leaves_nothing(
    sandbox_image: str, owner: str, state_dir: Path
) -> None:
    """Closing a sandbox stops its running command and removes its containers."""
    import threading

    box = DockerSandbox(SMALL, owner=owner, state_dir=state_dir, sweep_on_start=False)
    results = []
    runner = threading.Thread(target=lambda: results.append(box.run("sleep 60")))
    runner.start()
    time.sleep(1.0)
    box.close()
    runner.join(timeout=15)
    assert results
    assert results[0].reason is TerminationReason.KILLED
    mine = box._client.containers.list(all=True, filters={"label": f"{LABEL_OWNER}={owner}"})
    assert [c for c in mine if "sleep" in str(c.attrs.get("Config", {}).get("Cmd"))] == []
