"""The run state machine: the states, the explicit transition table, and its check.

::

    (new) ──> pending ──> running ──> success
                 ^          │  ^
                 │          │  └──── retrying <─┐
                 │          ├───────────────────┘
                 │          └──> failed
                 └──── dlq_retry ────┘         (retrying ──> failed too: run deadline)

Only the store changes a run's state, and only through :func:`check_transition`, in the same
transaction that writes the transition's event row. ``failed → pending`` is allowed only with
the ``dlq_retry`` cause: a failed run comes back only through a dead-letter retry.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from agent_runtime.errors import InvalidTransitionError

__all__ = [
    "DLQ_RETRY",
    "FINAL_STATES",
    "LIVE_STATES",
    "TRANSITIONS",
    "RunStatus",
    "check_transition",
]


class RunStatus(StrEnum):
    """The state of a run."""

    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCESS = "success"
    FAILED = "failed"


DLQ_RETRY: Final = "dlq_retry"
"""The only cause that may move a run from ``failed`` back to ``pending``."""

TRANSITIONS: Final[dict[RunStatus | None, frozenset[RunStatus]]] = {
    None: frozenset({RunStatus.PENDING}),
    RunStatus.PENDING: frozenset({RunStatus.RUNNING}),
    RunStatus.RUNNING: frozenset({RunStatus.RETRYING, RunStatus.SUCCESS, RunStatus.FAILED}),
    RunStatus.RETRYING: frozenset({RunStatus.RUNNING, RunStatus.FAILED}),
    RunStatus.SUCCESS: frozenset(),
    RunStatus.FAILED: frozenset({RunStatus.PENDING}),
}

_RESTRICTED: Final = {(RunStatus.FAILED, RunStatus.PENDING): DLQ_RETRY}

FINAL_STATES: Final = frozenset({RunStatus.SUCCESS, RunStatus.FAILED})
LIVE_STATES: Final = frozenset({RunStatus.RUNNING, RunStatus.RETRYING})
"""States in which a run is owned by a process holding its lease."""


def check_transition(
    run_id: str,
    from_status: RunStatus | str | None,
    to_status: RunStatus | str,
    *,
    cause: str | None = None,
) -> RunStatus:
    """Validate one transition against the table.

    Args:
        run_id: The run, named in the error.
        from_status: The current state (None for a new run).
        to_status: The requested state.
        cause: Why; ``failed → pending`` requires ``DLQ_RETRY``.

    Returns:
        ``to_status`` as a :class:`RunStatus`.

    Raises:
        InvalidTransitionError: When the table forbids the transition (nothing is changed).
    """
    try:
        current = None if from_status is None else RunStatus(from_status)
        target = RunStatus(to_status)
    except ValueError as exc:
        raise InvalidTransitionError(
            f"run {run_id}: unknown state in transition {from_status!r} -> {to_status!r}; "
            f"states are {', '.join(s.value for s in RunStatus)}",
            run_id=run_id,
            from_state=str(from_status),
            to_state=str(to_status),
        ) from exc
    allowed = TRANSITIONS[current]
    required = _RESTRICTED.get((current, target)) if current is not None else None
    if target not in allowed or (required is not None and cause != required):
        shown = current.value if current is not None else "(new)"
        if required is not None and target in allowed:
            hint = f"only a dead-letter retry may do that (agent-runtime dlq retry {run_id})"
        elif allowed:
            hint = "allowed from " + shown + ": " + ", ".join(sorted(s.value for s in allowed))
        else:
            hint = f"{shown} is final"
        raise InvalidTransitionError(
            f"run {run_id}: invalid transition {shown} -> {target.value}; {hint}",
            run_id=run_id,
            from_state=shown,
            to_state=target.value,
        )
    return target
