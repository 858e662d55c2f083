"""The workspace package's public surface."""

from __future__ import annotations

import agent_runtime.workspace as workspace


def test_exports_are_sorted_and_importable() -> None:
    """__all__ is sorted (constants, classes, functions) and every name resolves."""
    names = workspace.__all__
    assert names == sorted(names, key=lambda n: (not n.isupper(), not n[0].isupper(), n))
    for name in names:
        assert getattr(workspace, name) is not None


def test_public_api_names() -> None:
    """The names the runtime and the CLI rely on are exported."""
    expected = {
        "BlobStore",
        "MemorySnapshotStore",
        "RollbackSummary",
        "SnapshotStore",
        "SqlSnapshotStore",
        "Workspace",
        "WorkspaceConfig",
        "WorkspaceDiff",
        "WorkspaceSnapshotRow",
        "diff_run",
        "rollback_run",
    }
    assert expected <= set(workspace.__all__)
