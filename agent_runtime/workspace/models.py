"""The ``ar_workspace_snapshots`` table: one workspace manifest per (run, step position).

Defined on ``sqlmodel.SQLModel.metadata`` so that the runtime's store, which creates every table
on that metadata, creates this one too (it imports this module). The manifest itself is a JSON
document (see :mod:`agent_runtime.workspace.manifest`); the counts beside it let ``diff`` and
listings answer without parsing it. File contents are not in the database: they are blobs on
disk, addressed by the SHA-256 the manifest records.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import BigInteger, Column, Table, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

__all__ = ["TABLE_NAME", "WorkspaceSnapshotRow", "snapshot_table"]

TABLE_NAME: Final = "ar_workspace_snapshots"


class WorkspaceSnapshotRow(SQLModel, table=True):
    """One snapshot row.

    Attributes:
        id: Surrogate key.
        run_id: The run.
        position: The step position (-1 = initial state).
        step: The step name.
        root: The workspace directory on the host when the snapshot was taken.
        created_at: Epoch seconds.
        file_count: Regular files in the manifest.
        total_bytes: Sum of their sizes.
        manifest: The manifest JSON document.
    """

    __tablename__ = TABLE_NAME
    __table_args__ = (
        UniqueConstraint("run_id", "position", name="uq_ar_workspace_snapshots_run_position"),
    )

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=255)
    position: int
    step: str = Field(sa_column=Column(Text, nullable=False))
    root: str = Field(sa_column=Column(Text, nullable=False))
    created_at: float
    file_count: int
    total_bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    manifest: str = Field(sa_column=Column(Text, nullable=False))


def snapshot_table() -> Table:
    """Return the SQLAlchemy ``Table`` of :class:`WorkspaceSnapshotRow`."""
    return SQLModel.metadata.tables[TABLE_NAME]
