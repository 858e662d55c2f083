"""Snapshot stores: in memory, on SQLite and on the real PostgreSQL behave alike."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from agent_runtime.errors import DatabaseUnavailableError, StoreError, WorkspaceError
from agent_runtime.workspace import (
    BlobStore,
    Entry,
    Snapshot,
    SnapshotStore,
    SqlSnapshotStore,
    Workspace,
    WorkspaceSnapshotRow,
)
from agent_runtime.workspace.manifest import entries_from_json, entries_to_json
from agent_runtime.workspace.models import TABLE_NAME

# A file name that is not valid UTF-8 (Linux allows any bytes but '/' and NUL).
ODD_NAME = os.fsdecode(b"caf\xe9 \xe2\x98\x83.txt")


def make_snapshot(run_id: str, position: int, step: str, *paths: str) -> Snapshot:
    """A snapshot holding one file per path."""
    entries = {
        p: Entry(p, "file", 0o644, size=len(p), sha256=f"{i:064x}", mtime_ns=i, ino=i)
        for i, p in enumerate(paths)
    }
    return Snapshot(run_id, position, step, "/ws", 1000.0 + position, 42, entries)


def test_save_get_list_latest_previous(any_store: SnapshotStore, run_id: str) -> None:
    """The protocol's queries answer per run and position."""
    assert any_store.latest(run_id) is None
    assert any_store.list_snapshots(run_id) == []
    any_store.save(make_snapshot(run_id, -1, "initial"))
    any_store.save(make_snapshot(run_id, 0, "fetch", "a.txt"))
    any_store.save(make_snapshot(run_id, 2, "write", "a.txt", "b/c.txt"))
    got = any_store.get(run_id, 0)
    assert got == make_snapshot(run_id, 0, "fetch", "a.txt")
    latest = any_store.latest(run_id)
    assert latest is not None
    assert latest.position == 2
    previous = any_store.previous(run_id, 2)
    assert previous is not None
    assert previous.position == 0
    assert any_store.previous(run_id, -1) is None
    assert any_store.get(run_id, 1) is None
    infos = any_store.list_snapshots(run_id)
    assert [(i.position, i.step, i.file_count, i.total_bytes) for i in infos] == [
        (-1, "initial", 0, 0),
        (0, "fetch", 1, 5),
        (2, "write", 2, 12),
    ]
    assert infos[1].as_dict()["root"] == "/ws"
    assert any_store.list_snapshots(run_id + "-other") == []


def test_saving_a_position_again_replaces_it(any_store: SnapshotStore, run_id: str) -> None:
    """A resumed run re-snapshotting a step replaces the old manifest."""
    any_store.save(make_snapshot(run_id, 0, "step", "old.txt"))
    any_store.save(make_snapshot(run_id, 0, "step", "new.txt"))
    got = any_store.get(run_id, 0)
    assert got is not None
    assert list(got.entries) == ["new.txt"]
    assert len(any_store.list_snapshots(run_id)) == 1


def test_delete_run(any_store: SnapshotStore, run_id: str) -> None:
    """delete_run removes one run's snapshots and no other run's."""
    any_store.save(make_snapshot(run_id, -1, "initial"))
    any_store.save(make_snapshot(run_id, 0, "s"))
    any_store.save(make_snapshot(run_id + "-b", -1, "initial"))
    assert any_store.delete_run(run_id) == 2
    assert any_store.list_snapshots(run_id) == []
    assert len(any_store.list_snapshots(run_id + "-b")) == 1
    assert any_store.delete_run(run_id + "-b") == 1


def test_odd_file_names_survive_the_store(any_store: SnapshotStore, run_id: str) -> None:
    """Non-UTF-8 and non-ASCII names round-trip through the stored JSON."""
    any_store.save(make_snapshot(run_id, 0, "odd", ODD_NAME, "日本語.txt"))
    got = any_store.get(run_id, 0)
    assert got is not None
    assert set(got.entries) == {ODD_NAME, "日本語.txt"}


def test_full_workspace_cycle_on_each_store(
    any_store: SnapshotStore, run_id: str, tmp_path: Path
) -> None:
    """Snapshot, diff and rollback work the same over every store, odd names included."""
    root = tmp_path / "ws"
    root.mkdir()
    (root / ODD_NAME).write_bytes(b"odd")
    ws = Workspace(root, run_id, any_store, blobs=BlobStore(tmp_path / "blobs"))
    ws.put_file("a.txt", "one\n", mode=0o755)
    ws.snapshot(0, "write")
    ws.put_file("a.txt", "two\n")
    (root / ODD_NAME).unlink()
    ws.snapshot(1, "edit")
    assert [c.path for c in ws.changes(1).deleted] == [ODD_NAME]
    assert "-one\n+two\n" in ws.diff(0, 1).files[0].diff
    ws.rollback(0)
    assert ws.get_file("a.txt") == b"one\n"
    assert (root / "a.txt").stat().st_mode & 0o777 == 0o755
    assert (root / ODD_NAME).read_bytes() == b"odd"


def test_table_is_on_the_shared_metadata() -> None:
    """The runtime's create_all sees the table: it is on SQLModel.metadata with its key."""
    from sqlmodel import SQLModel

    table = SQLModel.metadata.tables[TABLE_NAME]
    assert table is WorkspaceSnapshotRow.__table__
    unique = {tuple(c.name for c in u.columns) for u in table.constraints if u.name}
    assert ("run_id", "position") in unique


def test_unreachable_database(tmp_path: Path) -> None:
    """A database that cannot be opened gives DatabaseUnavailableError naming the URL."""
    engine = sa.create_engine(f"sqlite:///{tmp_path}/no/such/dir/state.db")
    store = SqlSnapshotStore(engine)
    with pytest.raises(DatabaseUnavailableError, match=r"cannot connect.*no/such/dir") as info:
        store.list_snapshots("r")
    assert info.value.url.endswith("state.db")


def test_missing_table_says_how_to_create_it(tmp_path: Path) -> None:
    """Querying before the table exists explains who creates it."""
    engine = sa.create_engine(f"sqlite:///{tmp_path}/state.db")
    store = SqlSnapshotStore(engine)
    with pytest.raises(StoreError, match=r"ar_workspace_snapshots.*create_table"):
        store.get("r", 0)
    store.create_table()
    store.create_table()  # idempotent
    assert store.get("r", 0) is None


def test_unreadable_manifest_is_a_workspace_error(sqlite_engine: sa.Engine) -> None:
    """A damaged or newer-format manifest row is reported, not half-parsed."""
    store = SqlSnapshotStore(sqlite_engine)
    store.save(make_snapshot("r", 0, "s", "a"))
    with sqlite_engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE {TABLE_NAME} SET manifest = '{{\"format\": 99}}'")
    with pytest.raises(WorkspaceError, match=r"format 99.*upgrade agent-runtime"):
        store.get("r", 0)
    with sqlite_engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE {TABLE_NAME} SET manifest = 'not json'")
    with pytest.raises(WorkspaceError, match="unreadable"):
        store.get("r", 0)


def test_manifest_json_roundtrip_keeps_every_field() -> None:
    """Serialization keeps symlink targets, set-id modes, owners and cache fields."""
    entries = [
        Entry("d", "dir", 0o2775, uid=5, gid=6, mtime_ns=1, ctime_ns=2, ino=3),
        Entry("d/l", "symlink", 0o777, size=4, target="../x", uid=7, gid=8),
        Entry("f", "file", 0o4755, size=1, sha256="f" * 64, mtime_ns=9, ctime_ns=10, ino=11),
    ]
    doc = entries_to_json(entries, scanned_at_ns=123)
    parsed, scanned = entries_from_json(doc)
    assert scanned == 123
    assert list(parsed.values()) == entries


@pytest.mark.postgres
def test_concurrent_saves_of_one_position_on_postgres(pg_store: SqlSnapshotStore) -> None:
    """Two writers of the same (run, position) never fail: the upsert is one statement."""
    import threading

    run = "ws-test-concurrent-" + os.urandom(4).hex()
    errors: list[BaseException] = []

    def writer(tag: str) -> None:
        try:
            for _ in range(20):
                pg_store.save(make_snapshot(run, 0, tag, f"{tag}.txt"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    [info] = pg_store.list_snapshots(run)
    assert info.step in ("x", "y")
