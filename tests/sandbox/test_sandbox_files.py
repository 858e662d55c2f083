"""Workspace copy-in, sync-back and file access: symlink-safe, bounded, setuid-free."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent_runtime.errors import ConfigurationError, NotFoundError, SandboxError
from agent_runtime.sandbox._files import (
    copy_tree_in,
    read_file,
    sync_tree_back,
    tree_size,
    write_file,
)


def _tree(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir", stat.S_IMODE(path.stat().st_mode))
        else:
            out[rel] = ("file", path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
    return out


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A small workspace with files, a directory, an executable and a symlink."""
    root = tmp_path / "ws"
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.py").write_text("print('hi')\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "link").symlink_to("src/main.py")
    return root


def test_copy_in_then_sync_back_unchanged_is_identity(workspace: Path, tmp_path: Path) -> None:
    """Copying in and syncing back without changes leaves the workspace byte-identical."""
    before = _tree(workspace)
    box = tmp_path / "box"
    box.mkdir()
    copied = copy_tree_in(workspace, box, owner=None, limit=1 << 20)
    assert copied > 0
    assert _tree(box) == before
    sync_tree_back(box, workspace, limit=1 << 20)
    assert _tree(workspace) == before


def test_sync_back_applies_adds_changes_deletes_and_modes(workspace: Path, tmp_path: Path) -> None:
    """Sync-back mirrors additions, modifications, deletions and permission changes."""
    box = tmp_path / "box"
    box.mkdir()
    copy_tree_in(workspace, box, owner=None, limit=1 << 20)
    (box / "src" / "main.py").write_text("print('changed')\n")
    (box / "run.sh").unlink()
    (box / "new" / "deep").mkdir(parents=True)
    (box / "new" / "deep" / "f.txt").write_text("new")
    (box / "src" / "main.py").chmod(0o600)
    sync_tree_back(box, workspace, limit=1 << 20)
    assert _tree(workspace) == _tree(box)
    assert not (workspace / "run.sh").exists()


def test_sync_back_strips_setuid_and_drops_fifos(workspace: Path, tmp_path: Path) -> None:
    """Setuid/setgid bits never reach the host and special files are dropped."""
    box = tmp_path / "box"
    box.mkdir()
    (box / "suid").write_text("x")
    (box / "suid").chmod(0o6755)
    os.mkfifo(box / "pipe")
    sync_tree_back(box, workspace, limit=1 << 20)
    assert stat.S_IMODE((workspace / "suid").stat().st_mode) == 0o755
    assert not (workspace / "pipe").exists()
    assert not (workspace / "src").exists()  # gone from the box, gone from the workspace


def test_sync_back_never_writes_through_a_symlinked_directory(tmp_path: Path) -> None:
    """A sandbox that swaps a directory for a symlink to elsewhere cannot write there."""
    outside = tmp_path / "outside"
    outside.mkdir()
    workspace = tmp_path / "ws"
    (workspace / "dir").mkdir(parents=True)
    box = tmp_path / "box"
    box.mkdir()
    (box / "dir").symlink_to(outside)
    sync_tree_back(box, workspace, limit=1 << 20)
    assert (workspace / "dir").is_symlink()
    (box / "dir").unlink()
    (box / "dir").mkdir()
    (box / "dir" / "planted").write_text("x")
    # The workspace holds a symlink "dir" -> outside; syncing a real dir must replace the link,
    # never follow it.
    sync_tree_back(box, workspace, limit=1 << 20)
    assert list(outside.iterdir()) == []
    assert (workspace / "dir" / "planted").read_text() == "x"
    assert not (workspace / "dir").is_symlink()


def test_sync_back_budget_stops_oversized_changes(tmp_path: Path) -> None:
    """Changes larger than the budget raise instead of filling the host disk."""
    box = tmp_path / "box"
    box.mkdir()
    (box / "big").write_bytes(b"x" * 5000)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    with pytest.raises(SandboxError, match="too large"):
        sync_tree_back(box, workspace, limit=1000)


def test_copy_in_refuses_workspace_over_the_disk_cap(workspace: Path, tmp_path: Path) -> None:
    """A workspace larger than the sandbox disk is refused with what to change."""
    (workspace / "big").write_bytes(b"x" * 10_000)
    box = tmp_path / "box"
    box.mkdir()
    with pytest.raises(SandboxError, match=r"SandboxSpec\.disk"):
        copy_tree_in(workspace, box, owner=None, limit=1000)


def test_tree_size_counts_sparse_files_at_full_size(tmp_path: Path) -> None:
    """A sparse file counts at its apparent size (what a copy would write)."""
    with open(tmp_path / "sparse", "wb") as fh:
        fh.truncate(50 << 20)
    assert tree_size(tmp_path) == 50 << 20


def test_put_and_get_file_round_trip(tmp_path: Path) -> None:
    """Files written into a workspace can be read back, parents created, mode kept."""
    write_file(tmp_path, "a/b/c.txt", b"data", mode=0o640)
    assert read_file(tmp_path, "a/b/c.txt") == b"data"
    assert stat.S_IMODE((tmp_path / "a" / "b" / "c.txt").stat().st_mode) == 0o640


@pytest.mark.parametrize("bad", ["/etc/passwd", "../escape", "a/../../b", "", "."])
def test_file_paths_must_stay_inside(tmp_path: Path, bad: str) -> None:
    """Absolute paths and '..' are refused."""
    with pytest.raises(ConfigurationError, match="relative to the workspace"):
        read_file(tmp_path, bad)
    with pytest.raises(ConfigurationError, match="relative to the workspace"):
        write_file(tmp_path, bad, b"x", mode=0o644)


def test_get_file_does_not_follow_symlinks(tmp_path: Path) -> None:
    """A symlink left by a sandbox (e.g. to /etc/passwd) is never followed on the host."""
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "leak").symlink_to(secret)
    (workspace / "dir").symlink_to(tmp_path)
    with pytest.raises(NotFoundError, match="symlink"):
        read_file(workspace, "leak")
    with pytest.raises(NotFoundError):
        read_file(workspace, "dir/secret")
    with pytest.raises(NotFoundError, match="symlink"):
        write_file(workspace, "leak", b"overwrite", mode=0o644)
    assert secret.read_text() == "host secret"


def test_get_file_missing_is_not_found(tmp_path: Path) -> None:
    """A missing file raises NotFoundError naming it."""
    with pytest.raises(NotFoundError, match=r"nope\.txt"):
        read_file(tmp_path, "nope.txt")


def test_sync_back_leaves_unchanged_files_untouched(workspace: Path, tmp_path: Path) -> None:
    """Files the sandbox did not change keep their inode and ctime (cheap change tracking)."""
    box = tmp_path / "box"
    box.mkdir()
    copy_tree_in(workspace, box, owner=None, limit=1 << 20)
    before = (workspace / "src" / "main.py").stat()
    (box / "run.sh").write_text("#!/bin/sh\necho changed\n")
    sync_tree_back(box, workspace, limit=1 << 20)
    after = (workspace / "src" / "main.py").stat()
    assert (after.st_ino, after.st_ctime_ns, after.st_mtime_ns) == (
        before.st_ino,
        before.st_ctime_ns,
        before.st_mtime_ns,
    )
    assert (workspace / "run.sh").read_text().endswith("changed\n")


def test_sync_back_rewrites_a_read_only_host_file(tmp_path: Path) -> None:
    """A changed file that is read-only on the host is still updated, with the new mode."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "ro.txt").write_text("old")
    (workspace / "ro.txt").chmod(0o444)
    box = tmp_path / "box"
    box.mkdir()
    (box / "ro.txt").write_text("new content")
    (box / "ro.txt").chmod(0o440)
    sync_tree_back(box, workspace, limit=1 << 20)
    assert (workspace / "ro.txt").read_text() == "new content"
    assert stat.S_IMODE((workspace / "ro.txt").stat().st_mode) == 0o440
