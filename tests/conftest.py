"""Shared fixtures: state databases on SQLite and on the real PostgreSQL, and event recorders.

PostgreSQL comes from the test command (``scripts/test``), which installs Debian's
``postgresql``, starts a private cluster and exports ``AGENT_RUNTIME_TEST_PG_URL``. Each test gets
its own schema (``search_path``), dropped afterwards, so tests never see each other's rows.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from agent_runtime.events import Event, Scope, hooks

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:55432/agent_runtime_test"


def pg_base_url() -> str:
    """The PostgreSQL URL the test command exported (or the local default)."""
    return os.environ.get("AGENT_RUNTIME_TEST_PG_URL", DEFAULT_PG_URL)


@contextlib.contextmanager
def pg_schema_url() -> Iterator[str]:
    """Create a fresh schema, yield a URL whose search_path is that schema, drop it after."""
    base = pg_base_url()
    schema = "t_" + secrets.token_hex(6)
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    except sa.exc.OperationalError as exc:  # pragma: no cover - CI always has PostgreSQL
        admin.dispose()
        pytest.fail(
            f"PostgreSQL is not reachable at {base} ({exc.orig}); run the README's test command, "
            "which installs and starts it"
        )
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    """A fresh SQLite state database file."""
    return f"sqlite:///{tmp_path}/state.db"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema on the real PostgreSQL."""
    with pg_schema_url() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """Every store test runs on SQLite and on the real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/state.db"
    else:
        with pg_schema_url() as url:
            yield url


class Recorder:
    """A hook that records every event and scope it sees."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.scopes: list[Scope] = []

    def on_event(self, event: Event) -> None:
        """Record ``event``."""
        self.events.append(event)

    def scope(self, scope: Scope) -> contextlib.AbstractContextManager[Any]:
        """Record ``scope``."""
        self.scopes.append(scope)
        return contextlib.nullcontext()

    def of(self, kind: type[Any]) -> list[Any]:
        """Return the recorded events of one type."""
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """Subscribe a recording hook for the duration of the test."""
    rec = Recorder()
    hooks.subscribe(rec)
    try:
        yield rec
    finally:
        hooks.unsubscribe(rec)
