"""ctx.sandbox and ctx.workspace inside durable runs, on the real Docker engine."""

from __future__ import annotations

import io
import json
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox_helpers import Recorder
from typer.testing import CliRunner

import observability
from agent_runtime import RetryPolicy, RunContext, RunFailedError, Runtime
from agent_runtime.cli import app as cli
from agent_runtime.events import SandboxStarted
from agent_runtime.sandbox import DockerSandbox, SandboxResult, SandboxSpec

pytestmark = pytest.mark.docker

SPEC = SandboxSpec(memory="128m", pids=64, timeout=30)


def _name() -> str:
    return "sbx_" + secrets.token_hex(3)


@pytest.fixture
def rt(tmp_path: Path, docker_sandbox: DockerSandbox) -> Iterator[Runtime]:
    """A runtime on a fresh SQLite database using the module's Docker sandbox."""
    runtime = Runtime(
        f"sqlite:///{tmp_path}/state.db",
        recover=False,
        state_dir=tmp_path / "state",
        sandbox=docker_sandbox,
    )
    yield runtime
    runtime.close(timeout=5)


def test_sandbox_step_is_checkpointed_and_sees_the_trace(rt: Runtime, recorder: Recorder) -> None:
    """The command runs once with the run's TRACEPARENT; a DLQ retry replays its result."""
    broken = {"value": True}

    def finish(stdout: str) -> str:
        if broken["value"]:
            raise KeyError("not yet")
        return stdout.strip()

    name = _name()

    @rt.workflow(name, retry=RetryPolicy.none())
    def wf(ctx: RunContext) -> str:
        result = ctx.sandbox.run(
            ["python", "-c", "import os; print(os.environ['TRACEPARENT'])"], spec=SPEC
        )
        assert isinstance(result, SandboxResult)
        assert result.ok
        return ctx.step(finish, result.stdout)

    handle = rt.start(wf)
    with pytest.raises(RunFailedError):
        handle.result(timeout=60)
    broken["value"] = False
    traceparent = rt.dlq.retry(handle.id).result(timeout=60)
    assert traceparent.split("-")[1] == handle.trace_id
    starts = [e for e in recorder.of(SandboxStarted) if e.run_id == handle.id]
    assert len(starts) == 1  # replayed from its checkpoint, not run again
    steps = [s.name for s in rt.store.load_steps(handle.id).values()]
    assert steps[0] == "sandbox:python"


def test_output_lines_are_logged_with_the_run_trace(rt: Runtime) -> None:
    """Each line the sandbox prints is a log record carrying the run id and trace id."""
    stream = io.StringIO()
    observability.configure("sbx-tests", stream=stream, sinks=[], tracing=False)
    try:

        @rt.workflow(_name())
        def wf(ctx: RunContext) -> None:
            ctx.sandbox.run(["sh", "-c", "echo first line; echo second line >&2"], spec=SPEC)

        handle = rt.start(wf)
        handle.result(timeout=60)
    finally:
        observability.shutdown()
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    output = [r for r in records if r["logger"] == "agent_runtime.sandbox.output"]
    assert {(r["message"], r["stream"]) for r in output} == {
        ("first line", "stdout"),
        ("second line", "stderr"),
    }
    assert {r["trace_id"] for r in output} == {handle.trace_id}
    assert {r["run_id"] for r in output} == {handle.id}


def test_each_step_is_snapshotted_and_diffable(rt: Runtime, tmp_path: Path) -> None:
    """Files changed by the sandbox and by host steps show up per step in `agent-runtime diff`."""

    @rt.workflow(_name())
    def wf(ctx: RunContext) -> None:
        ctx.sandbox.put_file("notes.txt", "draft\n")
        ctx.sandbox.run(
            ["sh", "-c", "echo final > /workspace/notes.txt; touch /workspace/new"], spec=SPEC
        )

    handle = rt.start(wf)
    handle.result(timeout=60)
    runner = CliRunner()
    env = {
        "AGENT_RUNTIME_DB": rt.store.url,
        "AGENT_RUNTIME_STATE_DIR": str(rt.state_dir),
    }
    result = runner.invoke(cli, ["diff", handle.id], env=env)
    assert result.exit_code == 0, result.output
    assert "+final" in result.output
    assert "new" in result.output
    as_json = runner.invoke(cli, ["diff", handle.id, "--json"], env=env)
    files = {f["path"]: f["change"] for f in json.loads(as_json.output)["files"]}
    assert files == {"notes.txt": "added", "new": "added"}


def test_failed_run_rolls_its_workspace_back_and_records_it(rt: Runtime) -> None:
    """A failed run's workspace returns to its initial state; the run has a rollback event."""
    seen: dict[str, Path] = {}

    @rt.workflow(_name(), retry=RetryPolicy.none())
    def wf(ctx: RunContext) -> None:
        seen["dir"] = ctx.sandbox.workspace_dir
        (ctx.sandbox.workspace_dir / "keep.txt").write_text("from before\n")
        ctx.sandbox.run(
            ["sh", "-c", "rm /workspace/keep.txt; echo junk > /workspace/junk"], spec=SPEC
        )
        raise RuntimeError("the agent gave up")

    handle = rt.start(wf)
    with pytest.raises(RunFailedError):
        handle.result(timeout=60)
    assert sorted(p.name for p in seen["dir"].iterdir()) == []
    events = [e for e in rt.store.events(handle.id) if e.kind == "rollback"]
    assert len(events) == 1
    assert "initial state (automatic)" in events[0].reason


def test_manual_rollback_to_a_step_restores_bytes_and_modes(rt: Runtime) -> None:
    """`agent-runtime rollback RUN --to-step N` restores exact bytes and permissions."""

    def marker() -> str:
        return "after step 1"

    @rt.workflow(_name())
    def wf(ctx: RunContext) -> None:
        ctx.sandbox.put_file("tool.sh", "#!/bin/sh\necho v1\n", mode=0o755)
        ctx.step(marker)  # position 0: tool.sh v1, executable
        ctx.sandbox.run(
            ["sh", "-c", "printf 'v2\\0binary' > /workspace/tool.sh; chmod 600 /workspace/tool.sh"],
            spec=SPEC,
        )

    handle = rt.start(wf)
    handle.result(timeout=60)
    tool = rt.state_dir / "workspaces" / handle.id / "tool.sh"
    assert tool.read_bytes() == b"v2\x00binary"
    env = {"AGENT_RUNTIME_DB": rt.store.url, "AGENT_RUNTIME_STATE_DIR": str(rt.state_dir)}
    result = CliRunner().invoke(cli, ["rollback", handle.id, "--to-step", "0"], env=env)
    assert result.exit_code == 0, result.output
    assert tool.read_bytes() == b"#!/bin/sh\necho v1\n"
    assert tool.stat().st_mode & 0o777 == 0o755
    reasons = [e.reason for e in rt.store.events(handle.id) if e.kind == "rollback"]
    assert any("step 0 (by hand)" in r for r in reasons)
    bad = CliRunner().invoke(cli, ["rollback", handle.id, "--to-step", "7"], env=env)
    assert bad.exit_code == 1
    assert "7" in bad.output


def test_resume_undoes_the_in_flight_steps_files(
    tmp_path: Path, docker_sandbox: DockerSandbox
) -> None:
    """After a takeover, files the interrupted step wrote are gone before it runs again."""
    db = f"sqlite:///{tmp_path}/state.db"
    state = tmp_path / "state"
    release = threading.Event()
    seen: list[list[str]] = []
    name = _name()

    def first(ctx_dir: str) -> int:
        Path(ctx_dir, "committed.txt").write_text("kept\n")
        return 1

    def second(ctx_dir: str) -> int:
        seen.append(sorted(p.name for p in Path(ctx_dir).iterdir()))
        Path(ctx_dir, "partial.txt").write_text("half done\n")
        if len(seen) == 1:
            release.wait(10)
        return 2

    def wf(ctx: RunContext) -> int:
        root = str(ctx.workspace.root)
        return ctx.step(first, root, name="first") + ctx.step(second, root, name="second")

    one = Runtime(db, recover=False, state_dir=state, sandbox=docker_sandbox)
    one.workflow(name)(wf)
    handle = one.start(name)
    while not seen:
        time.sleep(0.01)
    one.close(timeout=0)
    two = Runtime(db, recover=False, state_dir=state, sandbox=docker_sandbox)
    two.workflow(name)(wf)
    assert two.resume(handle.id).result(timeout=30) == 3
    release.set()
    assert seen == [["committed.txt"], ["committed.txt"]]
    two.close()


def test_dead_docker_engine_fails_the_run_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no engine at DOCKER_HOST the run fails with DockerUnavailableError and what to do."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    rt = Runtime(f"sqlite:///{tmp_path}/state.db", recover=False, state_dir=tmp_path / "s")

    @rt.workflow(_name(), retry=RetryPolicy.none())
    def wf(ctx: RunContext) -> None:
        ctx.sandbox.run(["true"])

    with pytest.raises(RunFailedError) as info:
        rt.run(wf)
    assert info.value.error_type == "DockerUnavailableError"
    assert "ProcessSandbox" in str(info.value.__cause__) or "dockerd" in str(info.value.__cause__)
    rt.close()
