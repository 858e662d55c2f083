"""The state database: runs, checkpoints, attempts, events and dead letters, on SQLModel.

SQLite is the embedded default (``sqlite:///.agent_runtime/state.db``: WAL, ``synchronous=FULL``
so a commit survives power loss — ``normal`` is one setting away when fsync is slow —,
``BEGIN IMMEDIATE`` for writes so concurrent processes queue on the busy timeout instead of
failing); PostgreSQL (``postgresql+psycopg://...``) is the production
store shared by many workers. The URL comes from ``AGENT_RUNTIME_DB`` or ``--db``.

Two paths, on purpose:

* Everything except step checkpoints goes through SQLAlchemy Core on the SQLModel tables, one
  transaction per operation. A state change is a compare-and-set on the current status (and owner),
  validated by the transition table, and writes its event row in the same transaction.
* The per-step checkpoint is the hot path (the overhead budget is well under a millisecond). It is
  one pre-rendered, *fenced* ``INSERT ... SELECT ... WHERE EXISTS`` on a connection the run keeps
  for its lifetime, in autocommit: a single round trip that only succeeds while this process still
  owns the run and the run is ``running``. A process that stalled past its lease, or whose run was
  failed by its deadline, can therefore never interleave its checkpoints with the new owner's.

Schema: created on first use; the version is kept in ``ar_meta``. A database written by a newer
agent-runtime is refused with :class:`SchemaVersionError` and never altered.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlmodel import SQLModel

from agent_runtime.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    DeadLetterNotFoundError,
    RunNotFoundError,
    SchemaVersionError,
    StaleLeaseError,
)
from agent_runtime.resilience.policy import AttemptRecord
from agent_runtime.state.machine import LIVE_STATES, RunStatus, check_transition
from agent_runtime.state.models import (
    SCHEMA_VERSION,
    AttemptRow,
    DeadLetterRow,
    EventRow,
    MetaRow,
    RunRow,
    StepRow,
)

__all__ = [
    "DEFAULT_DB_URL",
    "CheckpointWriter",
    "Store",
    "Transition",
    "mask_url",
]

DEFAULT_DB_URL: Final = "sqlite:///.agent_runtime/state.db"
DEFAULT_SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
DEFAULT_PG_POOL_SIZE: Final = 10
DEFAULT_PG_MAX_OVERFLOW: Final = 54

_runs = RunRow.__table__  # type: ignore[attr-defined]
_steps = StepRow.__table__  # type: ignore[attr-defined]
_attempts = AttemptRow.__table__  # type: ignore[attr-defined]
_events = EventRow.__table__  # type: ignore[attr-defined]
_dead = DeadLetterRow.__table__  # type: ignore[attr-defined]
_meta = MetaRow.__table__  # type: ignore[attr-defined]

_LIVE = tuple(s.value for s in LIVE_STATES)

_STEP_INSERT = (
    "INSERT INTO ar_steps (run_id, position, name, output, serializer, checksum, attempts, "
    "duration_s, created_at) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS "
    "(SELECT 1 FROM ar_runs WHERE id = ? AND owner = ? AND status = 'running')"
)


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


@dataclass(frozen=True, slots=True)
class Transition:
    """The outcome of a state change: the run's previous and new state."""

    run_id: str
    from_status: RunStatus | None
    to_status: RunStatus
    dead_letter_id: int | None = None


def _sqlite_connect_hook(synchronous: str) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit at the driver level: SQLAlchemy's "begin" hook below issues BEGIN itself,
        # and a lone checkpoint INSERT on the hot path commits on its own (no extra COMMIT).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={DEFAULT_SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    return on_connect


def _sqlite_on_begin(conn: Connection) -> None:
    # Writers take the write lock up front: a deferred transaction that later upgrades can fail
    # with SQLITE_BUSY at once in WAL mode, whereas BEGIN IMMEDIATE waits on busy_timeout.
    if conn.get_execution_options().get("ar_read_only"):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class CheckpointWriter:
    """A run's dedicated connection for fenced checkpoint inserts (the hot path).

    Args:
        store: The store to write to.
        run_id: The run whose checkpoints this writes.
        owner: The owner id that must still hold the run.
    """

    def __init__(self, store: Store, run_id: str, owner: str) -> None:
        self._store = store
        self._run_id = run_id
        self._owner = owner
        self._raw = store.engine.raw_connection()
        self._driver = self._raw.driver_connection
        if store.dialect == "postgresql":
            self._driver.autocommit = True  # type: ignore[union-attr]
            self._sql = _STEP_INSERT.replace("?", "%s")
        else:
            self._sql = _STEP_INSERT
        self._cursor = self._raw.cursor()

    def write(
        self,
        position: int,
        name: str,
        output: str,
        serializer: str,
        checksum: str,
        attempts: int,
        duration_s: float,
        now: float,
    ) -> None:
        """Durably insert one checkpoint, fenced on ownership.

        Raises:
            StaleLeaseError: This process no longer owns the run, or the run is not ``running``.
            DatabaseUnavailableError: The database failed.
        """
        params = (
            self._run_id,
            position,
            name,
            output,
            serializer,
            checksum,
            attempts,
            duration_s,
            now,
            self._run_id,
            self._owner,
        )
        try:
            self._cursor.execute(self._sql, params)
            written = self._cursor.rowcount
        except Exception as exc:
            if _is_integrity_error(exc):
                raise StaleLeaseError(
                    f"run {self._run_id}: step {position} ({name}) was already checkpointed by "
                    "another execution; this one stops",
                    run_id=self._run_id,
                    step=name,
                ) from exc
            raise self._store.unavailable(exc) from exc
        if written != 1:
            raise StaleLeaseError(
                f"run {self._run_id}: this process ({self._owner}) no longer owns the run or "
                f"the run is no longer running; checkpoint of step {position} ({name}) refused",
                run_id=self._run_id,
                step=name,
            )

    def close(self) -> None:
        """Return the connection to the pool."""
        with contextlib.suppress(Exception):
            self._cursor.close()
        if self._store.closed:
            # The pool was disposed while this run was executing (an abandoned execution that
            # finished late): returning the connection to that pool would never close it.
            with contextlib.suppress(Exception):
                self._raw.invalidate()
            return
        if self._store.dialect == "postgresql":
            with contextlib.suppress(Exception):
                self._driver.autocommit = False  # type: ignore[union-attr]
        with contextlib.suppress(Exception):
            self._raw.close()


def _is_integrity_error(exc: BaseException) -> bool:
    if isinstance(exc, IntegrityError):
        return True
    name = type(exc).__name__
    return name in {"IntegrityError", "UniqueViolation"}


class Store:
    """Persistence of runs and everything attached to them.

    Args:
        url: A SQLAlchemy URL: ``sqlite:///path.db`` or ``postgresql+psycopg://...``
            (``postgresql://`` is read as psycopg 3).
        clock: Wall-clock time source (epoch seconds).
        pool_size: Connections kept open (PostgreSQL); SQLite keeps what it needs.
        sqlite_synchronous: ``full`` (default: every commit is fsynced, it survives power
            loss) or ``normal`` (WAL commits survive a crash of the process, kill -9 or OOM,
            but the last ones may be lost on power loss or a kernel crash; much faster where
            fsync is slow). Default from ``AGENT_RUNTIME_SQLITE_SYNCHRONOUS``.

    Raises:
        ConfigurationError: For an unsupported or malformed URL.
        DatabaseUnavailableError: When the database cannot be reached or opened.
        SchemaVersionError: When the schema was written by a newer agent-runtime.
    """

    def __init__(
        self,
        url: str = DEFAULT_DB_URL,
        *,
        clock: Callable[[], float] = time.time,
        pool_size: int = DEFAULT_PG_POOL_SIZE,
        sqlite_synchronous: str | None = None,
    ) -> None:
        self.url = _normalise_url(url)
        sync = sqlite_synchronous or os.environ.get("AGENT_RUNTIME_SQLITE_SYNCHRONOUS") or "full"
        if sync.lower() not in ("full", "normal"):
            raise ConfigurationError(
                f"SQLite synchronous mode must be 'full' or 'normal', got {sync!r} "
                "(AGENT_RUNTIME_SQLITE_SYNCHRONOUS)"
            )
        self.sqlite_synchronous = sync.upper()
        self.clock = clock
        self.dialect = make_url(self.url).get_backend_name()
        self.engine = self._create_engine(pool_size)
        self.closed = False
        self._schema_lock = threading.Lock()
        try:
            self.ensure_schema()
        except BaseException:
            self.engine.dispose()  # do not leak pooled connections of a store never returned
            raise

    # -- engine and schema -------------------------------------------------------------

    def _create_engine(self, pool_size: int) -> Engine:
        url = make_url(self.url)
        if self.dialect == "sqlite":
            database = url.database or ""
            if database in ("", ":memory:") or database.startswith("file:"):
                raise ConfigurationError(
                    "an in-memory SQLite database cannot be shared by the runtime's threads; "
                    "use a file, e.g. sqlite:///.agent_runtime/state.db"
                )
            try:
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseUnavailableError(
                    f"cannot create the directory for the state database {database}: {exc}; "
                    "choose a writable path with AGENT_RUNTIME_DB or --db",
                    url=mask_url(self.url),
                ) from exc
            engine = sa.create_engine(
                self.url,
                connect_args={"check_same_thread": False, "timeout": 30},
                pool_size=max(pool_size, 5),
                max_overflow=64,
            )
            sa_event.listen(engine, "connect", _sqlite_connect_hook(self.sqlite_synchronous))
            sa_event.listen(engine, "begin", _sqlite_on_begin)
            return engine
        if self.dialect == "postgresql":
            return sa.create_engine(
                self.url,
                pool_size=pool_size,
                max_overflow=DEFAULT_PG_MAX_OVERFLOW,
                pool_pre_ping=True,
                connect_args={"connect_timeout": 10},
            )
        raise ConfigurationError(
            f"unsupported state database {mask_url(self.url)!r}: use sqlite:///PATH or "
            "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB"
        )

    def unavailable(self, exc: BaseException) -> DatabaseUnavailableError:
        """Build the error for a database failure ``exc`` (say what to check)."""
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0:1]
        reason = detail[0] if detail else type(exc).__name__
        if self.dialect == "sqlite" and "not a database" in reason:
            hint = (
                "the file is not a SQLite database (or is corrupt); move it away or point "
                "AGENT_RUNTIME_DB at another path"
            )
        elif self.dialect == "sqlite":
            hint = "check that the path is writable and the disk is not full"
        else:
            hint = (
                "check that the server is running and reachable, and the user, password and "
                "database name in AGENT_RUNTIME_DB / --db"
            )
        return DatabaseUnavailableError(
            f"state database {mask_url(self.url)} failed: {reason}; {hint}",
            url=mask_url(self.url),
        )

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                if self.dialect == "postgresql":
                    conn.exec_driver_sql("SET LOCAL lock_timeout = '30s'")
                yield conn
        except (OperationalError, DBAPIError) as exc:
            if isinstance(exc, IntegrityError):
                raise
            raise self.unavailable(exc) from exc

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as raw:
                conn = raw.execution_options(ar_read_only=True)
                with conn.begin():
                    yield conn
        except (OperationalError, DBAPIError) as exc:
            raise self.unavailable(exc) from exc

    def ensure_schema(self) -> None:
        """Create missing tables and check the schema version.

        Raises:
            SchemaVersionError: The database's schema is newer than this agent-runtime.
        """
        _import_extension_tables()
        tables = [t for name, t in SQLModel.metadata.tables.items() if name.startswith("ar_")]
        with self._schema_lock, self._write() as conn:
            if self.dialect == "postgresql":
                # Two processes creating the schema at once would race on CREATE TABLE.
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7283946152)")
            inspector = sa.inspect(conn)
            if inspector.has_table("ar_meta"):
                row = conn.execute(
                    sa.select(_meta.c.value).where(_meta.c.key == "schema_version")
                ).first()
                found = int(row[0]) if row else 0
                if found > SCHEMA_VERSION:
                    raise SchemaVersionError(
                        f"the state database {mask_url(self.url)} has schema version {found}, "
                        f"newer than this agent-runtime supports ({SCHEMA_VERSION}); upgrade "
                        "agent-runtime, or point AGENT_RUNTIME_DB at another database. "
                        "Nothing was changed.",
                        found=found,
                        supported=SCHEMA_VERSION,
                    )
            else:
                found = 0
            SQLModel.metadata.create_all(conn, tables=tables, checkfirst=True)
            if found == 0:
                conn.execute(
                    sa.insert(_meta).values(key="schema_version", value=str(SCHEMA_VERSION))
                )

    def schema_version(self) -> int:
        """Return the schema version recorded in the database."""
        with self._read() as conn:
            row = conn.execute(
                sa.select(_meta.c.value).where(_meta.c.key == "schema_version")
            ).first()
        return int(row[0]) if row else 0

    def ping(self) -> None:
        """Run a trivial query.

        Raises:
            DatabaseUnavailableError: When the database does not answer.
        """
        with self._read() as conn:
            conn.exec_driver_sql("SELECT 1")

    def close(self) -> None:
        """Dispose of every pooled connection."""
        self.closed = True
        self.engine.dispose()

    # -- runs ----------------------------------------------------------------------------

    def create_run(
        self,
        *,
        run_id: str,
        workflow: str,
        entrypoint: str | None,
        inputs: str,
        serializer: str,
        trace_id: str,
        parent_span_id: str | None,
        timeout: float,
        owner: str | None,
        lease_expires_at: float | None,
        reason: str,
    ) -> RunRow:
        """Insert a new ``pending`` run and its first event."""
        check_transition(run_id, None, RunStatus.PENDING)
        now = self.clock()
        values: dict[str, Any] = {
            "id": run_id,
            "workflow": workflow,
            "entrypoint": entrypoint,
            "status": RunStatus.PENDING.value,
            "inputs": inputs,
            "serializer": serializer,
            "trace_id": trace_id,
            "parent_span_id": parent_span_id,
            "owner": owner,
            "lease_expires_at": lease_expires_at,
            "generation": 0,
            "timeout": timeout,
            "created_at": now,
            "updated_at": now,
        }
        with self._write() as conn:
            conn.execute(sa.insert(_runs).values(**values))
            conn.execute(
                sa.insert(_events).values(
                    run_id=run_id,
                    at=now,
                    kind="transition",
                    from_status=None,
                    to_status=RunStatus.PENDING.value,
                    reason=reason,
                    owner=owner,
                )
            )
        return RunRow(**values)

    def get_run(self, run_id: str) -> RunRow:
        """Return the run.

        Raises:
            RunNotFoundError: When no run has this id.
        """
        with self._read() as conn:
            row = conn.execute(sa.select(_runs).where(_runs.c.id == run_id)).first()
        if row is None:
            raise RunNotFoundError(
                f"no run {run_id!r} in {mask_url(self.url)}; list runs with "
                "`agent-runtime runs list`",
                run_id=run_id,
            )
        return RunRow(**row._mapping)

    def find_runs(self, prefix: str, limit: int = 5) -> list[str]:
        """Return run ids starting with ``prefix`` (for short ids typed by hand)."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(_runs.c.id).where(_runs.c.id.startswith(prefix)).limit(limit)
            ).all()
        return [r[0] for r in rows]

    def list_runs(
        self,
        *,
        status: str | Iterable[str] | None = None,
        workflow: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RunRow]:
        """Return runs, newest first, optionally filtered by status and workflow."""
        query = sa.select(_runs).order_by(_runs.c.created_at.desc(), _runs.c.id)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            query = query.where(_runs.c.status.in_([RunStatus(s).value for s in statuses]))
        if workflow is not None:
            query = query.where(_runs.c.workflow == workflow)
        query = query.limit(limit).offset(offset)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [RunRow(**r._mapping) for r in rows]

    def count_runs(self) -> dict[str, int]:
        """Return the number of runs in each state."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(_runs.c.status, sa.func.count()).group_by(_runs.c.status)
            ).all()
        return {str(status): int(n) for status, n in rows}

    def transition(
        self,
        run_id: str,
        to_status: RunStatus,
        *,
        reason: str,
        owner: str | None = None,
        cause: str | None = None,
        values: dict[str, Any] | None = None,
        attempts: Sequence[tuple[int, int, str, AttemptRecord]] = (),
        dead_letter: dict[str, Any] | None = None,
    ) -> Transition:
        """Change a run's state, atomically with its event row (and attempts, dead letter).

        Args:
            run_id: The run.
            to_status: The new state.
            reason: Why, stored in the event row.
            owner: When given, the run must be owned by it (fencing); it is kept as owner.
            cause: The transition's cause (``failed → pending`` needs ``dlq_retry``).
            values: Other columns to set in the same update.
            attempts: Failed attempts to record: ``(generation, position, step, record)``.
            dead_letter: Columns of a dead-letter row to insert.

        Returns:
            The transition, with the dead-letter id when one was written.

        Raises:
            RunNotFoundError: No such run.
            InvalidTransitionError: The table forbids it (nothing changed).
            StaleLeaseError: ``owner`` no longer owns the run, or it changed concurrently.
        """
        now = self.clock()
        with self._write() as conn:
            row = conn.execute(
                sa.select(_runs.c.status, _runs.c.owner).where(_runs.c.id == run_id)
            ).first()
            if row is None:
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
            current, current_owner = row
            if owner is not None and current_owner != owner:
                raise StaleLeaseError(
                    f"run {run_id}: owned by {current_owner}, not by this process ({owner}); "
                    f"transition to {to_status.value} refused",
                    run_id=run_id,
                )
            target = check_transition(run_id, current, to_status, cause=cause)
            update = {"status": target.value, "updated_at": now, **(values or {})}
            where = [_runs.c.id == run_id, _runs.c.status == current]
            if owner is not None:
                where.append(_runs.c.owner == owner)
            if conn.execute(sa.update(_runs).where(*where).values(**update)).rowcount != 1:
                raise StaleLeaseError(
                    f"run {run_id} changed concurrently; transition to {target.value} refused",
                    run_id=run_id,
                )
            conn.execute(
                sa.insert(_events).values(
                    run_id=run_id,
                    at=now,
                    kind="transition",
                    from_status=current,
                    to_status=target.value,
                    reason=reason,
                    owner=update.get("owner", current_owner),
                )
            )
            if attempts:
                conn.execute(
                    sa.insert(_attempts),
                    _attempt_rows(run_id, attempts),
                )
            dead_letter_id = None
            if dead_letter is not None:
                result = conn.execute(
                    sa.insert(_dead).values(run_id=run_id, created_at=now, **dead_letter)
                )
                key = result.inserted_primary_key
                dead_letter_id = int(key[0]) if key is not None else None
        return Transition(run_id, RunStatus(current), target, dead_letter_id)

    def record_attempts(
        self, run_id: str, attempts: Sequence[tuple[int, int, str, AttemptRecord]]
    ) -> None:
        """Record failed attempts without a state change (a step that gave up)."""
        if not attempts:
            return
        with self._write() as conn:
            conn.execute(
                sa.insert(_attempts),
                _attempt_rows(run_id, attempts),
            )

    def record_event(
        self,
        run_id: str,
        kind: str,
        reason: str,
        *,
        owner: str | None = None,
        status: str | None = None,
    ) -> None:
        """Record an event that is not a state transition (recovery, rollback...)."""
        with self._write() as conn:
            if conn.execute(sa.select(_runs.c.id).where(_runs.c.id == run_id)).first() is None:
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
            conn.execute(
                sa.insert(_events).values(
                    run_id=run_id,
                    at=self.clock(),
                    kind=kind,
                    from_status=status,
                    to_status=status,
                    reason=reason,
                    owner=owner,
                )
            )

    def update_run(self, run_id: str, *, owner: str | None = None, **values: Any) -> None:
        """Set columns of a run that are not its state (fenced on ``owner`` when given)."""
        where = [_runs.c.id == run_id]
        if owner is not None:
            where.append(_runs.c.owner == owner)
        with self._write() as conn:
            result = conn.execute(
                sa.update(_runs).where(*where).values(updated_at=self.clock(), **values)
            )
        if result.rowcount != 1:
            raise StaleLeaseError(f"run {run_id}: not owned by {owner}", run_id=run_id)

    # -- leases --------------------------------------------------------------------------

    def claim(
        self,
        run_id: str,
        owner: str,
        lease_expires_at: float,
        *,
        expected_owner: str | None,
        reason: str,
    ) -> RunRow | None:
        """Take the lease of a live or pending run from ``expected_owner`` (compare-and-set).

        Returns:
            The run as claimed, or None if someone else changed it first.
        """
        now = self.clock()
        with self._write() as conn:
            owner_match = (
                _runs.c.owner.is_(None)
                if expected_owner is None
                else _runs.c.owner == expected_owner
            )
            result = conn.execute(
                sa.update(_runs)
                .where(
                    _runs.c.id == run_id,
                    owner_match,
                    _runs.c.status.in_((*_LIVE, RunStatus.PENDING.value)),
                )
                .values(owner=owner, lease_expires_at=lease_expires_at, updated_at=now)
            )
            if result.rowcount != 1:
                return None
            row = conn.execute(sa.select(_runs).where(_runs.c.id == run_id)).one()
            conn.execute(
                sa.insert(_events).values(
                    run_id=run_id,
                    at=now,
                    kind="lease",
                    from_status=row.status,
                    to_status=row.status,
                    reason=reason,
                    owner=owner,
                )
            )
        return RunRow(**row._mapping)

    def claim_pending(self, owner: str, lease_expires_at: float, limit: int) -> list[RunRow]:
        """Claim up to ``limit`` unowned ``pending`` runs, oldest first (for workers).

        On PostgreSQL the candidates are locked with ``FOR UPDATE SKIP LOCKED`` so many workers
        claim disjoint runs without waiting on each other; on SQLite the write lock serialises
        claimers.
        """
        now = self.clock()
        claimed: list[RunRow] = []
        with self._write() as conn:
            query = (
                sa.select(_runs.c.id)
                .where(_runs.c.status == RunStatus.PENDING.value, _runs.c.owner.is_(None))
                .order_by(_runs.c.created_at)
                .limit(limit)
            )
            if self.dialect == "postgresql":
                query = query.with_for_update(skip_locked=True)
            ids = [r[0] for r in conn.execute(query).all()]
            for run_id in ids:
                result = conn.execute(
                    sa.update(_runs)
                    .where(_runs.c.id == run_id, _runs.c.owner.is_(None))
                    .values(owner=owner, lease_expires_at=lease_expires_at, updated_at=now)
                )
                if result.rowcount == 1:
                    row = conn.execute(sa.select(_runs).where(_runs.c.id == run_id)).one()
                    claimed.append(RunRow(**row._mapping))
                    conn.execute(
                        sa.insert(_events).values(
                            run_id=run_id,
                            at=now,
                            kind="lease",
                            from_status=row.status,
                            to_status=row.status,
                            reason=f"claimed by worker {owner}",
                            owner=owner,
                        )
                    )
        return claimed

    def renew_leases(self, owner: str, lease_expires_at: float) -> int:
        """Extend the lease of every unfinished run ``owner`` holds; return how many."""
        with self._write() as conn:
            result = conn.execute(
                sa.update(_runs)
                .where(
                    _runs.c.owner == owner,
                    _runs.c.status.in_((*_LIVE, RunStatus.PENDING.value)),
                )
                .values(lease_expires_at=lease_expires_at)
            )
        return int(result.rowcount)

    def release_lease(self, run_id: str, owner: str) -> bool:
        """Let the lease of a run ``owner`` holds lapse now, so any process may recover it."""
        with self._write() as conn:
            result = conn.execute(
                sa.update(_runs)
                .where(_runs.c.id == run_id, _runs.c.owner == owner)
                .values(lease_expires_at=0.0)
            )
        return result.rowcount == 1

    def orphan_candidates(self, exclude_owner: str, limit: int = 100) -> list[RunRow]:
        """Return unfinished, owned runs of other owners, oldest lease first.

        The caller decides which are orphans (lease expired, or owner process dead).
        """
        with self._read() as conn:
            rows = conn.execute(
                sa.select(_runs)
                .where(
                    _runs.c.status.in_((*_LIVE, RunStatus.PENDING.value)),
                    _runs.c.owner.is_not(None),
                    _runs.c.owner != exclude_owner,
                )
                .order_by(_runs.c.lease_expires_at)
                .limit(limit)
            ).all()
        return [RunRow(**r._mapping) for r in rows]

    # -- steps and attempts --------------------------------------------------------------

    def load_steps(self, run_id: str) -> dict[int, StepRow]:
        """Return the run's checkpoints by position."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(_steps).where(_steps.c.run_id == run_id).order_by(_steps.c.position)
            ).all()
        return {int(r.position): StepRow(**r._mapping) for r in rows}

    def checkpoint_writer(self, run_id: str, owner: str) -> CheckpointWriter:
        """Open the hot-path writer for ``run_id``; close it when the execution ends."""
        try:
            return CheckpointWriter(self, run_id, owner)
        except (OperationalError, DBAPIError) as exc:
            raise self.unavailable(exc) from exc

    def attempts(self, run_id: str, generation: int | None = None) -> list[AttemptRow]:
        """Return the recorded failed attempts of a run (one generation, or all)."""
        query = sa.select(_attempts).where(_attempts.c.run_id == run_id)
        if generation is not None:
            query = query.where(_attempts.c.generation == generation)
        with self._read() as conn:
            rows = conn.execute(query.order_by(_attempts.c.id)).all()
        return [AttemptRow(**r._mapping) for r in rows]

    def events(self, run_id: str) -> list[EventRow]:
        """Return the run's events, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(_events).where(_events.c.run_id == run_id).order_by(_events.c.id)
            ).all()
        return [EventRow(**r._mapping) for r in rows]

    # -- dead letters --------------------------------------------------------------------

    def list_dead_letters(
        self, *, status: str | None = "open", limit: int = 50, offset: int = 0
    ) -> list[DeadLetterRow]:
        """Return dead-letter entries, newest first (``status=None`` for all)."""
        query = sa.select(_dead).order_by(_dead.c.id.desc()).limit(limit).offset(offset)
        if status is not None:
            query = query.where(_dead.c.status == status)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [DeadLetterRow(**r._mapping) for r in rows]

    def get_dead_letter(self, ref: int | str) -> DeadLetterRow:
        """Return a dead-letter entry by id, or the newest one of a run id.

        Raises:
            DeadLetterNotFoundError: When there is none.
        """
        query = sa.select(_dead)
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            query = query.where(_dead.c.id == int(ref))
        else:
            query = query.where(_dead.c.run_id == ref).order_by(_dead.c.id.desc()).limit(1)
        with self._read() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise DeadLetterNotFoundError(
                f"no dead-letter entry {ref!r}; list them with `agent-runtime dlq list`"
            )
        return DeadLetterRow(**row._mapping)

    def retry_dead_letter(self, dead_letter_id: int, *, reason: str) -> Transition:
        """Put a dead-lettered run back to ``pending`` (a new generation) and close the entry.

        Raises:
            DeadLetterNotFoundError: No such entry.
            InvalidTransitionError: The entry was already retried, or its run is not ``failed``.
        """
        from agent_runtime.state.machine import DLQ_RETRY

        entry = self.get_dead_letter(dead_letter_id)
        now = self.clock()
        with self._write() as conn:
            run = conn.execute(
                sa.select(_runs.c.status, _runs.c.generation).where(_runs.c.id == entry.run_id)
            ).first()
            if run is None:
                raise RunNotFoundError(f"no run {entry.run_id!r}", run_id=entry.run_id)
            status, generation = run
            if entry.status != "open":
                from agent_runtime.errors import InvalidTransitionError

                raise InvalidTransitionError(
                    f"dead-letter entry {dead_letter_id} was already retried; run "
                    f"{entry.run_id} is {status}",
                    run_id=entry.run_id,
                    from_state=status,
                    to_state=RunStatus.PENDING.value,
                )
            check_transition(entry.run_id, status, RunStatus.PENDING, cause=DLQ_RETRY)
            result = conn.execute(
                sa.update(_runs)
                .where(_runs.c.id == entry.run_id, _runs.c.status == status)
                .values(
                    status=RunStatus.PENDING.value,
                    generation=generation + 1,
                    owner=None,
                    lease_expires_at=None,
                    error_type=None,
                    error_message=None,
                    finished_at=None,
                    updated_at=now,
                )
            )
            if result.rowcount != 1:
                raise StaleLeaseError(
                    f"run {entry.run_id} changed concurrently", run_id=entry.run_id
                )
            conn.execute(
                sa.update(_dead)
                .where(_dead.c.id == dead_letter_id)
                .values(status="retried", retried_at=now)
            )
            conn.execute(
                sa.insert(_events).values(
                    run_id=entry.run_id,
                    at=now,
                    kind="transition",
                    from_status=status,
                    to_status=RunStatus.PENDING.value,
                    reason=reason,
                    owner=None,
                )
            )
        return Transition(entry.run_id, RunStatus(status), RunStatus.PENDING, dead_letter_id)

    def dlq_depth(self) -> int:
        """Return the number of open dead-letter entries."""
        with self._read() as conn:
            value = conn.execute(
                sa.select(sa.func.count()).select_from(_dead).where(_dead.c.status == "open")
            ).scalar_one()
        return int(value)


def _attempt_rows(
    run_id: str, attempts: Sequence[tuple[int, int, str, AttemptRecord]]
) -> list[dict[str, Any]]:
    """Rows of ``ar_attempts`` for ``(generation, position, step, record)`` tuples."""
    return [
        {
            "run_id": run_id,
            "generation": generation,
            "position": position,
            "step": step,
            "attempt": rec.attempt,
            "at": rec.at,
            "error_type": rec.error_type,
            "message": rec.message,
            "fingerprint": rec.fingerprint,
            "error_class": rec.error_class,
            "delay": rec.delay,
        }
        for generation, position, step, rec in attempts
    ]


def _normalise_url(url: str) -> str:
    if not url or not isinstance(url, str):
        raise ConfigurationError(
            "empty state database URL; set AGENT_RUNTIME_DB or --db (e.g. "
            "sqlite:///.agent_runtime/state.db)"
        )
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigurationError(
            f"malformed state database URL {url!r}: {exc}; expected sqlite:///PATH or "
            "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB"
        ) from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _import_extension_tables() -> None:
    """Import the modules whose tables live in the state database, so create_all sees them."""
    import importlib

    for module in ("agent_runtime.resilience.breaker", "agent_runtime.workspace.models"):
        with contextlib.suppress(ModuleNotFoundError):
            importlib.import_module(module)


def dump_attempts(rows: Iterable[AttemptRow]) -> str:
    """Serialize attempt rows as the JSON list a dead-letter entry stores."""
    return json.dumps(
        [
            {
                "step": r.step,
                "position": r.position,
                "attempt": r.attempt,
                "at": r.at,
                "error_type": r.error_type,
                "message": r.message,
                "error_class": r.error_class,
                "fingerprint": r.fingerprint,
                "delay": r.delay,
            }
            for r in rows
        ]
    )
