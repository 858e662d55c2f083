"""The store on SQLite and on the real PostgreSQL: transactions, fencing, schema, bad input."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from agent_runtime.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    InvalidTransitionError,
    RunNotFoundError,
    SchemaVersionError,
    StaleLeaseError,
)
from agent_runtime.state.machine import RunStatus
from agent_runtime.state.models import SCHEMA_VERSION
from agent_runtime.state.serialization import checksum
from agent_runtime.state.store import Store


def _new_run(store: Store, run_id: str = "run-1", owner: str | None = "me") -> None:
    store.create_run(
        run_id=run_id,
        workflow="wf",
        entrypoint=None,
        inputs='{"args":[],"kwargs":{}}',
        serializer="json",
        trace_id="a" * 32,
        parent_span_id=None,
        timeout=60.0,
        owner=owner,
        lease_expires_at=store.clock() + 30 if owner else None,
        reason="started",
    )


def test_new_run_is_pending_with_its_first_event(db_url: str) -> None:
    """Creating a run writes the run and its (new) -> pending event together."""
    store = Store(db_url)
    _new_run(store)
    assert store.get_run("run-1").status == "pending"
    (event,) = store.events("run-1")
    assert (event.from_status, event.to_status, event.reason) == (None, "pending", "started")
    store.close()


def test_transition_persists_state_and_event_atomically(db_url: str) -> None:
    """A valid transition changes the state and writes one event row with time and reason."""
    store = Store(db_url)
    _new_run(store)
    result = store.transition("run-1", RunStatus.RUNNING, reason="go", owner="me")
    assert (result.from_status, result.to_status) == (RunStatus.PENDING, RunStatus.RUNNING)
    events = store.events("run-1")
    assert [(e.from_status, e.to_status) for e in events] == [
        (None, "pending"),
        ("pending", "running"),
    ]
    assert events[-1].reason == "go"
    assert events[-1].at >= events[0].at
    store.close()


def test_invalid_transition_changes_nothing(db_url: str) -> None:
    """An invalid transition raises, and neither the state nor the events change."""
    store = Store(db_url)
    _new_run(store)
    with pytest.raises(InvalidTransitionError) as info:
        store.transition("run-1", RunStatus.SUCCESS, reason="skip ahead")
    assert (info.value.from_state, info.value.to_state) == ("pending", "success")
    assert store.get_run("run-1").status == "pending"
    assert len(store.events("run-1")) == 1
    store.close()


def test_transition_by_a_non_owner_is_fenced(db_url: str) -> None:
    """Only the lease holder may change a run's state."""
    store = Store(db_url)
    _new_run(store, owner="me")
    with pytest.raises(StaleLeaseError):
        store.transition("run-1", RunStatus.RUNNING, reason="x", owner="someone-else")
    assert store.get_run("run-1").status == "pending"
    store.close()


def test_checkpoint_write_is_fenced_on_owner_and_status(db_url: str) -> None:
    """The hot-path insert succeeds for the running owner only."""
    store = Store(db_url)
    _new_run(store, owner="me")
    writer = store.checkpoint_writer("run-1", "me")
    digest = checksum("run-1", 0, "s", "json", "1")
    with pytest.raises(StaleLeaseError):  # still pending
        writer.write(0, "s", "1", "json", digest, 1, 0.0, store.clock())
    store.transition("run-1", RunStatus.RUNNING, reason="go", owner="me")
    writer.write(0, "s", "1", "json", digest, 1, 0.0, store.clock())
    assert store.load_steps("run-1")[0].output == "1"
    intruder = store.checkpoint_writer("run-1", "intruder")
    with pytest.raises(StaleLeaseError):
        intruder.write(1, "t", "2", "json", checksum("run-1", 1, "t", "json", "2"), 1, 0.0, 0.0)
    with pytest.raises(StaleLeaseError, match="already checkpointed"):
        writer.write(0, "s", "1", "json", digest, 1, 0.0, store.clock())
    intruder.close()
    writer.close()
    assert list(store.load_steps("run-1")) == [0]
    store.close()


def test_claim_is_a_compare_and_set(db_url: str) -> None:
    """Of many concurrent claimers of one run, exactly one wins."""
    store = Store(db_url)
    _new_run(store, owner="dead")
    winners: list[str] = []
    barrier = threading.Barrier(6)

    def claim(me: str) -> None:
        barrier.wait()
        row = store.claim("run-1", me, store.clock() + 30, expected_owner="dead", reason="test")
        if row is not None:
            winners.append(me)

    threads = [threading.Thread(target=claim, args=(f"p{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert store.get_run("run-1").owner == winners[0]
    store.close()


def test_claim_pending_hands_out_disjoint_runs(db_url: str) -> None:
    """Concurrent workers claiming enqueued runs never get the same run."""
    store = Store(db_url)
    for i in range(20):
        _new_run(store, f"q{i:02d}", owner=None)
    got: dict[str, list[str]] = {}
    barrier = threading.Barrier(4)

    def work(me: str) -> None:
        barrier.wait()
        mine: list[str] = []
        while batch := store.claim_pending(me, store.clock() + 30, 3):
            mine.extend(r.id for r in batch)
        got[me] = mine

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [rid for ids in got.values() for rid in ids]
    assert sorted(claimed) == [f"q{i:02d}" for i in range(20)]
    store.close()


def test_renew_and_release_leases(db_url: str) -> None:
    """Renewal extends every unfinished lease of an owner; release lets one lapse at once."""
    store = Store(db_url)
    _new_run(store, "a", owner="me")
    _new_run(store, "b", owner="me")
    _new_run(store, "c", owner="other")
    assert store.renew_leases("me", 10**10) == 2
    assert store.get_run("a").lease_expires_at == 10**10
    assert store.release_lease("a", "me")
    assert store.get_run("a").lease_expires_at == 0.0
    assert not store.release_lease("c", "me")
    store.close()


def test_unknown_run_is_a_clear_error(db_url: str) -> None:
    """Asking for a run that does not exist says so and how to list runs."""
    store = Store(db_url)
    with pytest.raises(RunNotFoundError, match="runs list"):
        store.get_run("nope")
    store.close()


def test_newer_schema_is_refused_and_not_altered(db_url: str) -> None:
    """A database stamped by a newer agent-runtime is refused and left as it is."""
    store = Store(db_url)
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            f"UPDATE ar_meta SET value = '{SCHEMA_VERSION + 1}' WHERE key = 'schema_version'"
        )
    store.close()
    with pytest.raises(SchemaVersionError) as info:
        Store(db_url)
    assert info.value.found == SCHEMA_VERSION + 1
    assert "upgrade agent-runtime" in str(info.value)
    check = sa.create_engine(db_url)
    with check.connect() as conn:
        value = conn.exec_driver_sql("SELECT value FROM ar_meta").scalar_one()
    check.dispose()
    assert value == str(SCHEMA_VERSION + 1)


def test_schema_is_created_once_and_versioned(db_url: str) -> None:
    """Opening twice keeps one version row with the current version."""
    Store(db_url).close()
    store = Store(db_url)
    assert store.schema_version() == SCHEMA_VERSION
    store.close()


def test_unreachable_postgres_is_a_clear_error() -> None:
    """A PostgreSQL URL nobody listens on gives DatabaseUnavailableError with what to check."""
    with pytest.raises(DatabaseUnavailableError) as info:
        Store("postgresql://user:secret@127.0.0.1:1/db")
    assert "secret" not in str(info.value)
    assert "***" in info.value.url
    assert "server is running" in str(info.value)


def test_sqlite_file_that_is_not_a_database(tmp_path: Path) -> None:
    """A non-database file is reported, with what to do, and never overwritten."""
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite, " * 100)
    with pytest.raises(DatabaseUnavailableError, match="move it away"):
        Store(f"sqlite:///{path}")
    assert path.read_bytes().startswith(b"this is not sqlite")


def test_unwritable_sqlite_directory(tmp_path: Path) -> None:
    """A path whose directory cannot be created is a clear error."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DatabaseUnavailableError, match="writable path"):
        Store(f"sqlite:///{blocker}/sub/state.db")


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("sqlite://", "in-memory"),
        ("mysql://u@h/db", "unsupported"),
        ("::not a url::", "malformed"),
        ("", "empty"),
    ],
)
def test_bad_urls_are_configuration_errors(url: str, match: str) -> None:
    """Unsupported, malformed or empty URLs are refused with the accepted forms."""
    with pytest.raises(ConfigurationError, match=match):
        Store(url)


def test_postgres_scheme_without_driver_means_psycopg() -> None:
    """postgresql:// is read as psycopg 3 (the driver that is installed)."""
    from agent_runtime.state.store import _normalise_url

    assert _normalise_url("postgresql://u:p@h/db").startswith("postgresql+psycopg://u:p@h/db")
