"""The content-addressed blob store: written once, atomically, verified on read."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

import pytest

from agent_runtime.errors import WorkspaceError
from agent_runtime.workspace import BlobStore
from agent_runtime.workspace import blobs as blobs_module


def test_put_bytes_is_content_addressed_and_read_only(tmp_path: Path) -> None:
    """A blob lives under its SHA-256, read-only, and storing it again is a no-op."""
    store = BlobStore(tmp_path / "blobs")
    sha = store.put_bytes(b"hello")
    assert sha == hashlib.sha256(b"hello").hexdigest()
    path = store.path(sha)
    assert path == tmp_path / "blobs" / sha[:2] / sha[2:]
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    ino = path.stat().st_ino
    assert store.put_bytes(b"hello") == sha
    assert path.stat().st_ino == ino  # written once
    assert store.read(sha) == b"hello"
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


def test_ingest_reports_new_and_existing(tmp_path: Path) -> None:
    """ingest copies a descriptor's bytes and says whether the blob is new."""
    store = BlobStore(tmp_path / "blobs", fsync=False)
    src = tmp_path / "src"
    src.write_bytes(b"x" * 3_000_000)  # several read chunks
    for expected_new in (True, False):
        fd = os.open(src, os.O_RDONLY)
        try:
            sha, size, new = store.ingest(fd)
        finally:
            os.close(fd)
        assert (size, new) == (3_000_000, expected_new)
    assert store.read(sha) == b"x" * 3_000_000


def test_batch_of_many_blobs_is_committed_together(tmp_path: Path) -> None:
    """A batch with more blobs than the per-file fsync limit commits them all (syncfs path)."""
    store = BlobStore(tmp_path / "blobs", fsync=True)
    with store.batch() as batch:
        shas = [batch.put_bytes(f"blob {i}".encode()) for i in range(20)]
        assert not store.exists(shas[0])  # names appear only after the commit
    assert all(store.read(s) == f"blob {i}".encode() for i, s in enumerate(shas))
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


def test_failed_batch_leaves_nothing(tmp_path: Path) -> None:
    """An exception inside a batch discards its temporary files; no blob appears."""
    store = BlobStore(tmp_path / "blobs")
    written: list[str] = []

    def failing_scan() -> None:
        with store.batch() as batch:
            written.append(batch.put_bytes(b"never committed"))
            raise RuntimeError("scan failed")

    with pytest.raises(RuntimeError, match="scan failed"):
        failing_scan()
    assert not store.exists(written[0])
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


def test_problem_and_verification(tmp_path: Path) -> None:
    """problem() reports missing, wrong-size and corrupt blobs; chunks() refuses corrupt ones."""
    store = BlobStore(tmp_path / "blobs")
    sha = store.put_bytes(b"abc")
    assert store.problem(sha, 3, verify=True) is None
    assert "has 3 bytes, the manifest says 4" in str(store.problem(sha, 4))
    missing = hashlib.sha256(b"missing").hexdigest()
    assert "is missing" in str(store.problem(missing, 7))
    os.chmod(store.path(sha), 0o644)
    store.path(sha).write_bytes(b"xyz")
    assert store.problem(sha, 3) is None  # size alone cannot tell
    assert "is corrupt" in str(store.problem(sha, 3, verify=True))
    with pytest.raises(WorkspaceError, match="corrupt"):
        store.read(sha)
    with pytest.raises(WorkspaceError, match="missing"):
        store.read(missing)


def test_bad_hashes_never_become_paths(tmp_path: Path) -> None:
    """A tampered manifest hash cannot name a path outside the blob directory."""
    store = BlobStore(tmp_path / "blobs")
    for bad in ("../../etc/passwd", "A" * 64, "0" * 63):
        with pytest.raises(WorkspaceError, match="not a SHA-256"):
            store.path(bad)


def test_unwritable_blob_directory(tmp_path: Path) -> None:
    """A blob directory that cannot be created gives an error saying what to fix."""
    (tmp_path / "file").write_bytes(b"")
    store = BlobStore(tmp_path / "file" / "blobs")
    with pytest.raises(WorkspaceError, match=r"cannot write to the blob directory.*free disk"):
        store.put_bytes(b"x")


def test_full_disk_during_copy_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while copying a file into the store is a clear error and leaves no debris."""
    store = BlobStore(tmp_path / "blobs")
    src = tmp_path / "src"
    src.write_bytes(b"data")

    def full(fd: int, sink: object = None) -> tuple[str, int]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(blobs_module._fs, "hash_fd", full)
    fd = os.open(src, os.O_RDONLY)
    try:
        with pytest.raises(WorkspaceError, match="No space left on device"):
            store.ingest(fd)
    finally:
        os.close(fd)
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


def test_syncfs_fallback_without_libc_support(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where libc has no syncfs, a large batch still commits (through os.sync)."""
    monkeypatch.setattr(blobs_module, "_SYNCFS", None)
    synced: list[bool] = []
    real_sync = os.sync
    monkeypatch.setattr(blobs_module.os, "sync", lambda: synced.append(True) or real_sync())
    store = BlobStore(tempfile.mkdtemp(dir=tmp_path))
    with store.batch() as batch:
        shas = [batch.put_bytes(bytes([i])) for i in range(12)]
    assert synced == [True, True]  # the files, then their directories
    assert all(store.exists(s) for s in shas)
