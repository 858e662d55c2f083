"""Rollback restores exact bytes, permissions, symlinks and directories, in place, safely."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent_runtime.errors import WorkspaceError
from agent_runtime.workspace import RollbackSummary, Workspace, WorkspaceConfig, _fs
from agent_runtime.workspace.rollback import plan_rollback

Tree = Callable[[Path], dict[str, tuple[Any, ...]]]


def populate(ws: Workspace, root: Path) -> None:
    """Files with varied modes, an empty file, nested and empty directories, and a symlink."""
    ws.put_file("bin/run.sh", b"#!/bin/sh\necho run\n", mode=0o755)
    ws.put_file("bin/private", b"secret\x00\xff", mode=0o700)
    ws.put_file("empty.txt", b"", mode=0o600)
    ws.put_file("a/b/c/deep.txt", b"deep\n" * 1000, mode=0o444)
    ws.put_file("setuid-like", b"x", mode=0o4750)
    (root / "empty-dir").mkdir(mode=0o700)
    os.chmod(root / "empty-dir", 0o700)
    os.chmod(root / "a/b", 0o750)
    (root / "link").symlink_to("bin/run.sh")


def vandalise(root: Path) -> None:
    """What a misbehaving step does: rewrite, chmod, delete, add, retype, relink."""
    (root / "bin/run.sh").write_bytes(b"rm -rf /\n")
    os.chmod(root / "bin/run.sh", 0o644)
    os.chmod(root / "bin/private", 0o777)
    (root / "empty.txt").write_bytes(b"not empty any more")
    for p in sorted((root / "a").rglob("*"), reverse=True):
        os.chmod(p, 0o755) if p.is_dir() else p.unlink()
    for p in sorted((root / "a").rglob("*"), reverse=True):
        p.rmdir()
    (root / "a").rmdir()
    (root / "a").write_bytes(b"now a file")
    (root / "empty-dir").rmdir()
    (root / "link").unlink()
    (root / "link").symlink_to("/etc/passwd")
    (root / "new/nested").mkdir(parents=True)
    (root / "new/nested/added.bin").write_bytes(os.urandom(4096))
    os.mkfifo(root / "fifo")


def test_rollback_to_initial_restores_everything_exactly(
    ws_root: Path, make_ws: Callable[..., Workspace], read_tree: Tree
) -> None:
    """Bytes, modes (exec, set-id, read-only), empty files and dirs, symlinks come back exactly."""
    ws_root.mkdir()
    ws = make_ws()
    populate(ws, ws_root)
    ws2 = make_ws("run-2")  # a second run whose initial state is the populated tree
    expected = read_tree(ws_root)
    assert expected["bin/run.sh"][1] == 0o755
    assert expected["setuid-like"][1] == 0o4750
    vandalise(ws_root)
    ws2.snapshot(0, "vandal")
    summary = ws2.rollback()
    assert read_tree(ws_root) == expected
    assert summary.position == -1
    assert summary.to_step is None
    assert set(summary.restored) == {"a", "bin/private", "bin/run.sh", "empty.txt", "link"}
    assert set(summary.recreated) == {"a/b", "a/b/c", "a/b/c/deep.txt", "empty-dir"}
    assert set(summary.deleted) == {"fifo", "new", "new/nested", "new/nested/added.bin"}


def test_rollback_to_a_middle_step(
    ws_root: Path, make_ws: Callable[..., Workspace], read_tree: Tree
) -> None:
    """Rolling back to step 1 keeps step 0's and step 1's work and undoes step 2's."""
    ws = make_ws()
    ws.put_file("one.txt", b"1")
    ws.snapshot(0, "one")
    ws.put_file("two.txt", b"2", mode=0o751)
    ws.put_file("one.txt", b"1 edited")
    ws.snapshot(1, "two")
    expected = read_tree(ws_root)
    ws.put_file("three.txt", b"3")
    os.remove(ws_root / "two.txt")
    ws.snapshot(2, "three")
    summary = ws.rollback(1)
    assert read_tree(ws_root) == expected
    assert (summary.position, summary.step) == (1, "two")
    assert (summary.restored, summary.recreated, summary.deleted) == (
        (),
        ("two.txt",),
        ("three.txt",),
    )
    ws.rollback(0)
    assert ws.get_file("one.txt") == b"1"
    assert ws.list_files() == ["one.txt"]


def test_rollback_twice_is_harmless(
    ws_root: Path, make_ws: Callable[..., Workspace], read_tree: Tree
) -> None:
    """A second rollback finds nothing to change and leaves the tree as the first left it."""
    ws = make_ws()
    populate(ws, ws_root)
    ws.snapshot(0, "populate")
    expected = read_tree(ws_root)
    vandalise(ws_root)
    first = ws.rollback(0)
    second = ws.rollback(0)
    assert first.changed > 0
    assert second.changed == 0
    assert read_tree(ws_root) == expected


def test_rollback_keeps_the_root_directory_itself(
    ws_root: Path, make_ws: Callable[..., Workspace]
) -> None:
    """The root is restored in place (it may be a mount point), never replaced."""
    ws = make_ws()
    ino = ws_root.stat().st_ino
    ws.put_file("x/y", b"z")
    ws.rollback()
    assert ws_root.stat().st_ino == ino
    assert list(ws_root.iterdir()) == []


def test_rollback_restores_mtime(ws_root: Path, make_ws: Callable[..., Workspace]) -> None:
    """A restored file gets its recorded modification time back."""
    ws = make_ws()
    ws.put_file("f", b"old")
    os.utime(ws_root / "f", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    ws.snapshot(0, "old")
    ws.put_file("f", b"new")
    ws.rollback(0)
    assert (ws_root / "f").stat().st_mtime_ns == 1_600_000_000_000_000_000


@pytest.mark.skipif(os.geteuid() != 0, reason="restoring owners needs root")
def test_rollback_restores_owners(ws_root: Path, make_ws: Callable[..., Workspace]) -> None:
    """As root, the uid and gid of files, directories and symlinks are restored."""
    ws = make_ws()
    ws.put_file("d/f", b"x")
    (ws_root / "l").symlink_to("d/f")
    for p in ("d", "d/f"):
        os.chown(ws_root / p, 1000, 1001)
    os.chown(ws_root / "l", 1002, 1003, follow_symlinks=False)
    ws.snapshot(0, "owned")
    os.chown(ws_root / "d/f", 0, 0)
    os.chown(ws_root / "d", 0, 0)
    os.chown(ws_root / "l", 0, 0, follow_symlinks=False)
    ws.rollback(0)
    assert (ws_root / "d").stat()[4:6] == (1000, 1001)
    assert (ws_root / "d/f").stat()[4:6] == (1000, 1001)
    assert (ws_root / "l").lstat()[4:6] == (1002, 1003)


def test_restrictive_directory_modes_are_restored_last(
    ws_root: Path, make_ws: Callable[..., Workspace], read_tree: Tree
) -> None:
    """A read-only directory is recreated with its files inside, then made read-only."""
    ws = make_ws()
    ws.put_file("ro/inside.txt", b"in")
    os.chmod(ws_root / "ro", 0o555)
    ws.snapshot(0, "ro")
    expected = read_tree(ws_root)
    os.chmod(ws_root / "ro", 0o755)
    (ws_root / "ro/inside.txt").unlink()
    (ws_root / "ro").rmdir()
    ws.rollback(0)
    assert read_tree(ws_root) == expected


def test_missing_blob_fails_and_changes_nothing(
    ws_root: Path, make_ws: Callable[..., Workspace], blob_dir: Path, read_tree: Tree
) -> None:
    """A blob missing from the store: the error names the file, the tree is untouched."""
    ws = make_ws()
    ws.put_file("keep.txt", b"keep")
    ws.put_file("lost.txt", b"this blob will be lost")
    ws.snapshot(0, "both")
    snap = ws.store.get("run-1", 0)
    assert snap is not None
    lost = snap.entries["lost.txt"].sha256
    assert lost is not None
    (ws.blobs.path(lost)).unlink()
    ws.put_file("keep.txt", b"changed")
    ws.put_file("lost.txt", b"changed too")
    ws.put_file("added.txt", b"added")
    before = read_tree(ws_root)
    with pytest.raises(WorkspaceError, match=r"lost\.txt: blob .* is missing.*Nothing was changed"):
        ws.rollback(0)
    assert read_tree(ws_root) == before


def test_corrupt_blob_fails_and_changes_nothing(
    ws_root: Path, make_ws: Callable[..., Workspace], read_tree: Tree
) -> None:
    """A blob whose bytes no longer match its hash is refused before anything changes."""
    ws = make_ws()
    ws.put_file("f.txt", b"good bytes")
    ws.snapshot(0, "good")
    snap = ws.store.get("run-1", 0)
    assert snap is not None
    sha = snap.entries["f.txt"].sha256
    assert sha is not None
    blob = ws.blobs.path(sha)
    os.chmod(blob, 0o644)
    blob.write_bytes(b"evil bytes")
    ws.put_file("f.txt", b"other")
    before = read_tree(ws_root)
    with pytest.raises(WorkspaceError, match=r"f.txt: blob .* is corrupt"):
        ws.rollback(0)
    assert read_tree(ws_root) == before


def test_interrupted_rollback_finishes_when_run_again(
    ws_root: Path,
    make_ws: Callable[..., Workspace],
    read_tree: Tree,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rollback that dies midway (full disk) is completed by running it again."""
    ws = make_ws()
    populate(ws, ws_root)
    ws.snapshot(0, "populate")
    expected = read_tree(ws_root)
    vandalise(ws_root)
    real_write = _fs.write_atomic
    calls = {"n": 0}

    def failing_write(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device", "bin/run.sh")
        real_write(*args, **kwargs)

    monkeypatch.setattr(_fs, "write_atomic", failing_write)
    with pytest.raises(
        WorkspaceError, match=r"stopped midway.*No space left.*run the rollback again"
    ):
        ws.rollback(0)
    assert read_tree(ws_root) != expected
    monkeypatch.setattr(_fs, "write_atomic", real_write)
    ws.rollback(0)
    assert read_tree(ws_root) == expected


def test_interrupted_write_leaves_no_temporary_file(
    ws_root: Path, make_ws: Callable[..., Workspace], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails before its rename removes its temporary file."""
    ws = make_ws()
    ws.put_file("f", b"v1")
    ws.snapshot(0, "v1")
    ws.put_file("f", b"v2")

    def broken_rename(*args: Any, **kwargs: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(_fs.os, "rename", broken_rename)
    with pytest.raises(WorkspaceError, match="Input/output error"):
        ws.rollback(0)
    monkeypatch.undo()
    assert sorted(p.name for p in ws_root.iterdir()) == ["f"]
    assert ws.get_file("f") == b"v2"


def test_leftover_temporary_files_are_removed_by_rollback(
    ws_root: Path, make_ws: Callable[..., Workspace]
) -> None:
    """A temporary file left by a crash is deleted like any file the target lacks."""
    ws = make_ws()
    (ws_root / f"{_fs.TEMP_PREFIX}deadbeef").write_bytes(b"half written")
    summary = ws.rollback()
    assert summary.deleted == (f"{_fs.TEMP_PREFIX}deadbeef",)
    assert list(ws_root.iterdir()) == []


def test_rollback_errors_for_unknown_position_and_missing_directory(
    ws_root: Path, make_ws: Callable[..., Workspace]
) -> None:
    """Unknown positions list the known ones; a vanished directory says how to recover."""
    ws = make_ws()
    ws.snapshot(0, "fetch")
    with pytest.raises(WorkspaceError, match=r"position 7.*-1 \(initial\), 0 \(fetch\)"):
        ws.rollback(7)
    ws_root.rmdir()
    with pytest.raises(WorkspaceError, match=r"does not exist.*mkdir -p"):
        ws.rollback()


def test_rollback_event_and_callback(
    make_ws: Callable[..., Workspace], rollback_events: Any
) -> None:
    """Every rollback emits WorkspaceRolledBack and calls on_rollback with the summary."""
    seen: list[RollbackSummary] = []
    ws = make_ws(on_rollback=seen.append)
    ws.put_file("a", b"a")
    ws.snapshot(0, "a")
    ws.put_file("b", b"b")
    summary = ws.rollback(0)
    assert seen == [summary]
    [event] = rollback_events.events
    assert (event.run_id, event.to_step, event.files_restored, event.automatic) == (
        "run-1",
        0,
        1,
        False,
    )
    assert summary.as_dict()["deleted"] == ["b"]
    assert "deleted   b" in summary.to_text()


def test_failed_run_rolls_back_automatically_when_configured(
    tmp_path: Path, make_ws: Callable[..., Workspace], rollback_events: Any
) -> None:
    """on_run_failed restores the initial state (automatic=True), or does nothing when off."""
    off = make_ws("run-off", config=WorkspaceConfig(rollback_on_failure=False))
    off.put_file("kept.txt", b"x")
    assert off.on_run_failed() is None
    assert off.list_files() == ["kept.txt"]
    assert rollback_events.events == []
    on = make_ws("run-on", root=tmp_path / "other")
    on.put_file("junk.txt", b"x")
    summary = on.on_run_failed()
    assert summary is not None
    assert summary.automatic
    assert on.list_files() == []
    [event] = rollback_events.events
    assert (event.to_step, event.automatic) == (None, True)


def test_plan_is_empty_when_nothing_differs(make_ws: Callable[..., Workspace]) -> None:
    """The pure planner finds nothing to do for identical manifests."""
    ws = make_ws()
    ws.put_file("a/b", b"x")
    snap = ws.snapshot(0, "x")
    plan = plan_rollback(snap.entries, snap.entries, owner=True)
    assert not plan
    retyped = dict(snap.entries)
    retyped["a"] = snap.entries["a/b"].__class__("a", "file", 0o644, sha256="0" * 64)
    del retyped["a/b"]
    plan = plan_rollback(snap.entries, retyped, owner=True)
    assert plan.remove == ("a",)  # the directory goes with its tree, in one call
    assert plan.deleted == ("a/b",)
    assert [e.path for e in plan.files] == ["a"]
