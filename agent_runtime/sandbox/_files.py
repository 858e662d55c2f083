"""Moving workspace files between the host and a sandbox's capped filesystem, safely.

A sandbox writes whatever it likes into its workspace, including symlinks to ``/etc/shadow``,
directories replaced by symlinks, setuid bits and FIFOs. Everything here therefore walks trees
through directory file descriptors with ``O_NOFOLLOW`` (never a path the sandbox could redirect),
copies symlinks as symlinks, drops special files, strips setuid/setgid/sticky bits, and counts
the bytes it writes against a budget so that copying back can never fill the host disk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from agent_runtime.errors import ConfigurationError, NotFoundError, SandboxError

__all__ = ["copy_tree_in", "read_file", "sync_tree_back", "tree_size", "write_file"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
_PERM_MASK = 0o777  # never carry setuid/setgid/sticky across the sandbox boundary


class _Budget:
    __slots__ = ("limit", "used", "what")

    def __init__(self, limit: int | None, what: str) -> None:
        self.limit = limit
        self.used = 0
        self.what = what

    def spend(self, size: int) -> None:
        self.used += size
        if self.limit is not None and self.used > self.limit:
            raise SandboxError(
                f"{self.what}: more than {self.limit} bytes; raise SandboxSpec.disk or make the "
                "workspace smaller"
            )


@contextlib.contextmanager
def _open_dir(name: str | Path, dir_fd: int | None = None) -> Iterator[int]:
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


def _entries(dir_fd: int) -> dict[str, os.stat_result]:
    out = {}
    for name in os.listdir(dir_fd):
        with contextlib.suppress(FileNotFoundError):
            out[name] = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    return out


def _kind(st: os.stat_result) -> str | None:
    if stat.S_ISREG(st.st_mode):
        return "file"
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISLNK(st.st_mode):
        return "link"
    return None  # FIFOs, sockets, devices: never copied


def _copy_bytes(src: int, dst: int, budget: _Budget) -> None:
    while True:
        chunk = os.read(src, _CHUNK)
        if not chunk:
            return
        budget.spend(len(chunk))
        view = memoryview(chunk)
        while view:
            written = os.write(dst, view)
            view = view[written:]


def _same_content(a: int, b: int) -> bool:
    os.lseek(a, 0, os.SEEK_SET)
    os.lseek(b, 0, os.SEEK_SET)
    while True:
        left, right = os.read(a, _CHUNK), os.read(b, _CHUNK)
        if left != right:
            return False
        if not left:
            return True


def _chown(fd: int, owner: tuple[int, int] | None) -> None:
    if owner is not None:
        os.fchown(fd, *owner)


def _copy_file(
    name: str,
    st: os.stat_result,
    src_dir: int,
    dst_dir: int,
    owner: tuple[int, int] | None,
    budget: _Budget,
) -> None:
    src = os.open(name, _READ_FLAGS, dir_fd=src_dir)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        dst = os.open(name, flags, 0o600, dir_fd=dst_dir)
        try:
            _copy_bytes(src, dst, budget)
            _chown(dst, owner)
            os.fchmod(dst, st.st_mode & _PERM_MASK)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_link(
    name: str, src_dir: int, dst_dir: int, owner: tuple[int, int] | None, budget: _Budget
) -> None:
    target = os.readlink(name, dir_fd=src_dir)
    budget.spend(len(target))
    os.symlink(target, name, dir_fd=dst_dir)
    if owner is not None:
        os.chown(name, *owner, dir_fd=dst_dir, follow_symlinks=False)


def _copy_dir_into(src_dir: int, dst_dir: int, owner: tuple[int, int] | None, b: _Budget) -> None:
    for name, st in sorted(_entries(src_dir).items()):
        kind = _kind(st)
        if kind == "file":
            _copy_file(name, st, src_dir, dst_dir, owner, b)
        elif kind == "link":
            _copy_link(name, src_dir, dst_dir, owner, b)
        elif kind == "dir":
            b.spend(4096)
            os.mkdir(name, 0o700, dir_fd=dst_dir)
            with _open_dir(name, src_dir) as child_src, _open_dir(name, dst_dir) as child_dst:
                _copy_dir_into(child_src, child_dst, owner, b)
                _chown(child_dst, owner)
                os.fchmod(child_dst, st.st_mode & _PERM_MASK)
                os.utime(child_dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def copy_tree_in(src: Path, dst: Path, *, owner: tuple[int, int] | None, limit: int | None) -> int:
    """Copy the workspace ``src`` into the empty directory ``dst`` for a sandbox to use.

    Args:
        src: The run's workspace on the host.
        dst: The sandbox's (empty) workspace root.
        owner: ``(uid, gid)`` to hand every copied entry to (the sandbox user), or None to
            keep the copier's ownership (when not running as root).
        limit: Bytes the copy may write (the disk cap); None for no limit.

    Returns:
        The number of bytes copied.

    Raises:
        SandboxError: When the workspace is larger than ``limit``.
    """
    budget = _Budget(limit, f"workspace {src} does not fit the sandbox disk")
    with _open_dir(src) as src_fd, _open_dir(dst) as dst_fd:
        _copy_dir_into(src_fd, dst_fd, owner, budget)
        _chown(dst_fd, owner)
    return budget.used


def _remove(name: str, st: os.stat_result, dir_fd: int) -> None:
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _update_file(
    name: str,
    st: os.stat_result,
    src_dir: int,
    dst_dir: int,
    existing: os.stat_result,
    budget: _Budget,
) -> None:
    """Bring one existing host file up to date, touching it only where it differs.

    An unchanged file keeps its ctime, so stat-based change tracking does not re-read it.
    """
    wanted_mode = st.st_mode & _PERM_MASK
    src = os.open(name, _READ_FLAGS, dir_fd=src_dir)
    try:
        changed = existing.st_size != st.st_size
        if not changed:
            dst = os.open(name, _READ_FLAGS, dir_fd=dst_dir)
            try:
                changed = not _same_content(src, dst)
            finally:
                os.close(dst)
        if not changed and stat.S_IMODE(existing.st_mode) == wanted_mode:
            if existing.st_mtime_ns != st.st_mtime_ns:
                os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst_dir)
            return
        if changed and not existing.st_mode & stat.S_IWUSR and os.geteuid() != 0:
            # Only the runtime writes the host workspace (the sandbox works on its own copy),
            # and lstat said this is a regular file: making it writable by path is safe.
            os.chmod(name, stat.S_IMODE(existing.st_mode) | stat.S_IWUSR, dir_fd=dst_dir)
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_TRUNC if changed else 0)
        dst = os.open(name, flags, dir_fd=dst_dir)
        try:
            if changed:
                os.lseek(src, 0, os.SEEK_SET)
                _copy_bytes(src, dst, budget)
            os.fchmod(dst, wanted_mode)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _sync_dir(src_dir: int, dst_dir: int, owner: tuple[int, int] | None, b: _Budget) -> None:
    wanted = {name: st for name, st in _entries(src_dir).items() if _kind(st) is not None}
    present = _entries(dst_dir)
    for name, st in list(present.items()):
        if name not in wanted or _kind(st) != _kind(wanted[name]):
            _remove(name, st, dst_dir)
            del present[name]
    for name, st in sorted(wanted.items()):
        kind = _kind(st)
        existing = present.get(name)
        if kind == "file":
            if existing is None:
                _copy_file(name, st, src_dir, dst_dir, owner, b)
            else:
                _update_file(name, st, src_dir, dst_dir, existing, b)
        elif kind == "link":
            target = os.readlink(name, dir_fd=src_dir)
            if existing is not None and os.readlink(name, dir_fd=dst_dir) == target:
                continue
            if existing is not None:
                os.unlink(name, dir_fd=dst_dir)
            _copy_link(name, src_dir, dst_dir, owner, b)
        elif kind == "dir":
            if existing is None:
                b.spend(4096)
                os.mkdir(name, 0o700, dir_fd=dst_dir)
            with _open_dir(name, src_dir) as child_src, _open_dir(name, dst_dir) as child_dst:
                _sync_dir(child_src, child_dst, owner, b)
                if existing is None:
                    _chown(child_dst, owner)
                now = os.fstat(child_dst)
                if stat.S_IMODE(now.st_mode) != st.st_mode & _PERM_MASK:
                    os.fchmod(child_dst, st.st_mode & _PERM_MASK)
                if now.st_mtime_ns != st.st_mtime_ns:
                    os.utime(child_dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def sync_tree_back(src: Path, dst: Path, *, limit: int | None) -> int:
    """Make the host workspace ``dst`` mirror the sandbox's workspace ``src``.

    Files that differ are rewritten in place (keeping their owner), new entries get the owner of
    ``dst`` itself, entries missing from ``src`` are removed; modes are copied without
    setuid/setgid/sticky bits; symlinks are copied as links and never followed; special files
    are dropped.

    Args:
        src: The sandbox's workspace root (as seen from the host).
        dst: The run's workspace on the host.
        limit: Bytes the sync may write; None for no limit.

    Returns:
        The number of bytes written.

    Raises:
        SandboxError: When the changes exceed ``limit``.
    """
    budget = _Budget(limit, f"sandbox changes to workspace {dst} are too large")
    root = os.stat(dst, follow_symlinks=False)
    owner = (root.st_uid, root.st_gid) if os.geteuid() == 0 else None
    with _open_dir(src) as src_fd, _open_dir(dst) as dst_fd:
        _sync_dir(src_fd, dst_fd, owner, budget)
    return budget.used


def tree_size(root: Path) -> int:
    """Bytes of regular files and symlink targets under ``root`` (symlinks not followed)."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                total += st.st_size
    return total


def _parts(path: str | PurePosixPath) -> tuple[str, ...]:
    text = str(path)
    pure = PurePosixPath(text)
    parts = tuple(part for part in pure.parts if part not in ("", "."))
    if pure.is_absolute() or not parts or ".." in parts or "\0" in text:
        raise ConfigurationError(
            f"workspace path {text!r} must be relative to the workspace, without '..' "
            "(e.g. 'src/main.py')"
        )
    return parts


@contextlib.contextmanager
def _walk_to_parent(workspace: Path, parts: tuple[str, ...], *, create: bool) -> Iterator[int]:
    fd = os.open(workspace, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except NotADirectoryError:
                raise NotFoundError(
                    f"{'/'.join(parts)} is not reachable in workspace {workspace}: {part!r} is "
                    "not a directory (symlinks are not followed)"
                ) from None
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def write_file(workspace: Path, path: str | PurePosixPath, data: bytes, *, mode: int) -> None:
    """Write ``data`` to ``path`` inside ``workspace``, creating parent directories.

    Raises:
        ConfigurationError: When ``path`` is absolute or climbs out with ``..``.
        NotFoundError: When a parent is not a directory, or is a symlink.
    """
    parts = _parts(path)
    try:
        with _walk_to_parent(workspace, parts, create=True) as parent:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(parts[-1], flags, mode & _PERM_MASK, dir_fd=parent)
            try:
                os.write(fd, data)
                os.fchmod(fd, mode & _PERM_MASK)
            finally:
                os.close(fd)
    except FileNotFoundError:
        raise NotFoundError(f"workspace {workspace} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the final component is a symlink
            raise NotFoundError(
                f"{path} in workspace {workspace} is a symlink; not followed"
            ) from None
        raise


def read_file(workspace: Path, path: str | PurePosixPath) -> bytes:
    """Read ``path`` inside ``workspace`` without following any symlink.

    Raises:
        ConfigurationError: When ``path`` is absolute or climbs out with ``..``.
        NotFoundError: When it does not exist, is not a regular file, or goes through a symlink.
    """
    parts = _parts(path)
    try:
        with _walk_to_parent(workspace, parts, create=False) as parent:
            fd = os.open(parts[-1], _READ_FLAGS, dir_fd=parent)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise NotFoundError(f"{path} in workspace {workspace} is not a regular file")
                chunks = []
                while chunk := os.read(fd, _CHUNK):
                    chunks.append(chunk)
                return b"".join(chunks)
            finally:
                os.close(fd)
    except FileNotFoundError:
        raise NotFoundError(f"{path} does not exist in workspace {workspace}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotFoundError(
                f"{path} in workspace {workspace} is a symlink; not followed"
            ) from None
        raise
