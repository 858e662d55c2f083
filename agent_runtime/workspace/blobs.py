"""Content-addressed blob storage for workspace file contents.

A blob is the exact bytes of one file version, stored once under its SHA-256
(``<blob dir>/ab/cdef...``), however many snapshots, runs or paths refer to it; a file that did not
change between two snapshots costs nothing. A blob is written to a temporary file in the blob
directory, hashed while it is copied (so a blob's name always matches its bytes, even if the
source file changed during the copy), made read-only and renamed into place: readers never see a
partial blob, and concurrent writers of the same content both succeed.

Durability: a manifest is saved only after every blob it names is on disk, and a blob's final
name appears only after its bytes are durable (otherwise a power cut could leave a correctly
named empty blob that later snapshots would trust). One ``fsync`` is one journal commit,
milliseconds each on ordinary disks, so a :class:`BlobBatch` (one per snapshot) writes all new
blobs first and then makes them durable at once: one ``fsync`` per file for a few blobs, a single
``syncfs`` of the blob file system for many, then renames them into place and syncs their
directories the same way.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Final

from agent_runtime import errors
from agent_runtime.workspace import _fs
from agent_runtime.workspace.config import DEFAULT_FSYNC

__all__ = ["BlobBatch", "BlobStore"]

_SHA256: Final = re.compile(r"[0-9a-f]{64}")
_TMP_DIRNAME: Final = "tmp"
_FSYNC_EACH_MAX: Final = 8
"""Up to this many new blobs are fsync-ed one by one; more get one syncfs of the file system."""


def _load_syncfs() -> Any:
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    except OSError:
        return None


_SYNCFS: Final = _load_syncfs()


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_all(paths: list[Path], *, directories: bool, fs_root: Path) -> None:
    # A few paths: fsync each. Many: one syncfs() of the file system holding the blob
    # directory (os.sync() where libc has no syncfs), far cheaper than one journal commit each.
    if len(paths) <= _FSYNC_EACH_MAX:
        for path in paths:
            _fsync_path(path, directory=directories)
        return
    fd = os.open(fs_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _SYNCFS is None or _SYNCFS(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


class BlobStore:
    """Blobs (file contents) addressed by SHA-256 under one directory.

    Args:
        root: The blob directory (created on the first write).
        fsync: Make new blobs durable before their names appear (see the module docstring).
    """

    def __init__(self, root: Path | str, *, fsync: bool = DEFAULT_FSYNC) -> None:
        self.root = Path(root)
        self.fsync = fsync

    def __repr__(self) -> str:
        return f"BlobStore({str(self.root)!r})"

    def path(self, sha256: str) -> Path:
        """Return where the blob with this hash is stored.

        Args:
            sha256: Lower-case hex SHA-256.

        Returns:
            The blob's path (it may not exist).

        Raises:
            WorkspaceError: ``sha256`` is not 64 lower-case hex digits (a tampered manifest must
                not name a path outside the blob directory).
        """
        if not _SHA256.fullmatch(sha256):
            raise errors.WorkspaceError(f"{sha256!r} is not a SHA-256 hex digest")
        return self.root / sha256[:2] / sha256[2:]

    def exists(self, sha256: str) -> bool:
        """Whether the blob is stored.

        Args:
            sha256: The blob's hash.

        Returns:
            True when a blob file with that name exists.
        """
        return self.path(sha256).is_file()

    def problem(self, sha256: str, size: int, *, verify: bool = False) -> str | None:
        """Say what is wrong with a stored blob, if anything.

        Args:
            sha256: The blob's hash.
            size: The size the manifest recorded.
            verify: Also read the blob and check its hash (not only its size).

        Returns:
            ``None`` when the blob is usable, else a short reason (``missing``, ``size ...``,
            ``corrupt ...``).
        """
        path = self.path(sha256)
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            return f"blob {sha256} is missing from {self.root}"
        except OSError as exc:
            return f"blob {sha256} cannot be read: {exc.strerror}"
        if actual != size:
            return f"blob {sha256} has {actual} bytes, the manifest says {size}"
        if verify:
            digest = hashlib.sha256()
            try:
                with path.open("rb") as fh:
                    while chunk := fh.read(_fs.CHUNK_SIZE):
                        digest.update(chunk)
            except OSError as exc:
                return f"blob {sha256} cannot be read: {exc.strerror}"
            if digest.hexdigest() != sha256:
                return f"blob {sha256} is corrupt (its content hashes to {digest.hexdigest()})"
        return None

    def chunks(self, sha256: str) -> Iterator[bytes]:
        """Yield a blob's bytes in chunks, checking its hash at the end.

        Args:
            sha256: The blob's hash.

        Yields:
            The content.

        Raises:
            WorkspaceError: The blob is missing or its content does not match its hash.
        """
        digest = hashlib.sha256()
        try:
            with self.path(sha256).open("rb") as fh:
                while chunk := fh.read(_fs.CHUNK_SIZE):
                    digest.update(chunk)
                    yield chunk
        except FileNotFoundError:
            raise errors.WorkspaceError(f"blob {sha256} is missing from {self.root}") from None
        if digest.hexdigest() != sha256:
            raise errors.WorkspaceError(
                f"blob {sha256} in {self.root} is corrupt (content hashes to {digest.hexdigest()})"
            )

    def read(self, sha256: str) -> bytes:
        """Return a blob's bytes.

        Args:
            sha256: The blob's hash.

        Returns:
            The content, verified against the hash.

        Raises:
            WorkspaceError: The blob is missing or corrupt.
        """
        return b"".join(self.chunks(sha256))

    @contextmanager
    def batch(self) -> Iterator[BlobBatch]:
        """Collect new blobs and commit them together (durably when ``fsync`` is on).

        Yields:
            The batch. On a clean exit it is committed; on an exception its temporary files
            are discarded (nothing refers to them yet).

        Raises:
            WorkspaceError: The commit failed.
        """
        batch = BlobBatch(self)
        try:
            yield batch
        except BaseException:
            batch.discard()
            raise
        batch.commit()

    def ingest(self, fd: int) -> tuple[str, int, bool]:
        """Copy an open file into the store (a batch of one).

        Args:
            fd: A readable descriptor positioned at the start of the content.

        Returns:
            ``(sha256, size, new)``; ``new`` is False when the blob was already stored.

        Raises:
            WorkspaceError: The blob directory cannot be written (full disk, permissions).
        """
        with self.batch() as batch:
            return batch.ingest(fd)

    def put_bytes(self, data: bytes) -> str:
        """Store bytes and return their hash (a no-op when already stored).

        Args:
            data: The content.

        Returns:
            The blob's SHA-256.

        Raises:
            WorkspaceError: The blob directory cannot be written.
        """
        with self.batch() as batch:
            return batch.put_bytes(data)

    def _temp(self) -> tuple[int, Path]:
        try:
            tmp_dir = self.root / _TMP_DIRNAME
            tmp_dir.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(dir=tmp_dir, prefix="blob-")
        except OSError as exc:
            raise self._write_error(exc) from exc
        return handle, Path(name)

    def _write_error(self, exc: OSError) -> errors.WorkspaceError:
        return errors.WorkspaceError(
            f"cannot write to the blob directory {str(self.root)!r}: {exc.strerror}; free disk "
            "space or fix its permissions, then snapshot again"
        )


class BlobBatch:
    """New blobs written by one snapshot, committed together (see the module docstring).

    Use :meth:`BlobStore.batch`; a batch is used by one thread.

    Args:
        store: The blob store.
    """

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self._pending: dict[str, Path] = {}
        self._lock = threading.Lock()

    def ingest(self, fd: int) -> tuple[str, int, bool]:
        """Copy an open file into the batch, hashing it on the way.

        Args:
            fd: A readable descriptor positioned at the start of the content.

        Returns:
            ``(sha256, size, new)``; ``new`` is False when the blob is stored (or pending).

        Raises:
            WorkspaceError: The blob directory cannot be written.
        """
        handle, tmp = self.store._temp()
        try:
            with open(handle, "wb") as sink:
                sha256, size = _fs.hash_fd(fd, sink)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self.store._write_error(exc) from exc
        return sha256, size, self._keep(sha256, tmp)

    def put_bytes(self, data: bytes) -> str:
        """Add bytes to the batch.

        Args:
            data: The content.

        Returns:
            The blob's SHA-256.

        Raises:
            WorkspaceError: The blob directory cannot be written.
        """
        sha256 = hashlib.sha256(data).hexdigest()
        if sha256 in self._pending or self.store.exists(sha256):
            return sha256
        handle, tmp = self.store._temp()
        try:
            with open(handle, "wb") as sink:
                sink.write(data)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self.store._write_error(exc) from exc
        self._keep(sha256, tmp)
        return sha256

    def _keep(self, sha256: str, tmp: Path) -> bool:
        with self._lock:
            if sha256 in self._pending or self.store.exists(sha256):
                tmp.unlink(missing_ok=True)
                return False
            self._pending[sha256] = tmp
        return True

    def commit(self) -> None:
        """Make the pending blobs durable (when ``fsync`` is on), then rename them into place.

        Raises:
            WorkspaceError: A blob could not be synced or renamed; the batch's remaining
                temporary files are removed.
        """
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        store = self.store
        try:
            for tmp in pending.values():
                os.chmod(tmp, 0o444)
            if store.fsync:
                _sync_all(list(pending.values()), directories=False, fs_root=store.root)
            parents: set[Path] = set()
            for sha256, tmp in pending.items():
                final = store.path(sha256)
                final.parent.mkdir(exist_ok=True)
                # An identical blob committed meanwhile by another batch is simply replaced
                # by the same bytes; an existing blob is never changed.
                os.replace(tmp, final)
                parents.add(final.parent)
            if store.fsync:
                _sync_all(sorted(parents), directories=True, fs_root=store.root)
        except OSError as exc:
            for tmp in pending.values():
                tmp.unlink(missing_ok=True)
            raise store._write_error(exc) from exc

    def discard(self) -> None:
        """Drop the pending blobs (their temporary files are deleted)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for tmp in pending.values():
            with suppress(OSError):
                tmp.unlink()
