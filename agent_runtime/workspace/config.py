"""Workspace configuration: one frozen dataclass and its ``DEFAULT_*`` constants.

``WorkspaceConfig`` says where blobs live relative to the state directory, whether a failed run's
workspace is rolled back automatically, how far the snapshot scanner may trust file metadata, and
how large a text diff may grow. Every knob has a default, so ``WorkspaceConfig()`` is the product's
behaviour out of the box.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent_runtime import errors

__all__ = [
    "DEFAULT_BLOB_DIRNAME",
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
    "WorkspaceConfig",
    "blob_dir_for",
    "workspace_root_for",
]

DEFAULT_STATE_DIR: Final = Path(".agent_runtime")
"""The runtime's state directory; blobs go in ``<state dir>/blobs``."""
DEFAULT_BLOB_DIRNAME: Final = "blobs"
DEFAULT_WORKSPACES_DIRNAME: Final = "workspaces"
DEFAULT_ROLLBACK_ON_FAILURE: Final = True
DEFAULT_TRUST_STAT_CACHE: Final = True
DEFAULT_RACY_WINDOW_S: Final = 1.0
DEFAULT_FSYNC: Final = True
DEFAULT_MAX_ENTRIES: Final = 200_000
DEFAULT_MAX_DEPTH: Final = 256
DEFAULT_MAX_DIFF_FILE_BYTES: Final = 1024 * 1024
DEFAULT_MAX_DIFF_LINES: Final = 2_000


@dataclass(frozen=True, slots=True)
class WorkspaceConfig:
    """How a workspace is tracked, diffed and rolled back.

    Attributes:
        rollback_on_failure: Restore the initial state when the run fails
            (:meth:`Workspace.on_run_failed`).
        trust_stat_cache: Reuse the previous snapshot's hash of a file whose size, mtime, ctime
            and inode are unchanged instead of reading it again. This is what makes a snapshot of
            an unchanged workspace cost one ``lstat`` per file. The trade-off: a change that keeps
            all four equal goes unseen. ``ctime`` cannot be set from user space (only the system
            clock can fake it), so that needs a write within one kernel timestamp tick of the
            previous scan, which ``racy_window_s`` covers.
        racy_window_s: A file whose mtime or ctime is within this many seconds before the
            previous scan started is hashed again anyway, because a write in the same timestamp
            tick would leave its metadata unchanged (git's "racily clean" problem).
        fsync: ``fsync`` every new blob before its manifest is saved, so a crash or power loss
            never leaves a manifest that points to a blob with missing bytes.
        max_entries: Refuse to snapshot a workspace with more entries than this (a sandbox that
            creates millions of files must not exhaust the host's memory).
        max_depth: Refuse to snapshot deeper directory nesting than this (each level holds one
            open file descriptor while the tree is walked).
        max_diff_file_bytes: Files larger than this get no line diff, only a marker.
        max_diff_lines: A per-file diff longer than this is truncated with a marker.
    """

    rollback_on_failure: bool = DEFAULT_ROLLBACK_ON_FAILURE
    trust_stat_cache: bool = DEFAULT_TRUST_STAT_CACHE
    racy_window_s: float = DEFAULT_RACY_WINDOW_S
    fsync: bool = DEFAULT_FSYNC
    max_entries: int = DEFAULT_MAX_ENTRIES
    max_depth: int = DEFAULT_MAX_DEPTH
    max_diff_file_bytes: int = DEFAULT_MAX_DIFF_FILE_BYTES
    max_diff_lines: int = DEFAULT_MAX_DIFF_LINES

    def __post_init__(self) -> None:
        if self.racy_window_s < 0:
            raise errors.ConfigurationError(
                f"WorkspaceConfig.racy_window_s must be >= 0, got {self.racy_window_s}"
            )
        for name in ("max_entries", "max_depth", "max_diff_file_bytes", "max_diff_lines"):
            value = getattr(self, name)
            if value < 1:
                raise errors.ConfigurationError(
                    f"WorkspaceConfig.{name} must be a positive integer, got {value}"
                )


def blob_dir_for(state_dir: Path | str = DEFAULT_STATE_DIR) -> Path:
    """Return the default blob directory of a state directory: ``<state dir>/blobs``.

    Args:
        state_dir: The runtime's state directory.

    Returns:
        The blob directory path (not created).
    """
    return Path(state_dir) / DEFAULT_BLOB_DIRNAME


def workspace_root_for(run_id: str, state_dir: Path | str = DEFAULT_STATE_DIR) -> Path:
    """Return the default workspace directory of a run: ``<state dir>/workspaces/<run id>``.

    Args:
        run_id: The run id; it must be usable as one directory name.
        state_dir: The runtime's state directory.

    Returns:
        The workspace root path (not created).

    Raises:
        WorkspaceError: The run id is empty or contains ``/``, NUL, or is ``.``/``..``.
    """
    if not run_id or run_id in (".", "..") or "/" in run_id or "\0" in run_id:
        raise errors.WorkspaceError(
            f"run id {run_id!r} cannot name a workspace directory; use an id without '/', NUL, "
            "'.' or '..'",
            run_id=run_id or None,
        )
    return Path(state_dir) / DEFAULT_WORKSPACES_DIRNAME / run_id
