"""Where workspace manifests are kept: the ``SnapshotStore`` protocol and its two implementations.

:class:`SqlSnapshotStore` keeps them in the runtime's database (the ``ar_workspace_snapshots``
table, over any SQLAlchemy ``Engine``; SQLite and PostgreSQL are tested), so ``agent-runtime
rollback`` and ``diff`` work from any machine that shares the database and the blob directory.
:class:`MemorySnapshotStore` keeps them in a dict, for unit tests and throw-away runs; both store
the same JSON document, so they behave alike. Saving a position that already exists replaces it
(a resumed run re-snapshots the step it redoes).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from agent_runtime import errors
from agent_runtime.workspace.manifest import Snapshot, entries_from_json, entries_to_json
from agent_runtime.workspace.models import TABLE_NAME, snapshot_table

__all__ = ["MemorySnapshotStore", "SnapshotInfo", "SnapshotStore", "SqlSnapshotStore"]


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A snapshot's summary, without its manifest.

    Attributes:
        run_id: The run.
        position: The step position (-1 = initial state).
        step: The step name.
        root: The workspace directory when the snapshot was taken.
        created_at: Epoch seconds.
        file_count: Regular files.
        total_bytes: Sum of their sizes.
    """

    run_id: str
    position: int
    step: str
    root: str
    created_at: float
    file_count: int
    total_bytes: int

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping."""
        return {
            "run_id": self.run_id,
            "position": self.position,
            "step": self.step,
            "root": self.root,
            "created_at": self.created_at,
            "file_count": self.file_count,
            "total_bytes": self.total_bytes,
        }


@runtime_checkable
class SnapshotStore(Protocol):
    """Persists workspace snapshots per run and step position."""

    def save(self, snapshot: Snapshot) -> None:
        """Store a snapshot, replacing any at the same (run, position).

        Args:
            snapshot: The snapshot.
        """

    def get(self, run_id: str, position: int) -> Snapshot | None:
        """Return the snapshot at a position, or None.

        Args:
            run_id: The run.
            position: The step position.
        """

    def latest(self, run_id: str) -> Snapshot | None:
        """Return the snapshot with the highest position, or None when the run has none.

        Args:
            run_id: The run.
        """

    def previous(self, run_id: str, position: int) -> Snapshot | None:
        """Return the snapshot with the highest position below ``position``, or None.

        Args:
            run_id: The run.
            position: The position to look below.
        """

    def list_snapshots(self, run_id: str) -> list[SnapshotInfo]:
        """Return the run's snapshots in position order (empty for an unknown run).

        Args:
            run_id: The run.
        """

    def delete_run(self, run_id: str) -> int:
        """Delete every snapshot of a run (not the blobs, which other runs may share).

        Args:
            run_id: The run.

        Returns:
            How many snapshots were deleted.
        """


def _info(snapshot: Snapshot) -> SnapshotInfo:
    return SnapshotInfo(
        run_id=snapshot.run_id,
        position=snapshot.position,
        step=snapshot.step,
        root=snapshot.root,
        created_at=snapshot.created_at,
        file_count=snapshot.file_count,
        total_bytes=snapshot.total_bytes,
    )


class MemorySnapshotStore:
    """A :class:`SnapshotStore` in process memory (unit tests, throw-away runs).

    Snapshots go through the same JSON document as the SQL store, so a manifest that would not
    survive the database does not survive here either.
    """

    def __init__(self) -> None:
        self._rows: dict[str, dict[int, tuple[SnapshotInfo, str]]] = {}
        self._lock = threading.Lock()

    def save(self, snapshot: Snapshot) -> None:
        """Store a snapshot, replacing any at the same (run, position).

        Args:
            snapshot: The snapshot.
        """
        doc = entries_to_json(snapshot.entries.values(), scanned_at_ns=snapshot.scanned_at_ns)
        with self._lock:
            self._rows.setdefault(snapshot.run_id, {})[snapshot.position] = (_info(snapshot), doc)

    def get(self, run_id: str, position: int) -> Snapshot | None:
        """Return the snapshot at a position, or None.

        Args:
            run_id: The run.
            position: The step position.

        Returns:
            The snapshot, or None.
        """
        with self._lock:
            row = self._rows.get(run_id, {}).get(position)
        return None if row is None else _snapshot(row[0], row[1])

    def latest(self, run_id: str) -> Snapshot | None:
        """Return the snapshot with the highest position, or None.

        Args:
            run_id: The run.

        Returns:
            The snapshot, or None.
        """
        with self._lock:
            positions = list(self._rows.get(run_id, {}))
        return self.get(run_id, max(positions)) if positions else None

    def previous(self, run_id: str, position: int) -> Snapshot | None:
        """Return the snapshot with the highest position below ``position``, or None.

        Args:
            run_id: The run.
            position: The position to look below.

        Returns:
            The snapshot, or None.
        """
        with self._lock:
            below = [p for p in self._rows.get(run_id, {}) if p < position]
        return self.get(run_id, max(below)) if below else None

    def list_snapshots(self, run_id: str) -> list[SnapshotInfo]:
        """Return the run's snapshots in position order.

        Args:
            run_id: The run.

        Returns:
            The summaries (empty for an unknown run).
        """
        with self._lock:
            rows = self._rows.get(run_id, {})
            return [rows[p][0] for p in sorted(rows)]

    def delete_run(self, run_id: str) -> int:
        """Delete every snapshot of a run.

        Args:
            run_id: The run.

        Returns:
            How many snapshots were deleted.
        """
        with self._lock:
            return len(self._rows.pop(run_id, {}))


def _snapshot(info: SnapshotInfo, doc: str) -> Snapshot:
    entries, scanned_at_ns = entries_from_json(doc)
    return Snapshot(
        run_id=info.run_id,
        position=info.position,
        step=info.step,
        root=info.root,
        created_at=info.created_at,
        scanned_at_ns=scanned_at_ns,
        entries=entries,
    )


class SqlSnapshotStore:
    """A :class:`SnapshotStore` over a SQLAlchemy engine (SQLite or PostgreSQL).

    The table is normally created by the runtime's store with every other table; call
    :meth:`create_table` when using this store on its own.

    Args:
        engine: The runtime database's engine.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._table = snapshot_table()

    def __repr__(self) -> str:
        return f"SqlSnapshotStore({self._url()!r})"

    def _url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        try:
            conn = self.engine.connect()
        except sa_exc.SQLAlchemyError as exc:
            raise errors.DatabaseUnavailableError(
                f"cannot connect to the state database {self._url()} to read or write workspace "
                f"snapshots: {getattr(exc, 'orig', None) or exc}; check that it is running and "
                "that the URL (--db / AGENT_RUNTIME_DB) is right",
                url=self._url(),
            ) from exc
        try:
            with conn, conn.begin():
                yield conn
        except sa_exc.SQLAlchemyError as exc:
            raise errors.StoreError(
                f"workspace snapshot query failed on {self._url()}: "
                f"{getattr(exc, 'orig', None) or exc}; if the table {TABLE_NAME} is missing, "
                "let the runtime create its tables (or call SqlSnapshotStore.create_table())"
            ) from exc

    def create_table(self) -> None:
        """Create the ``ar_workspace_snapshots`` table if it does not exist.

        Raises:
            DatabaseUnavailableError: The database cannot be reached.
            StoreError: The statement failed.
        """
        with self._begin() as conn:
            self._table.create(conn, checkfirst=True)

    def save(self, snapshot: Snapshot) -> None:
        """Store a snapshot, replacing any at the same (run, position).

        Args:
            snapshot: The snapshot.

        Raises:
            DatabaseUnavailableError: The database cannot be reached.
            StoreError: The statement failed.
        """
        values = {
            "run_id": snapshot.run_id,
            "position": snapshot.position,
            "step": snapshot.step,
            "root": snapshot.root,
            "created_at": snapshot.created_at,
            "file_count": snapshot.file_count,
            "total_bytes": snapshot.total_bytes,
            "manifest": entries_to_json(
                snapshot.entries.values(), scanned_at_ns=snapshot.scanned_at_ns
            ),
        }
        t = self._table
        with self._begin() as conn:
            dialect = conn.dialect.name
            if dialect in ("sqlite", "postgresql"):
                # One statement: a concurrent writer of the same position cannot make it fail.
                insert: Any = sqlite_insert if dialect == "sqlite" else pg_insert
                stmt = insert(t).values(**values)
                updates = {k: stmt.excluded[k] for k in values if k not in ("run_id", "position")}
                conn.execute(
                    stmt.on_conflict_do_update(index_elements=["run_id", "position"], set_=updates)
                )
            else:
                conn.execute(
                    t.delete().where(
                        t.c.run_id == snapshot.run_id, t.c.position == snapshot.position
                    )
                )
                conn.execute(t.insert().values(**values))

    def _one(self, where: Any, order: Any = None) -> Snapshot | None:
        t = self._table
        stmt = sa.select(t).where(where)
        if order is not None:
            stmt = stmt.order_by(order).limit(1)
        with self._begin() as conn:
            row = conn.execute(stmt).mappings().first()
        if row is None:
            return None
        return _snapshot(_row_info(row), row["manifest"])

    def get(self, run_id: str, position: int) -> Snapshot | None:
        """Return the snapshot at a position, or None.

        Args:
            run_id: The run.
            position: The step position.

        Returns:
            The snapshot, or None.

        Raises:
            DatabaseUnavailableError: The database cannot be reached.
            StoreError: The query failed.
            WorkspaceError: The stored manifest is unreadable.
        """
        t = self._table
        return self._one(sa.and_(t.c.run_id == run_id, t.c.position == position))

    def latest(self, run_id: str) -> Snapshot | None:
        """Return the snapshot with the highest position, or None.

        Args:
            run_id: The run.

        Returns:
            The snapshot, or None.

        Raises:
            DatabaseUnavailableError: The database cannot be reached.
            StoreError: The query failed.
        """
        t = self._table
        return self._one(t.c.run_id == run_id, t.c.position.desc())

    def previous(self, run_id: str, position: int) -> Snapshot | None:
        """Return the snapshot with the highest position below ``position``, or None.

        Args:
            run_id: The run.
            position: The position to look below.

        Returns:
            The snapshot, or None.

        Raises:
            DatabaseUnavailableError: The database cannot be reached.
            StoreError: The query failed.
        """
        t = self._table
        return self._one(
            sa.and_(t.c.run_id == run_id, t.c.position < position), t.c.position.desc()
        )

    def list_snapshots(self, run_id: str) -> list[SnapshotInfo]:
        """Return the run's snapshots in position order.

        Args:
            run_id: The run.

        Returns:
            The summaries (empty for an unknown run).

        Raises:
            DatabaseUnavailableError: The database cannot be reached.
            StoreError: The query failed.
        """
        t = self._table
        columns = [c for c in t.c if c.name not in ("id", "manifest")]
        stmt = sa.select(*columns).where(t.c.run_id == run_id).order_by(t.c.position)
        with self._begin() as conn:
            return [_row_info(row) for row in conn.execute(stmt).mappings()]

    def delete_run(self, run_id: str) -> int:
        """Delete every snapshot of a run.

        Args:
            run_id: The run.

        Returns:
            How many snapshots were deleted.

        Raises:
            DatabaseUnavailableError: The database cannot be reached.
            StoreError: The statement failed.
        """
        t = self._table
        with self._begin() as conn:
            result = conn.execute(t.delete().where(t.c.run_id == run_id))
            return int(result.rowcount)


def _row_info(row: Any) -> SnapshotInfo:
    return SnapshotInfo(
        run_id=row["run_id"],
        position=row["position"],
        step=row["step"],
        root=row["root"],
        created_at=row["created_at"],
        file_count=row["file_count"],
        total_bytes=row["total_bytes"],
    )
