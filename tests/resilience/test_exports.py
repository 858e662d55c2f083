"""The public surface of agent_runtime.resilience."""

from __future__ import annotations

import agent_runtime.resilience as resilience

EXPECTED = [
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


def test_export_list_is_exact_and_sorted() -> None:
    """__all__ is the documented list, sorted, and every name resolves."""
    assert resilience.__all__ == EXPECTED
    assert sorted(resilience.__all__) == resilience.__all__
    for name in resilience.__all__:
        assert getattr(resilience, name) is not None, name
