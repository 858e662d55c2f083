"""The dead-letter queue: runs that failed for good, and retrying them by hand.

A run lands here when an error escapes its workflow (a step's retries ran out, a non-retryable
error, a corrupt checkpoint, its deadline). The entry keeps the error type, message and
traceback, every failed attempt of that generation, the last good checkpoint and the inputs.
:meth:`DeadLetterQueue.retry` moves the run ``failed → pending`` (the only way back), starts a new
generation (fresh retry budgets) and resumes it from its last good checkpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent_runtime.events import DeadLetterRetried, RunTransitioned, hooks
from agent_runtime.state.views import DeadLetter

if TYPE_CHECKING:
    from agent_runtime.runtime import RunHandle, Runtime

__all__ = ["DeadLetterQueue"]


class DeadLetterQueue:
    """Read and retry dead-letter entries (``rt.dlq``)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def list(self, *, status: str | None = "open", limit: int = 50) -> list[DeadLetter]:
        """Return entries, newest first.

        Args:
            status: ``open`` (default), ``retried``, or None for all.
            limit: At most this many.
        """
        rows = self._runtime.store.list_dead_letters(status=status, limit=limit)
        return [DeadLetter.from_row(r) for r in rows]

    def get(self, ref: int | str) -> DeadLetter:
        """Return an entry by its id, or the newest entry of a run id.

        Raises:
            DeadLetterNotFoundError: When there is none.
        """
        return DeadLetter.from_row(self._runtime.store.get_dead_letter(ref))

    def retry(self, ref: int | str, *, execute: bool = True) -> RunHandle:
        """Put the entry's run back to ``pending`` and resume it from its last good checkpoint.

        Args:
            ref: Entry id, or a run id (its newest entry).
            execute: Resume it in this process now (default). With False the run is left
                ``pending`` and unowned, for any worker to claim.

        Returns:
            The run's handle.

        Raises:
            DeadLetterNotFoundError: No such entry.
            InvalidTransitionError: The entry was already retried.
            WorkflowNotFoundError: ``execute`` and the workflow cannot be found here.
        """
        entry = self._runtime.store.get_dead_letter(ref)
        entry_id = int(entry.id or 0)
        transition = self._runtime.store.retry_dead_letter(
            entry_id, reason=f"dead-letter entry {entry_id} retried by hand"
        )
        row = self._runtime.store.get_run(entry.run_id)
        hooks.emit(
            RunTransitioned(
                row.id,
                row.workflow,
                transition.from_status.value if transition.from_status else None,
                transition.to_status.value,
                f"dead-letter entry {entry_id} retried",
                row.trace_id,
            )
        )
        hooks.emit(DeadLetterRetried(row.id, row.workflow, entry_id))
        if not execute:
            return self._runtime.get(row.id)
        return self._runtime.resume(row.id)
