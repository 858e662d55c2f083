"""Per-run workspaces: files in and out, change tracking per step, diff and rollback.

A run's workspace is a host directory the sandbox mounts at ``/workspace``. :class:`Workspace`
records a manifest after every step (content-addressed blobs on disk, manifests in the
``ar_workspace_snapshots`` table), reports what each step added, modified and deleted, renders
diffs, and restores any snapshot in place: automatically when a run fails (configurable), or by
hand through :func:`rollback_run` (``agent-runtime rollback``) and :func:`diff_run`
(``agent-runtime diff``).
"""

from agent_runtime.workspace.blobs import BlobStore
from agent_runtime.workspace.commands import (
    RootResolver,
    diff_run,
    list_run_snapshots,
    rollback_run,
)
from agent_runtime.workspace.config import (
    DEFAULT_BLOB_DIRNAME,
    DEFAULT_FSYNC,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_DIFF_FILE_BYTES,
    DEFAULT_MAX_DIFF_LINES,
    DEFAULT_MAX_ENTRIES,
    DEFAULT_RACY_WINDOW_S,
    DEFAULT_ROLLBACK_ON_FAILURE,
    DEFAULT_STATE_DIR,
    DEFAULT_TRUST_STAT_CACHE,
    DEFAULT_WORKSPACES_DIRNAME,
    WorkspaceConfig,
    blob_dir_for,
    workspace_root_for,
)
from agent_runtime.workspace.diff import FileDiff, WorkspaceDiff
from agent_runtime.workspace.manifest import (
    Entry,
    FileChange,
    ScanStats,
    Snapshot,
    WorkspaceChanges,
)
from agent_runtime.workspace.models import WorkspaceSnapshotRow
from agent_runtime.workspace.rollback import RollbackSummary
from agent_runtime.workspace.store import (
    MemorySnapshotStore,
    SnapshotInfo,
    SnapshotStore,
    SqlSnapshotStore,
)
from agent_runtime.workspace.workspace import (
    DEFAULT_FILE_MODE,
    INITIAL_POSITION,
    INITIAL_STEP,
    Workspace,
)

__all__ = [
    "DEFAULT_BLOB_DIRNAME",
    "DEFAULT_FILE_MODE",
    "DEFAULT_FSYNC",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_DIFF_FILE_BYTES",
    "DEFAULT_MAX_DIFF_LINES",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_RACY_WINDOW_S",
    "DEFAULT_ROLLBACK_ON_FAILURE",
    "DEFAULT_STATE_DIR",
    "DEFAULT_TRUST_STAT_CACHE",
    "DEFAULT_WORKSPACES_DIRNAME",
    "INITIAL_POSITION",
    "INITIAL_STEP",
    "BlobStore",
    "Entry",
    "FileChange",
    "FileDiff",
    "MemorySnapshotStore",
    "RollbackSummary",
    "RootResolver",
    "ScanStats",
    "Snapshot",
    "SnapshotInfo",
    "SnapshotStore",
    "SqlSnapshotStore",
    "Workspace",
    "WorkspaceChanges",
    "WorkspaceConfig",
    "WorkspaceDiff",
    "WorkspaceSnapshotRow",
    "blob_dir_for",
    "diff_run",
    "list_run_snapshots",
    "rollback_run",
    "workspace_root_for",
]
