"""The retry rules of RetryPolicy.decide, classify, fingerprint and Retry-After parsing."""

from __future__ import annotations

import email.utils
import random

import httpx
import pytest
from resilience_helpers import http_error

from agent_runtime import errors
from agent_runtime.resilience.policy import (
    AttemptRecord,
    RetryPolicy,
    classify,
    fingerprint,
    retry_after_seconds,
)

NOW = 1_700_000_000.0


def _decide(policy: RetryPolicy, error: BaseException, history: list[AttemptRecord], **kw: object):
    return policy.decide(error, history, step="s", now=NOW, rng=random.Random(1), **kw)  # type: ignore[arg-type]


# -- classify ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (http_error(400), "client_error"),
        (http_error(404), "client_error"),
        (http_error(408), "timeout"),
        (http_error(429), "rate_limited"),
        (http_error(500), "server_error"),
        (http_error(503), "server_error"),
        (httpx.ReadTimeout("read timed out"), "timeout"),
        (httpx.ConnectTimeout("connect timed out"), "timeout"),
        (httpx.ConnectError("connection refused"), "connection"),
        (httpx.RemoteProtocolError("peer closed"), "connection"),
        (ConnectionRefusedError(111, "refused"), "connection"),
        (TimeoutError(), "timeout"),
        (
            errors.StepTimeoutError("t", run_id=None, step="s", attempt=1, timeout=1.0),
            "timeout",
        ),
        (errors.CircuitOpenError("open", breaker="b", half_open_at=NOW + 5), "circuit_open"),
        (
            errors.LimiterRejectedError("full", limiter="l", reason="queue_full", retry_after=2),
            "rate_limited",
        ),
        (ValueError("bad"), "error"),
    ],
)
def test_classify(error: BaseException, expected: str) -> None:
    """Errors are classified by type and by HTTP status."""
    assert classify(error) == expected


# -- fingerprint -------------------------------------------------------------------------------


def test_fingerprint_normalises_volatile_parts() -> None:
    """Numbers, hex ids, UUIDs and quoted values do not change the fingerprint."""
    a = ValueError("user 42 at 0xdeadbeef id 123e4567-e89b-12d3-a456-426614174000 name 'bob'")
    b = ValueError("user 7 at 0x1 id 00000000-0000-0000-0000-000000000000 name 'alice'")
    assert fingerprint(a, "step") == fingerprint(b, "step")
    assert len(fingerprint(a, "step")) == 16


def test_fingerprint_depends_on_type_message_and_step() -> None:
    """A different type, message or step gives a different fingerprint."""
    base = fingerprint(ValueError("bad input"), "a")
    assert fingerprint(TypeError("bad input"), "a") != base
    assert fingerprint(ValueError("other problem"), "a") != base
    assert fingerprint(ValueError("bad input"), "b") != base


# -- Retry-After -------------------------------------------------------------------------------


def test_retry_after_delta_seconds() -> None:
    """``Retry-After: 7`` means 7 seconds."""
    assert retry_after_seconds(http_error(429, {"Retry-After": "7"}), now=NOW) == 7.0


def test_retry_after_http_date() -> None:
    """An HTTP-date Retry-After gives the seconds until that date."""
    date = email.utils.formatdate(NOW + 120, usegmt=True)
    assert retry_after_seconds(http_error(503, {"Retry-After": date}), now=NOW) == 120.0


def test_retry_after_http_date_without_zone_is_gmt() -> None:
    """A date without a zone (or -0000) is read as GMT, not local time."""
    date = email.utils.formatdate(NOW + 60, usegmt=True).replace(" GMT", " -0000")
    assert retry_after_seconds(http_error(503, {"Retry-After": date}), now=NOW) == 60.0


def test_retry_after_past_date_is_zero() -> None:
    """A date in the past means retry now."""
    date = email.utils.formatdate(NOW - 300, usegmt=True)
    assert retry_after_seconds(http_error(503, {"Retry-After": date}), now=NOW) == 0.0


@pytest.mark.parametrize("value", ["soon", "-5", "7.5", ""])
def test_retry_after_garbage_is_ignored(value: str) -> None:
    """An unparseable Retry-After is ignored, not an error."""
    assert retry_after_seconds(http_error(503, {"Retry-After": value}), now=NOW) is None


def test_retry_after_from_limiter_and_breaker_errors() -> None:
    """A limiter's retry_after and a breaker's half_open_at are hints too."""
    limited = errors.LimiterRejectedError("x", limiter="l", reason="queue_full", retry_after=3.5)
    opened = errors.CircuitOpenError("x", breaker="b", half_open_at=NOW + 12)
    assert retry_after_seconds(limited, now=NOW) == 3.5
    assert retry_after_seconds(opened, now=NOW) == 12.0
    assert retry_after_seconds(ValueError("x"), now=NOW) is None


# -- decide: what is retried -------------------------------------------------------------------


def test_400_is_never_retried() -> None:
    """HTTP 400 fails fast as non-retryable under the HTTP policy and the default one."""
    for policy in (RetryPolicy.http(), RetryPolicy()):
        decision = _decide(policy, http_error(400), [])
        assert not decision.retry
        assert decision.stop_reason == "non_retryable"
        assert decision.record.error_class == "client_error"


def test_client_errors_retried_when_asked() -> None:
    """retry_client_errors=True lets a 404 be retried."""
    assert _decide(RetryPolicy(retry_client_errors=True), http_error(404), []).retry


def test_429_with_retry_after_7_waits_7_seconds() -> None:
    """A 429 with Retry-After: 7 is retried after exactly 7 s (no jitter)."""
    decision = _decide(RetryPolicy.http(), http_error(429, {"Retry-After": "7"}), [])
    assert decision.retry
    assert decision.delay == 7.0
    assert decision.record.delay == 7.0


def test_retry_after_is_capped_by_maximum() -> None:
    """Retry-After never makes the policy wait longer than its maximum."""
    decision = _decide(RetryPolicy.http(maximum=10), http_error(429, {"Retry-After": "3600"}), [])
    assert decision.delay == 10.0


def test_http_policy_backoff_1_2_4_with_20_percent_jitter() -> None:
    """The HTTP preset waits about 1 s, 2 s then stops after 3 attempts, jitter within 20 %."""
    policy = RetryPolicy.http(max_attempts=4)
    history: list[AttemptRecord] = []
    delays = []
    for _ in range(3):
        decision = _decide(policy, http_error(503), history)
        delays.append(decision.delay)
        history.append(decision.record)
    for got, base in zip(delays, (1.0, 2.0, 4.0), strict=True):
        assert base * 0.8 <= got <= base * 1.2
    assert RetryPolicy.http().max_attempts == 3


def test_http_policy_does_not_retry_programming_errors() -> None:
    """The HTTP preset retries transient classes only: a KeyError fails fast."""
    decision = _decide(RetryPolicy.http(), KeyError("x"), [])
    assert decision.stop_reason == "non_retryable"


def test_transient_classes_are_retried_by_http_policy() -> None:
    """Timeouts, connection errors, 5xx, an open breaker and a full limiter are transient."""
    policy = RetryPolicy.http()
    for error in (
        httpx.ReadTimeout("t"),
        httpx.ConnectError("c"),
        http_error(502),
        errors.CircuitOpenError("o", breaker="b", half_open_at=NOW + 1),
        errors.LimiterRejectedError("l", limiter="l", reason="queue_timeout", retry_after=1),
    ):
        assert _decide(policy, error, []).retry, error


def test_open_breaker_waits_until_half_open() -> None:
    """After CircuitOpenError the next attempt waits until the breaker half-opens."""
    error = errors.CircuitOpenError("o", breaker="b", half_open_at=NOW + 4)
    assert _decide(RetryPolicy(), error, []).delay == 4.0


def test_give_up_on_retry_on_and_predicate() -> None:
    """give_up_on wins over retry_on; retry_on and the predicate restrict what is retried."""
    policy = RetryPolicy(retry_on=(OSError,), give_up_on=(FileNotFoundError,))
    assert _decide(policy, OSError("x"), []).retry
    assert _decide(policy, FileNotFoundError("x"), []).stop_reason == "non_retryable"
    assert _decide(policy, ValueError("x"), []).stop_reason == "non_retryable"
    picky = RetryPolicy(predicate=lambda e: "flaky" in str(e))
    assert _decide(picky, ValueError("flaky"), []).retry
    assert not _decide(picky, ValueError("solid"), []).retry


def test_runtime_errors_that_retrying_cannot_fix_are_never_retried() -> None:
    """Guardrail and configuration errors are not retried even by a permissive policy."""
    for error in (
        errors.LoopLimitExceededError("x", limit="iterations", value=3, threshold=2),
        errors.ConfigurationError("x"),
    ):
        assert _decide(RetryPolicy(), error, []).stop_reason == "non_retryable"


def test_cancellation_is_not_retried() -> None:
    """BaseExceptions outside retry_on (KeyboardInterrupt) are not retried."""
    assert not _decide(RetryPolicy(), KeyboardInterrupt(), []).retry


# -- decide: retry with context ----------------------------------------------------------------


def test_same_value_error_twice_stops_retrying() -> None:
    """The same deterministic error on two attempts in a row stops with repeated_error."""
    policy = RetryPolicy(max_attempts=5)
    first = _decide(policy, ValueError("bad row 17"), [])
    assert first.retry
    second = _decide(policy, ValueError("bad row 18"), [first.record])
    assert not second.retry
    assert second.stop_reason == "repeated_error"
    assert second.record.fingerprint == first.record.fingerprint


def test_different_errors_keep_retrying() -> None:
    """Different deterministic errors in a row are not a repeat."""
    policy = RetryPolicy(max_attempts=5)
    first = _decide(policy, ValueError("bad row"), [])
    assert _decide(policy, KeyError("missing"), [first.record]).retry


def test_repeated_transient_errors_do_not_stop_early() -> None:
    """The same 503 twice is still transient: only max_attempts stops it."""
    policy = RetryPolicy(max_attempts=5)
    history: list[AttemptRecord] = []
    for _ in range(4):
        decision = _decide(policy, http_error(503), history)
        assert decision.retry
        history.append(decision.record)
    assert _decide(policy, http_error(503), history).stop_reason == "max_attempts"


def test_stop_on_repeat_configurable() -> None:
    """stop_on_repeat=3 needs three identical errors; 0 disables the rule."""
    policy = RetryPolicy(max_attempts=5, stop_on_repeat=3)
    first = _decide(policy, ValueError("x"), [])
    second = _decide(policy, ValueError("x"), [first.record])
    assert second.retry
    assert _decide(policy, ValueError("x"), [first.record, second.record]).stop_reason == (
        "repeated_error"
    )
    off = RetryPolicy(max_attempts=5, stop_on_repeat=0)
    assert _decide(off, ValueError("x"), [first.record]).retry


def test_rate_limit_waits_longer_next_time() -> None:
    """A second 429 without Retry-After waits rate_limit_multiplier times the backoff."""
    policy = RetryPolicy(max_attempts=5, jitter=0, initial=1, multiplier=2)
    first = _decide(policy, http_error(429), [])
    assert first.delay == 1.0
    second = _decide(policy, http_error(429), [first.record])
    assert second.delay == 2.0 * policy.rate_limit_multiplier


def test_max_attempts_stops() -> None:
    """After max_attempts failures the decision is to stop."""
    policy = RetryPolicy(max_attempts=2)
    first = _decide(policy, http_error(500), [])
    assert _decide(policy, http_error(500), [first.record]).stop_reason == "max_attempts"


def test_deadline_stops_when_next_attempt_would_start_too_late() -> None:
    """With a 10 s deadline, a retry that would start at 11 s stops with reason deadline."""
    policy = RetryPolicy(max_attempts=10, deadline=10, jitter=0, initial=4)
    ok = policy.decide(http_error(500), [], step="s", now=NOW + 5, started_at=NOW)
    assert ok.retry
    late = policy.decide(http_error(500), [ok.record], step="s", now=NOW + 7, started_at=NOW)
    assert not late.retry
    assert late.stop_reason == "deadline"


def test_attempt_record_as_dict() -> None:
    """The record serialises every field for the DLQ."""
    record = _decide(RetryPolicy(), ValueError("x"), []).record
    assert record.as_dict() == {
        "attempt": 1,
        "at": NOW,
        "error_type": "ValueError",
        "message": "x",
        "fingerprint": record.fingerprint,
        "error_class": "error",
        "delay": record.delay,
    }


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": 1.5}, "jitter"),
        ({"deadline": 0}, "deadline"),
        ({"attempt_timeout": -1}, "attempt_timeout"),
        ({"initial": -1}, "initial"),
    ],
)
def test_invalid_policy_is_rejected(kwargs: dict[str, float], needle: str) -> None:
    """Out-of-range settings raise ConfigurationError naming the field."""
    with pytest.raises(errors.ConfigurationError, match=needle):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_none_policy_is_one_attempt() -> None:
    """RetryPolicy.none() never retries."""
    assert _decide(RetryPolicy.none(), http_error(503), []).stop_reason == "max_attempts"
