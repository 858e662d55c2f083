"""The run state machine's transition table."""

from __future__ import annotations

import itertools

import pytest

from agent_runtime.errors import InvalidTransitionError
from agent_runtime.state.machine import DLQ_RETRY, TRANSITIONS, RunStatus, check_transition

ALLOWED = {
    (None, RunStatus.PENDING),
    (RunStatus.PENDING, RunStatus.RUNNING),
    (RunStatus.RUNNING, RunStatus.RETRYING),
    (RunStatus.RUNNING, RunStatus.SUCCESS),
    (RunStatus.RUNNING, RunStatus.FAILED),
    (RunStatus.RETRYING, RunStatus.RUNNING),
    (RunStatus.RETRYING, RunStatus.FAILED),
    (RunStatus.FAILED, RunStatus.PENDING),
}


def test_table_is_exactly_the_documented_one() -> None:
    """The transition table holds exactly the documented transitions."""
    table = {(src, dst) for src, dsts in TRANSITIONS.items() for dst in dsts}
    assert table == ALLOWED


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        pair
        for pair in itertools.product([None, *RunStatus], list(RunStatus))
        if pair not in ALLOWED
    ],
)
def test_every_other_transition_is_refused(src: RunStatus | None, dst: RunStatus) -> None:
    """Every transition outside the table raises InvalidTransitionError naming run, from, to."""
    with pytest.raises(InvalidTransitionError) as info:
        check_transition("run-1", src, dst, cause=DLQ_RETRY)
    err = info.value
    assert err.run_id == "run-1"
    assert err.to_state == dst.value
    assert err.from_state == (src.value if src else "(new)")
    assert "run-1" in str(err)


def test_failed_to_pending_needs_a_dlq_retry() -> None:
    """failed -> pending is only allowed with the dlq_retry cause."""
    with pytest.raises(InvalidTransitionError, match="dead-letter retry"):
        check_transition("r", RunStatus.FAILED, RunStatus.PENDING)
    assert check_transition("r", "failed", "pending", cause=DLQ_RETRY) is RunStatus.PENDING


def test_unknown_state_names_are_refused() -> None:
    """A state name that does not exist is an invalid transition, not a crash."""
    with pytest.raises(InvalidTransitionError, match="unknown state"):
        check_transition("r", "running", "paused")


def test_final_state_message_says_it_is_final() -> None:
    """Leaving success explains that success is final."""
    with pytest.raises(InvalidTransitionError, match="success is final"):
        check_transition("r", RunStatus.SUCCESS, RunStatus.RUNNING)
