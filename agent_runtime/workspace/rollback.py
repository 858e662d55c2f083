"""Rollback: put a workspace back exactly as a snapshot recorded it, in place.

Split the house way: :func:`plan_rollback` is pure (current entries + target entries -> what to
delete, create and rewrite); :func:`check_blobs` verifies, before anything is touched, that every
blob the plan needs is present and intact, so a missing blob never leaves a half-restored tree;
:func:`apply_plan` executes the plan through the no-follow operations of
:mod:`agent_runtime.workspace._fs`.

The root directory itself is never replaced (it may be a mount point the sandbox uses); only its
contents are. Every step of the plan is idempotent against the target state and a plan is always
computed from a fresh scan, so a rollback interrupted midway (crash, full disk, kill) is finished
by simply running it again; leftover temporary files from the interruption are deleted then like
any other file the target does not have.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent_runtime import errors
from agent_runtime.workspace import _fs
from agent_runtime.workspace.blobs import BlobStore
from agent_runtime.workspace.manifest import DIR, FILE, SYMLINK, Entry, compare

__all__ = ["RollbackPlan", "RollbackSummary", "apply_plan", "check_blobs", "plan_rollback"]


@dataclass(frozen=True, slots=True)
class RollbackPlan:
    """What a rollback does, computed without I/O.

    Attributes:
        remove: Paths to delete, topmost only (a directory goes with its whole tree).
        mkdirs: Directories to create, parents first.
        files: Files to write from their blobs (new, changed, or with other metadata).
        links: Symlinks to (re)create.
        dir_meta: Directories whose mode and owner to set at the end, deepest first (last, so a
            read-only directory does not block writing into it).
        restored: Paths that exist but differ from the target.
        recreated: Paths the target has and the workspace lacks.
        deleted: Paths the workspace has and the target lacks (every one, also inside trees).
    """

    remove: tuple[str, ...] = ()
    mkdirs: tuple[Entry, ...] = ()
    files: tuple[Entry, ...] = ()
    links: tuple[Entry, ...] = ()
    dir_meta: tuple[Entry, ...] = ()
    restored: tuple[str, ...] = ()
    recreated: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.remove or self.mkdirs or self.files or self.links or self.dir_meta)


def _depth(path: str) -> int:
    return path.count("/")


def plan_rollback(
    current: Mapping[str, Entry],
    target: Mapping[str, Entry],
    *,
    owner: bool,
    strays: Iterable[str] = (),
) -> RollbackPlan:
    """Plan the operations that turn ``current`` into ``target``.

    A file in ``current`` without a hash (not read during planning) is taken to differ.

    Args:
        current: Entries of the workspace as it is now.
        target: Entries of the snapshot to restore.
        owner: Whether owners must be restored too (only possible as root).
        strays: Paths of special files (FIFOs, sockets, devices) found in the workspace: no
            snapshot holds them, so they are always deleted.

    Returns:
        The plan (empty when the workspace already matches).
    """
    changes = compare(current, target, owner=owner)
    removing: set[str] = set(strays)
    deleted: list[str] = sorted(p for p in removing if p not in target)
    create: list[Entry] = []
    restored: list[str] = []
    recreated: list[str] = []
    for change in changes:
        if change.change == "deleted":
            removing.add(change.path)
            deleted.append(change.path)
            continue
        assert change.new is not None  # added or modified
        if change.change == "added" and change.path in removing:
            restored.append(change.path)  # a stray special file stands where the target has one
        elif change.change == "added":
            recreated.append(change.path)
        else:
            restored.append(change.path)
            if "type" in change.aspects:
                removing.add(change.path)
        create.append(change.new)
    # A directory being removed takes its tree: only the topmost paths need a call.
    removed_dirs = {p for p in removing if p in current and current[p].kind == DIR}
    remove = sorted(p for p in removing if not _has_ancestor_in(p, removed_dirs))
    dirs = [e for e in create if e.kind == DIR]
    mkdirs = [e for e in dirs if e.path not in current or e.path in removing]
    return RollbackPlan(
        remove=tuple(remove),
        mkdirs=tuple(sorted(mkdirs, key=lambda e: (_depth(e.path), e.path))),
        files=tuple(e for e in create if e.kind == FILE),
        links=tuple(e for e in create if e.kind == SYMLINK),
        dir_meta=tuple(sorted(dirs, key=lambda e: (-_depth(e.path), e.path))),
        restored=tuple(restored),
        recreated=tuple(recreated),
        deleted=tuple(sorted(deleted)),
    )


def _has_ancestor_in(path: str, dirs: set[str]) -> bool:
    parts = path.split("/")
    return any("/".join(parts[:i]) in dirs for i in range(1, len(parts)))


def check_blobs(plan: RollbackPlan, blobs: BlobStore, *, run_id: str, position: int) -> None:
    """Verify that every blob the plan writes is present and intact, before anything changes.

    Args:
        plan: The plan.
        blobs: The blob store.
        run_id: For the error.
        position: For the error.

    Raises:
        WorkspaceError: Naming each file that cannot be restored and why; nothing was changed.
    """
    problems: list[str] = []
    for entry in plan.files:
        if entry.sha256 is None:
            problems.append(f"{entry.path}: the snapshot recorded no content hash")
            continue
        problem = blobs.problem(entry.sha256, entry.size, verify=True)
        if problem is not None:
            problems.append(f"{entry.path}: {problem}")
    if problems:
        listing = "; ".join(problems[:20])
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        raise errors.WorkspaceError(
            f"cannot roll back the workspace of run {run_id} to position {position}: "
            f"{len(problems)} file(s) cannot be restored: {listing}{more}. Nothing was changed. "
            f"Restore the blob directory {blobs.root} from a backup, or roll back to another "
            "position",
            run_id=run_id,
        )


def _parent(root_fd: int, path: str) -> tuple[int, str]:
    # Manifest paths come from the database: validate them like user input, so a tampered row
    # cannot name '..' or an absolute path.
    parts = _fs.split_path(path)
    return _fs.open_dir(root_fd, parts[:-1]), parts[-1]


def apply_plan(
    root_fd: int, plan: RollbackPlan, blobs: BlobStore, *, owner: bool, fsync: bool
) -> None:
    """Execute a rollback plan below ``root_fd``.

    Args:
        root_fd: Descriptor of the workspace root.
        plan: The plan (checked with :func:`check_blobs`).
        blobs: Where file contents come from.
        owner: Restore owners (uid/gid) too.
        fsync: Flush each restored file before renaming it into place.

    Raises:
        WorkspaceError: An operation failed midway; running the rollback again finishes it.
    """
    try:
        for path in plan.remove:
            parent, name = _parent(root_fd, path)
            try:
                _fs.remove(parent, name)
            finally:
                os.close(parent)
        for entry in plan.mkdirs:
            parent, name = _parent(root_fd, entry.path)
            try:
                os.mkdir(name, 0o700, dir_fd=parent)
            except FileExistsError:
                pass  # an interrupted earlier attempt made it; dir_meta fixes its mode
            finally:
                os.close(parent)
        for entry in plan.files:
            assert entry.sha256 is not None  # check_blobs refused entries without one
            parent, name = _parent(root_fd, entry.path)
            try:
                _fs.write_atomic(
                    parent,
                    name,
                    blobs.chunks(entry.sha256),
                    mode=entry.mode,
                    owner=(entry.uid, entry.gid) if owner else None,
                    mtime_ns=entry.mtime_ns,
                    fsync=fsync,
                )
            finally:
                os.close(parent)
        for entry in plan.links:
            assert entry.target is not None
            parent, name = _parent(root_fd, entry.path)
            try:
                _fs.symlink_atomic(
                    parent, name, entry.target, owner=(entry.uid, entry.gid) if owner else None
                )
            finally:
                os.close(parent)
        for entry in plan.dir_meta:
            fd = _fs.open_dir(root_fd, _fs.split_path(entry.path))
            try:
                if owner:
                    os.fchown(fd, entry.uid, entry.gid)
                os.fchmod(fd, entry.mode)
            finally:
                os.close(fd)
    except OSError as exc:
        raise errors.WorkspaceError(
            f"rollback stopped midway at {exc.filename or 'an entry'}: {exc.strerror}; fix the "
            "cause (disk space, permissions) and run the rollback again to finish it"
        ) from exc


@dataclass(frozen=True, slots=True)
class RollbackSummary:
    """What a rollback did.

    Attributes:
        run_id: The run.
        position: The position restored (-1 = initial state).
        step: That snapshot's step name.
        automatic: True when the runtime rolled back a failed run by itself.
        restored: Paths that existed and were put back (content, mode, owner, type or target).
        recreated: Paths that were missing and were recreated.
        deleted: Paths added since the snapshot, deleted.
        duration_s: Seconds the rollback took.
    """

    run_id: str
    position: int
    step: str
    automatic: bool
    restored: tuple[str, ...]
    recreated: tuple[str, ...]
    deleted: tuple[str, ...]
    duration_s: float

    @property
    def changed(self) -> int:
        """Paths the rollback changed in all (0 when the workspace already matched)."""
        return len(self.restored) + len(self.recreated) + len(self.deleted)

    @property
    def to_step(self) -> int | None:
        """The position as the CLI spells it: None for the initial state."""
        return None if self.position == -1 else self.position

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping."""
        return {
            "run_id": self.run_id,
            "position": self.position,
            "step": self.step,
            "automatic": self.automatic,
            "restored": list(self.restored),
            "recreated": list(self.recreated),
            "deleted": list(self.deleted),
            "changed": self.changed,
            "duration_s": self.duration_s,
        }

    def to_text(self) -> str:
        """Render a short human summary, one line per changed path."""
        head = (
            f"workspace of run {self.run_id} rolled back to position {self.position} "
            f"({self.step}): {len(self.restored)} restored, {len(self.recreated)} recreated, "
            f"{len(self.deleted)} deleted"
        )
        lines = [head]
        lines += [f"  restored  {p}" for p in self.restored]
        lines += [f"  recreated {p}" for p in self.recreated]
        lines += [f"  deleted   {p}" for p in self.deleted]
        return "\n".join(lines)
