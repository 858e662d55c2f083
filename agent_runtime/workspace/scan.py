"""Scanning a workspace tree into manifest entries, cheaply when little changed.

One walk of the tree (see :mod:`agent_runtime.workspace._fs`: no symlink is ever followed) gives
one ``lstat`` per entry. A regular file is read only when it has to be: when the previous scan
saw the same path with the same size, mtime, ctime and inode, and that metadata was already old
when the previous scan began (outside the racy window), its hash is reused. That is what makes
the snapshot of an unchanged 1,000-file workspace cost milliseconds. Files that are read are
copied into the blob store while being hashed, so the manifest never names a hash whose bytes
were not stored.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Callable
from typing import Final

from agent_runtime.workspace import _fs
from agent_runtime.workspace.blobs import BlobBatch, BlobStore
from agent_runtime.workspace.config import WorkspaceConfig
from agent_runtime.workspace.manifest import DIR, FILE, SYMLINK, Entry, ScanStats, Snapshot

__all__ = ["HashFilter", "scan"]

HashFilter = Callable[[str, os.stat_result], bool]
"""Decides, in hash-only mode, whether a file is worth reading (path, lstat)."""

_NS: Final = 1_000_000_000


def _reusable(prev: Snapshot | None, path: str, st: os.stat_result, window_ns: int) -> Entry | None:
    if prev is None:
        return None
    e = prev.entries.get(path)
    if (
        e is None
        or e.kind != FILE
        or e.sha256 is None
        or e.size != st.st_size
        or e.mtime_ns != st.st_mtime_ns
        or e.ctime_ns != st.st_ctime_ns
        or e.ino != st.st_ino
    ):
        return None
    # Racily clean: changed so close to the previous scan that a later write in the same
    # timestamp tick would not have moved the metadata. Read it again.
    if max(e.mtime_ns, e.ctime_ns) >= prev.scanned_at_ns - window_ns:
        return None
    return e


def _entry(
    path: str,
    kind: str,
    st: os.stat_result,
    *,
    size: int = 0,
    sha256: str | None = None,
    target: str | None = None,
) -> Entry:
    return Entry(
        path=path,
        kind=kind,
        mode=stat.S_IMODE(st.st_mode),
        size=size,
        sha256=sha256,
        target=target,
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        ino=st.st_ino,
    )


def scan(
    root_fd: int,
    config: WorkspaceConfig,
    *,
    blobs: BlobStore | None,
    previous: Snapshot | None = None,
    want_hash: HashFilter | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> tuple[dict[str, Entry], ScanStats]:
    """Scan the tree below ``root_fd`` into entries.

    Two modes. With ``blobs``, every file gets a hash, reused from ``previous`` when its
    metadata allows (see the module docstring) and otherwise read and stored as a blob. Without
    ``blobs`` (hash-only, for planning a rollback), a file is read only when ``want_hash`` says
    so; the others get ``sha256=None``.

    Args:
        root_fd: Descriptor of the workspace root.
        config: Limits and cache settings.
        blobs: Where to store file contents, or None for hash-only mode.
        previous: The last snapshot taken, whose hashes may be reused.
        want_hash: Hash-only mode: which files to read.
        monotonic: Clock for the duration in the returned stats.

    Returns:
        ``(entries by path in walk order, stats)``.

    Raises:
        WorkspaceError: A limit was exceeded, the tree changed under the scan in a way that
            cannot be recorded, or the blob store cannot be written.
    """
    start = monotonic()
    cache = previous if (blobs is not None and config.trust_stat_cache) else None
    with contextlib.ExitStack() as stack:
        batch = stack.enter_context(blobs.batch()) if blobs is not None else None
        entries, ignored, counts = _collect(root_fd, config, batch, cache, want_hash)
    hashed, reused, new_blobs, bytes_hashed = counts
    stats = ScanStats(
        entries=len(entries),
        hashed=hashed,
        reused=reused,
        new_blobs=new_blobs,
        bytes_hashed=bytes_hashed,
        ignored=tuple(ignored),
        duration_s=monotonic() - start,
    )
    return entries, stats


def _collect(
    root_fd: int,
    config: WorkspaceConfig,
    batch: BlobBatch | None,
    cache: Snapshot | None,
    want_hash: HashFilter | None,
) -> tuple[dict[str, Entry], list[str], tuple[int, int, int, int]]:
    window_ns = int(config.racy_window_s * _NS)
    entries: dict[str, Entry] = {}
    ignored: list[str] = []
    hashed = reused = new_blobs = bytes_hashed = 0
    for found in _fs.walk(root_fd, max_entries=config.max_entries, max_depth=config.max_depth):
        path, st = found.path, found.st
        if stat.S_ISDIR(st.st_mode):
            entries[path] = _entry(path, DIR, st)
        elif stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(found.name, dir_fd=found.dir_fd)
            except FileNotFoundError:
                continue  # removed since the listing
            size = len(os.fsencode(target))
            entries[path] = _entry(path, SYMLINK, st, size=size, target=target)
        elif stat.S_ISREG(st.st_mode):
            known = _reusable(cache, path, st, window_ns)
            if known is not None:
                reused += 1
                # The common case of an idle file: share the previous entry object outright.
                same = (known.mode, known.uid, known.gid) == (
                    stat.S_IMODE(st.st_mode),
                    st.st_uid,
                    st.st_gid,
                )
                entries[path] = (
                    known if same else _entry(path, FILE, st, size=st.st_size, sha256=known.sha256)
                )
                continue
            if batch is None and (want_hash is None or not want_hash(path, st)):
                entries[path] = _entry(path, FILE, st, size=st.st_size)
                continue
            opened = _fs.open_file_if_exists(found.dir_fd, found.name, path=path)
            if opened is None:
                continue  # deleted since the listing: it is not part of this state
            fd, fst = opened
            try:
                if batch is not None:
                    sha, size, new = batch.ingest(fd)
                    new_blobs += new
                else:
                    sha, size = _fs.hash_fd(fd)
            finally:
                os.close(fd)
            hashed += 1
            bytes_hashed += size
            # Metadata from the descriptor that was read (not the earlier lstat), so the
            # recorded stat fields belong to the inode whose bytes were hashed.
            entries[path] = _entry(path, FILE, fst, size=size, sha256=sha)
        else:
            ignored.append(path)
    return entries, ignored, (hashed, reused, new_blobs, bytes_hashed)
