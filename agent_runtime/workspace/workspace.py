"""The per-run workspace: files in and out, a snapshot after every step, diff and rollback.

A :class:`Workspace` owns one host directory (mounted at ``/workspace`` by the sandbox). When it is
created it records the initial state (position ``-1``); the runtime calls :meth:`snapshot` after
each step; :meth:`changes` and :meth:`diff` compare snapshots; :meth:`rollback` restores any of
them in place, and a failed run is rolled back to its initial state by :meth:`on_run_failed`
when the configuration says so. Manifests go to a :class:`SnapshotStore`, contents to a
:class:`BlobStore`. Every file operation goes through the no-follow primitives of
:mod:`agent_runtime.workspace._fs`, so nothing the sandbox plants (a symlink to ``/etc``, a FIFO)
makes the host read or write outside the directory.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from agent_runtime import errors
from agent_runtime.events import WorkspaceRolledBack, hooks
from agent_runtime.workspace import _fs
from agent_runtime.workspace.blobs import BlobStore
from agent_runtime.workspace.config import DEFAULT_STATE_DIR, WorkspaceConfig, blob_dir_for
from agent_runtime.workspace.diff import WorkspaceDiff, build_diff
from agent_runtime.workspace.manifest import FILE, Snapshot, WorkspaceChanges
from agent_runtime.workspace.rollback import (
    RollbackSummary,
    apply_plan,
    check_blobs,
    plan_rollback,
)
from agent_runtime.workspace.scan import scan
from agent_runtime.workspace.store import SnapshotInfo, SnapshotStore

__all__ = [
    "DEFAULT_FILE_MODE",
    "INITIAL_POSITION",
    "INITIAL_STEP",
    "Workspace",
    "describe_positions",
    "unknown_position",
]

INITIAL_POSITION: Final = -1
INITIAL_STEP: Final = "initial"
DEFAULT_FILE_MODE: Final = 0o644


def describe_positions(infos: list[SnapshotInfo]) -> str:
    """Render a run's snapshot positions for an error message (``-1 (initial), 0 (fetch)``).

    Args:
        infos: The run's snapshots.

    Returns:
        The comma-separated listing.
    """
    return ", ".join(f"{i.position} ({i.step})" for i in infos) or "none"


class Workspace:
    """A run's workspace directory with change tracking, diff and rollback.

    Creating one (with ``create=True``, the default) makes the directory if needed and records
    the initial snapshot, unless the store already has snapshots for the run (a resumed run
    keeps its original initial state).

    Args:
        root: The host directory; its contents are tracked and restored, the directory itself
            is never replaced (it may be a mount point).
        run_id: The run it belongs to.
        store: Where manifests are persisted.
        blobs: The blob store, or its directory; default ``<state_dir>/blobs``.
        state_dir: The runtime's state directory (for the default blob directory).
        config: Tracking, rollback and diff settings.
        on_rollback: Called with the summary after every rollback, so the caller can record it
            as a run event (the ``WorkspaceRolledBack`` hook event is emitted as well).
        clock: Wall clock (epoch seconds) for snapshot timestamps.
        monotonic: Clock for durations.
        create: Create the directory and the initial snapshot when missing. With False the
            workspace must already be known (used by ``agent-runtime rollback``).

    Raises:
        WorkspaceError: The directory cannot be created or opened, or (``create=False``) the
            run has no snapshots or its directory is missing.
    """

    def __init__(
        self,
        root: Path | str,
        run_id: str,
        store: SnapshotStore,
        *,
        blobs: BlobStore | Path | str | None = None,
        state_dir: Path | str = DEFAULT_STATE_DIR,
        config: WorkspaceConfig | None = None,
        on_rollback: Callable[[RollbackSummary], None] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        create: bool = True,
    ) -> None:
        if not run_id:
            raise errors.WorkspaceError("a workspace needs a non-empty run id")
        self.root = Path(root).absolute()
        self.run_id = run_id
        self.store = store
        self.config = config or WorkspaceConfig()
        if isinstance(blobs, BlobStore):
            self.blobs = blobs
        else:
            self.blobs = BlobStore(blobs or blob_dir_for(state_dir), fsync=self.config.fsync)
        self._on_rollback = on_rollback
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.RLock()
        self._last = store.latest(run_id)
        if not create:
            if self._last is None:
                raise errors.WorkspaceError(
                    f"run {run_id} has no workspace snapshots: the run is unknown or never "
                    "used a workspace; check the run id (agent-runtime runs list)",
                    run_id=run_id,
                )
            os.close(_fs.open_root(self.root, run_id=run_id))
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise errors.WorkspaceError(
                f"cannot create workspace directory {str(self.root)!r}: {exc.strerror}",
                run_id=run_id,
            ) from exc
        if self._last is None:
            self.snapshot(INITIAL_POSITION, INITIAL_STEP)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r}, run_id={self.run_id!r})"

    @contextmanager
    def _open(self) -> Iterator[int]:
        fd = _fs.open_root(self.root, run_id=self.run_id)
        try:
            yield fd
        finally:
            os.close(fd)

    def _error(self, message: str, exc: OSError | None = None) -> errors.WorkspaceError:
        detail = f": {exc.strerror}" if exc is not None and exc.strerror else ""
        return errors.WorkspaceError(f"{message}{detail}", run_id=self.run_id)

    def _new_owner(self, root_fd: int) -> tuple[int, int] | None:
        # As root, files put into the workspace get the workspace directory's owner, so the
        # sandbox's unprivileged user can still change them.
        if os.geteuid() != 0:
            return None
        st = os.fstat(root_fd)
        return st.st_uid, st.st_gid

    # -- files in and out ----------------------------------------------------------------------

    def put_file(self, path: str, data: bytes | str, *, mode: int = DEFAULT_FILE_MODE) -> None:
        """Write a file into the workspace, atomically, creating parent directories.

        Args:
            path: Workspace-relative path (``src/main.py``).
            data: The content (``str`` is encoded as UTF-8).
            mode: Permission bits.

        Raises:
            WorkspaceError: The path is unsafe (absolute, ``..``, through a symlink), names a
                directory, or the write failed.
        """
        parts = _fs.split_path(path)
        if not 0 <= mode <= 0o7777:
            raise self._error(f"mode {mode:#o} for {path!r} is not a permission mode")
        payload = data.encode() if isinstance(data, str) else bytes(data)
        with self._lock, self._open() as root_fd:
            owner = self._new_owner(root_fd)
            parent = _fs.open_dir(root_fd, parts[:-1], create=True, owner=owner)
            try:
                _fs.write_atomic(parent, parts[-1], [payload], mode=mode, owner=owner)
            except IsADirectoryError:
                raise self._error(f"cannot write {path!r}: it is a directory") from None
            except OSError as exc:
                raise self._error(f"cannot write {path!r}", exc) from exc
            finally:
                os.close(parent)

    def get_file(self, path: str) -> bytes:
        """Read a regular file from the workspace (a symlink is refused, never followed).

        Args:
            path: Workspace-relative path.

        Returns:
            The content.

        Raises:
            WorkspaceError: The path is unsafe, missing, a symlink, a directory or not a
                regular file.
        """
        parts = _fs.split_path(path)
        with self._open() as root_fd:
            parent = _fs.open_dir(root_fd, parts[:-1])
            try:
                fd, _ = _fs.open_file(parent, parts[-1], path="/".join(parts))
            finally:
                os.close(parent)
            try:
                with open(fd, "rb") as fh:
                    return fh.read()
            except OSError as exc:
                raise self._error(f"cannot read {path!r}", exc) from exc

    def list_files(self) -> list[str]:
        """List the workspace's regular files and symlinks (not directories), sorted.

        Returns:
            Workspace-relative paths.

        Raises:
            WorkspaceError: The directory cannot be read or exceeds the configured limits.
        """
        cfg = self.config
        with self._open() as root_fd:
            found = _fs.walk(root_fd, max_entries=cfg.max_entries, max_depth=cfg.max_depth)
            return sorted(f.path for f in found if not stat.S_ISDIR(f.st.st_mode))

    # -- snapshots -----------------------------------------------------------------------------

    def snapshot(self, position: int, step: str) -> Snapshot:
        """Record the workspace as it is after a step, and persist the manifest.

        Contents not stored yet are written to the blob store first, so the saved manifest
        never names a missing blob. Taking a position again replaces it.

        Args:
            position: The step's 0-based position (-1 = initial state).
            step: The step's name.

        Returns:
            The snapshot, with ``stats`` saying what it cost.

        Raises:
            WorkspaceError: The position is below -1, the tree cannot be read, or the blob
                store cannot be written.
            StoreError: The manifest could not be saved.
        """
        if position < INITIAL_POSITION:
            raise self._error(f"snapshot position must be >= -1, got {position}")
        with self._lock, self._open() as root_fd:
            created_at = self._clock()
            # Compared with kernel file timestamps by the stat cache: must be the real clock.
            scanned_at_ns = time.time_ns()
            try:
                entries, stats = scan(
                    root_fd,
                    self.config,
                    blobs=self.blobs,
                    previous=self._last,
                    monotonic=self._monotonic,
                )
            except OSError as exc:
                raise self._error("cannot scan the workspace", exc) from exc
            snap = Snapshot(
                run_id=self.run_id,
                position=position,
                step=step,
                root=str(self.root),
                created_at=created_at,
                scanned_at_ns=scanned_at_ns,
                entries=entries,
                stats=stats,
            )
            self.store.save(snap)
            self._last = snap
        return snap

    def snapshots(self) -> list[SnapshotInfo]:
        """Return the run's snapshots in position order.

        Returns:
            The summaries.
        """
        return self.store.list_snapshots(self.run_id)

    def _get(self, position: int) -> Snapshot:
        snap = self.store.get(self.run_id, position)
        if snap is None:
            raise unknown_position(self.run_id, position, self.store.list_snapshots(self.run_id))
        return snap

    def changes(self, position: int) -> WorkspaceChanges:
        """Return what the step at ``position`` changed, against the snapshot before it.

        Args:
            position: The step position (-1 compares the initial state with an empty tree).

        Returns:
            The added, modified and deleted paths with their hashes.

        Raises:
            WorkspaceError: No snapshot at that position.
        """
        snap = self._get(position)
        return WorkspaceChanges.between(self.store.previous(self.run_id, position), snap)

    def diff(
        self, from_position: int = INITIAL_POSITION, to_position: int | None = None
    ) -> WorkspaceDiff:
        """Diff two snapshots (default: the initial state against the latest snapshot).

        Args:
            from_position: The earlier position.
            to_position: The later position; None means the latest snapshot.

        Returns:
            The diff, with per-file unified diffs.

        Raises:
            WorkspaceError: No snapshot at a position.
        """
        before = self._get(from_position)
        if to_position is None:
            after = self.store.latest(self.run_id)
            assert after is not None  # before exists, so the run has a latest snapshot
        else:
            after = self._get(to_position)
        return build_diff(before, after, self.blobs, self.config)

    # -- rollback ------------------------------------------------------------------------------

    def rollback(self, to_step: int | None = None, *, automatic: bool = False) -> RollbackSummary:
        """Restore the workspace, in place, exactly as a snapshot recorded it.

        Bytes, permission bits (and, as root, owners), symlinks and directories are restored;
        whatever was added since is deleted. Every needed blob is verified before the
        directory is touched. Running it again is harmless (nothing left to change), and an
        interrupted rollback is finished by running it again.

        Args:
            to_step: The position to restore; None means the initial state.
            automatic: Whether the runtime does this by itself (recorded in the event).

        Returns:
            What was restored, recreated and deleted.

        Raises:
            WorkspaceError: Unknown position, missing directory, missing or corrupt blob
                (nothing changed), or a failure midway (run it again).
        """
        position = INITIAL_POSITION if to_step is None else to_step
        with self._lock:
            target = self._get(position)
            start = self._monotonic()
            owner = os.geteuid() == 0

            def want_hash(path: str, st: os.stat_result) -> bool:
                # A file of another size differs anyway: no need to read it.
                entry = target.entries.get(path)
                return entry is not None and entry.kind == FILE and entry.size == st.st_size

            with self._open() as root_fd:
                try:
                    current, stats = scan(root_fd, self.config, blobs=None, want_hash=want_hash)
                except OSError as exc:
                    raise self._error("cannot scan the workspace to roll it back", exc) from exc
                plan = plan_rollback(current, target.entries, owner=owner, strays=stats.ignored)
                check_blobs(plan, self.blobs, run_id=self.run_id, position=position)
                apply_plan(root_fd, plan, self.blobs, owner=owner, fsync=self.config.fsync)
            summary = RollbackSummary(
                run_id=self.run_id,
                position=position,
                step=target.step,
                automatic=automatic,
                restored=plan.restored,
                recreated=plan.recreated,
                deleted=plan.deleted,
                duration_s=self._monotonic() - start,
            )
        hooks.emit(
            WorkspaceRolledBack(
                run_id=self.run_id,
                to_step=summary.to_step,
                files_restored=summary.changed,
                automatic=automatic,
            )
        )
        if self._on_rollback is not None:
            self._on_rollback(summary)
        return summary

    def on_run_failed(self) -> RollbackSummary | None:
        """Roll a failed run's workspace back to its initial state, if configured to.

        Returns:
            The summary, or None when ``WorkspaceConfig.rollback_on_failure`` is off.

        Raises:
            WorkspaceError: The rollback failed (see :meth:`rollback`).
        """
        if not self.config.rollback_on_failure:
            return None
        return self.rollback(None, automatic=True)


def unknown_position(
    run_id: str, position: int, infos: list[SnapshotInfo]
) -> errors.WorkspaceError:
    """Build the error for a position the run has no snapshot at.

    Args:
        run_id: The run.
        position: The position asked for.
        infos: The run's snapshots.

    Returns:
        The error (to raise).
    """
    if not infos:
        return errors.WorkspaceError(
            f"run {run_id} has no workspace snapshots: the run is unknown or never used a "
            "workspace; check the run id (agent-runtime runs list)",
            run_id=run_id,
        )
    return errors.WorkspaceError(
        f"run {run_id} has no workspace snapshot at position {position}; its positions are "
        f"{describe_positions(infos)} (-1 is the initial state)",
        run_id=run_id,
    )
