"""Resilience for calls and agent loops: retry, circuit breaker, limiter, fallback, guardrails.

Each piece works alone, for sync and async code; :func:`resilient_call` composes them (limiter
-> breaker -> retry with per-attempt timeout -> fallback, see :mod:`.pipeline`). Every piece
reports through the events of :mod:`agent_runtime.events`, never through metrics or spans.
"""

from agent_runtime.resilience.breaker import (
    BreakerConfig,
    BreakerRow,
    BreakerSnapshot,
    BreakerStore,
    CircuitBreaker,
    MemoryBreakerStore,
    SqlBreakerStore,
)
from agent_runtime.resilience.fallback import (
    Alternative,
    AlternativeOutcome,
    FallbackChain,
    FallbackResult,
)
from agent_runtime.resilience.guardrails import (
    BudgetConfig,
    GuardrailConfig,
    GuardrailWarning,
    LoopGuard,
    RunBudget,
)
from agent_runtime.resilience.limiter import Limiter, LimiterConfig
from agent_runtime.resilience.pipeline import resilient_call, resilient_call_async
from agent_runtime.resilience.policy import (
    AttemptRecord,
    RetryDecision,
    RetryPolicy,
    classify,
    fingerprint,
    retry_after_seconds,
)
from agent_runtime.resilience.retry import retry, retry_call, retry_call_async

__all__ = [
    "Alternative",
    "AlternativeOutcome",
    "AttemptRecord",
    "BreakerConfig",
    "BreakerRow",
    "BreakerSnapshot",
    "BreakerStore",
    "BudgetConfig",
    "CircuitBreaker",
    "FallbackChain",
    "FallbackResult",
    "GuardrailConfig",
    "GuardrailWarning",
    "Limiter",
    "LimiterConfig",
    "LoopGuard",
    "MemoryBreakerStore",
    "RetryDecision",
    "RetryPolicy",
    "RunBudget",
    "SqlBreakerStore",
    "classify",
    "fingerprint",
    "resilient_call",
    "resilient_call_async",
    "retry",
    "retry_after_seconds",
    "retry_call",
    "retry_call_async",
]
