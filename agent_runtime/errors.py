"""Every exception agent-runtime raises, in one tree.

Each exception carries structured fields (``run_id``, ``step``, ``attempt``...) so that callers,
logs and the CLI can act on them without parsing messages, and each message says what to do next.

::

    AgentRuntimeError
    ├── ConfigurationError                 bad argument, setting or environment variable
    │   └── FlagsError                     a flags file or variable that cannot be parsed
    ├── StoreError                         the state database
    │   ├── DatabaseUnavailableError       cannot connect / cannot open
    │   ├── SchemaVersionError             schema written by a newer agent-runtime
    │   └── StaleLeaseError                this process no longer owns the run (fenced write)
    ├── InvalidTransitionError             a run state change the state machine forbids
    ├── CheckpointError
    │   ├── CheckpointCorruptedError       checksum mismatch on replay
    │   ├── NonDeterminismError            the workflow called different steps on replay
    │   └── SerializationError             a step result or input cannot be serialized
    ├── NotFoundError                      (also a LookupError)
    │   ├── RunNotFoundError
    │   ├── WorkflowNotFoundError
    │   └── DeadLetterNotFoundError
    ├── RunError
    │   ├── RunFailedError                 RunHandle.result() of a failed run
    │   ├── RunTimeoutError                the run overran its deadline
    │   └── RunLeaseHeldError              another live process owns the run
    ├── StepError
    │   ├── StepTimeoutError               one attempt overran its timeout
    │   └── RetriesExhaustedError          no attempt succeeded (carries the history)
    ├── ResilienceError
    │   ├── CircuitOpenError               a breaker refuses calls until it half-opens
    │   ├── LimiterRejectedError           queue full or queue wait timed out
    │   ├── FallbackExhaustedError         every alternative of a fallback chain failed
    │   └── GuardrailError
    │       ├── LoopLimitExceededError     iterations / tool calls / repeats / cycles
    │       └── BudgetExceededError        per-run wall-clock or tool-call budget
    └── SandboxError
        ├── DockerUnavailableError         no Docker engine answers
        ├── SandboxImageError              the sandbox image is missing or cannot be built
        ├── EgressProxyError               the egress proxy cannot start
        └── WorkspaceError                 workspace tracking, diff or rollback failed
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "AgentRuntimeError",
    "BudgetExceededError",
    "CheckpointCorruptedError",
    "CheckpointError",
    "CircuitOpenError",
    "ConfigurationError",
    "DatabaseUnavailableError",
    "DeadLetterNotFoundError",
    "DockerUnavailableError",
    "EgressProxyError",
    "FallbackExhaustedError",
    "FlagsError",
    "GuardrailError",
    "InvalidTransitionError",
    "LimiterRejectedError",
    "LoopLimitExceededError",
    "NonDeterminismError",
    "NotFoundError",
    "ResilienceError",
    "RetriesExhaustedError",
    "RunError",
    "RunFailedError",
    "RunLeaseHeldError",
    "RunNotFoundError",
    "RunTimeoutError",
    "SandboxError",
    "SandboxImageError",
    "SchemaVersionError",
    "SerializationError",
    "StaleLeaseError",
    "StepError",
    "StepTimeoutError",
    "StoreError",
    "WorkflowNotFoundError",
    "WorkspaceError",
]


class AgentRuntimeError(Exception):
    """Base class of every error agent-runtime raises.

    Attributes:
        run_id: The run concerned, when there is one.
        step: The step name concerned, when there is one.
        attempt: The attempt number (1-based) concerned, when there is one.
    """

    def __init__(
        self,
        message: str,
        *,
        run_id: str | None = None,
        step: str | None = None,
        attempt: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.run_id = run_id
        self.step = step
        self.attempt = attempt

    def __str__(self) -> str:
        return self.message

    def fields(self) -> dict[str, Any]:
        """Return the structured fields of this error, for logs and JSON output."""
        out: dict[str, Any] = {"error_type": type(self).__name__, "message": self.message}
        for key, value in vars(self).items():
            if key != "message" and not key.startswith("_") and value is not None:
                out[key] = value if isinstance(value, str | int | float | bool) else repr(value)
        return out


# -- configuration ---------------------------------------------------------------------------


class ConfigurationError(AgentRuntimeError, ValueError):
    """A setting, argument or environment variable has a value that cannot be used."""


class FlagsError(ConfigurationError):
    """A feature-flags file or variable is invalid; the previous flags stay in force.

    Attributes:
        source: The file path or environment variable that was rejected.
    """

    def __init__(self, message: str, *, source: str) -> None:
        super().__init__(message)
        self.source = source


# -- store -----------------------------------------------------------------------------------


class StoreError(AgentRuntimeError):
    """The state database failed."""


class DatabaseUnavailableError(StoreError):
    """The state database cannot be reached or opened.

    Attributes:
        url: The database URL with any password masked.
    """

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class SchemaVersionError(StoreError):
    """The database carries a schema version this agent-runtime does not know.

    Attributes:
        found: The version recorded in the database.
        supported: The newest version this agent-runtime can use.
    """

    def __init__(self, message: str, *, found: int, supported: int) -> None:
        super().__init__(message)
        self.found = found
        self.supported = supported


class StaleLeaseError(StoreError):
    """A write was refused because this process no longer holds the run's lease.

    Another process recovered the run (this one stalled past its lease, or the run timed out);
    the write was fenced off so two executions never interleave their checkpoints.
    """


# -- state machine ---------------------------------------------------------------------------


class InvalidTransitionError(AgentRuntimeError):
    """A run state change that the transition table forbids; nothing was changed.

    Attributes:
        from_state: The run's current state.
        to_state: The state that was asked for.
    """

    def __init__(self, message: str, *, run_id: str, from_state: str, to_state: str) -> None:
        super().__init__(message, run_id=run_id)
        self.from_state = from_state
        self.to_state = to_state


# -- checkpoints -----------------------------------------------------------------------------


class CheckpointError(AgentRuntimeError):
    """A step checkpoint cannot be written or replayed."""


class CheckpointCorruptedError(CheckpointError):
    """A recorded checkpoint failed its checksum; the run is not resumed on corrupt data.

    Attributes:
        position: The 0-based position of the step in the run.
    """

    def __init__(self, message: str, *, run_id: str, step: str, position: int) -> None:
        super().__init__(message, run_id=run_id, step=step)
        self.position = position


class NonDeterminismError(CheckpointError):
    """On replay, the workflow called a different step than the one recorded at a position.

    Attributes:
        position: The 0-based position of the step in the run.
        recorded: The step name recorded in the checkpoint.
        called: The step name the workflow called this time.
    """

    def __init__(
        self, message: str, *, run_id: str, position: int, recorded: str, called: str
    ) -> None:
        super().__init__(message, run_id=run_id, step=called)
        self.position = position
        self.recorded = recorded
        self.called = called


class SerializationError(CheckpointError, TypeError):
    """A value cannot be serialized (or deserialized) by the configured serializer.

    Attributes:
        value_type: The Python type of the offending value.
    """

    def __init__(
        self,
        message: str,
        *,
        value_type: str,
        run_id: str | None = None,
        step: str | None = None,
    ) -> None:
        super().__init__(message, run_id=run_id, step=step)
        self.value_type = value_type


# -- lookups ---------------------------------------------------------------------------------


class NotFoundError(AgentRuntimeError, LookupError):
    """Something asked for by id or name does not exist."""


class RunNotFoundError(NotFoundError):
    """No run with this id exists in the state database."""


class WorkflowNotFoundError(NotFoundError):
    """No workflow is registered under this name.

    Attributes:
        workflow: The name that was asked for.
        known: The names that are registered.
    """

    def __init__(self, message: str, *, workflow: str, known: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.workflow = workflow
        self.known = tuple(known)


class DeadLetterNotFoundError(NotFoundError):
    """No dead-letter entry with this id (or for this run) exists."""


# -- runs ------------------------------------------------------------------------------------


class RunError(AgentRuntimeError):
    """A run did not complete."""


class RunFailedError(RunError):
    """The run ended ``failed``; its dead-letter entry holds the details.

    Attributes:
        error_type: The type name of the error that failed the run.
        error_message: Its message.
    """

    def __init__(self, message: str, *, run_id: str, error_type: str, error_message: str) -> None:
        super().__init__(message, run_id=run_id)
        self.error_type = error_type
        self.error_message = error_message


class RunTimeoutError(RunError, TimeoutError):
    """The run overran its deadline and was failed.

    Attributes:
        timeout: The run's timeout in seconds.
    """

    def __init__(self, message: str, *, run_id: str, timeout: float) -> None:
        super().__init__(message, run_id=run_id)
        self.timeout = timeout


class RunLeaseHeldError(RunError):
    """Another live process holds the run's lease, so this one may not execute it.

    Attributes:
        owner: The owner id that holds the lease.
        lease_expires_at: When that lease lapses (epoch seconds) unless renewed.
    """

    def __init__(
        self, message: str, *, run_id: str, owner: str, lease_expires_at: float | None
    ) -> None:
        super().__init__(message, run_id=run_id)
        self.owner = owner
        self.lease_expires_at = lease_expires_at


# -- steps -----------------------------------------------------------------------------------


class StepError(AgentRuntimeError):
    """A step did not complete."""


class StepTimeoutError(StepError, TimeoutError):
    """One attempt of a step overran its timeout.

    An async step is cancelled; a sync step is abandoned (its thread may still be running).

    Attributes:
        timeout: The step timeout in seconds.
    """

    def __init__(
        self, message: str, *, run_id: str | None, step: str, attempt: int, timeout: float
    ) -> None:
        super().__init__(message, run_id=run_id, step=step, attempt=attempt)
        self.timeout = timeout


class RetriesExhaustedError(StepError):
    """Every attempt of a call failed, or retrying stopped early on a repeated error.

    Attributes:
        attempts: One mapping per attempt: ``attempt``, ``at`` (epoch seconds), ``error_type``,
            ``message``, ``fingerprint``, ``error_class`` and ``delay`` (the wait scheduled
            after it).
        reason: Why retrying stopped: ``max_attempts``, ``deadline``, ``non_retryable`` or
            ``repeated_error``.
    """

    def __init__(
        self,
        message: str,
        *,
        attempts: Sequence[dict[str, Any]],
        reason: str,
        run_id: str | None = None,
        step: str | None = None,
    ) -> None:
        super().__init__(message, run_id=run_id, step=step, attempt=len(attempts))
        self.attempts = list(attempts)
        self.reason = reason

    @property
    def last_error(self) -> BaseException | None:
        """The exception of the last attempt (also available as ``__cause__``)."""
        return self.__cause__


# -- resilience ------------------------------------------------------------------------------


class ResilienceError(AgentRuntimeError):
    """A resilience layer (breaker, limiter, fallback, guardrail) refused or failed a call."""


class CircuitOpenError(ResilienceError):
    """The circuit breaker is open: calls fail fast until it half-opens.

    Attributes:
        breaker: The breaker's name.
        half_open_at: Epoch seconds at which one probe call will be let through.
    """

    def __init__(self, message: str, *, breaker: str, half_open_at: float) -> None:
        super().__init__(message)
        self.breaker = breaker
        self.half_open_at = half_open_at


class LimiterRejectedError(ResilienceError):
    """The limiter refused the call: its queue is full or the wait in the queue timed out.

    Attributes:
        limiter: The limiter's name.
        reason: ``queue_full`` or ``queue_timeout``.
        retry_after: Suggested seconds before trying again (the service sends it as
            ``Retry-After``).
    """

    def __init__(self, message: str, *, limiter: str, reason: str, retry_after: float) -> None:
        super().__init__(message)
        self.limiter = limiter
        self.reason = reason
        self.retry_after = retry_after


class FallbackExhaustedError(ResilienceError):
    """Every alternative of a fallback chain failed or was skipped.

    Attributes:
        outcomes: One mapping per alternative: ``name``, ``outcome`` (``failed`` or ``skipped``)
            and ``reason``.
    """

    def __init__(self, message: str, *, outcomes: Sequence[dict[str, Any]]) -> None:
        super().__init__(message)
        self.outcomes = list(outcomes)


class GuardrailError(ResilienceError):
    """An agent loop guardrail stopped the loop."""


class LoopLimitExceededError(GuardrailError):
    """An agent loop hit a hard limit.

    Attributes:
        limit: Which limit: ``iterations``, ``tool_calls``, ``repeated_call`` or ``cycle``.
        value: The count (or cycle length) that tripped it.
        threshold: The configured hard limit.
    """

    def __init__(
        self,
        message: str,
        *,
        limit: str,
        value: int,
        threshold: int,
        run_id: str | None = None,
    ) -> None:
        super().__init__(message, run_id=run_id)
        self.limit = limit
        self.value = value
        self.threshold = threshold


class BudgetExceededError(GuardrailError):
    """A per-run budget (wall-clock seconds or tool calls) is spent.

    Attributes:
        budget: ``wall_clock`` or ``tool_calls``.
        used: How much was used.
        allowed: The budget.
    """

    def __init__(
        self,
        message: str,
        *,
        budget: str,
        used: float,
        allowed: float,
        run_id: str | None = None,
    ) -> None:
        super().__init__(message, run_id=run_id)
        self.budget = budget
        self.used = used
        self.allowed = allowed


# -- sandbox ---------------------------------------------------------------------------------


class SandboxError(AgentRuntimeError):
    """The sandbox could not run a command (not: the command failed; see ``SandboxResult``)."""


class DockerUnavailableError(SandboxError):
    """No Docker engine answers at the configured address.

    Attributes:
        docker_host: The address tried (``DOCKER_HOST`` or the default socket).
    """

    def __init__(self, message: str, *, docker_host: str) -> None:
        super().__init__(message)
        self.docker_host = docker_host


class SandboxImageError(SandboxError):
    """The sandbox image is missing or could not be built.

    Attributes:
        image: The image reference.
    """

    def __init__(self, message: str, *, image: str) -> None:
        super().__init__(message)
        self.image = image


class EgressProxyError(SandboxError):
    """The egress proxy for an allowlisted sandbox could not be started or configured."""


class WorkspaceError(SandboxError):
    """Workspace tracking, diff or rollback failed."""
