"""Path-safe file operations inside a workspace root: never follow a symlink, never leave the root.

A workspace is written by untrusted code (the sandbox) and then read and written by the host. A
symlink the sandbox plants (``/workspace/x -> /etc``) must never make the host read or write
anything outside the root. ``pathlib`` and ``shutil.copy*`` resolve symlinks on every call, and a
check-then-use (``is_symlink()`` then ``open()``) is racy while a sandbox may still be running, so
every operation here starts from an open descriptor of the root and walks one component at a time
with ``O_NOFOLLOW`` through ``dir_fd=`` (``openat``/``mkdirat``/``renameat``/``unlinkat``): a
component that is, or is swapped into, a symlink makes the call fail instead of being followed.
Files are replaced by writing a temporary file next to them and renaming it over the name, which
replaces a planted symlink itself rather than writing through it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from agent_runtime import errors

__all__ = [
    "CHUNK_SIZE",
    "TEMP_PREFIX",
    "Found",
    "hash_fd",
    "open_dir",
    "open_file",
    "open_file_if_exists",
    "open_root",
    "remove",
    "split_path",
    "symlink_atomic",
    "temp_name",
    "walk",
    "write_atomic",
]

CHUNK_SIZE: Final = 1024 * 1024
TEMP_PREFIX: Final = ".ar-tmp-"
"""Prefix of the temporary names used for atomic replacement; an interrupted write leaves one,
which the next rollback deletes like any other file the target snapshot does not have."""

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted by the sandbox must not block the host's open().
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW_FILE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def split_path(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """Validate a workspace-relative path and split it into its components.

    ``a//b/./c`` becomes ``("a", "b", "c")``.

    Args:
        path: A relative POSIX path inside the workspace.

    Returns:
        The non-empty tuple of path components.

    Raises:
        WorkspaceError: The path is not a string, is empty, absolute, contains NUL or a ``..``
            component, or names the workspace root itself.
    """
    raw = os.fspath(path)
    if not isinstance(raw, str):
        raise errors.WorkspaceError(f"workspace path {raw!r} must be a str, not bytes")
    if "\0" in raw:
        raise errors.WorkspaceError(f"workspace path {raw!r} contains a NUL byte")
    if raw.startswith("/"):
        raise errors.WorkspaceError(
            f"workspace path {raw!r} is absolute; give a path relative to the workspace root "
            "(for /workspace/a.txt pass 'a.txt')"
        )
    parts = tuple(part for part in raw.split("/") if part not in ("", "."))
    if ".." in parts:
        raise errors.WorkspaceError(
            f"workspace path {raw!r} contains '..'; paths may not leave the workspace root"
        )
    if not parts:
        raise errors.WorkspaceError(f"workspace path {raw!r} names the workspace root itself")
    return parts


def _is_symlink(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _escape_error(path: str, exc: OSError, *, symlink: bool = False) -> errors.WorkspaceError:
    # O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR, not ELOOP: the caller checks.
    if symlink or exc.errno == errno.ELOOP:
        what = "is a symlink"
    elif exc.errno == errno.ENOTDIR:
        what = "is not a directory"
    elif exc.errno == errno.ENOENT:
        what = "does not exist"
    else:
        what = f"cannot be opened ({exc.strerror})"
    return errors.WorkspaceError(
        f"workspace path {path!r} {what}; the workspace never follows symlinks or leaves its root"
    )


def open_root(root: Path, *, run_id: str | None = None) -> int:
    """Open the workspace root directory and return its descriptor.

    The root itself is chosen by the host (it may be a mount point or reached through a host
    symlink), so it is the one path opened normally; everything below it is walked without
    following links.

    Args:
        root: The workspace directory on the host.
        run_id: The run, for the error message.

    Returns:
        A descriptor of the root directory (the caller closes it).

    Raises:
        WorkspaceError: The directory does not exist, is not a directory or cannot be opened.
    """
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise errors.WorkspaceError(
            f"workspace directory {str(root)!r} does not exist; it was deleted or its mount is "
            "gone. Create it (mkdir -p) and run the command again to restore into it",
            run_id=run_id,
        ) from None
    except NotADirectoryError:
        raise errors.WorkspaceError(
            f"workspace path {str(root)!r} is not a directory", run_id=run_id
        ) from None
    except OSError as exc:
        raise errors.WorkspaceError(
            f"cannot open workspace directory {str(root)!r}: {exc.strerror}", run_id=run_id
        ) from exc


def open_dir(
    root_fd: int,
    parts: Iterable[str],
    *,
    create: bool = False,
    owner: tuple[int, int] | None = None,
) -> int:
    """Open a directory below the root, never following a symlink on the way.

    Args:
        root_fd: Descriptor of the workspace root.
        parts: Components of the directory path (empty for the root itself).
        create: Create missing directories (mode ``0o755`` less the umask).
        owner: ``(uid, gid)`` to give the directories created.

    Returns:
        A descriptor of the directory (the caller closes it).

    Raises:
        WorkspaceError: A component is a symlink, not a directory, or missing (without
            ``create``).
    """
    fd = os.dup(root_fd)
    done: list[str] = []
    try:
        for name in parts:
            done.append(name)
            try:
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                # A concurrent creator may win the race; the open below decides what it made.
                with suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=fd)
                    if owner is not None:
                        os.chown(name, owner[0], owner[1], dir_fd=fd, follow_symlinks=False)
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError as exc:
        symlink = bool(done) and _is_symlink(fd, done[-1])
        os.close(fd)
        raise _escape_error("/".join(done), exc, symlink=symlink) from exc
    return fd


def open_file(dir_fd: int, name: str, *, path: str) -> tuple[int, os.stat_result]:
    """Open a regular file for reading without following a symlink.

    Args:
        dir_fd: Descriptor of the directory holding the file.
        name: The file's name in that directory.
        path: The workspace-relative path, for error messages.

    Returns:
        The descriptor (the caller closes it) and its ``fstat``.

    Raises:
        WorkspaceError: The name is a symlink, a directory, a special file or missing.
    """
    opened = open_file_if_exists(dir_fd, name, path=path)
    if opened is None:
        raise errors.WorkspaceError(f"workspace path {path!r} does not exist")
    return opened


def open_file_if_exists(dir_fd: int, name: str, *, path: str) -> tuple[int, os.stat_result] | None:
    """Like :func:`open_file`, but return None when the name does not exist (any more).

    Args:
        dir_fd: Descriptor of the directory holding the file.
        name: The file's name in that directory.
        path: The workspace-relative path, for error messages.

    Returns:
        The descriptor and its ``fstat``, or None.

    Raises:
        WorkspaceError: The name is a symlink, a directory or a special file.
    """
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _escape_error(path, exc) from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise errors.WorkspaceError(f"workspace path {path!r} is {kind}")
    return fd, st


def hash_fd(fd: int, sink: BinaryIO | None = None) -> tuple[str, int]:
    """Read a descriptor to its end, returning the SHA-256 and size of what was read.

    Args:
        fd: An open, readable descriptor (read from its current offset).
        sink: Where to copy the bytes as well, if given.

    Returns:
        ``(hex sha256, size in bytes)``.
    """
    digest = hashlib.sha256()
    size = 0
    while chunk := os.read(fd, CHUNK_SIZE):
        digest.update(chunk)
        size += len(chunk)
        if sink is not None:
            sink.write(chunk)
    return digest.hexdigest(), size


def temp_name() -> str:
    """Return a fresh temporary file name (prefixed with :data:`TEMP_PREFIX`)."""
    return TEMP_PREFIX + secrets.token_hex(8)


def write_atomic(
    dir_fd: int,
    name: str,
    chunks: Iterable[bytes],
    *,
    mode: int,
    owner: tuple[int, int] | None = None,
    mtime_ns: int | None = None,
    fsync: bool = False,
) -> None:
    """Replace ``name`` in a directory with new content, atomically.

    The bytes go into a temporary file in the same directory, which gets its owner, mode and
    mtime and is then renamed over ``name``. A symlink at ``name`` is replaced, never followed.

    Args:
        dir_fd: Descriptor of the directory.
        name: The entry name to replace or create.
        chunks: The content.
        mode: Permission bits (applied after the owner, because ``chown`` clears set-id bits).
        owner: ``(uid, gid)`` to set, if any.
        mtime_ns: Modification time to set, if any.
        fsync: Flush the file to disk before the rename.

    Raises:
        OSError: The write failed; no temporary file is left behind.
    """
    tmp = temp_name()
    fd = os.open(tmp, _NEW_FILE_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        try:
            with open(fd, "wb", closefd=False) as fh:
                for chunk in chunks:
                    fh.write(chunk)
            if owner is not None:
                os.fchown(fd, owner[0], owner[1])
            os.fchmod(fd, mode)
            if mtime_ns is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def symlink_atomic(
    dir_fd: int, name: str, target: str, *, owner: tuple[int, int] | None = None
) -> None:
    """Replace ``name`` in a directory with a symlink to ``target``, atomically.

    Args:
        dir_fd: Descriptor of the directory.
        name: The entry name to replace or create.
        target: The link's target, stored verbatim (it is never resolved here).
        owner: ``(uid, gid)`` of the link itself, if any.

    Raises:
        OSError: The link could not be created; no temporary name is left behind.
    """
    tmp = temp_name()
    os.symlink(target, tmp, dir_fd=dir_fd)
    try:
        if owner is not None:
            os.chown(tmp, owner[0], owner[1], dir_fd=dir_fd, follow_symlinks=False)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def remove(dir_fd: int, name: str) -> None:
    """Delete an entry of a directory: a file, symlink, special file or a whole directory tree.

    Directory trees go through ``shutil.rmtree(dir_fd=)``, which on Linux walks with descriptors
    and never follows a symlink inside the tree.

    Args:
        dir_fd: Descriptor of the parent directory.
        name: The entry to delete; a missing entry is not an error (removal is idempotent).
    """
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        with suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)


@dataclass(frozen=True, slots=True)
class Found:
    """One entry met by :func:`walk`.

    Attributes:
        path: Workspace-relative POSIX path.
        dir_fd: Descriptor of the directory holding it; valid until the walk moves on.
        name: The entry's name in that directory.
        st: Its ``lstat`` result.
    """

    path: str
    dir_fd: int
    name: str
    st: os.stat_result


def _list(fd: int, prefix: str, budget: list[int], limit: int) -> Iterator[Found | str]:
    # Yields every entry of one directory (sorted, for a deterministic manifest) and then the
    # names of its sub-directories as plain strings, so the caller descends after the listing.
    with os.scandir(fd) as it:
        found = sorted(it, key=lambda e: e.name)
    subdirs: list[str] = []
    for entry in found:
        budget[0] += 1
        if budget[0] > limit:
            raise errors.WorkspaceError(
                f"workspace holds more than {limit} entries; raise WorkspaceConfig.max_entries "
                "if this is expected"
            )
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # deleted since the listing: it is not part of this state
        yield Found(prefix + entry.name, fd, entry.name, st)
        if stat.S_ISDIR(st.st_mode):
            subdirs.append(entry.name)
    yield from subdirs


def _descend(
    stack: list[tuple[int, str, list[str]]], fd: int, prefix: str, budget: list[int], limit: int
) -> Iterator[Found]:
    # The directory's fd is already on the stack (so it is closed on error); its sub-directories
    # are queued in reverse so that pop() visits them in sorted order.
    pending = stack[-1][2]
    for item in _list(fd, prefix, budget, limit):
        if isinstance(item, str):
            pending.append(item)
        else:
            yield item
    pending.reverse()


def walk(root_fd: int, *, max_entries: int, max_depth: int) -> Iterator[Found]:
    """Walk the whole tree below the root, depth first, never following a symlink.

    Only one descriptor per directory level is open at a time.

    Args:
        root_fd: Descriptor of the workspace root.
        max_entries: Fail when the tree holds more entries than this.
        max_depth: Fail when directories nest deeper than this.

    Yields:
        Every entry below the root (directories before their contents).

    Raises:
        WorkspaceError: A limit was exceeded, or a directory turned into something else while
            the walk ran (the sandbox is still writing).
    """
    budget = [0]
    stack: list[tuple[int, str, list[str]]] = []
    try:
        fd = os.dup(root_fd)
        stack.append((fd, "", []))
        yield from _descend(stack, fd, "", budget, max_entries)
        while stack:
            fd, prefix, pending = stack[-1]
            if not pending:
                os.close(fd)
                stack.pop()
                continue
            name = pending.pop()
            path = prefix + name
            if len(stack) > max_depth:
                raise errors.WorkspaceError(
                    f"workspace directory {path!r} is nested deeper than {max_depth} levels; "
                    "raise WorkspaceConfig.max_depth if this is expected"
                )
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise errors.WorkspaceError(
                    f"workspace directory {path!r} changed while it was scanned "
                    f"({exc.strerror}); snapshot again once the sandbox is idle"
                ) from exc
            stack.append((child, path + "/", []))
            yield from _descend(stack, child, path + "/", budget, max_entries)
    finally:
        for fd, _, _ in stack:
            os.close(fd)
