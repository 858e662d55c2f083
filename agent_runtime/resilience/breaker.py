"""Circuit breaker: stop calling a dependency that keeps failing, probe it, resume.

States ``closed`` (calls pass; failures are counted), ``open`` (calls fail fast with
``CircuitOpenError``, which says when the breaker half-opens) and ``half_open`` (exactly one probe
call passes; its success closes the breaker, its failure opens it again).

Built on pybreaker, extended where it falls short. pybreaker 1.x is used for what it does well:

* its **listener API** (``CircuitBreakerListener``): every state change is delivered through
  pybreaker's listeners; ours turns them into ``BreakerStateChanged`` events, and users can add
  their own pybreaker listeners (``before_call``, ``success``, ``failure`` and ``state_change``
  are all called);
* its **state objects** (``CircuitClosedState``...) as this instance's cached view of the state:
  when a transition is seen (made here or, through a shared store, by another process), the
  cached state object is replaced through pybreaker's own ``state`` setter, which notifies the
  listeners once;
* its **storage abstraction** (``CircuitBreakerStorage``): an adapter exposes our store to
  pybreaker, so ``current_state``, ``fail_counter`` and ``state`` read the shared state;
* its **exclusion rules** (``is_system_error``) decide which errors count as failures.

and extended where it falls short (documented gaps of pybreaker 1.x, see its source):

1. **Windowed counting.** pybreaker counts *consecutive* failures (any success resets the
   counter). We open on ``failure_threshold`` failures within ``window`` seconds, successes in
   between notwithstanding (``5 failures within 60 s`` -> open for ``reset_timeout`` = 30 s), and
   keep only the last ``failure_threshold`` failure times.
2. **No serialisation.** pybreaker's ``call`` holds one lock for the whole wrapped call, so five
   concurrent 0.2 s calls take 1 s. Here a call takes the lock only to be admitted and to record
   its outcome (and not at all for a success while closed), never while the call runs.
3. **Exactly one probe.** pybreaker lets every caller through while half-open. Here admission to
   half-open hands out one probe token (with a lease, ``probe_timeout``, so a probe whose process
   died does not wedge the breaker); everyone else fails fast until it reports.
4. **asyncio.** pybreaker's async support is Tornado's. ``call_async``/``calling_async`` run on
   asyncio; a store that does I/O is called from a worker thread so the event loop never blocks.
5. **Atomic shared state.** pybreaker's storages (memory, Redis) mutate counters field by field,
   so two processes can both decide to probe. All our transitions are pure functions of a
   :class:`BreakerSnapshot` applied atomically by a :class:`BreakerStore`: under a lock in memory
   (:class:`MemoryBreakerStore`) or as a compare-and-set on a version column in SQL
   (:class:`SqlBreakerStore`, table ``ar_breakers``), so across processes exactly one probe runs.

Other differences: the call whose failure trips the breaker raises its own error (pybreaker
raises ``CircuitBreakerError`` instead), HTTP 4xx other than 429/408 are not failures by default
(the caller's request was wrong, the dependency is fine), and a failing store fails *open*: calls
go through unrecorded and a warning is logged, because the state database being down must not
stop every call.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import inspect
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol, TypeVar, cast, runtime_checkable

import pybreaker
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Field, SQLModel

from agent_runtime import errors
from agent_runtime.events import BreakerRejected, BreakerStateChanged, hooks
from agent_runtime.resilience.policy import classify

__all__ = [
    "BREAKER_STATES",
    "DEFAULT_CACHE_TTL",
    "DEFAULT_FAILURE_THRESHOLD",
    "DEFAULT_PROBE_TIMEOUT",
    "DEFAULT_RESET_TIMEOUT",
    "DEFAULT_SUCCESS_THRESHOLD",
    "DEFAULT_WINDOW",
    "BreakerConfig",
    "BreakerRow",
    "BreakerSnapshot",
    "BreakerStore",
    "CircuitBreaker",
    "MemoryBreakerStore",
    "SqlBreakerStore",
]

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_FAILURE_THRESHOLD: Final = 5
DEFAULT_WINDOW: Final = 60.0
DEFAULT_RESET_TIMEOUT: Final = 30.0
DEFAULT_SUCCESS_THRESHOLD: Final = 1
DEFAULT_PROBE_TIMEOUT: Final = 60.0
DEFAULT_CACHE_TTL: Final = 1.0
DEFAULT_TABLE: Final = "ar_breakers"

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"
BREAKER_STATES: Final = (CLOSED, OPEN, HALF_OPEN)

# pybreaker spells half-open with a hyphen; events and metrics use our names.
_TO_PYBREAKER: Final = {
    CLOSED: pybreaker.STATE_CLOSED,
    OPEN: pybreaker.STATE_OPEN,
    HALF_OPEN: pybreaker.STATE_HALF_OPEN,
}
_FROM_PYBREAKER: Final = {value: key for key, value in _TO_PYBREAKER.items()}

_log = logging.getLogger("agent_runtime.resilience.breaker")
_STORE_WARNING_INTERVAL: Final = 60.0
_MAX_CONFLICTS: Final = 1000


def _counts_as_failure(error: BaseException) -> bool:
    # A 4xx other than 429/408 says the request was wrong, not that the dependency is unwell.
    return classify(error) != "client_error"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """How a circuit breaker trips and recovers.

    Args:
        failure_threshold: Failures within ``window`` that open the breaker.
        window: Sliding window in seconds in which failures are counted.
        reset_timeout: Seconds the breaker stays open before it half-opens.
        success_threshold: Probe calls that must succeed (one after the other) to close it.
        probe_timeout: Seconds after which a probe that has not reported (its process died, or
            it hangs) is presumed lost and another probe may go. Keep it above the call's
            own timeout, or two probes can overlap.
        exclude: Exception types that are not failures (they count as the dependency
            answering).
        is_failure: Further test: an exception counts as a failure only if this returns True
            (default: everything but HTTP 4xx other than 429/408).

    Raises:
        ConfigurationError: When a value is out of range.
    """

    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    window: float = DEFAULT_WINDOW
    reset_timeout: float = DEFAULT_RESET_TIMEOUT
    success_threshold: int = DEFAULT_SUCCESS_THRESHOLD
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT
    exclude: tuple[type[BaseException], ...] = ()
    is_failure: Callable[[BaseException], bool] = field(default=_counts_as_failure, compare=False)

    def __post_init__(self) -> None:
        problems = []
        if self.failure_threshold < 1:
            problems.append(f"failure_threshold must be >= 1, got {self.failure_threshold}")
        if self.window <= 0:
            problems.append(f"window must be > 0 seconds, got {self.window}")
        if self.reset_timeout <= 0:
            problems.append(f"reset_timeout must be > 0 seconds, got {self.reset_timeout}")
        if self.success_threshold < 1:
            problems.append(f"success_threshold must be >= 1, got {self.success_threshold}")
        if self.probe_timeout <= 0:
            problems.append(f"probe_timeout must be > 0 seconds, got {self.probe_timeout}")
        if problems:
            raise errors.ConfigurationError("invalid BreakerConfig: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """The shared state of one breaker, as a store holds it.

    Attributes:
        state: ``closed``, ``open`` or ``half_open``.
        failures: Epoch times of the most recent failures (at most ``failure_threshold``).
        opened_at: When the breaker last opened.
        half_open_at: When an open breaker lets its probe through.
        probe_token: The token of the probe in flight (half-open only).
        probe_expires_at: When that probe is presumed lost.
        probe_successes: Successful probes so far in this half-open period.
        reason: Why the last transition happened.
        version: Incremented by the store on every write (compare-and-set key).
    """

    state: str = CLOSED
    failures: tuple[float, ...] = ()
    opened_at: float | None = None
    half_open_at: float | None = None
    probe_token: str | None = None
    probe_expires_at: float | None = None
    probe_successes: int = 0
    reason: str = ""
    version: int = 0

    def failures_within(self, window: float, now: float) -> int:
        """Return how many recorded failures fall inside ``window`` seconds before ``now``.

        Args:
            window: Window length in seconds.
            now: Epoch seconds now.

        Returns:
            The count.
        """
        start = now - window
        return sum(1 for at in self.failures if at > start)


_INITIAL: Final = BreakerSnapshot()


# -- transitions: pure functions of a snapshot ---------------------------------------------------
#
# Each returns (new snapshot or None when nothing changes, result). A store applies one
# atomically; the SQL store may call it again on a fresh snapshot after a lost race, so they
# must not have side effects.


def _admit_change(
    snap: BreakerSnapshot, *, config: BreakerConfig, now: float, token: str
) -> tuple[BreakerSnapshot | None, str]:
    if snap.state == CLOSED:
        return None, "admit"
    if snap.state == OPEN:
        if snap.half_open_at is not None and now < snap.half_open_at:
            return None, "reject"
        reason = f"open for {config.reset_timeout:g} s; one probe call let through"
    else:
        lost = snap.probe_expires_at is not None and now >= snap.probe_expires_at
        if snap.probe_token is not None and not lost:
            return None, "reject"
        reason = (
            f"the previous probe did not report within {config.probe_timeout:g} s; a new "
            "probe call let through"
            if lost
            else snap.reason
        )
    new = replace(
        snap,
        state=HALF_OPEN,
        probe_token=token,
        probe_expires_at=now + config.probe_timeout,
        reason=reason,
    )
    if snap.state == OPEN:
        new = replace(new, probe_successes=0)
    return new, "probe"


def _failure_change(
    snap: BreakerSnapshot,
    *,
    config: BreakerConfig,
    now: float,
    token: str | None,
    error: str,
) -> tuple[BreakerSnapshot | None, None]:
    if snap.state == HALF_OPEN and token is not None and snap.probe_token == token:
        return _opened(snap, config, now, f"the probe call failed ({error})"), None
    if snap.state != CLOSED:
        # Already open, or half-open with someone else's probe: that probe decides.
        return None, None
    start = now - config.window
    recent = (*(at for at in snap.failures if at > start), now)[-config.failure_threshold :]
    if len(recent) >= config.failure_threshold:
        reason = f"{len(recent)} failures within {config.window:g} s (the last one: {error})"
        return _opened(snap, config, now, reason), None
    return replace(snap, failures=recent), None


def _opened(
    snap: BreakerSnapshot, config: BreakerConfig, now: float, reason: str
) -> BreakerSnapshot:
    return replace(
        snap,
        state=OPEN,
        failures=(),
        opened_at=now,
        half_open_at=now + config.reset_timeout,
        probe_token=None,
        probe_expires_at=None,
        probe_successes=0,
        reason=reason,
    )


def _closed(snap: BreakerSnapshot, reason: str) -> BreakerSnapshot:
    return replace(
        snap,
        state=CLOSED,
        failures=(),
        half_open_at=None,
        probe_token=None,
        probe_expires_at=None,
        probe_successes=0,
        reason=reason,
    )


def _success_change(
    snap: BreakerSnapshot, *, config: BreakerConfig, token: str
) -> tuple[BreakerSnapshot | None, None]:
    if snap.state != HALF_OPEN or snap.probe_token != token:
        return None, None
    successes = snap.probe_successes + 1
    if successes >= config.success_threshold:
        return _closed(snap, f"{successes} probe call(s) succeeded"), None
    # Not enough yet: free the probe slot so the next call becomes the next probe.
    return replace(snap, probe_token=None, probe_expires_at=None, probe_successes=successes), None


def _release_change(snap: BreakerSnapshot, *, token: str) -> tuple[BreakerSnapshot | None, None]:
    if snap.state != HALF_OPEN or snap.probe_token != token:
        return None, None
    # The probe was cancelled before it could tell anything: let the next call probe.
    return replace(snap, probe_token=None, probe_expires_at=None), None


def _force_change(
    snap: BreakerSnapshot, *, state: str, config: BreakerConfig, now: float, reason: str
) -> tuple[BreakerSnapshot | None, None]:
    if state == OPEN:
        return _opened(snap, config, now, reason), None
    if state == CLOSED:
        return _closed(snap, reason), None
    return replace(
        snap,
        state=HALF_OPEN,
        half_open_at=now,
        probe_token=None,
        probe_expires_at=None,
        probe_successes=0,
        reason=reason,
    ), None


# -- stores ------------------------------------------------------------------------------------


@runtime_checkable
class BreakerStore(Protocol):
    """Where breaker state lives; shared by every breaker (and process) using the same name.

    Attributes:
        blocking: Whether operations do I/O (async callers then run them in a worker thread).
    """

    blocking: bool

    def load(self, name: str) -> BreakerSnapshot:
        """Return the current snapshot of breaker ``name`` (the initial one if unknown).

        Args:
            name: The breaker's name.

        Returns:
            The snapshot (possibly cached for a short time by remote stores).
        """

    def update(
        self,
        name: str,
        change: Callable[[BreakerSnapshot], tuple[BreakerSnapshot | None, R]],
    ) -> tuple[BreakerSnapshot, R]:
        """Apply ``change`` to the current snapshot atomically.

        Args:
            name: The breaker's name.
            change: A pure function of the current snapshot returning the new one (None for
                no change) and a result; it may be called more than once.

        Returns:
            The snapshot after the update (with its new version) and ``change``'s result.
        """


class MemoryBreakerStore:
    """Breaker state in this process's memory (the default), shared by breakers of one name."""

    blocking = False

    def __init__(self) -> None:
        self._rows: dict[str, BreakerSnapshot] = {}
        self._lock = threading.Lock()

    def load(self, name: str) -> BreakerSnapshot:
        """Return the current snapshot of breaker ``name``.

        Args:
            name: The breaker's name.

        Returns:
            The snapshot.
        """
        return self._rows.get(name, _INITIAL)

    def update(
        self,
        name: str,
        change: Callable[[BreakerSnapshot], tuple[BreakerSnapshot | None, R]],
    ) -> tuple[BreakerSnapshot, R]:
        """Apply ``change`` under this store's lock (see :class:`BreakerStore`).

        Args:
            name: The breaker's name.
            change: The pure transition.

        Returns:
            The snapshot after the update and ``change``'s result.
        """
        with self._lock:
            current = self._rows.get(name, _INITIAL)
            new, result = change(current)
            if new is None:
                return current, result
            stored = replace(new, version=current.version + 1)
            self._rows[name] = stored
            return stored, result


class BreakerRow(SQLModel, table=True):
    """One circuit breaker's shared state (see :class:`BreakerSnapshot` for the fields)."""

    __tablename__ = DEFAULT_TABLE

    name: str = Field(primary_key=True, max_length=255)
    state: str = Field(default=CLOSED, max_length=16)
    failures: str = Field(default="[]", sa_column=sa.Column(sa.Text, nullable=False))
    opened_at: float | None = None
    half_open_at: float | None = None
    probe_token: str | None = Field(default=None, max_length=64)
    probe_expires_at: float | None = None
    probe_successes: int = 0
    reason: str = Field(default="", sa_column=sa.Column(sa.Text, nullable=False))
    version: int = 0
    updated_at: float = 0.0


class SqlBreakerStore:
    """Breaker state in a SQL database (SQLite or PostgreSQL), shared across processes.

    Every transition is a compare-and-set: ``UPDATE ... WHERE name = :name AND version =
    :version``. Of several processes racing to take the probe, exactly one update matches; the
    others re-read, see the probe taken and fail fast. No row lock is held across statements,
    so the same code is atomic on SQLite and PostgreSQL.

    Reads of a *closed* breaker may be served from a per-process cache for ``cache_ttl``
    seconds (a success while closed then costs no query); every transition re-reads the row.
    So another process's opening is seen here within ``cache_ttl``, and, as long as
    ``cache_ttl`` is below the breakers' ``reset_timeout``, the one-probe guarantee holds.
    Use ``cache_ttl=0`` to read the row on every call.

    Args:
        engine: A SQLAlchemy engine (the runtime's store engine, or your own).
        table_name: The table (default ``ar_breakers``, the ``BreakerRow`` table on
            ``SQLModel.metadata``); another name builds a copy of that table, e.g. for tests.
        create_table: Create the table if it does not exist.
        cache_ttl: Seconds a closed snapshot may be served from cache.
        clock: Monotonic clock for the cache.

    Raises:
        DatabaseUnavailableError: When ``create_table`` is set and the database cannot be
            reached.
    """

    blocking = True

    def __init__(
        self,
        engine: Engine,
        *,
        table_name: str = DEFAULT_TABLE,
        create_table: bool = True,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if cache_ttl < 0:
            raise errors.ConfigurationError(f"cache_ttl must be >= 0 seconds, got {cache_ttl}")
        self._engine = engine
        base = cast(sa.Table, BreakerRow.__table__)  # type: ignore[attr-defined]
        self._table = (
            base
            if table_name == DEFAULT_TABLE
            else base.to_metadata(sa.MetaData(), name=table_name)
        )
        self._cache_ttl = cache_ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, BreakerSnapshot]] = {}
        if create_table:
            try:
                self._table.create(engine, checkfirst=True)
            except SQLAlchemyError as exc:
                url = engine.url.render_as_string(hide_password=True)
                raise errors.DatabaseUnavailableError(
                    f"cannot create the breaker table {table_name!r} at {url}: {exc}. "
                    "Check that the database is running and the URL is right.",
                    url=url,
                ) from exc

    @property
    def table(self) -> sa.Table:
        """The SQLAlchemy table this store uses."""
        return self._table

    def load(self, name: str) -> BreakerSnapshot:
        """Return the snapshot of breaker ``name`` (closed ones possibly from cache).

        Args:
            name: The breaker's name.

        Returns:
            The snapshot.
        """
        if self._cache_ttl:
            cached = self._cache.get(name)
            if cached is not None and self._clock() - cached[0] < self._cache_ttl:
                return cached[1]
        return self._read(name)

    def update(
        self,
        name: str,
        change: Callable[[BreakerSnapshot], tuple[BreakerSnapshot | None, R]],
    ) -> tuple[BreakerSnapshot, R]:
        """Apply ``change`` with compare-and-set on the row's version.

        Args:
            name: The breaker's name.
            change: The pure transition.

        Returns:
            The snapshot after the update and ``change``'s result.

        Raises:
            StoreError: When the row kept changing under us (pathological contention).
        """
        table = self._table
        for _ in range(_MAX_CONFLICTS):
            current = self._read(name)
            new, result = change(current)
            if new is None:
                return current, result
            values = _row_values(new)
            values["version"] = current.version + 1
            values["updated_at"] = time.time()
            statement = (
                sa.update(table)
                .where(table.c.name == name, table.c.version == current.version)
                .values(**values)
            )
            with self._engine.begin() as conn:
                matched = conn.execute(statement).rowcount
            if matched == 1:
                stored = replace(new, version=current.version + 1)
                self._remember(name, stored)
                return stored, result
        raise errors.StoreError(
            f"breaker {name!r}: {_MAX_CONFLICTS} compare-and-set conflicts in a row in table "
            f"{table.name!r}; something rewrites the row continuously"
        )

    def delete(self, name: str) -> None:
        """Forget breaker ``name`` (its next use starts closed).

        Args:
            name: The breaker's name.
        """
        with self._engine.begin() as conn:
            conn.execute(sa.delete(self._table).where(self._table.c.name == name))
        self._cache.pop(name, None)

    def _read(self, name: str) -> BreakerSnapshot:
        table = self._table
        query = sa.select(table).where(table.c.name == name)
        with self._engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            try:
                with self._engine.begin() as conn:
                    conn.execute(
                        sa.insert(table).values(
                            name=name, **_row_values(_INITIAL), version=0, updated_at=time.time()
                        )
                    )
            except IntegrityError:
                pass  # another process inserted it first: fine, read theirs
            with self._engine.connect() as conn:
                row = conn.execute(query).mappings().first()
            if row is None:  # deleted again in between; treat as new
                return _INITIAL
        snap = BreakerSnapshot(
            state=row["state"],
            failures=tuple(float(at) for at in json.loads(row["failures"] or "[]")),
            opened_at=row["opened_at"],
            half_open_at=row["half_open_at"],
            probe_token=row["probe_token"],
            probe_expires_at=row["probe_expires_at"],
            probe_successes=row["probe_successes"],
            reason=row["reason"] or "",
            version=row["version"],
        )
        self._remember(name, snap)
        return snap

    def _remember(self, name: str, snap: BreakerSnapshot) -> None:
        if not self._cache_ttl:
            return
        if snap.state == CLOSED:
            self._cache[name] = (self._clock(), snap)
        else:
            self._cache.pop(name, None)


def _row_values(snap: BreakerSnapshot) -> dict[str, Any]:
    return {
        "state": snap.state,
        "failures": json.dumps(list(snap.failures)),
        "opened_at": snap.opened_at,
        "half_open_at": snap.half_open_at,
        "probe_token": snap.probe_token,
        "probe_expires_at": snap.probe_expires_at,
        "probe_successes": snap.probe_successes,
        "reason": snap.reason,
    }


# -- pybreaker glue ------------------------------------------------------------------------------


class _StorageAdapter(pybreaker.CircuitBreakerStorage):
    """Exposes a :class:`BreakerStore` to pybreaker's properties (read side).

    pybreaker re-creates its state objects on every transition and, doing so, resets the
    storage's counters; on a shared store that would wipe other processes' failures. Counters
    and state are therefore changed only by our atomic transitions: the mutators here do
    nothing, and the state setter (pybreaker's ``open()``/``close()``) is routed through the
    breaker's forced transitions.
    """

    def __init__(self, breaker: CircuitBreaker) -> None:
        super().__init__("agent-runtime")
        self._breaker = breaker

    @property
    def state(self) -> str:
        try:
            return _TO_PYBREAKER[self._breaker.snapshot().state]
        except Exception:  # an unreachable store fails open, as calls do
            return pybreaker.STATE_CLOSED

    @state.setter
    def state(self, state: str) -> None:
        self._breaker._force(_FROM_PYBREAKER[state], "set through pybreaker's storage API")

    def increment_counter(self) -> None:
        """No-op: failures are recorded by atomic transitions only."""

    def reset_counter(self) -> None:
        """No-op: see the class docstring."""

    def increment_success_counter(self) -> None:
        """No-op: probe successes are recorded by atomic transitions only."""

    def reset_success_counter(self) -> None:
        """No-op: see the class docstring."""

    @property
    def counter(self) -> int:
        breaker = self._breaker
        return breaker.snapshot().failures_within(breaker.config.window, breaker.clock())

    @property
    def success_counter(self) -> int:
        return self._breaker.snapshot().probe_successes

    @property
    def opened_at(self) -> datetime.datetime | None:
        at = self._breaker.snapshot().opened_at
        return None if at is None else datetime.datetime.fromtimestamp(at, datetime.UTC)

    @opened_at.setter
    def opened_at(self, value: datetime.datetime) -> None:
        """No-op: ``opened_at`` is written by the open transition."""


class _EventListener(pybreaker.CircuitBreakerListener):
    """Turns pybreaker's state-change notifications into ``BreakerStateChanged`` events."""

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        if not hooks.active:
            return
        hooks.emit(
            BreakerStateChanged(
                breaker=cb.name or "",
                from_state=_FROM_PYBREAKER.get(old_state.name, CLOSED) if old_state else CLOSED,
                to_state=_FROM_PYBREAKER[new_state.name],
                reason=getattr(cb, "_transition_reason", ""),
                observed=getattr(cb, "_transition_observed", False),
            )
        )


@dataclass(frozen=True, slots=True)
class _Ticket:
    probe: str | None = None


_FREE: Final = _Ticket()


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def _iso(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="seconds")


class CircuitBreaker(pybreaker.CircuitBreaker):
    """A circuit breaker for sync and async calls (see the module docstring).

    Example::

        breaker = CircuitBreaker("llm-a", BreakerConfig(failure_threshold=5, window=60))
        answer = breaker.call(client.complete, prompt)
        answer = await breaker.call_async(async_client.complete, prompt)

    Args:
        name: The breaker's name: its key in the store and its label in events.
        config: Thresholds and timings.
        store: Where the state lives (default: a private :class:`MemoryBreakerStore`). Breakers
            with the same name and store (or database) share one state.
        clock: Epoch seconds now (wall clock: shared state is compared across processes).
        listeners: Extra pybreaker listeners.

    Raises:
        ConfigurationError: When ``name`` is empty.
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        store: BreakerStore | None = None,
        clock: Callable[[], float] = time.time,
        listeners: Sequence[pybreaker.CircuitBreakerListener] = (),
    ) -> None:
        if not name:
            raise errors.ConfigurationError("a circuit breaker needs a non-empty name")
        self.config = config or BreakerConfig()
        self.clock = clock
        self._store: BreakerStore = store if store is not None else MemoryBreakerStore()
        self._key = name
        self._transition_reason = ""
        self._transition_observed = False
        self._seen_version = -1
        self._store_warned_at = -_STORE_WARNING_INTERVAL
        exclude_types = self.config.exclude
        is_failure = self.config.is_failure

        # Types are wrapped in a predicate: pybreaker would call an exception *class* whose
        # metaclass is not ``type`` as if it were a predicate.
        def excluded(error: BaseException) -> bool:
            return isinstance(error, exclude_types) or not is_failure(error)

        super().__init__(
            fail_max=self.config.failure_threshold,
            reset_timeout=self.config.reset_timeout,
            exclude=[excluded],
            listeners=[_EventListener(), *listeners],
            state_storage=_StorageAdapter(self),
            name=name,
            throw_new_error_on_trip=False,
        )

    # -- state -----------------------------------------------------------------------------

    @property
    def store(self) -> BreakerStore:
        """The store holding this breaker's state."""
        return self._store

    def snapshot(self) -> BreakerSnapshot:
        """Return the breaker's current shared state.

        Returns:
            The snapshot (from the store).
        """
        return self._store.load(self._key)

    @property
    def status(self) -> str:
        """The current state: ``closed``, ``open`` or ``half_open``."""
        return self.snapshot().state

    @property
    def half_open_at(self) -> float | None:
        """Epoch seconds at which an open breaker lets its probe through (None otherwise)."""
        snap = self.snapshot()
        return snap.half_open_at if snap.state == OPEN else None

    def open(self) -> bool:
        """Force the breaker open (for ``reset_timeout`` seconds).

        Returns:
            True (pybreaker's signature).
        """
        self._force(OPEN, "opened by hand")
        return True

    def half_open(self) -> None:
        """Force the breaker half-open: the next call is the probe."""
        self._force(HALF_OPEN, "half-opened by hand")

    def close(self) -> None:
        """Force the breaker closed, forgetting recorded failures."""
        self._force(CLOSED, "closed by hand")

    def _force(self, state: str, reason: str) -> None:
        change = functools.partial(
            _force_change, state=state, config=self.config, now=self.clock(), reason=reason
        )
        snap, _, own = self._update(change)
        self._notice(snap, own=own)

    def _update(self, change: Any) -> tuple[BreakerSnapshot, Any, bool]:
        """Apply ``change`` through the store; also tell whether this call made a transition."""
        seen: dict[str, Any] = {}

        def tracked(current: BreakerSnapshot) -> tuple[BreakerSnapshot | None, Any]:
            new, result = change(current)
            seen["base"] = current.version
            seen["moved"] = new is not None and new.state != current.state
            return new, result

        snap, result = self._store.update(self._key, tracked)
        own = bool(seen.get("moved")) and snap.version == seen.get("base", -2) + 1
        return snap, result, own

    def _notice(self, snap: BreakerSnapshot, *, own: bool = False) -> None:
        """Bring pybreaker's cached state object up to ``snap`` (listeners hear of changes).

        ``own`` says this instance's own write made the transition; otherwise it was observed
        (made by another process through the shared store) and is reported as such.
        """
        if snap.version <= self._seen_version:
            return
        with self._lock:
            if snap.version <= self._seen_version:
                return
            self._seen_version = snap.version
            target = _TO_PYBREAKER[snap.state]
            if self._state.name != target:
                self._transition_reason = snap.reason
                self._transition_observed = not own
                # pybreaker's setter builds the state object and notifies the listeners.
                self.state = target

    # -- admission and outcome ---------------------------------------------------------------

    def _store_failed(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._store_warned_at >= _STORE_WARNING_INTERVAL:
            self._store_warned_at = now
            _log.warning(
                "circuit breaker %r: its store failed to %s (%s); calls pass unrecorded "
                "(fail open) until it answers again",
                self._key,
                what,
                exc,
            )

    def _admit(self) -> _Ticket:
        """Admit a call or raise ``CircuitOpenError``; never blocks on the wrapped call."""
        try:
            snap = self._store.load(self._key)
        except Exception as exc:
            self._store_failed("read the state", exc)
            return _FREE
        if snap.state == CLOSED:
            if snap.version > self._seen_version:
                self._notice(snap)
            return _FREE
        token = secrets.token_hex(8)
        change = functools.partial(_admit_change, config=self.config, now=self.clock(), token=token)
        try:
            snap, verdict, own = self._update(change)
        except Exception as exc:
            self._store_failed("admit a call", exc)
            return _FREE
        self._notice(snap, own=own)
        if verdict == "admit":
            return _FREE
        if verdict == "probe":
            return _Ticket(token)
        raise self.rejection(snap)

    def rejection(self, snap: BreakerSnapshot) -> errors.CircuitOpenError:
        """Return the ``CircuitOpenError`` for a call refused in state ``snap`` (and report it).

        Args:
            snap: The state that refused the call.

        Returns:
            The error, with the time another call will be let through.
        """
        if hooks.active:
            hooks.emit(BreakerRejected(breaker=self._key, state=snap.state))
        now = self.clock()
        if snap.state == OPEN:
            at = snap.half_open_at if snap.half_open_at is not None else now
            message = (
                f"circuit breaker {self._key!r} is open ({snap.reason}); calls fail fast until "
                f"it half-opens at {_iso(at)} (in {max(0.0, at - now):.1f} s) and lets one "
                "probe call through. Use a fallback, or retry after that time."
            )
        else:
            at = snap.probe_expires_at if snap.probe_expires_at is not None else now
            message = (
                f"circuit breaker {self._key!r} is half-open and its one probe call is in "
                f"flight; other calls fail fast until the probe reports (at the latest at "
                f"{_iso(at)}, in {max(0.0, at - now):.1f} s). Use a fallback, or retry then."
            )
        return errors.CircuitOpenError(message, breaker=self._key, half_open_at=at)

    def _change_for(self, ticket: _Ticket, error: BaseException | None) -> Any:
        """Return the transition that records this outcome, or None when there is none."""
        if error is not None and not isinstance(error, Exception):
            # Cancelled or interrupted: no verdict on the dependency; free the probe slot.
            if ticket.probe is None:
                return None
            return functools.partial(_release_change, token=ticket.probe)
        if error is not None and self.is_system_error(error):
            for listener in self._listeners:
                listener.failure(self, error)
            return functools.partial(
                _failure_change,
                config=self.config,
                now=self.clock(),
                token=ticket.probe,
                error=_describe(error),
            )
        for listener in self._listeners:
            listener.success(self)
        if ticket.probe is None:
            return None  # a success while closed changes nothing: no write, no lock
        return functools.partial(_success_change, config=self.config, token=ticket.probe)

    def _apply(self, change: Any) -> None:
        try:
            snap, _, own = self._update(change)
        except Exception as exc:
            self._store_failed("record an outcome", exc)
            return
        self._notice(snap, own=own)

    def _settle(self, ticket: _Ticket, error: BaseException | None) -> None:
        change = self._change_for(ticket, error)
        if change is not None:
            self._apply(change)

    async def _admit_async(self) -> _Ticket:
        if self._store.blocking:
            return await asyncio.to_thread(self._admit)
        return self._admit()

    async def _settle_async(self, ticket: _Ticket, error: BaseException | None) -> None:
        change = self._change_for(ticket, error)
        if change is None:
            return
        if self._store.blocking:
            # Shielded: a cancelled caller must still record (or release) its probe.
            await asyncio.shield(asyncio.to_thread(self._apply, change))
        else:
            self._apply(change)

    # -- calling -----------------------------------------------------------------------------

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``func(*args, **kwargs)`` through the breaker.

        Args:
            func: The function.
            *args: Its positional arguments.
            **kwargs: Its keyword arguments.

        Returns:
            What ``func`` returned.

        Raises:
            CircuitOpenError: The breaker is open (or its probe is in flight); ``func`` was not
                called.
        """
        ticket = self._admit()
        for listener in self._listeners:
            listener.before_call(self, func, *args, **kwargs)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            self._settle(ticket, exc)
            raise
        self._settle(ticket, None)
        return result

    async def call_async(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Await ``func(*args, **kwargs)`` through the breaker (asyncio).

        Args:
            func: The coroutine function.
            *args: Its positional arguments.
            **kwargs: Its keyword arguments.

        Returns:
            What ``func`` returned.

        Raises:
            CircuitOpenError: The breaker is open (or its probe is in flight); ``func`` was not
                called.
        """
        ticket = await self._admit_async()
        for listener in self._listeners:
            listener.before_call(self, func, *args, **kwargs)
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            await self._settle_async(ticket, exc)
            raise
        await self._settle_async(ticket, None)
        return result

    @contextlib.contextmanager
    def calling(self) -> Iterator[None]:
        """Return a context manager that runs its block through the breaker.

        Yields:
            Nothing; an exception leaving the block is recorded as the outcome.

        Raises:
            CircuitOpenError: On entry, when the breaker is open.
        """
        ticket = self._admit()
        try:
            yield
        except BaseException as exc:
            self._settle(ticket, exc)
            raise
        self._settle(ticket, None)

    @contextlib.asynccontextmanager
    async def calling_async(self) -> AsyncIterator[None]:
        """Async twin of :meth:`calling`.

        Yields:
            Nothing; an exception leaving the block is recorded as the outcome.

        Raises:
            CircuitOpenError: On entry, when the breaker is open.
        """
        ticket = await self._admit_async()
        try:
            yield
        except BaseException as exc:
            await self._settle_async(ticket, exc)
            raise
        await self._settle_async(ticket, None)

    def __call__(self, *call_args: Any, **call_kwargs: bool) -> Callable[..., Any]:
        """Decorate a function (sync or ``async def``) so every call goes through the breaker.

        Args:
            *call_args: The function, when used as ``@breaker``.
            **call_kwargs: Unused (pybreaker's Tornado switch is not supported).

        Returns:
            The wrapped function, or a decorator when called without a function.
        """

        def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
            if inspect.iscoroutinefunction(func):

                @functools.wraps(func)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    return await self.call_async(func, *args, **kwargs)

                return async_wrapper

            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return self.call(func, *args, **kwargs)

            return wrapper

        if call_args:
            return decorate(call_args[0])
        return decorate

    def __repr__(self) -> str:
        # The cached view only: a repr must not query (or fail on) a remote store.
        seen = _FROM_PYBREAKER.get(self._state.name, self._state.name)
        return f"CircuitBreaker({self._key!r}, last_seen={seen!r})"
