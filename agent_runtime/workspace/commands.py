"""What ``agent-runtime rollback`` and ``agent-runtime diff`` call: one function per command.

Both take the runtime's database (an ``Engine``, or any :class:`SnapshotStore`), find the run's
snapshots, and fail with a :class:`~agent_runtime.errors.WorkspaceError` that says what to do for
an unknown run, an unknown position, a missing workspace directory or a missing blob. The CLI
layer only parses arguments and prints ``to_text()`` or ``as_dict()``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import Engine

from agent_runtime.workspace.blobs import BlobStore
from agent_runtime.workspace.config import DEFAULT_STATE_DIR, WorkspaceConfig, blob_dir_for
from agent_runtime.workspace.diff import WorkspaceDiff, build_diff
from agent_runtime.workspace.rollback import RollbackSummary
from agent_runtime.workspace.store import SnapshotInfo, SnapshotStore, SqlSnapshotStore
from agent_runtime.workspace.workspace import INITIAL_POSITION, Workspace, unknown_position

__all__ = ["RootResolver", "diff_run", "list_run_snapshots", "rollback_run"]

RootResolver = Callable[[str], Path]
"""Maps a run id to its workspace directory on this host."""


def _store(db: Engine | SnapshotStore) -> SnapshotStore:
    return SqlSnapshotStore(db) if isinstance(db, Engine) else db


def _blobs(
    blob_dir: Path | str | None, state_dir: Path | str, config: WorkspaceConfig
) -> BlobStore:
    return BlobStore(blob_dir or blob_dir_for(state_dir), fsync=config.fsync)


def _infos(store: SnapshotStore, run_id: str) -> list[SnapshotInfo]:
    infos = store.list_snapshots(run_id)
    if not infos:
        raise unknown_position(run_id, INITIAL_POSITION, infos)
    return infos


def list_run_snapshots(db: Engine | SnapshotStore, run_id: str) -> list[SnapshotInfo]:
    """Return a run's workspace snapshots (for listings and ``--to-step`` help).

    Args:
        db: The runtime database, or a snapshot store.
        run_id: The run.

    Returns:
        The snapshots in position order.

    Raises:
        WorkspaceError: The run has no snapshots.
        StoreError: The database failed.
    """
    return _infos(_store(db), run_id)


def rollback_run(
    db: Engine | SnapshotStore,
    run_id: str,
    *,
    to_step: int | None = None,
    blob_dir: Path | str | None = None,
    state_dir: Path | str = DEFAULT_STATE_DIR,
    resolve_root: RootResolver | None = None,
    config: WorkspaceConfig | None = None,
    on_rollback: Callable[[RollbackSummary], None] | None = None,
) -> RollbackSummary:
    """Roll a run's workspace back by hand (``agent-runtime rollback RUN_ID [--to-step N]``).

    Args:
        db: The runtime database, or a snapshot store.
        run_id: The run.
        to_step: The position to restore; None means the initial state.
        blob_dir: The blob directory; default ``<state_dir>/blobs``.
        state_dir: The runtime's state directory.
        resolve_root: Maps the run id to its workspace directory; default: the directory
            recorded with the run's latest snapshot.
        config: Workspace settings.
        on_rollback: Called with the summary (the caller records the run event there).

    Returns:
        What was restored, recreated and deleted.

    Raises:
        WorkspaceError: Unknown run or position, missing directory, missing or corrupt blob
            (nothing changed), or a failure midway (run it again).
        StoreError: The database failed.
    """
    store = _store(db)
    cfg = config or WorkspaceConfig()
    infos = _infos(store, run_id)
    position = INITIAL_POSITION if to_step is None else to_step
    if all(i.position != position for i in infos):
        raise unknown_position(run_id, position, infos)
    root = resolve_root(run_id) if resolve_root is not None else Path(infos[-1].root)
    workspace = Workspace(
        root,
        run_id,
        store,
        blobs=_blobs(blob_dir, state_dir, cfg),
        config=cfg,
        on_rollback=on_rollback,
        create=False,
    )
    return workspace.rollback(to_step)


def diff_run(
    db: Engine | SnapshotStore,
    run_id: str,
    *,
    from_position: int = INITIAL_POSITION,
    to_position: int | None = None,
    blob_dir: Path | str | None = None,
    state_dir: Path | str = DEFAULT_STATE_DIR,
    config: WorkspaceConfig | None = None,
) -> WorkspaceDiff:
    """Diff a run's workspace snapshots (``agent-runtime diff RUN_ID``).

    Works from the database and the blob directory alone: the workspace directory itself is
    not needed (it may be gone).

    Args:
        db: The runtime database, or a snapshot store.
        run_id: The run.
        from_position: The earlier position (default: the initial state).
        to_position: The later position (default: the latest snapshot).
        blob_dir: The blob directory; default ``<state_dir>/blobs``.
        state_dir: The runtime's state directory.
        config: Diff limits.

    Returns:
        The diff; ``to_text()`` and ``to_json()`` render it.

    Raises:
        WorkspaceError: Unknown run or position.
        StoreError: The database failed.
    """
    store = _store(db)
    cfg = config or WorkspaceConfig()
    infos = _infos(store, run_id)
    before = store.get(run_id, from_position)
    if before is None:
        raise unknown_position(run_id, from_position, infos)
    target = infos[-1].position if to_position is None else to_position
    after = store.get(run_id, target)
    if after is None:
        raise unknown_position(run_id, target, infos)
    return build_diff(before, after, _blobs(blob_dir, state_dir, cfg), cfg)
