"""Change tracking: snapshots per step, added/modified/deleted with hashes, the stat cache."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_runtime.errors import ConfigurationError, WorkspaceError
from agent_runtime.workspace import (
    Entry,
    MemorySnapshotStore,
    Snapshot,
    Workspace,
    WorkspaceConfig,
    _fs,
)
from agent_runtime.workspace.scan import _reusable


def sha(data: bytes) -> str:
    """Hex SHA-256 of data."""
    return hashlib.sha256(data).hexdigest()


def test_initial_snapshot_is_taken_on_creation(
    ws_root: Path, make_ws: Callable[..., Workspace]
) -> None:
    """Creating a workspace records position -1 with what the directory already held."""
    ws_root.mkdir()
    (ws_root / "seed.txt").write_bytes(b"seed")
    ws = make_ws()
    [info] = ws.snapshots()
    assert (info.position, info.step, info.file_count, info.total_bytes) == (-1, "initial", 1, 4)
    initial = ws.store.get("run-1", -1)
    assert initial is not None
    assert initial.entries["seed.txt"].sha256 == sha(b"seed")


def test_reopening_a_workspace_keeps_the_original_initial_state(
    make_ws: Callable[..., Workspace], mem_store: MemorySnapshotStore
) -> None:
    """A resumed run's workspace does not overwrite position -1 with its current state."""
    ws = make_ws()
    ws.put_file("late.txt", b"written by step 0")
    ws.snapshot(0, "write")
    again = make_ws()
    assert [i.position for i in again.snapshots()] == [-1, 0]
    initial = mem_store.get("run-1", -1)
    assert initial is not None
    assert "late.txt" not in initial.entries


def test_changes_per_step_add_modify_delete_chmod_symlink(
    ws_root: Path, make_ws: Callable[..., Workspace]
) -> None:
    """Each step's changes list added, modified and deleted paths with their hashes."""
    ws = make_ws()
    ws.put_file("keep.txt", b"v1\n")
    ws.put_file("gone.txt", b"bye\n")
    ws.put_file("run.sh", b"echo\n", mode=0o644)
    step0 = ws.changes(ws.snapshot(0, "create").position)
    assert [c.path for c in step0.added] == ["gone.txt", "keep.txt", "run.sh"]
    assert step0.added[1].new_sha256 == sha(b"v1\n")
    assert (step0.base_position, step0.modified, step0.deleted) == (-1, (), ())

    ws.put_file("keep.txt", b"v2\n")
    (ws_root / "gone.txt").unlink()
    os.chmod(ws_root / "run.sh", 0o755)
    (ws_root / "link").symlink_to("keep.txt")
    ws.snapshot(1, "edit")
    step1 = ws.changes(1)
    assert [c.path for c in step1.added] == ["link"]
    assert step1.added[0].new is not None
    assert (step1.added[0].kind, step1.added[0].new.target) == ("symlink", "keep.txt")
    modified = {c.path: c for c in step1.modified}
    assert set(modified) == {"keep.txt", "run.sh"}
    assert modified["keep.txt"].aspects == ("content",)
    assert modified["keep.txt"].old_sha256 == sha(b"v1\n")
    assert modified["keep.txt"].new_sha256 == sha(b"v2\n")
    assert modified["run.sh"].aspects == ("mode",)
    assert modified["run.sh"].new is not None
    assert modified["run.sh"].new.mode == 0o755
    assert [(c.path, c.old_sha256) for c in step1.deleted] == [("gone.txt", sha(b"bye\n"))]

    os.unlink(ws_root / "link")
    (ws_root / "link").symlink_to("run.sh")
    ws.snapshot(2, "relink")
    step2 = ws.changes(2)
    assert [(c.path, c.aspects) for c in step2.modified] == [("link", ("target",))]
    assert step2.as_dict()["modified"][0]["new"]["target"] == "run.sh"


def test_changes_of_initial_compare_with_empty_tree(
    ws_root: Path, make_ws: Callable[..., Workspace]
) -> None:
    """The initial snapshot's changes are everything it holds, against nothing."""
    ws_root.mkdir()
    (ws_root / "a").write_bytes(b"a")
    ws = make_ws()
    initial = ws.changes(-1)
    assert initial.base_position is None
    assert [c.path for c in initial.added] == ["a"]
    assert bool(initial)
    ws.snapshot(0, "noop")
    assert not ws.changes(0)


def test_type_change_is_reported(ws_root: Path, make_ws: Callable[..., Workspace]) -> None:
    """A file replaced by a directory is a modification of type."""
    ws = make_ws()
    ws.put_file("x", b"file")
    ws.snapshot(0, "file")
    (ws_root / "x").unlink()
    (ws_root / "x").mkdir()
    ws.snapshot(1, "dir")
    [change] = ws.changes(1).modified
    assert (change.path, change.aspects, change.kind) == ("x", ("type",), "dir")


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_owner_change_is_reported(ws_root: Path, make_ws: Callable[..., Workspace]) -> None:
    """A chown is a modification of owner."""
    ws = make_ws()
    ws.put_file("f", b"x")
    ws.snapshot(0, "put")
    os.chown(ws_root / "f", 1234, 1234)
    ws.snapshot(1, "chown")
    [change] = ws.changes(1).modified
    assert change.aspects == ("owner",)


def test_unchanged_files_are_not_read_again(make_ws: Callable[..., Workspace]) -> None:
    """With metadata unchanged since the last scan, hashes are reused and nothing is read."""
    ws = make_ws(config=WorkspaceConfig(racy_window_s=0))
    for i in range(50):
        ws.put_file(f"d{i % 5}/f{i}.txt", f"content {i}\n")
    first = ws.snapshot(0, "write")
    assert first.stats is not None
    assert (first.stats.hashed, first.stats.new_blobs) == (50, 50)
    second = ws.snapshot(1, "idle")
    assert second.stats is not None
    assert (second.stats.hashed, second.stats.reused, second.stats.bytes_hashed) == (0, 50, 0)
    assert second.entries == first.entries


def test_same_size_rewrite_with_restored_mtime_is_detected(
    ws_root: Path, make_ws: Callable[..., Workspace]
) -> None:
    """Faking the mtime back does not hide a change: the ctime moves with every write."""
    ws = make_ws(config=WorkspaceConfig(racy_window_s=0))
    ws.put_file("a.txt", b"AAAA")
    before = ws.snapshot(0, "write")
    st = (ws_root / "a.txt").stat()
    with open(ws_root / "a.txt", "r+b") as fh:  # same inode, same size
        fh.write(b"BBBB")
    os.utime(ws_root / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    after = ws.snapshot(1, "sneaky")
    assert after.entries["a.txt"].mtime_ns == before.entries["a.txt"].mtime_ns
    assert after.entries["a.txt"].sha256 == sha(b"BBBB")
    assert [c.path for c in ws.changes(1).modified] == ["a.txt"]


def _snap(entry: Entry, scanned_at_ns: int) -> Snapshot:
    return Snapshot("r", 0, "s", "/w", 0.0, scanned_at_ns, {entry.path: entry})


def test_racily_clean_files_are_hashed_again() -> None:
    """A file whose metadata is within the racy window of the previous scan is not trusted."""
    entry = Entry("f", "file", 0o644, size=3, sha256="a" * 64, mtime_ns=10, ctime_ns=10, ino=7)
    st = os.stat_result((0o100644, 7, 0, 1, 0, 0, 3, 0, 0, 0, 0, 0, 0, 10, 10, 10))
    assert st.st_mtime_ns == 10
    assert st.st_ctime_ns == 10
    window = 1_000
    assert _reusable(_snap(entry, 10 + window + 1), "f", st, window) is entry
    assert _reusable(_snap(entry, 10 + window), "f", st, window) is None
    assert _reusable(_snap(entry, 5), "f", st, window) is None


def test_stat_cache_can_be_turned_off(make_ws: Callable[..., Workspace]) -> None:
    """trust_stat_cache=False reads every file on every snapshot."""
    ws = make_ws(config=WorkspaceConfig(racy_window_s=0, trust_stat_cache=False))
    ws.put_file("a", b"1")
    ws.snapshot(0, "a")
    snap = ws.snapshot(1, "again")
    assert snap.stats is not None
    assert (snap.stats.hashed, snap.stats.reused, snap.stats.new_blobs) == (1, 0, 0)


def test_identical_contents_share_one_blob(
    make_ws: Callable[..., Workspace], blob_dir: Path
) -> None:
    """Blobs are content-addressed: two files with the same bytes cost one blob."""
    ws = make_ws()
    ws.put_file("a", b"same")
    ws.put_file("b/c", b"same")
    snap = ws.snapshot(0, "dupes")
    assert snap.stats is not None
    assert snap.stats.new_blobs == 1
    blob = blob_dir / sha(b"same")[:2] / sha(b"same")[2:]
    assert blob.read_bytes() == b"same"


def test_special_files_are_ignored_and_reported(
    ws_root: Path, make_ws: Callable[..., Workspace]
) -> None:
    """A FIFO cannot be snapshotted: it is left out of the manifest and listed in the stats."""
    ws = make_ws()
    os.mkfifo(ws_root / "pipe")
    snap = ws.snapshot(0, "fifo")
    assert "pipe" not in snap.entries
    assert snap.stats is not None
    assert snap.stats.ignored == ("pipe",)


def test_limits_on_entries_and_depth(ws_root: Path, make_ws: Callable[..., Workspace]) -> None:
    """A tree over the entry or depth limit is refused with a hint, not walked forever."""
    ws = make_ws(config=WorkspaceConfig(max_entries=5, max_depth=3))
    for i in range(6):
        (ws_root / f"f{i}").write_bytes(b"")
    with pytest.raises(WorkspaceError, match=r"more than 5 entries.*max_entries"):
        ws.snapshot(0, "many")
    for i in range(6):
        (ws_root / f"f{i}").unlink()
    (ws_root / "a/b/c/d").mkdir(parents=True)
    with pytest.raises(WorkspaceError, match=r"deeper than 3 levels.*max_depth"):
        ws.snapshot(0, "deep")


def test_bad_positions_and_config(make_ws: Callable[..., Workspace]) -> None:
    """Positions below -1 and unknown positions are refused; bad config values too."""
    ws = make_ws()
    with pytest.raises(WorkspaceError, match=">= -1"):
        ws.snapshot(-2, "bad")
    with pytest.raises(
        WorkspaceError, match=r"no workspace snapshot at position 4.*-1 \(initial\)"
    ):
        ws.changes(4)
    with pytest.raises(ConfigurationError, match="max_entries"):
        WorkspaceConfig(max_entries=0)
    with pytest.raises(ConfigurationError, match="racy_window_s"):
        WorkspaceConfig(racy_window_s=-1)


def test_opening_an_unknown_or_missing_workspace_fails(
    tmp_path: Path, make_ws: Callable[..., Workspace]
) -> None:
    """create=False needs a known run and an existing directory."""
    with pytest.raises(WorkspaceError, match="no workspace snapshots"):
        make_ws("never-ran", create=False)
    ws = make_ws()
    ws.root.rmdir()
    with pytest.raises(WorkspaceError, match=r"does not exist.*mkdir"):
        make_ws(create=False)
    with pytest.raises(WorkspaceError, match="non-empty run id"):
        make_ws("")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(WorkspaceError, match="cannot create workspace directory"):
        Workspace(tmp_path / "file" / "ws", "r", MemorySnapshotStore(), blobs=tmp_path / "b")


def test_snapshot_after_a_rewrite_by_another_inode(
    ws_root: Path, make_ws: Callable[..., Workspace]
) -> None:
    """A file replaced through rename (new inode, same size and mtime) is hashed again."""
    ws = make_ws(config=WorkspaceConfig(racy_window_s=0))
    ws.put_file("a", b"1111")
    first = ws.snapshot(0, "a")
    (ws_root / "tmp").write_bytes(b"2222")
    os.utime(ws_root / "tmp", ns=(first.entries["a"].mtime_ns, first.entries["a"].mtime_ns))
    os.replace(ws_root / "tmp", ws_root / "a")
    second = ws.snapshot(1, "replaced")
    assert second.entries["a"].sha256 == sha(b"2222")


def test_file_deleted_during_the_scan_is_left_out(
    ws_root: Path, make_ws: Callable[..., Workspace], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file the sandbox deletes between listing and reading is not part of the snapshot."""
    ws = make_ws()
    ws.put_file("vanishing", b"soon gone")
    ws.put_file("staying", b"here")
    real_walk = _fs.walk

    def walk_and_delete(root_fd: int, **kwargs: Any) -> Iterator[_fs.Found]:
        for found in real_walk(root_fd, **kwargs):
            if found.name == "vanishing":
                os.unlink(found.name, dir_fd=found.dir_fd)
            yield found

    monkeypatch.setattr(_fs, "walk", walk_and_delete)
    snap = ws.snapshot(0, "racing")
    assert set(snap.entries) == {"staying"}
