"""agent-runtime: sandboxed, retried and checkpointed AI-agent runs.

The public API is re-exported here; everything else is internal or reached through its
sub-package (``agent_runtime.state``, ``agent_runtime.resilience``, ``agent_runtime.sandbox``...).
"""

from __future__ import annotations

from agent_runtime.context import RunContext
from agent_runtime.dlq import DeadLetterQueue
from agent_runtime.errors import (
    AgentRuntimeError,
    CheckpointCorruptedError,
    ConfigurationError,
    DatabaseUnavailableError,
    DeadLetterNotFoundError,
    InvalidTransitionError,
    NonDeterminismError,
    RetriesExhaustedError,
    RunFailedError,
    RunLeaseHeldError,
    RunNotFoundError,
    RunTimeoutError,
    SchemaVersionError,
    SerializationError,
    StaleLeaseError,
    StepTimeoutError,
    WorkflowNotFoundError,
)
from agent_runtime.resilience.policy import RetryPolicy
from agent_runtime.runtime import RunHandle, Runtime, Workflow
from agent_runtime.state.machine import RunStatus
from agent_runtime.state.serialization import JSONSerializer, PickleSerializer, Serializer
from agent_runtime.state.views import DeadLetter, RunEventInfo, RunInfo, StepInfo

__version__ = "0.1.0"

__all__ = [
    "AgentRuntimeError",
    "CheckpointCorruptedError",
    "ConfigurationError",
    "DatabaseUnavailableError",
    "DeadLetter",
    "DeadLetterNotFoundError",
    "DeadLetterQueue",
    "InvalidTransitionError",
    "JSONSerializer",
    "NonDeterminismError",
    "PickleSerializer",
    "RetriesExhaustedError",
    "RetryPolicy",
    "RunContext",
    "RunEventInfo",
    "RunFailedError",
    "RunHandle",
    "RunInfo",
    "RunLeaseHeldError",
    "RunNotFoundError",
    "RunStatus",
    "RunTimeoutError",
    "Runtime",
    "SchemaVersionError",
    "SerializationError",
    "Serializer",
    "StaleLeaseError",
    "StepInfo",
    "StepTimeoutError",
    "Workflow",
    "WorkflowNotFoundError",
    "__version__",
]
