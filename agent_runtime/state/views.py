"""Read-only views of stored rows, as users and the CLI see them (datetimes, parsed JSON)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent_runtime.state.machine import RunStatus
from agent_runtime.state.models import DeadLetterRow, EventRow, RunRow, StepRow

__all__ = ["DeadLetter", "RunEventInfo", "RunInfo", "StepInfo", "to_datetime"]

_PREVIEW = 200


def to_datetime(epoch: float | None) -> datetime | None:
    """Convert stored epoch seconds to an aware UTC datetime (None stays None)."""
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _jsonable(obj: Any) -> Any:
    out = {}
    for key, value in asdict(obj).items():
        if isinstance(value, datetime):
            out[key] = _iso(value)
        elif isinstance(value, RunStatus):
            out[key] = value.value
        else:
            out[key] = value
    return out


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A run as stored.

    Attributes:
        id: The run id.
        workflow: The workflow name.
        status: The current state.
        trace_id: The run's trace id (the same across resumes).
        generation: How many times the run was retried from the dead-letter queue.
        owner: The process that holds (or last held) the run.
        lease_expires_at: When that process's lease lapses unless renewed.
        error_type: Type of the error that failed the run, if it failed.
        error_message: Its message.
        timeout: The run's timeout in seconds (per execution).
        created_at: When the run was started.
        updated_at: Last change.
        started_at: When it last began executing.
        finished_at: When it reached a final state.
    """

    id: str
    workflow: str
    status: RunStatus
    trace_id: str
    generation: int
    owner: str | None
    lease_expires_at: datetime | None
    error_type: str | None
    error_message: str | None
    timeout: float
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: RunRow) -> RunInfo:
        """Build the view of a stored run."""
        return cls(
            id=row.id,
            workflow=row.workflow,
            status=RunStatus(row.status),
            trace_id=row.trace_id,
            generation=row.generation,
            owner=row.owner,
            lease_expires_at=to_datetime(row.lease_expires_at),
            error_type=row.error_type,
            error_message=row.error_message,
            timeout=row.timeout,
            created_at=to_datetime(row.created_at),  # type: ignore[arg-type]
            updated_at=to_datetime(row.updated_at),  # type: ignore[arg-type]
            started_at=to_datetime(row.started_at),
            finished_at=to_datetime(row.finished_at),
        )

    @property
    def duration_s(self) -> float | None:
        """Seconds from creation to the final state (None while unfinished)."""
        if self.finished_at is None:
            return None
        return (self.finished_at - self.created_at).total_seconds()

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        out: dict[str, Any] = _jsonable(self)
        out["duration_s"] = self.duration_s
        return out


@dataclass(frozen=True, slots=True)
class StepInfo:
    """One recorded step checkpoint.

    Attributes:
        position: 0-based position in the run.
        name: Step name.
        attempts: Attempts it took.
        duration_s: Time the successful call (and its retries) took.
        size_bytes: Size of the serialized output.
        output_preview: The first characters of the serialized output.
        created_at: When the checkpoint was committed.
    """

    position: int
    name: str
    attempts: int
    duration_s: float
    size_bytes: int
    output_preview: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: StepRow) -> StepInfo:
        """Build the view of a stored checkpoint."""
        preview = row.output if len(row.output) <= _PREVIEW else row.output[:_PREVIEW] + "…"
        return cls(
            position=row.position,
            name=row.name,
            attempts=row.attempts,
            duration_s=row.duration_s,
            size_bytes=len(row.output.encode()),
            output_preview=preview,
            created_at=to_datetime(row.created_at),  # type: ignore[arg-type]
        )

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        out: dict[str, Any] = _jsonable(self)
        return out


@dataclass(frozen=True, slots=True)
class RunEventInfo:
    """One event of a run (``kind``: ``transition``, ``lease``, ``recovered``, ``rollback``...)."""

    at: datetime
    kind: str
    from_status: str | None
    to_status: str | None
    reason: str
    owner: str | None

    @classmethod
    def from_row(cls, row: EventRow) -> RunEventInfo:
        """Build the view of a stored event."""
        return cls(
            at=to_datetime(row.at),  # type: ignore[arg-type]
            kind=row.kind,
            from_status=row.from_status,
            to_status=row.to_status,
            reason=row.reason,
            owner=row.owner,
        )

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        out: dict[str, Any] = _jsonable(self)
        return out


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A run that failed for good.

    Attributes:
        id: Entry id (use it with ``dlq show``/``dlq retry``).
        run_id: The failed run.
        workflow: Its workflow.
        status: ``open`` or ``retried``.
        error_type: Type of the final error.
        message: Its message.
        traceback: Its formatted traceback.
        step: The step that failed, when a step failed.
        attempts: Every failed attempt of the run's last generation: ``step``, ``position``,
            ``attempt``, ``at``, ``error_type``, ``message``, ``error_class``, ``delay``.
        last_checkpoint_position: Position of the last completed step (None if none).
        last_checkpoint_step: Its name.
        inputs: The run's inputs (``args``, ``kwargs``) as serialized text.
        generation: The run generation that failed.
        created_at: When the entry was written.
        retried_at: When it was retried, if it was.
    """

    id: int
    run_id: str
    workflow: str
    status: str
    error_type: str
    message: str
    traceback: str
    step: str | None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    last_checkpoint_position: int | None = None
    last_checkpoint_step: str | None = None
    inputs: str = ""
    generation: int = 0
    created_at: datetime | None = None
    retried_at: datetime | None = None

    @classmethod
    def from_row(cls, row: DeadLetterRow) -> DeadLetter:
        """Build the view of a stored dead-letter row."""
        return cls(
            id=int(row.id or 0),
            run_id=row.run_id,
            workflow=row.workflow,
            status=row.status,
            error_type=row.error_type,
            message=row.message,
            traceback=row.traceback,
            step=row.step,
            attempts=json.loads(row.attempts or "[]"),
            last_checkpoint_position=row.last_checkpoint_position,
            last_checkpoint_step=row.last_checkpoint_step,
            inputs=row.inputs,
            generation=row.generation,
            created_at=to_datetime(row.created_at),
            retried_at=to_datetime(row.retried_at),
        )

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        out: dict[str, Any] = _jsonable(self)
        return out
