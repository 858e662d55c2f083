"""The SQLModel tables of the state database.

All tables are prefixed ``ar_`` so agent-runtime can share a PostgreSQL database with an
application. Times are epoch seconds (float, UTC) so that lease arithmetic is the same on SQLite
and PostgreSQL; the API turns them into ``datetime`` where users see them. Serialized values
(inputs, step outputs, results) are text: JSON by default, or what a pluggable serializer writes.

``SCHEMA_VERSION`` is stored in ``ar_meta``; see :mod:`agent_runtime.state.store` for how a newer
schema is refused.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import Column, Index, Text
from sqlmodel import Field, SQLModel

__all__ = [
    "SCHEMA_VERSION",
    "AttemptRow",
    "DeadLetterRow",
    "EventRow",
    "MetaRow",
    "RunRow",
    "StepRow",
]

SCHEMA_VERSION: Final = 1


class MetaRow(SQLModel, table=True):
    """Key/value facts about the database itself (``schema_version``)."""

    __tablename__ = "ar_meta"

    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=256)


class RunRow(SQLModel, table=True):
    """One run of a workflow."""

    __tablename__ = "ar_runs"
    __table_args__ = (
        Index("ix_ar_runs_status_lease", "status", "lease_expires_at"),
        Index("ix_ar_runs_created", "created_at"),
    )

    id: str = Field(primary_key=True, max_length=64)
    workflow: str = Field(index=True, max_length=255)
    entrypoint: str | None = Field(default=None, max_length=512)
    status: str = Field(max_length=16)
    inputs: str = Field(sa_column=Column(Text, nullable=False))
    serializer: str = Field(default="json", max_length=64)
    result: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    result_checksum: str | None = Field(default=None, max_length=64)
    error_type: str | None = Field(default=None, max_length=255)
    error_message: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    trace_id: str = Field(max_length=32)
    parent_span_id: str | None = Field(default=None, max_length=16)
    owner: str | None = Field(default=None, max_length=255)
    lease_expires_at: float | None = None
    generation: int = 0
    timeout: float
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None


class StepRow(SQLModel, table=True):
    """The checkpoint of one completed step: its recorded output and a checksum."""

    __tablename__ = "ar_steps"
    # One B-tree keyed by (run_id, position) instead of a rowid table plus a unique index:
    # fewer pages written by every checkpoint (ignored by PostgreSQL).
    __table_args__ = {"sqlite_with_rowid": False}

    run_id: str = Field(primary_key=True, max_length=64)
    position: int = Field(primary_key=True)
    name: str = Field(max_length=255)
    output: str = Field(sa_column=Column(Text, nullable=False))
    serializer: str = Field(default="json", max_length=64)
    checksum: str = Field(max_length=64)
    attempts: int = 1
    duration_s: float = 0.0
    created_at: float


class AttemptRow(SQLModel, table=True):
    """One failed attempt of a step (the history the dead-letter entry shows)."""

    __tablename__ = "ar_attempts"
    __table_args__ = (Index("ix_ar_attempts_run", "run_id", "generation", "position"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=64)
    generation: int = 0
    position: int
    step: str = Field(max_length=255)
    attempt: int
    at: float
    error_type: str = Field(max_length=255)
    message: str = Field(sa_column=Column(Text, nullable=False))
    fingerprint: str = Field(max_length=32)
    error_class: str = Field(max_length=32)
    delay: float | None = None


class EventRow(SQLModel, table=True):
    """Something that happened to a run: a state transition, a recovery, a rollback."""

    __tablename__ = "ar_events"
    __table_args__ = (Index("ix_ar_events_run", "run_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=64)
    at: float
    kind: str = Field(max_length=32)
    from_status: str | None = Field(default=None, max_length=16)
    to_status: str | None = Field(default=None, max_length=16)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    owner: str | None = Field(default=None, max_length=255)


class DeadLetterRow(SQLModel, table=True):
    """A run that failed for good: why, every attempt, its inputs and last good checkpoint."""

    __tablename__ = "ar_dead_letters"
    __table_args__ = (Index("ix_ar_dead_letters_status", "status", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True, max_length=64)
    workflow: str = Field(max_length=255)
    generation: int = 0
    status: str = Field(default="open", max_length=16)
    error_type: str = Field(max_length=255)
    message: str = Field(sa_column=Column(Text, nullable=False))
    traceback: str = Field(sa_column=Column(Text, nullable=False))
    step: str | None = Field(default=None, max_length=255)
    attempts: str = Field(sa_column=Column(Text, nullable=False))
    last_checkpoint_position: int | None = None
    last_checkpoint_step: str | None = Field(default=None, max_length=255)
    inputs: str = Field(sa_column=Column(Text, nullable=False))
    created_at: float
    retried_at: float | None = None
