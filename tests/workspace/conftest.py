"""Fixtures for workspace tests: a workspace factory, snapshot stores, and an exact tree reader.

``tree()`` records everything a rollback promises to restore (kind, permission bits, owner, bytes
or symlink target) without following a single symlink, so "restored exactly" is a plain ``==``.
The PostgreSQL store runs against the real server (``AGENT_RUNTIME_TEST_PG_URL``, default the
local test cluster); each test deletes the rows of its own run ids.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from agent_runtime.events import Event, Scope, WorkspaceRolledBack, hooks
from agent_runtime.workspace import (
    BlobStore,
    MemorySnapshotStore,
    SnapshotStore,
    SqlSnapshotStore,
    Workspace,
    WorkspaceConfig,
)

PG_URL = os.environ.get(
    "AGENT_RUNTIME_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:55432/agent_runtime_test"
)

TreeState = dict[str, tuple[Any, ...]]


def tree(root: Path) -> TreeState:
    """Read a directory tree exactly (no symlink followed): path -> (kind, mode, uid, gid, data)."""
    out: TreeState = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            st = full.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", None, st.st_uid, st.st_gid, os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode, st.st_uid, st.st_gid, None)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", mode, st.st_uid, st.st_gid, full.read_bytes())
            else:
                out[rel] = ("special", mode, st.st_uid, st.st_gid, None)
    return out


@pytest.fixture
def read_tree() -> Callable[[Path], TreeState]:
    """The exact tree reader, as a fixture (test modules here are not a package)."""
    return tree


@pytest.fixture
def ws_root(tmp_path: Path) -> Path:
    """The workspace directory (not created: the Workspace creates it)."""
    return tmp_path / "ws"


@pytest.fixture
def blob_dir(tmp_path: Path) -> Path:
    """The blob directory."""
    return tmp_path / "state" / "blobs"


@pytest.fixture
def mem_store() -> MemorySnapshotStore:
    """An in-memory snapshot store."""
    return MemorySnapshotStore()


@pytest.fixture
def make_ws(
    ws_root: Path, blob_dir: Path, mem_store: MemorySnapshotStore
) -> Callable[..., Workspace]:
    """Build a Workspace over the test directory, blob dir and in-memory store."""

    def make(
        run_id: str = "run-1",
        *,
        store: SnapshotStore | None = None,
        config: WorkspaceConfig | None = None,
        root: Path | None = None,
        **kwargs: Any,
    ) -> Workspace:
        return Workspace(
            root if root is not None else ws_root,
            run_id,
            store if store is not None else mem_store,
            blobs=BlobStore(blob_dir),
            config=config,
            **kwargs,
        )

    return make


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the workspace holding a file the sandbox must never reach."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret.txt").write_bytes(b"host secret\n")
    return out


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[sa.Engine]:
    """A SQLite database with the snapshot table."""
    engine = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    SqlSnapshotStore(engine).create_table()
    yield engine
    engine.dispose()


@contextlib.contextmanager
def pg_engine() -> Iterator[sa.Engine]:
    """The real PostgreSQL test database with the snapshot table."""
    engine = sa.create_engine(PG_URL)
    try:
        SqlSnapshotStore(engine).create_table()
        yield engine
    finally:
        engine.dispose()


class TrackingSqlStore(SqlSnapshotStore):
    """A SQL store that remembers which runs it wrote, so a test can delete exactly its rows."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(engine)
        self.run_ids: set[str] = set()

    def save(self, snapshot: Any) -> None:
        """Save and remember the run id."""
        self.run_ids.add(snapshot.run_id)
        super().save(snapshot)

    def cleanup(self) -> None:
        """Delete every row this store wrote."""
        for run_id in self.run_ids:
            self.delete_run(run_id)


@pytest.fixture
def pg_store() -> Iterator[TrackingSqlStore]:
    """A snapshot store on the real PostgreSQL; its rows are deleted afterwards."""
    with pg_engine() as engine:
        store = TrackingSqlStore(engine)
        try:
            yield store
        finally:
            store.cleanup()


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SnapshotStore]:
    """Each snapshot store implementation (SQL rows the test wrote are deleted afterwards)."""
    if request.param == "memory":
        yield MemorySnapshotStore()
    elif request.param == "sqlite":
        engine = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
        SqlSnapshotStore(engine).create_table()
        yield SqlSnapshotStore(engine)
        engine.dispose()
    else:
        with pg_engine() as engine:
            store = TrackingSqlStore(engine)
            try:
                yield store
            finally:
                store.cleanup()


@pytest.fixture
def run_id() -> str:
    """A unique run id (PostgreSQL is shared between test runs)."""
    return "ws-test-" + secrets.token_hex(6)


class RollbackRecorder:
    """A hook that records WorkspaceRolledBack events."""

    def __init__(self) -> None:
        self.events: list[WorkspaceRolledBack] = []

    def on_event(self, event: Event) -> None:
        """Record rollback events."""
        if isinstance(event, WorkspaceRolledBack):
            self.events.append(event)

    def scope(self, scope: Scope) -> contextlib.AbstractContextManager[Any]:
        """No scopes are of interest."""
        return contextlib.nullcontext()


@pytest.fixture
def rollback_events() -> Iterator[RollbackRecorder]:
    """Subscribe a rollback-event recorder for the test."""
    rec = RollbackRecorder()
    hooks.subscribe(rec)
    try:
        yield rec
    finally:
        hooks.unsubscribe(rec)
