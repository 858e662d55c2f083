"""Path safety: no escape through '..', absolute paths or symlinks, on read, write and restore."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from agent_runtime.errors import WorkspaceError
from agent_runtime.workspace import Workspace, workspace_root_for
from agent_runtime.workspace._fs import split_path


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("a.txt", ("a.txt",)), ("a//b/./c", ("a", "b", "c")), ("./x/", ("x",))],
)
def test_split_path_normalises(raw: str, expected: tuple[str, ...]) -> None:
    """Redundant separators and '.' components are dropped."""
    assert split_path(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("/etc/passwd", "absolute"),
        ("", "root itself"),
        (".", "root itself"),
        ("a\0b", "NUL"),
    ],
)
def test_split_path_rejects_unsafe_paths(raw: str, message: str) -> None:
    """Paths that leave or name the root are refused with a reason."""
    with pytest.raises(WorkspaceError, match=message):
        split_path(raw)


@pytest.mark.parametrize("bad", ["../escape.txt", "/tmp/escape.txt", "a/../../escape.txt"])
def test_put_file_refuses_escapes(
    make_ws: Callable[..., Workspace], ws_root: Path, bad: str
) -> None:
    """put_file never writes outside the root."""
    ws = make_ws()
    with pytest.raises(WorkspaceError):
        ws.put_file(bad, b"x")
    assert not (ws_root.parent / "escape.txt").exists()
    assert ws.list_files() == []


def test_get_file_does_not_follow_symlink_to_outside(
    make_ws: Callable[..., Workspace], ws_root: Path, outside: Path
) -> None:
    """A symlink planted by the sandbox is refused on read, not followed."""
    ws = make_ws()
    (ws_root / "leak").symlink_to(outside / "secret.txt")
    with pytest.raises(WorkspaceError, match="symlink"):
        ws.get_file("leak")


def test_get_file_does_not_traverse_symlinked_directory(
    make_ws: Callable[..., Workspace], ws_root: Path, outside: Path
) -> None:
    """A symlinked directory component is refused on read."""
    ws = make_ws()
    (ws_root / "dir").symlink_to(outside)
    with pytest.raises(WorkspaceError, match="'dir' is a symlink"):
        ws.get_file("dir/secret.txt")


def test_put_file_does_not_write_through_symlinked_directory(
    make_ws: Callable[..., Workspace], ws_root: Path, outside: Path
) -> None:
    """Writing below a symlinked directory fails and the outside stays untouched."""
    ws = make_ws()
    (ws_root / "dir").symlink_to(outside)
    with pytest.raises(WorkspaceError, match="symlink"):
        ws.put_file("dir/secret.txt", b"overwritten")
    assert (outside / "secret.txt").read_bytes() == b"host secret\n"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_put_file_replaces_a_symlink_instead_of_writing_through_it(
    make_ws: Callable[..., Workspace], ws_root: Path, outside: Path
) -> None:
    """put_file onto a planted symlink replaces the link; its target is untouched."""
    ws = make_ws()
    (ws_root / "out.txt").symlink_to(outside / "secret.txt")
    ws.put_file("out.txt", b"new content")
    assert not (ws_root / "out.txt").is_symlink()
    assert ws.get_file("out.txt") == b"new content"
    assert (outside / "secret.txt").read_bytes() == b"host secret\n"


def test_put_and_get_roundtrip_with_mode_and_parents(
    make_ws: Callable[..., Workspace], ws_root: Path
) -> None:
    """put_file creates parents, applies the mode exactly and get_file returns the bytes."""
    ws = make_ws()
    ws.put_file("bin/tool.sh", "#!/bin/sh\n", mode=0o750)
    ws.put_file("data.bin", bytes(range(256)))
    assert ws.get_file("bin/tool.sh") == b"#!/bin/sh\n"
    assert ws.get_file("data.bin") == bytes(range(256))
    assert (ws_root / "bin/tool.sh").stat().st_mode & 0o7777 == 0o750
    assert ws.list_files() == ["bin/tool.sh", "data.bin"]


def test_put_file_rejects_bad_mode_and_directory_target(
    make_ws: Callable[..., Workspace], ws_root: Path
) -> None:
    """A mode beyond 0o7777 and a path naming a directory are refused."""
    ws = make_ws()
    with pytest.raises(WorkspaceError, match="not a permission mode"):
        ws.put_file("a", b"", mode=0o100644)
    (ws_root / "d").mkdir()
    with pytest.raises(WorkspaceError, match="is a directory"):
        ws.put_file("d", b"x")
    assert [p.name for p in ws_root.iterdir()] == ["d"]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files an owner needs root")
def test_put_file_gives_files_the_workspace_owner(
    make_ws: Callable[..., Workspace], ws_root: Path
) -> None:
    """As root, put files and new directories belong to the workspace directory's owner."""
    ws_root.mkdir()
    os.chown(ws_root, 1000, 1000)
    ws = make_ws()
    ws.put_file("sub/f.txt", b"x")
    assert (ws_root / "sub").stat().st_uid == 1000
    assert (ws_root / "sub/f.txt").stat().st_gid == 1000


def test_get_file_errors_for_missing_directory_and_fifo(
    make_ws: Callable[..., Workspace], ws_root: Path
) -> None:
    """Missing files, directories and FIFOs give clear errors; a FIFO never blocks the host."""
    ws = make_ws()
    (ws_root / "d").mkdir()
    os.mkfifo(ws_root / "pipe")
    with pytest.raises(WorkspaceError, match="does not exist"):
        ws.get_file("nope.txt")
    with pytest.raises(WorkspaceError, match="is a directory"):
        ws.get_file("d")
    done = threading.Event()

    def read_fifo() -> None:
        with pytest.raises(WorkspaceError, match="not a regular file"):
            ws.get_file("pipe")
        done.set()

    reader = threading.Thread(target=read_fifo, daemon=True)
    reader.start()
    reader.join(timeout=5)
    assert done.is_set()


def test_snapshot_records_symlink_to_outside_as_a_link(
    make_ws: Callable[..., Workspace], ws_root: Path, outside: Path
) -> None:
    """A symlink to outside is recorded with its target; the outside file is never read."""
    ws = make_ws()
    (ws_root / "etc").symlink_to("/etc")
    (ws_root / "secret").symlink_to(outside / "secret.txt")
    snap = ws.snapshot(0, "plant")
    assert snap.entries["etc"].kind == "symlink"
    assert snap.entries["etc"].target == "/etc"
    assert snap.entries["secret"].sha256 is None
    assert set(snap.entries) == {"etc", "secret"}  # nothing below /etc was walked
    assert snap.stats is not None
    assert snap.stats.bytes_hashed == 0


def test_rollback_replaces_planted_symlink_without_following_it(
    make_ws: Callable[..., Workspace],
    ws_root: Path,
    outside: Path,
    read_tree: Callable[[Path], dict[str, tuple[object, ...]]],
) -> None:
    """Restoring a file where the sandbox left a symlink to outside replaces the link only."""
    ws = make_ws()
    ws.put_file("config.txt", b"original\n")
    ws.put_file("sub/inner.txt", b"inner\n")
    ws.snapshot(0, "setup")
    expected = read_tree(ws_root)
    (ws_root / "config.txt").unlink()
    (ws_root / "config.txt").symlink_to(outside / "secret.txt")
    for p in (ws_root / "sub").iterdir():
        p.unlink()
    (ws_root / "sub").rmdir()
    (ws_root / "sub").symlink_to(outside)
    ws.rollback(0)
    assert read_tree(ws_root) == expected
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == b"host secret\n"


def test_rollback_deletes_symlink_to_outside_but_not_its_target(
    make_ws: Callable[..., Workspace], ws_root: Path, outside: Path
) -> None:
    """Deleting a planted symlinked directory removes the link, never the outside tree."""
    ws = make_ws()
    (ws_root / "escape").symlink_to(outside)
    ws.rollback()
    assert list(ws_root.iterdir()) == []
    assert (outside / "secret.txt").read_bytes() == b"host secret\n"


def test_workspace_root_for_rejects_unsafe_run_ids(tmp_path: Path) -> None:
    """The default per-run directory is only built from a plain run id."""
    assert workspace_root_for("r-1", tmp_path) == tmp_path / "workspaces" / "r-1"
    for bad in ("", "..", "a/b", "x\0"):
        with pytest.raises(WorkspaceError, match="cannot name a workspace directory"):
            workspace_root_for(bad, tmp_path)
