"""Diffs between snapshots: unified text diffs, binary and large files, text and JSON output."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from agent_runtime.errors import WorkspaceError
from agent_runtime.workspace import Workspace, WorkspaceConfig


def test_text_diff_of_a_modified_file(make_ws: Callable[..., Workspace]) -> None:
    """A modified text file gets a unified diff with a/ and b/ paths."""
    ws = make_ws()
    ws.put_file("notes.txt", "alpha\nbeta\ngamma\n")
    ws.snapshot(0, "write")
    ws.put_file("notes.txt", "alpha\nBETA\ngamma\n")
    ws.snapshot(1, "edit")
    diff = ws.diff(0, 1)
    [f] = diff.files
    assert f.diff == (
        "--- a/notes.txt\n+++ b/notes.txt\n@@ -1,3 +1,3 @@\n alpha\n-beta\n+BETA\n gamma\n"
    )
    text = diff.to_text()
    assert text.startswith(
        "workspace of run run-1: position 0 (write) -> 1 (edit): 0 added, 1 modified, 0 deleted\n"
    )
    assert "diff --workspace a/notes.txt b/notes.txt\n" in text
    old, new = f.change.old_sha256, f.change.new_sha256
    assert old is not None
    assert new is not None
    assert f"index {old[:12]}..{new[:12]}\n" in text


def test_default_diff_is_initial_to_latest(
    ws_root: Path, make_ws: Callable[..., Workspace]
) -> None:
    """diff() compares the initial state with the latest snapshot: adds and deletes vs /dev/null."""
    ws_root.mkdir()
    (ws_root / "old.txt").write_text("bye\n")
    ws = make_ws()
    ws.put_file("new.txt", "hello\n")
    (ws_root / "old.txt").unlink()
    ws.snapshot(0, "a")
    ws.put_file("later.txt", "x")
    ws.snapshot(1, "b")
    diff = ws.diff()
    assert (diff.from_position, diff.to_position) == (-1, 1)
    files = {f.path: f for f in diff.files}
    assert files["new.txt"].diff == "--- /dev/null\n+++ b/new.txt\n@@ -0,0 +1 @@\n+hello\n"
    assert files["old.txt"].diff == "--- a/old.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-bye\n"
    assert files["later.txt"].diff.endswith("+x\n\\ No newline at end of file\n")
    assert (diff.added, diff.modified, diff.deleted) == (2, 0, 1)


def test_binary_large_and_truncated(make_ws: Callable[..., Workspace]) -> None:
    """Binary files are only reported, large files are not read, long diffs are cut."""
    cfg = WorkspaceConfig(max_diff_file_bytes=1000, max_diff_lines=10)
    ws = make_ws(config=cfg)
    ws.put_file("image.png", b"\x89PNG\r\n\x1a\n\x00\x00")
    ws.put_file("latin1.txt", "caf\xe9".encode("latin-1"))
    ws.put_file("big.log", b"x" * 1001)
    ws.put_file("long.txt", "".join(f"line {i}\n" for i in range(50)))
    ws.snapshot(0, "write")
    files = {f.path: f for f in ws.diff().files}
    assert files["image.png"].binary
    assert files["image.png"].diff == ""
    assert files["latin1.txt"].binary
    assert files["big.log"].too_large
    assert not files["big.log"].binary
    assert files["long.txt"].truncated
    assert files["long.txt"].diff.count("\n") == 11
    assert files["long.txt"].diff.endswith("... diff truncated: 43 more lines not shown\n")
    text = ws.diff().to_text()
    assert "Binary files a/image.png and b/image.png differ" in text
    assert "Large file: content diff not shown" in text


def test_metadata_changes_are_rendered(ws_root: Path, make_ws: Callable[..., Workspace]) -> None:
    """Mode changes, symlink retargets, directories and type changes appear in the text."""
    ws = make_ws()
    ws.put_file("run.sh", "echo\n")
    (ws_root / "link").symlink_to("run.sh")
    (ws_root / "x").write_text("file")
    ws.snapshot(0, "a")
    os.chmod(ws_root / "run.sh", 0o755)
    (ws_root / "link").unlink()
    (ws_root / "link").symlink_to("elsewhere")
    (ws_root / "x").unlink()
    (ws_root / "x").mkdir()
    ws.snapshot(1, "b")
    diff = ws.diff(0)
    text = diff.to_text()
    assert "old mode 0644\nnew mode 0755\n" in text
    assert "symlink target 'run.sh' -> 'elsewhere'" in text
    assert "type changed: file mode 0644, 4 bytes -> directory mode 0755" in text
    run = next(f for f in diff.files if f.path == "run.sh")
    assert run.diff == ""  # content unchanged: no line diff


def test_json_output(make_ws: Callable[..., Workspace]) -> None:
    """The JSON form carries counts, hashes, aspects and the diff text of each file."""
    ws = make_ws()
    ws.put_file("a.txt", "1\n")
    ws.snapshot(0, "one")
    ws.put_file("a.txt", "2\n", mode=0o600)
    ws.snapshot(1, "two")
    doc = json.loads(ws.diff(0, 1).to_json())
    assert (doc["run_id"], doc["from_position"], doc["to_position"]) == ("run-1", 0, 1)
    assert (doc["added"], doc["modified"], doc["deleted"]) == (0, 1, 0)
    [f] = doc["files"]
    assert f["path"] == "a.txt"
    assert f["change"] == "modified"
    assert f["aspects"] == ["content", "mode"]
    assert f["old"]["mode"] == "0644"
    assert f["new"]["mode"] == "0600"
    assert len(f["new"]["sha256"]) == 64
    assert "-1\n+2\n" in f["diff"]
    assert f["binary"] is False


def test_missing_blob_is_reported_in_the_diff(make_ws: Callable[..., Workspace]) -> None:
    """A diff whose content is gone says so instead of failing."""
    ws = make_ws()
    ws.put_file("a.txt", "gone\n")
    snap = ws.snapshot(0, "one")
    sha = snap.entries["a.txt"].sha256
    assert sha is not None
    ws.blobs.path(sha).unlink()
    [f] = ws.diff().files
    assert f.note is not None
    assert "content not available" in f.note
    assert "missing" in f.note


def test_unknown_positions(make_ws: Callable[..., Workspace]) -> None:
    """Diffing a position with no snapshot names the positions that exist."""
    ws = make_ws()
    with pytest.raises(WorkspaceError, match=r"position 3.*-1 \(initial\)"):
        ws.diff(-1, 3)
    with pytest.raises(WorkspaceError, match="position 5"):
        ws.diff(5)
