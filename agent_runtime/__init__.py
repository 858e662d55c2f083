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
    CircuitOpenError,
    ConfigurationError,
    DatabaseUnavailableError,
    DeadLetterNotFoundError,
    DockerUnavailableError,
    FallbackExhaustedError,
    InvalidTransitionError,
    LimiterRejectedError,
    LoopLimitExceededError,
    NonDeterminismError,
    RetriesExhaustedError,
    RunFailedError,
    RunLeaseHeldError,
    RunNotFoundError,
    RunTimeoutError,
    SandboxError,
    SchemaVersionError,
    SerializationError,
    StaleLeaseError,
    StepTimeoutError,
    WorkflowNotFoundError,
)
from agent_runtime.resilience import (
    Alternative,
    BreakerConfig,
    CircuitBreaker,
    FallbackChain,
    GuardrailConfig,
    Limiter,
    LimiterConfig,
    LoopGuard,
    resilient_call,
    resilient_call_async,
)
from agent_runtime.resilience.policy import RetryPolicy
from agent_runtime.runtime import RunHandle, Runtime, Workflow
from agent_runtime.sandbox import (
    DockerSandbox,
    ProcessSandbox,
    SandboxResult,
    SandboxSpec,
    TerminationReason,
)
from agent_runtime.state.machine import RunStatus
from agent_runtime.state.serialization import JSONSerializer, PickleSerializer, Serializer
from agent_runtime.state.views import DeadLetter, RunEventInfo, RunInfo, StepInfo

__version__ = "0.1.0"

__all__ = [
    "AgentRuntimeError",
    "Alternative",
    "BreakerConfig",
    "CheckpointCorruptedError",
    "CircuitBreaker",
    "CircuitOpenError",
    "ConfigurationError",
    "DatabaseUnavailableError",
    "DeadLetter",
    "DeadLetterNotFoundError",
    "DeadLetterQueue",
    "DockerSandbox",
    "DockerUnavailableError",
    "FallbackChain",
    "FallbackExhaustedError",
    "GuardrailConfig",
    "InvalidTransitionError",
    "JSONSerializer",
    "Limiter",
    "LimiterConfig",
    "LimiterRejectedError",
    "LoopGuard",
    "LoopLimitExceededError",
    "NonDeterminismError",
    "PickleSerializer",
    "ProcessSandbox",
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
    "SandboxError",
    "SandboxResult",
    "SandboxSpec",
    "SchemaVersionError",
    "SerializationError",
    "Serializer",
    "StaleLeaseError",
    "StepInfo",
    "StepTimeoutError",
    "TerminationReason",
    "Workflow",
    "WorkflowNotFoundError",
    "__version__",
    "resilient_call",
    "resilient_call_async",
]
