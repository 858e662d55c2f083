"""The command line over a real database: listings, details, resume, DLQ, logs, doctor, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent_runtime import RunFailedError, Runtime
from agent_runtime.cli import app

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Environment of a CLI invocation: a fresh database, log store and state dir."""
    return {
        "AGENT_RUNTIME_DB": f"sqlite:///{tmp_path}/state.db",
        "AGENT_RUNTIME_LOG_DB": str(tmp_path / "logs.db"),
        "AGENT_RUNTIME_STATE_DIR": str(tmp_path / "state"),
        "AGENT_RUNTIME_RECOVER": "0",
        "PYTHONPATH": str(ROOT),
    }


def _cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


def _runs(env: dict[str, str]) -> tuple[str, str]:
    """One successful and one dead-lettered run of the e2e app's workflows."""
    import tests.e2e.app as e2e

    rt = Runtime(env["AGENT_RUNTIME_DB"], recover=False)
    ok = rt.start(e2e.work_flow, 1)
    ok.result(timeout=10)
    bad = rt.start(e2e.fail_flow, "O-9")
    with pytest.raises(RunFailedError):
        bad.result(timeout=10)
    rt.close()
    return ok.id, bad.id


def test_runs_list_and_show(env: dict[str, str]) -> None:
    """`runs list --json` lists runs by status; `runs show` prints steps, events and errors."""
    ok, bad = _runs(env)
    code, out = _cli(env, "runs", "list", "--json")
    assert code == 0
    assert {r["id"]: r["status"] for r in json.loads(out)} == {ok: "success", bad: "failed"}
    code, out = _cli(env, "runs", "list", "--status", "failed", "--json")
    assert [r["id"] for r in json.loads(out)] == [bad]
    code, out = _cli(env, "runs", "show", bad[:8], "--json")
    shown = json.loads(out)
    assert shown["run"]["error_type"] == "UpstreamRejectedError"
    assert [s["name"] for s in shown["steps"]] == ["work"]
    assert [e["to_status"] for e in shown["events"] if e["kind"] == "transition"] == [
        "pending",
        "running",
        "failed",
    ]
    code, out = _cli(env, "runs", "show", bad)
    assert code == 0
    assert "UpstreamRejectedError" in out


def test_dlq_list_show_and_retry(env: dict[str, str]) -> None:
    """`dlq list/show` show the entry; `dlq retry` runs it again (and fails again here)."""
    _, bad = _runs(env)
    code, out = _cli(env, "dlq", "list", "--json")
    (entry,) = json.loads(out)
    assert entry["run_id"] == bad
    code, out = _cli(env, "dlq", "show", str(entry["id"]))
    assert code == 0
    assert "upstream rejected order O-9" in out
    assert "retry with: agent-runtime dlq retry" in out
    code, out = _cli(env, "--app", "tests.e2e.app", "dlq", "retry", str(entry["id"]), "--json")
    assert code == 1  # the workflow still fails: reported, with exit code 1
    assert json.loads(out[: out.rindex("}") + 1])["status"] == "failed"
    code, out = _cli(env, "dlq", "list", "--all", "--json")
    assert sorted(e["status"] for e in json.loads(out)) == ["open", "retried"]
    code, out = _cli(env, "dlq", "retry", str(entry["id"]))
    assert code == 1
    assert "already retried" in out


def test_resume_a_pending_run(env: dict[str, str]) -> None:
    """`runs resume` executes a run nobody is executing and prints its result."""
    import tests.e2e.app as e2e

    rt = Runtime(env["AGENT_RUNTIME_DB"], recover=False)
    queued = rt.enqueue(e2e.work_flow, 3)
    rt.close()
    code, out = _cli(env, "--app", "tests.e2e.app", "runs", "resume", queued.id, "--json")
    assert code == 0, out
    assert json.loads(out) == {"run_id": queued.id, "status": "success", "result": 3}


def test_logs_search_finds_the_run(env: dict[str, str]) -> None:
    """`logs search --run-id` finds the records a run wrote into the embedded store."""
    import observability

    previous = dict(os.environ)
    os.environ.update(env)
    try:
        observability.configure("cli-tests", stream="none", tracing=False)
        ok, _ = _runs(env)
        observability.shutdown()
    finally:
        os.environ.clear()
        os.environ.update(previous)
    code, out = _cli(env, "logs", "search", "--run-id", ok[:10], "--json")
    assert code == 0, out
    records = json.loads(out)
    assert records
    assert {r["run_id"] for r in records} == {ok}
    code, out = _cli(env, "logs", "search", "--level", "LOUD")
    assert code == 1
    assert "level" in out


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["runs", "list", "--status", "paused"], 2, "unknown status"),
        (["runs", "show", "abc"], 1, "too short"),
        (["runs", "show", "abcdef123"], 1, "no run id starts with"),
        (["dlq", "show", "999"], 1, "no dead-letter entry"),
        (["--app", "no.such.module", "runs", "resume", "abcdef"], 1, "cannot import"),
    ],
)
def test_bad_input_gives_one_line_errors(
    env: dict[str, str], args: list[str], code: int, needle: str
) -> None:
    """Bad input exits non-zero with a message saying what was wrong."""
    _runs(env)
    exit_code, out = _cli(env, *args)
    assert exit_code == code
    assert needle in out
    assert "Traceback" not in out


def test_unreachable_database(env: dict[str, str]) -> None:
    """An unreachable database is one error line with what to check."""
    env = {**env, "AGENT_RUNTIME_DB": "postgresql://u:secret@127.0.0.1:1/db"}
    code, out = _cli(env, "runs", "list")
    assert code == 1
    assert "server is running" in out
    assert "secret" not in out


@pytest.mark.docker
def test_doctor_reports_every_check(env: dict[str, str]) -> None:
    """`doctor --json` checks the database, Docker, image, iptables, logs and flags."""
    _runs(env)
    code, out = _cli(env, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(out[: out.rindex("]") + 1])}
    assert checks["state database"]["status"] == "ok"
    assert checks["dead-letter queue"]["status"] == "warn"
    assert checks["docker engine"]["status"] in ("ok", "warn")
    assert "feature flags" in checks
    assert "log search" in checks
    assert code == (1 if any(c["status"] == "fail" for c in checks.values()) else 0)


def test_doctor_fails_on_a_bad_flags_file(env: dict[str, str], tmp_path: Path) -> None:
    """A malformed flags file is a failed check and exit code 1."""
    flags = tmp_path / "flags.toml"
    flags.write_text("retry_enabled = [broken\n")
    code, out = _cli({**env, "AGENT_RUNTIME_FLAGS_FILE": str(flags)}, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(out[: out.rindex("]") + 1])}
    assert checks["feature flags"]["status"] == "fail"
    assert code == 1
