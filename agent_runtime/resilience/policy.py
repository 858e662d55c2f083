"""Retry policy and the retry decision: pure logic, no I/O, no sleeping.

``RetryPolicy`` is the frozen configuration; :meth:`RetryPolicy.decide` looks at the error that
just happened and the history of earlier attempts and says whether to try again, after how long,
and if not, why. The drivers (``agent_runtime.resilience.retry`` on tenacity for standalone
calls, and the runtime's step loop, which persists every attempt) only execute that decision, so
sync and async code share one implementation and tests never sleep.

Rules (the README's "Retry rules" section repeats them):

1. An error is **classified**: ``timeout`` (also HTTP 408), ``rate_limited`` (HTTP 429, or a
   limiter that refused the call), ``server_error`` (HTTP 5xx), ``connection``,
   ``circuit_open`` (a circuit breaker refused the call), ``client_error`` (other HTTP 4xx) or
   ``error`` (anything else). All but the last two are *transient*.
2. It is **not retried** when it matches ``give_up_on``, does not match ``retry_on``, fails the
   ``predicate``, or is a ``client_error`` (4xx other than 429: the request itself is wrong).
   Errors of agent-runtime that retrying cannot fix (a corrupt checkpoint, a changed workflow, a
   guardrail) are never retried.
3. Each failure gets a **fingerprint**: error type + message with numbers, hex and quoted values
   normalised + step name. An ``error``-class failure whose fingerprint equals the previous
   attempt's (``stop_on_repeat`` times in a row, default 2) is deterministic: retrying stops
   early with reason ``repeated_error``. Transient classes never stop this way.
4. The **delay** is exponential: ``initial * multiplier ** (n - 1)`` capped at ``maximum``, with
   ±``jitter`` (a fraction). A ``Retry-After`` carried by the error (seconds or an HTTP date, a
   limiter's ``retry_after``, or the time an open circuit breaker half-opens) replaces it,
   capped at ``maximum``. A ``rate_limited`` failure after an earlier ``rate_limited`` one
   without such a hint waits ``rate_limit_multiplier`` times longer (the policy adapts from the
   history).
5. It **stops** after ``max_attempts`` attempts in all, or when the next attempt would start
   after ``deadline`` seconds from the first.
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from agent_runtime import errors

__all__ = [
    "DEFAULT_INITIAL",
    "DEFAULT_JITTER",
    "DEFAULT_MAXIMUM",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MULTIPLIER",
    "DEFAULT_RATE_LIMIT_MULTIPLIER",
    "DEFAULT_STOP_ON_REPEAT",
    "ERROR_CLASSES",
    "AttemptRecord",
    "RetryDecision",
    "RetryPolicy",
    "classify",
    "fingerprint",
    "retry_after_seconds",
]

DEFAULT_MAX_ATTEMPTS: Final = 3
DEFAULT_INITIAL: Final = 1.0
DEFAULT_MAXIMUM: Final = 30.0
DEFAULT_MULTIPLIER: Final = 2.0
DEFAULT_JITTER: Final = 0.2
DEFAULT_RATE_LIMIT_MULTIPLIER: Final = 2.0
DEFAULT_STOP_ON_REPEAT: Final = 2

ERROR_CLASSES: Final = (
    "timeout",
    "rate_limited",
    "server_error",
    "connection",
    "circuit_open",
    "client_error",
    "error",
)
_TRANSIENT: Final = frozenset(
    {"timeout", "rate_limited", "server_error", "connection", "circuit_open"}
)

# Errors that no retry can fix: retrying them only hides a bug or burns a budget.
_NEVER_RETRY: tuple[type[BaseException], ...] = (
    errors.CheckpointError,
    errors.InvalidTransitionError,
    errors.StaleLeaseError,
    errors.SchemaVersionError,
    errors.GuardrailError,
    errors.ConfigurationError,
    errors.RunTimeoutError,
)


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One failed attempt, as kept in the history and persisted with the run.

    Attributes:
        attempt: 1-based attempt number.
        at: Epoch seconds when the attempt failed.
        error_type: The exception's type name.
        message: The exception's message (truncated to 2,000 characters).
        fingerprint: See the module docstring, rule 3.
        error_class: One of ``ERROR_CLASSES``.
        delay: Seconds waited before the next attempt (None if there was none).
    """

    attempt: int
    at: float
    error_type: str
    message: str
    fingerprint: str
    error_class: str
    delay: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return the record as a JSON-ready dict.

        Returns:
            The fields by name.
        """
        return {
            "attempt": self.attempt,
            "at": self.at,
            "error_type": self.error_type,
            "message": self.message,
            "fingerprint": self.fingerprint,
            "error_class": self.error_class,
            "delay": self.delay,
        }


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What to do after a failed attempt.

    Attributes:
        retry: Whether to try again.
        delay: Seconds to wait first (0 when not retrying).
        record: The failed attempt, to append to the history (``delay`` filled in).
        stop_reason: When not retrying: ``max_attempts``, ``deadline``, ``non_retryable`` or
            ``repeated_error``.
    """

    retry: bool
    delay: float
    record: AttemptRecord
    stop_reason: str | None = None


_NUM = re.compile(r"\b0x[0-9a-fA-F]+\b|\b[0-9a-fA-F]{8,}\b|\d+(?:\.\d+)?")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def fingerprint(error: BaseException, step: str = "") -> str:
    """Return a stable fingerprint of ``error`` in ``step`` (rule 3 of the module docstring).

    Args:
        error: The exception.
        step: The step (or call) name it happened in.

    Returns:
        16 hex characters.
    """
    message = _UUID.sub("<uuid>", str(error))
    message = _QUOTED.sub("<str>", message)
    message = _NUM.sub("<n>", message)
    raw = f"{type(error).__module__}.{type(error).__qualname__}|{message}|{step}"
    return hashlib.blake2b(raw.encode("utf-8", "replace"), digest_size=8).hexdigest()


def _status_code(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    for source in (error, response):
        if source is None:
            continue
        for attr in ("status_code", "status"):
            value = getattr(source, attr, None)
            if isinstance(value, int) and 100 <= value <= 599:
                return value
    return None


def _headers(error: BaseException) -> Any:
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        headers = getattr(error, "headers", None)
    return headers


def retry_after_seconds(error: BaseException, *, now: float | None = None) -> float | None:
    """Return the wait a ``Retry-After`` header on ``error`` asks for, if any.

    The header is read from ``error.response.headers`` (httpx, requests) or ``error.headers``;
    an attribute ``retry_after`` (seconds, as on ``LimiterRejectedError``) and an attribute
    ``half_open_at`` (epoch seconds, as on ``CircuitOpenError``) are honoured too. Both
    delta-seconds and HTTP-date forms of the header are understood; an HTTP date without a zone
    is taken as GMT (RFC 9110 requires GMT); a time in the past gives 0.

    Args:
        error: The exception.
        now: Epoch seconds for HTTP-date and ``half_open_at`` arithmetic (defaults to the wall
            clock).

    Returns:
        Seconds to wait, or None when the error carries no usable hint.
    """
    explicit = getattr(error, "retry_after", None)
    if isinstance(explicit, int | float) and not isinstance(explicit, bool) and explicit >= 0:
        return float(explicit)
    half_open_at = getattr(error, "half_open_at", None)
    if isinstance(half_open_at, int | float) and not isinstance(half_open_at, bool):
        current = time.time() if now is None else now
        return max(0.0, float(half_open_at) - current)
    headers = _headers(error)
    if headers is None:
        return None
    try:
        value = headers.get("Retry-After") or headers.get("retry-after")
    except AttributeError:
        return None
    if not value:
        return None
    value = str(value).strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        # parsedate_to_datetime returns a naive datetime for "-0000" or a missing zone; an
        # HTTP date is always GMT, and .timestamp() would read a naive one as local time.
        parsed = parsed.replace(tzinfo=datetime.UTC)
    current = time.time() if now is None else now
    return max(0.0, parsed.timestamp() - current)


def classify(error: BaseException) -> str:
    """Return the error class of ``error`` (rule 1 of the module docstring).

    Args:
        error: The exception.

    Returns:
        One of ``ERROR_CLASSES``.
    """
    if isinstance(error, TimeoutError | errors.StepTimeoutError):
        return "timeout"
    if isinstance(error, errors.CircuitOpenError):
        return "circuit_open"
    if isinstance(error, errors.LimiterRejectedError):
        return "rate_limited"
    status = _status_code(error)
    if status is not None:
        if status == 429:
            return "rate_limited"
        if status >= 500:
            return "server_error"
        if 400 <= status < 500:
            return "timeout" if status == 408 else "client_error"
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & {"TimeoutException", "ReadTimeout", "ConnectTimeout", "WriteTimeout", "PoolTimeout"}:
        return "timeout"
    if isinstance(error, ConnectionError) or names & {
        "ConnectError",
        "NetworkError",
        "RemoteProtocolError",
        "TransportError",
        "ConnectionError",
    }:
        return "connection"
    return "error"


def _default_predicate(_error: BaseException) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failing call or step is retried.

    Args:
        max_attempts: Attempts in all, the first one included (1 = no retry).
        initial: Delay before the first retry, in seconds.
        maximum: Cap on any single delay (also caps ``Retry-After``).
        multiplier: Growth factor of the delay per attempt.
        jitter: Random spread as a fraction of the delay (0.2 = ±20 %).
        deadline: Give up when the next attempt would start this many seconds after the first
            attempt started (None = no deadline).
        retry_on: Exception types that may be retried.
        give_up_on: Exception types never retried (checked before ``retry_on``).
        predicate: Extra test; an error is retried only if it returns True.
        retry_client_errors: Retry HTTP 4xx other than 429 too (off: the request is wrong).
        stop_on_repeat: Stop when the same ``error``-class fingerprint is seen this many times in
            a row (0 disables).
        rate_limit_multiplier: Extra factor for a repeated ``rate_limited`` failure without
            ``Retry-After``.
        attempt_timeout: Timeout of each attempt in seconds (None = none), enforced by the
            drivers.

    Raises:
        ConfigurationError: When a value is out of range.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    initial: float = DEFAULT_INITIAL
    maximum: float = DEFAULT_MAXIMUM
    multiplier: float = DEFAULT_MULTIPLIER
    jitter: float = DEFAULT_JITTER
    deadline: float | None = None
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    give_up_on: tuple[type[BaseException], ...] = ()
    predicate: Callable[[BaseException], bool] = field(default=_default_predicate, compare=False)
    retry_client_errors: bool = False
    stop_on_repeat: int = DEFAULT_STOP_ON_REPEAT
    rate_limit_multiplier: float = DEFAULT_RATE_LIMIT_MULTIPLIER
    attempt_timeout: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.max_attempts < 1:
            problems.append(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial < 0 or self.maximum < 0:
            problems.append("initial and maximum must be >= 0 seconds")
        if self.multiplier < 1:
            problems.append(f"multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter < 1:
            problems.append(f"jitter must be in [0, 1), got {self.jitter}")
        if self.deadline is not None and self.deadline <= 0:
            problems.append(f"deadline must be > 0 seconds or None, got {self.deadline}")
        if self.attempt_timeout is not None and self.attempt_timeout <= 0:
            problems.append(f"attempt_timeout must be > 0 or None, got {self.attempt_timeout}")
        if self.stop_on_repeat < 0:
            problems.append("stop_on_repeat must be >= 0")
        if problems:
            raise errors.ConfigurationError("invalid RetryPolicy: " + "; ".join(problems))

    # -- presets -------------------------------------------------------------------------

    @classmethod
    def http(cls, **overrides: Any) -> RetryPolicy:
        """Policy for HTTP calls: 3 attempts at 1 s, 2 s, 4 s ±20 %, honouring ``Retry-After``.

        Retries 429, 5xx, timeouts and connection errors (and an open breaker or a full
        limiter, after their hint); never other 4xx; any other exception type is not retried
        either (a bug in the caller is not transient).

        Args:
            **overrides: Any ``RetryPolicy`` field to change, e.g. ``max_attempts=5``.

        Returns:
            The policy.
        """
        params: dict[str, Any] = {
            "max_attempts": 3,
            "initial": 1.0,
            "maximum": 30.0,
            "multiplier": 2.0,
            "jitter": 0.2,
            "predicate": _is_transient,
        }
        params.update(overrides)
        return cls(**params)

    @classmethod
    def none(cls) -> RetryPolicy:
        """Policy that never retries (one attempt).

        Returns:
            The policy.
        """
        return cls(max_attempts=1)

    # -- decision ------------------------------------------------------------------------

    def is_retryable(self, error: BaseException, error_class: str | None = None) -> bool:
        """Return whether ``error`` may be retried at all (rule 2), regardless of counts.

        Args:
            error: The exception.
            error_class: Its class when already known (saves classifying twice).

        Returns:
            True when another attempt could succeed.
        """
        if isinstance(error, (_NEVER_RETRY, self.give_up_on)):
            return False
        if not isinstance(error, self.retry_on):
            return False
        cls = error_class or classify(error)
        if cls == "client_error" and not self.retry_client_errors:
            return False
        return bool(self.predicate(error))

    def backoff(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Return the jittered exponential delay before retry ``retry_number`` (1-based).

        Args:
            retry_number: 1 for the wait after the first attempt, 2 after the second...
            rng: Random source for the jitter (tests pass a seeded one).

        Returns:
            Seconds, within ``[0, maximum]``.
        """
        base = min(self.maximum, self.initial * self.multiplier ** (retry_number - 1))
        if self.jitter:
            spread = (rng or random).uniform(-self.jitter, self.jitter)
            base = base * (1.0 + spread)
        return max(0.0, min(self.maximum, base))

    def decide(
        self,
        error: BaseException,
        history: Sequence[AttemptRecord],
        *,
        step: str = "",
        now: float,
        started_at: float | None = None,
        rng: random.Random | None = None,
    ) -> RetryDecision:
        """Decide what to do after ``error`` ended attempt ``len(history) + 1``.

        Args:
            error: The exception the attempt raised.
            history: Earlier failed attempts of this call, oldest first.
            step: The step or call name (part of the fingerprint).
            now: Epoch seconds now.
            started_at: Epoch seconds when the first attempt started (for ``deadline``).
            rng: Random source for jitter (tests pass a seeded one).

        Returns:
            The decision, with the attempt record to append to the history.
        """
        attempt = len(history) + 1
        error_class = classify(error)
        fp = fingerprint(error, step)

        def stop(reason: str) -> RetryDecision:
            record = AttemptRecord(
                attempt, now, type(error).__name__, str(error)[:2000], fp, error_class
            )
            return RetryDecision(False, 0.0, record, reason)

        if not self.is_retryable(error, error_class):
            return stop("non_retryable")
        if self.stop_on_repeat and error_class not in _TRANSIENT:
            run = 1
            for previous in reversed(history):
                if previous.fingerprint != fp:
                    break
                run += 1
            if run >= self.stop_on_repeat:
                return stop("repeated_error")
        if attempt >= self.max_attempts:
            return stop("max_attempts")

        delay = self.backoff(attempt, rng)
        hinted = retry_after_seconds(error, now=now)
        if hinted is not None:
            delay = min(self.maximum, hinted)
        elif error_class == "rate_limited" and history and history[-1].error_class == error_class:
            delay = min(self.maximum, delay * self.rate_limit_multiplier)
        if (
            self.deadline is not None
            and started_at is not None
            and now + delay - started_at > self.deadline
        ):
            return stop("deadline")
        record = AttemptRecord(
            attempt, now, type(error).__name__, str(error)[:2000], fp, error_class, delay
        )
        return RetryDecision(True, delay, record)


def _is_transient(error: BaseException) -> bool:
    return classify(error) in _TRANSIENT
