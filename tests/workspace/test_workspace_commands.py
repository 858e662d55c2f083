"""The functions behind `agent-runtime rollback` and `agent-runtime diff`, over a real database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from agent_runtime.errors import WorkspaceError
from agent_runtime.workspace import (
    RollbackSummary,
    SqlSnapshotStore,
    Workspace,
    diff_run,
    list_run_snapshots,
    rollback_run,
)


@pytest.fixture
def recorded(tmp_path: Path, sqlite_engine: sa.Engine) -> Workspace:
    """A run with three snapshots, recorded in SQLite, blobs in <state>/blobs."""
    ws = Workspace(
        tmp_path / "ws", "run-42", SqlSnapshotStore(sqlite_engine), state_dir=tmp_path / "state"
    )
    ws.put_file("report.md", "# draft\n")
    ws.snapshot(0, "draft")
    ws.put_file("report.md", "# final\n")
    ws.put_file("tool.py", "print('hi')\n", mode=0o755)
    ws.snapshot(1, "finish")
    ws.put_file("scratch.tmp", "junk")
    return ws


def test_rollback_run_uses_the_recorded_directory(
    recorded: Workspace, sqlite_engine: sa.Engine, tmp_path: Path, rollback_events: Any
) -> None:
    """With no resolver, the directory recorded with the snapshots is restored."""
    seen: list[RollbackSummary] = []
    summary = rollback_run(
        sqlite_engine, "run-42", to_step=0, state_dir=tmp_path / "state", on_rollback=seen.append
    )
    assert recorded.get_file("report.md") == b"# draft\n"
    assert recorded.list_files() == ["report.md"]
    assert summary.deleted == ("scratch.tmp", "tool.py")
    assert seen == [summary]
    [event] = rollback_events.events
    assert (event.run_id, event.to_step, event.automatic) == ("run-42", 0, False)


def test_rollback_run_to_initial_with_a_resolver(
    recorded: Workspace, sqlite_engine: sa.Engine, tmp_path: Path
) -> None:
    """A resolver maps the run to another host path (a different mount of the same tree)."""
    moved = tmp_path / "moved"
    recorded.root.rename(moved)
    summary = rollback_run(
        sqlite_engine,
        "run-42",
        blob_dir=tmp_path / "state" / "blobs",
        resolve_root=lambda run_id: moved,
    )
    assert summary.position == -1
    assert list(moved.iterdir()) == []


def test_rollback_run_errors(recorded: Workspace, sqlite_engine: sa.Engine, tmp_path: Path) -> None:
    """Unknown run, unknown position, missing directory and missing blob are each explained."""
    state = tmp_path / "state"
    with pytest.raises(WorkspaceError, match="run nope has no workspace snapshots") as info:
        rollback_run(sqlite_engine, "nope", state_dir=state)
    assert info.value.run_id == "nope"
    with pytest.raises(WorkspaceError, match=r"position 9.*0 \(draft\), 1 \(finish\)"):
        rollback_run(sqlite_engine, "run-42", to_step=9, state_dir=state)
    with pytest.raises(WorkspaceError, match="does not exist"):
        rollback_run(
            sqlite_engine, "run-42", state_dir=state, resolve_root=lambda r: tmp_path / "gone"
        )
    before = sorted(recorded.list_files())
    with pytest.raises(WorkspaceError, match=r"report\.md: blob .* missing.*Nothing was changed"):
        rollback_run(sqlite_engine, "run-42", to_step=0, blob_dir=tmp_path / "empty-blobs")
    assert sorted(recorded.list_files()) == before


def test_diff_run_text_and_json(
    recorded: Workspace, sqlite_engine: sa.Engine, tmp_path: Path
) -> None:
    """diff_run works from the database and blobs alone, even with the directory gone."""
    for p in sorted(recorded.root.rglob("*"), reverse=True):
        p.unlink()
    recorded.root.rmdir()
    diff = diff_run(sqlite_engine, "run-42", state_dir=tmp_path / "state")
    assert (diff.from_position, diff.to_position) == (-1, 1)
    text = diff.to_text()
    assert "+# final\n" in text
    assert "new file mode 0755" in text
    doc = json.loads(diff.to_json())
    assert [f["path"] for f in doc["files"]] == ["report.md", "tool.py"]
    step = diff_run(
        SqlSnapshotStore(sqlite_engine),
        "run-42",
        from_position=0,
        to_position=1,
        blob_dir=tmp_path / "state" / "blobs",
    )
    assert "-# draft\n+# final\n" in step.files[0].diff


def test_diff_run_errors(recorded: Workspace, sqlite_engine: sa.Engine) -> None:
    """Unknown runs and positions are explained."""
    with pytest.raises(WorkspaceError, match="no workspace snapshots"):
        diff_run(sqlite_engine, "nope")
    with pytest.raises(WorkspaceError, match="position 5"):
        diff_run(sqlite_engine, "run-42", from_position=5)
    with pytest.raises(WorkspaceError, match="position 6"):
        diff_run(sqlite_engine, "run-42", to_position=6)


def test_list_run_snapshots(recorded: Workspace, sqlite_engine: sa.Engine) -> None:
    """The listing gives positions, steps and sizes, and refuses unknown runs."""
    infos = list_run_snapshots(sqlite_engine, "run-42")
    assert [(i.position, i.step, i.file_count) for i in infos] == [
        (-1, "initial", 0),
        (0, "draft", 1),
        (1, "finish", 2),
    ]
    with pytest.raises(WorkspaceError):
        list_run_snapshots(sqlite_engine, "nope")
