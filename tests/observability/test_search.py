"""Tests of the embedded log store: real SQLite files, every filter, retention and failures."""

from __future__ import annotations

import errno
import itertools
import json
import multiprocessing
import os
import random
import re
import sqlite3
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from observability.records import LogEntry, format_timestamp
from observability.search import (
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_RECORDS,
    DEFAULT_PATH,
    LEVELS,
    SCHEMA_VERSION,
    LocalLogStore,
    LocalSearchConfig,
    level_number,
    parse_duration,
    parse_time,
)

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def entry(
    message: str,
    *,
    at: float = NOW,
    level: str = "INFO",
    logger: str = "app",
    trace_id: str | None = None,
    run_id: str | None = None,
    exception: dict[str, str] | None = None,
    **extra: Any,
) -> LogEntry:
    """Build a record shaped like ``observability.records.build_entry`` builds them."""
    fields: dict[str, Any] = {
        "timestamp": format_timestamp(at),
        "level": level,
        "logger": logger,
        "message": message,
        "service": "test",
    }
    if trace_id is not None:
        fields["trace_id"] = trace_id
        fields["span_id"] = "00f067aa0ba902b7"
    if run_id is not None:
        fields["run_id"] = run_id
    fields.update(extra)
    if exception is not None:
        fields["exception"] = exception
    return LogEntry(round(at * 1e9), level, fields)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    """A fresh store in a temporary directory, its clock fixed at NOW."""
    s = LocalLogStore(tmp_path / "logs.db", clock=lambda: NOW)
    yield s
    s.close()


def messages(records: list[dict[str, Any]]) -> list[str]:
    """The messages of search results, in order."""
    return [r["message"] for r in records]


def fts_integrity(path: Path) -> None:
    """Run FTS5's own integrity check of the text index against the records."""
    conn = sqlite3.connect(path)
    try:
        for name in day_indexes(conn):
            conn.execute(f"INSERT INTO {name} ({name}, rank) VALUES ('integrity-check', 1)")
    finally:
        conn.close()


def day_indexes(conn: sqlite3.Connection) -> list[str]:
    """The per-day text index tables of a store, oldest first."""
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return sorted(r[0] for r in rows if re.fullmatch(r"log_fts_\d{4}_\d{2}_\d{2}", r[0]))


# -- the file --------------------------------------------------------------------------------


def test_fts5_is_available_in_this_sqlite() -> None:
    """The Python's SQLite has FTS5 (the store depends on it)."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5 (x)")
    conn.close()


def test_new_store_creates_parent_dirs_in_wal_mode(tmp_path: Path) -> None:
    """Opening a new path creates its directories, the tables, and switches to WAL."""
    path = tmp_path / "a" / "b" / "logs.db"
    with LocalLogStore(path):
        pass
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "log_records" in tables


def test_records_round_trip_as_the_logged_json(store: LocalLogStore) -> None:
    """search returns each record as exactly the JSON dict that was logged."""
    e = entry(
        "payment failed",
        level="ERROR",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        run_id="run-1",
        step="charge",
        workflow="refund",
        attempt=2,
        exception={"type": "TimeoutError", "message": "read timed out", "stack": "Traceback"},
    )
    assert store.insert([e]) == 1
    assert store.search() == [json.loads(e.json())]


def test_reopen_keeps_records(tmp_path: Path) -> None:
    """Records written by one store object are found by the next one on the same file."""
    with LocalLogStore(tmp_path / "logs.db") as first:
        first.insert([entry("kept across restarts")])
    with LocalLogStore(tmp_path / "logs.db", create=False) as second:
        assert messages(second.search("restarts")) == ["kept across restarts"]


def test_insert_of_nothing_writes_nothing(store: LocalLogStore) -> None:
    """An empty batch is a no-op that returns 0."""
    assert store.insert([]) == 0
    assert store.stats().records == 0


# -- order and limit -------------------------------------------------------------------------


def test_newest_first_by_record_time_not_insert_order(store: LocalLogStore) -> None:
    """Results are ordered by the records' own timestamps, newest first."""
    store.insert([entry("middle", at=NOW - 10), entry("newest", at=NOW)])
    store.insert([entry("oldest arrived last", at=NOW - 20)])
    assert messages(store.search()) == ["newest", "middle", "oldest arrived last"]


def test_same_microsecond_newest_inserted_first(store: LocalLogStore) -> None:
    """Records of one microsecond come newest-inserted first, none is lost."""
    store.insert([entry(f"tick {i}", at=NOW) for i in range(5)])
    store.insert([entry("tick 5", at=NOW)])
    assert messages(store.search()) == [f"tick {i}" for i in range(5, -1, -1)]


def test_more_than_a_microsecond_can_hold_still_all_kept(store: LocalLogStore) -> None:
    """Over 1,024 records with one timestamp (a bulk import) are all stored, after the rest."""
    store.insert([entry("before", at=NOW - 1)])
    store.insert([entry(f"same {i}", at=NOW) for i in range(1100)])
    assert store.stats().records == 1101
    found = store.search("same", limit=2000)
    assert len(found) == 1100
    assert store.search(limit=2000)[-1]["message"] == "before"


def test_limit(store: LocalLogStore) -> None:
    """limit caps the result to the newest records; a bad limit is refused."""
    store.insert([entry(f"n{i}", at=NOW - i) for i in range(10)])
    assert messages(store.search(limit=3)) == ["n0", "n1", "n2"]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="limit must be"):
            store.search(limit=bad)  # type: ignore[arg-type]


# -- text ------------------------------------------------------------------------------------


def test_text_matches_whole_words_case_insensitively(store: LocalLogStore) -> None:
    """A term matches whole words in any case, not substrings."""
    store.insert([entry("Connection TIMEOUT to api", at=NOW - 1), entry("timer started", at=NOW)])
    assert messages(store.search("timeout")) == ["Connection TIMEOUT to api"]
    assert store.search("time") == []
    assert messages(store.search("CONNECTION")) == ["Connection TIMEOUT to api"]


def test_text_prefix_with_star(store: LocalLogStore) -> None:
    """A term ending in * matches words that start with it."""
    store.insert([entry("timeout", at=NOW - 2), entry("timer", at=NOW - 1), entry("tame", at=NOW)])
    assert messages(store.search("time*")) == ["timer", "timeout"]
    assert messages(store.search('"time"*')) == ["timer", "timeout"]


def test_short_prefix_matches_the_whole_word(store: LocalLogStore) -> None:
    """A prefix under 3 letters matches only that word (a 1-letter prefix would scan the index)."""
    store.insert([entry("ti", at=NOW - 2), entry("tiger", at=NOW - 1), entry("tim", at=NOW)])
    assert messages(store.search("ti*")) == ["ti"]
    assert messages(store.search("tim*")) == ["tim"]
    assert messages(store.search("tig*")) == ["tiger"]


def test_text_all_terms_must_appear_in_any_order(store: LocalLogStore) -> None:
    """Several terms are ANDed and may appear in any order."""
    store.insert(
        [
            entry("retry after timeout", at=NOW - 2),
            entry("timeout only", at=NOW - 1),
            entry("timeout then retry", at=NOW),
        ]
    )
    assert messages(store.search("retry timeout")) == ["timeout then retry", "retry after timeout"]


def test_text_phrases(store: LocalLogStore) -> None:
    """Quoted words and words joined by punctuation match as an adjacent phrase."""
    store.insert(
        [
            entry("connection refused by host", at=NOW - 2),
            entry("refused connection", at=NOW - 1),
            entry("see run_id and step", at=NOW),
        ]
    )
    assert messages(store.search('"connection refused"')) == ["connection refused by host"]
    assert messages(store.search("connection-refused")) == ["connection refused by host"]
    assert messages(store.search("run_id")) == ["see run_id and step"]


def test_text_searches_exception_type_and_message(store: LocalLogStore) -> None:
    """The exception's type and message are searchable; the stack is not."""
    store.insert(
        [
            entry(
                "step failed",
                level="ERROR",
                exception={
                    "type": "httpx.ConnectError",
                    "message": "name resolution failed",
                    "stack": "Traceback: deepframe",
                },
            ),
            entry("all good", at=NOW - 1),
        ]
    )
    assert messages(store.search("resolution")) == ["step failed"]
    assert messages(store.search("ConnectError")) == ["step failed"]
    assert store.search("deepframe") == []


def test_text_ignores_accents(store: LocalLogStore) -> None:
    """Accented and plain spellings find each other."""
    store.insert([entry("café résumé")])
    assert messages(store.search("cafe resume")) == ["café résumé"]
    assert messages(store.search("CAFÉ")) == ["café résumé"]


@pytest.mark.parametrize(
    "query",
    [
        '"',
        '"unbalanced quote error',
        "error*",
        "*error",
        "err*or",
        "error AND",
        "AND error",
        "error OR timeout",
        "NOT error",
        "(error",
        "error)",
        "(error OR",
        "-error",
        "error -timeout",
        "message:error",
        "exc_text:error",
        ":error:",
        "^error",
        "NEAR(error timeout)",
        "{message}: error",
        "error + timeout",
        "'error'",
        'error "" timeout',
        "error\\",
        "error; DROP TABLE log_records",
        "error\x00",
        "*",
        "(",
        "-",
        ":",
        "AND",
        '""',
    ],
)
def test_fts_syntax_in_a_query_never_raises(store: LocalLogStore, query: str) -> None:
    """FTS5 operators and punctuation in user text are plain text, never a sqlite error."""
    store.insert([entry("error timeout and more")])
    result = store.search(query)
    assert isinstance(result, list)
    assert store.stats().records == 1  # and nothing was executed as SQL


def test_fts_operators_are_searched_as_words(store: LocalLogStore) -> None:
    """AND, OR, NOT and NEAR are words to find, not operators."""
    store.insert(
        [
            entry("error or timeout", at=NOW - 1),
            entry("error timeout", at=NOW),
        ]
    )
    assert messages(store.search("error OR timeout")) == ["error or timeout"]
    assert store.search("NEAR(error timeout)") == []
    assert messages(store.search("error -timeout")) == ["error timeout", "error or timeout"]


@pytest.mark.parametrize("query", ["*", '"', "()", "- : ^", "___", '"*"'])
def test_text_without_words_matches_nothing(store: LocalLogStore, query: str) -> None:
    """Text with no letter or digit finds nothing (no record has such a word)."""
    store.insert([entry('() - : ^ ___ * " punctuation everywhere')])
    assert store.search(query) == []


@pytest.mark.parametrize("query", ["", "   ", "\t"])
def test_blank_text_is_no_text_filter(store: LocalLogStore, query: str) -> None:
    """Empty or blank text does not filter (what a CLI passes without a search term)."""
    store.insert([entry("anything")])
    assert messages(store.search(query)) == ["anything"]


# -- filters ---------------------------------------------------------------------------------


def test_trace_id_filter(store: LocalLogStore) -> None:
    """trace_id selects one trace; upper-case input is accepted."""
    a, b = "4bf92f3577b34da6a3ce929d0e0e4736", "0af7651916cd43dd8448eb211c80319c"
    store.insert([entry("a1", trace_id=a, at=NOW - 1), entry("b1", trace_id=b), entry("none")])
    assert messages(store.search(trace_id=a)) == ["a1"]
    assert messages(store.search(trace_id=a.upper())) == ["a1"]
    assert store.search(trace_id="f" * 32) == []


def test_run_id_filter(store: LocalLogStore) -> None:
    """run_id selects one run's records, newest first."""
    store.insert(
        [
            entry("r1 first", run_id="run-1", at=NOW - 2),
            entry("r2", run_id="run-2", at=NOW - 1),
            entry("r1 second", run_id="run-1", at=NOW),
        ]
    )
    assert messages(store.search(run_id="run-1")) == ["r1 second", "r1 first"]


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("DEBUG", ["critical", "error", "warning", "info", "debug"]),
        ("info", ["critical", "error", "warning", "info"]),
        ("WARNING", ["critical", "error", "warning"]),
        ("warn", ["critical", "error", "warning"]),
        ("Error", ["critical", "error"]),
        ("CRITICAL", ["critical"]),
        ("fatal", ["critical"]),
        (30, ["critical", "error", "warning"]),
        ("40", ["critical", "error"]),
    ],
)
def test_level_means_that_level_and_above(
    store: LocalLogStore, level: str | int, expected: list[str]
) -> None:
    """level selects records at that level and above."""
    store.insert([entry(name.lower(), level=name, at=NOW - 5 + i) for i, name in enumerate(LEVELS)])
    assert messages(store.search(level=level)) == expected


@pytest.mark.parametrize("bad", ["verbose", "", "ERR", 60, -1, "99", True])
def test_unknown_level_lists_accepted_ones(store: LocalLogStore, bad: Any) -> None:
    """An unknown level raises ValueError naming the accepted levels."""
    with pytest.raises(ValueError, match="DEBUG, INFO, WARNING, ERROR, CRITICAL"):
        store.search(level=bad)


def test_custom_level_names_are_stored_by_number(store: LocalLogStore) -> None:
    """A level registered with logging.addLevelName filters by its number."""
    import logging

    logging.addLevelName(35, "NOTICE")
    try:
        store.insert([entry("notice", level="NOTICE"), entry("info", level="INFO", at=NOW - 1)])
        assert messages(store.search(level="WARNING")) == ["notice"]
        assert messages(store.search(level="ERROR")) == []
    finally:
        logging.addLevelName(35, "Level 35")


def test_logger_filter_includes_children_only(store: LocalLogStore) -> None:
    """logger matches that logger and its dotted children, not other names sharing a prefix."""
    store.insert(
        [
            entry("root", logger="agent_runtime", at=NOW - 3),
            entry("child", logger="agent_runtime.sandbox", at=NOW - 2),
            entry("grandchild", logger="agent_runtime.sandbox.pool", at=NOW - 1),
            entry("other", logger="agent_runtime_extra"),
            entry("slash", logger="agent_runtime/x"),
        ]
    )
    assert messages(store.search(logger="agent_runtime")) == ["grandchild", "child", "root"]
    assert messages(store.search(logger="agent_runtime.sandbox")) == ["grandchild", "child"]


# -- time ------------------------------------------------------------------------------------


@pytest.fixture
def hourly(store: LocalLogStore) -> LocalLogStore:
    """A store with one record per hour over the last 10 days, named by hours ago."""
    store.insert([entry(f"h{h}", at=NOW - h * 3600) for h in range(240)])
    return store


@pytest.mark.parametrize(
    ("since", "count"),
    [
        ("15m", 1),
        ("90m", 2),
        ("2h", 3),
        ("7d", 169),
        ("1w", 169),
        ("30 minutes", 1),
        ("2 hours", 3),
        ("36h", 37),
        (timedelta(hours=5), 6),
        (NOW - 3 * 3600, 4),
        (int(NOW) - 3 * 3600, 4),
        (str(int(NOW) - 3 * 3600), 4),
        (datetime(2025, 12, 31, 21, 0, tzinfo=UTC), 4),
        (datetime(2025, 12, 31, 21, 0), 4),  # naive: UTC, like the records
        (datetime(2025, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=2))), 4),
        ("2025-12-31T21:00:00Z", 4),
        ("2025-12-31T21:00:00.000000+00:00", 4),
        ("2025-12-31T23:00:00+02:00", 4),
        ("2025-12-31 21:00:00", 4),
        ("2025-12-31", 25),
        ("now", 1),
        (NOW + 60, 0),
    ],
)
def test_since_relative_and_absolute(hourly: LocalLogStore, since: Any, count: int) -> None:
    """since accepts durations ago, datetimes, epoch seconds and RFC 3339, inclusive."""
    assert len(hourly.search(since=since, limit=1000)) == count


def test_until_is_inclusive_and_combines_with_since(hourly: LocalLogStore) -> None:
    """until keeps records at or before it; with since it is a window."""
    found = hourly.search(since="5h", until="2h", limit=1000)
    assert messages(found) == ["h2", "h3", "h4", "h5"]
    assert messages(hourly.search(until=NOW - 238 * 3600)) == ["h238", "h239"]
    assert hourly.search(since="2h", until="5h") == []


@pytest.mark.parametrize(
    "bad", ["yesterday", "15 parsecs", "-5m", "2026-13-01", "", -1, float("nan"), True, [1]]
)
def test_unparseable_time_lists_accepted_forms(store: LocalLogStore, bad: Any) -> None:
    """A time that cannot be read raises ValueError saying what is accepted."""
    with pytest.raises(ValueError, match="not a time"):
        store.search(since=bad)
    with pytest.raises(ValueError, match="not a time"):
        store.search(until=bad)


def test_parse_time_relative_uses_now() -> None:
    """Durations count back from the given now."""
    assert parse_time("15m", now=1000.0) == 100.0
    assert parse_time(timedelta(seconds=10), now=1000.0) == 990.0
    assert parse_time("now", now=1000.0) == 1000.0
    assert parse_time("2026-01-01T00:00:00Z") == NOW


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("15m", 900),
        ("2h", 7200),
        ("7d", 604800),
        ("1w", 604800),
        ("1.5h", 5400),
        ("250ms", 0.25),
        ("45", 45),
        (12, 12),
        (timedelta(minutes=1), 60),
        ("3 Days", 259200),
    ],
)
def test_parse_duration(text: Any, seconds: float) -> None:
    """Durations in every accepted spelling."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["fortnight", "5 lightyears", "m", "-3h", -1, True, None])
def test_parse_duration_rejects(bad: Any) -> None:
    """Anything else is a ValueError naming the accepted forms."""
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(bad)


def test_level_number() -> None:
    """Level names and numbers map to the logging numbers."""
    assert [level_number(n) for n in LEVELS] == [10, 20, 30, 40, 50]
    assert level_number("warn") == 30
    assert level_number(25) == 25


# -- every combination of filters ------------------------------------------------------------

_WORDS = ("alpha", "bravo", "charlie", "delta")
_TRACES = ("a" * 32, "b" * 32, "c" * 32)
_RUNS = ("run-1", "run-2", "run-3")
_LOGGERS = ("app", "app.db", "lib", "application")


def _dataset() -> list[LogEntry]:
    rng = random.Random(42)
    out = []
    for i in range(300):
        words = rng.sample(_WORDS, rng.randint(1, 3))
        out.append(
            entry(
                " ".join(words) + f" n{i}",
                at=NOW - 3600 + i * 24 + rng.random(),  # 23:00 to 01:00: two day indexes
                level=rng.choice(LEVELS),
                logger=rng.choice(_LOGGERS),
                trace_id=rng.choice((*_TRACES, None)),
                run_id=rng.choice((*_RUNS, None)),
            )
        )
    rng.shuffle(out)
    return out


_FILTERS: dict[str, Any] = {
    "text": "bravo charlie",
    "trace_id": _TRACES[1],
    "run_id": _RUNS[0],
    "level": "WARNING",
    "since": "90m",
    "until": "30m",
    "logger": "app",
}


def _reference(entries: list[LogEntry], filters: dict[str, Any]) -> list[str]:
    """The expected result, by a plain Python reading of the documented semantics."""
    keep = []
    for e in entries:
        f = e.fields
        t = e.time_ns / 1e9
        words = f["message"].split()
        if "text" in filters and not all(
            any(w.startswith(term[:-1]) for w in words) if term.endswith("*") else term in words
            for term in filters["text"].split()
        ):
            continue
        if "trace_id" in filters and f.get("trace_id") != filters["trace_id"]:
            continue
        if "run_id" in filters and f.get("run_id") != filters["run_id"]:
            continue
        if "level" in filters and LEVELS.index(f["level"]) < LEVELS.index(filters["level"]):
            continue
        if "since" in filters and t < NOW - 90 * 60:
            continue
        if "until" in filters and t > NOW - 30 * 60:
            continue
        if "logger" in filters and f["logger"] not in ("app", "app.db"):
            continue
        keep.append(e)
    keep.sort(key=lambda e: e.time_ns, reverse=True)
    return [e.fields["message"] for e in keep]


@pytest.mark.parametrize("text", ["bravo charlie", "bra* cha*"])
@pytest.mark.parametrize("probe_cap", [5000, 2], ids=["few-records", "many-records"])
def test_every_combination_of_filters_matches_a_reference(
    store: LocalLogStore, monkeypatch: pytest.MonkeyPatch, text: str, probe_cap: int
) -> None:
    """All 128 combinations of the seven filters return what a plain Python filter returns.

    Run with words and prefixes, and with both plans for text within a trace or run.
    """
    monkeypatch.setattr("observability.search._PROBE_CAP", probe_cap)
    entries = _dataset()
    store.insert(entries)
    names = list(_FILTERS)
    nonempty = 0
    for size in range(len(names) + 1):
        for combo in itertools.combinations(names, size):
            filters = {name: _FILTERS[name] for name in combo}
            if "text" in filters:
                filters["text"] = text
            expected = _reference(entries, filters)
            got = messages(store.search(**filters, limit=1000))
            assert got == expected, filters
            nonempty += bool(expected)
            if len(expected) > 3:
                assert messages(store.search(**filters, limit=3)) == expected[:3], filters
    assert nonempty > 60  # the data set exercises most combinations with real matches


# -- day indexes -----------------------------------------------------------------------------


def test_search_walks_days_newest_first(store: LocalLogStore) -> None:
    """Text matches from several days come newest first, and limit stops in the newest days."""
    store.insert([entry(f"daily d{d}", at=NOW - d * 86_400 + 5) for d in range(5)])
    store.insert([entry(f"daily extra d{d}", at=NOW - d * 86_400 + 1) for d in range(5)])
    found = messages(store.search("daily", limit=4))
    assert found == ["daily d0", "daily extra d0", "daily d1", "daily extra d1"]
    assert len(store.search("daily", limit=100)) == 10
    assert messages(store.search("extra", since="2d", until="1d")) == ["daily extra d2"]
    conn = sqlite3.connect(store.path)
    assert len(day_indexes(conn)) == 5
    conn.close()


def test_text_within_a_trace_that_crosses_midnight(store: LocalLogStore) -> None:
    """A trace spanning two UTC days finds its text matches in both day indexes."""
    trace = "ab" * 16
    store.insert(
        [
            entry("before midnight conn1", trace_id=trace, at=NOW - 2),
            entry("after midnight conn2", trace_id=trace, at=NOW + 2),
            entry("other trace conn3", trace_id="cd" * 16, at=NOW),
        ]
    )
    assert messages(store.search("midnight", trace_id=trace)) == [
        "after midnight conn2",
        "before midnight conn1",
    ]
    assert messages(store.search("conn*", trace_id=trace, since=NOW)) == ["after midnight conn2"]


def test_late_record_for_an_old_day_is_indexed_and_pruned(tmp_path: Path) -> None:
    """A record stamped days in the past gets that day's index and goes with retention."""
    with LocalLogStore(tmp_path / "logs.db", max_age=86_400, clock=lambda: NOW) as s:
        s.insert([entry("fresh", at=NOW)])
        s.insert([entry("from last week", at=NOW - 7 * 86_400)])
        assert messages(s.search("week")) == ["from last week"]
        assert s.prune() == 1
        assert s.search("week") == []
        conn = sqlite3.connect(s.path)
        assert day_indexes(conn) == ["log_fts_2026_01_01"]
        conn.close()


# -- retention -------------------------------------------------------------------------------


def test_prune_by_count_deletes_oldest_in_batches(tmp_path: Path) -> None:
    """max_records keeps the newest records, deleting at most one batch per call."""
    with LocalLogStore(tmp_path / "logs.db", max_records=10, max_age=None) as s:
        s.insert([entry(f"m{i} common", at=NOW - 100 + i) for i in range(25)])
        assert s.prune(batch=4) == 4
        assert s.prune(batch=100) == 11
        assert s.prune(batch=100) == 0
        assert messages(s.search(limit=100)) == [f"m{i} common" for i in range(24, 14, -1)]
        assert len(s.search("common", limit=100)) == 10
        assert s.search("m0") == []
    fts_integrity(tmp_path / "logs.db")


def test_prune_by_age_uses_the_clock(tmp_path: Path) -> None:
    """max_age deletes records older than that many seconds before the store's clock."""
    now = [NOW]
    with LocalLogStore(
        tmp_path / "logs.db", max_records=None, max_age=3600, clock=lambda: now[0]
    ) as s:
        s.insert([entry(f"h{h}", at=NOW - h * 1800) for h in range(6)])  # 0 .. 2.5 h old
        assert s.prune() == 3
        assert messages(s.search()) == ["h0", "h1", "h2"]
        now[0] += 1800
        assert s.prune() == 1
        assert messages(s.search()) == ["h0", "h1"]
    fts_integrity(tmp_path / "logs.db")


def test_prune_both_limits_and_no_limits(tmp_path: Path) -> None:
    """Both limits apply together; with neither, nothing is ever pruned."""
    with LocalLogStore(tmp_path / "a.db", max_records=3, max_age=3600, clock=lambda: NOW) as s:
        s.insert([entry(f"h{h}", at=NOW - h * 1000) for h in range(8)])  # 4 within the hour
        assert s.prune() == 5
        assert messages(s.search()) == ["h0", "h1", "h2"]
    with LocalLogStore(tmp_path / "b.db", max_records=None, max_age=None) as s:
        s.insert([entry("old", at=1.0)])
        assert s.prune() == 0
        assert s.stats().records == 1


@pytest.mark.parametrize("cycle_gap", [86_400, 3_600], ids=["days-expire", "within-one-day"])
def test_retention_keeps_the_file_bounded(tmp_path: Path, cycle_gap: int) -> None:
    """Insert-and-prune cycles reuse freed pages and drop old text: the file stops growing."""
    path = tmp_path / "logs.db"
    rng = random.Random(5)
    vocabulary = [f"w{i}" for i in range(400)]
    sizes = []
    with LocalLogStore(path, max_records=2000, max_age=None) as s:
        for cycle in range(8):
            base = NOW + cycle * cycle_gap
            s.insert(
                [
                    entry(" ".join(rng.choices(vocabulary, k=40)), at=base + i)
                    for i in range(0, 2000)
                ]
            )
            while s.prune(batch=500):
                pass
            s._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            sizes.append(path.stat().st_size)
        assert s.stats().records == 2000
        assert len(s.search("w1", limit=5000)) == len(s.search("w1", since=base, limit=5000))
        conn = sqlite3.connect(path)
        kept = day_indexes(conn)
        conn.close()
    assert sizes[-1] <= sizes[1] * 1.3, sizes
    if cycle_gap == 86_400:
        assert len(kept) == 1  # the expired days' indexes were dropped
    fts_integrity(path)


def test_invalid_retention_is_refused(tmp_path: Path) -> None:
    """Retention limits must be positive (or None)."""
    with pytest.raises(ValueError, match="max_records"):
        LocalLogStore(tmp_path / "x.db", max_records=0)
    with pytest.raises(ValueError, match="max_age"):
        LocalLogStore(tmp_path / "x.db", max_age=-1)
    with LocalLogStore(tmp_path / "x.db") as s, pytest.raises(ValueError, match="batch"):
        s.prune(batch=0)


# -- stats and lifecycle ---------------------------------------------------------------------


def test_stats(store: LocalLogStore) -> None:
    """stats reports the count, the time span, the file size and the limits."""
    empty = store.stats()
    assert (empty.records, empty.oldest, empty.newest) == (0, None, None)
    store.insert([entry("a", at=NOW - 60), entry("b", at=NOW)])
    stats = store.stats()
    assert stats.records == 2
    assert stats.oldest == pytest.approx(NOW - 60, abs=1e-5)
    assert stats.newest == pytest.approx(NOW, abs=1e-5)
    assert stats.size_bytes > 0
    assert (stats.max_records, stats.max_age) == (DEFAULT_MAX_RECORDS, DEFAULT_MAX_AGE)


def test_closed_store_refuses_use(tmp_path: Path) -> None:
    """After close, every call raises ValueError; close is idempotent."""
    s = LocalLogStore(tmp_path / "logs.db")
    s.close()
    s.close()
    with pytest.raises(ValueError, match="closed"):
        s.search()
    with pytest.raises(ValueError, match="closed"):
        s.insert([entry("late")])
    with pytest.raises(ValueError, match="closed"):
        s.prune()


def test_concurrent_searches_from_threads(store: LocalLogStore) -> None:
    """Searches from several threads at once while another thread writes all succeed."""
    import threading

    store.insert([entry(f"seed {i}", at=NOW - 1000 + i) for i in range(200)])
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(50):
                assert len(store.search("seed", limit=10)) == 10
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    def writer() -> None:
        for i in range(20):
            store.insert([entry(f"more {i}", at=NOW + i)])

    threads = [threading.Thread(target=reader) for _ in range(4)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.stats().records == 220


# -- several processes -----------------------------------------------------------------------


def _write_same_instant(path: str, tag: str, count: int, start: Any) -> None:
    store = LocalLogStore(path, busy_timeout=30)
    start.wait(30)
    for i in range(0, count, 25):
        store.insert([entry(f"{tag} {j}", at=NOW) for j in range(i, i + 25)])
    store.close()


def test_two_processes_writing_one_instant_lose_nothing(tmp_path: Path) -> None:
    """Two processes inserting records with the same timestamp at once keep every record."""
    path = str(tmp_path / "logs.db")
    LocalLogStore(path).close()
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [
        ctx.Process(target=_write_same_instant, args=(path, tag, 600, start))
        for tag in ("alpha", "bravo")
    ]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with LocalLogStore(path) as s:
        assert s.stats().records == 1200
        for tag in ("alpha", "bravo"):
            found = {m for m in messages(s.search(tag, limit=2000))}
            assert found == {f"{tag} {j}" for j in range(600)}
    fts_integrity(tmp_path / "logs.db")


# -- failures --------------------------------------------------------------------------------


def test_non_sqlite_file_is_a_clear_error_and_left_alone(tmp_path: Path) -> None:
    """A file that is not SQLite raises OSError saying to move it away; it is not changed."""
    path = tmp_path / "logs.db"
    content = b"these are my notes, not a database\n" * 100
    path.write_bytes(content)
    with pytest.raises(OSError, match="Move it away") as info:
        LocalLogStore(path)
    assert info.value.errno == errno.EIO
    assert str(path) in str(info.value)
    assert "never deletes" in str(info.value)
    assert path.read_bytes() == content
    assert sorted(os.listdir(tmp_path)) == ["logs.db"]


def _open_and_search(path: Path) -> None:
    with LocalLogStore(path) as s:
        s.search()


def test_damaged_store_is_a_clear_error_and_left_alone(tmp_path: Path) -> None:
    """A store with overwritten pages raises OSError saying what to do; its bytes stay as is."""
    path = tmp_path / "logs.db"
    with LocalLogStore(path) as s:
        s.insert([entry(f"record {i} " + "padding " * 40, at=NOW + i) for i in range(2000)])
    damaged = bytearray(path.read_bytes())
    damaged[4096:] = b"\x5a" * (len(damaged) - 4096)  # every page but the schema's
    path.write_bytes(bytes(damaged))
    with pytest.raises(OSError, match=r"Move it away \(for example: mv ") as info:
        _open_and_search(path)
    assert info.value.errno == errno.EIO
    assert path.read_bytes() == bytes(damaged)


def test_another_sqlite_database_is_refused(tmp_path: Path) -> None:
    """An SQLite file of something else (say the state database) is refused, untouched."""
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE runs (id TEXT PRIMARY KEY)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(OSError, match=r"not an agent-runtime log store .*runs"):
        LocalLogStore(path)
    assert path.read_bytes() == before


def test_newer_layout_is_refused(tmp_path: Path) -> None:
    """A store written by a newer layout version says to upgrade."""
    path = tmp_path / "logs.db"
    LocalLogStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(OSError, match="newer agent-runtime"):
        LocalLogStore(path)


def test_missing_store_without_create(tmp_path: Path) -> None:
    """create=False on a missing or empty file raises FileNotFoundError and creates nothing."""
    with pytest.raises(FileNotFoundError, match="no log store at"):
        LocalLogStore(tmp_path / "nope.db", create=False)
    assert not (tmp_path / "nope.db").exists()
    (tmp_path / "empty.db").touch()
    with pytest.raises(FileNotFoundError, match="holds no log records"):
        LocalLogStore(tmp_path / "empty.db", create=False)


def test_unusable_directory_is_a_clear_error(tmp_path: Path) -> None:
    """A path under a regular file cannot be created and says which variable to set."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match="AGENT_RUNTIME_LOG_DB"):
        LocalLogStore(tmp_path / "file" / "logs.db")


def test_lock_held_past_busy_timeout_is_ebusy(tmp_path: Path) -> None:
    """A write that waits longer than busy_timeout for another writer raises EBUSY."""
    path = tmp_path / "logs.db"
    with LocalLogStore(path, busy_timeout=0.05) as s:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(OSError, match="locked by another process") as info:
                s.insert([entry("blocked")])
            assert info.value.errno == errno.EBUSY
            assert messages(s.search()) == []  # readers are not blocked by the writer
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert s.insert([entry("after")]) == 1


def test_full_disk_is_enospc_and_nothing_of_the_batch_is_written(tmp_path: Path) -> None:
    """SQLite's "database or disk is full" becomes ENOSPC; the batch is rolled back whole."""
    with LocalLogStore(tmp_path / "logs.db") as s:
        s.insert([entry("fits")])
        # max_page_count makes SQLite hit its real SQLITE_FULL path without filling a disk.
        pages = s._writer.execute("PRAGMA page_count").fetchone()[0]
        s._writer.execute(f"PRAGMA max_page_count = {pages + 2}")
        with pytest.raises(OSError, match=r"disk of the log store .* is full") as info:
            s.insert([entry("big " * 2000 + str(i)) for i in range(50)])
        assert info.value.errno == errno.ENOSPC
        assert messages(s.search()) == ["fits"]


# -- configuration ---------------------------------------------------------------------------


def test_config_defaults() -> None:
    """The defaults are the documented constants."""
    cfg = LocalSearchConfig()
    assert cfg.path == DEFAULT_PATH == ".agent_runtime/logs.db"
    assert (cfg.max_records, cfg.max_age) == (DEFAULT_MAX_RECORDS, DEFAULT_MAX_AGE)
    assert LocalSearchConfig.from_env({}) == cfg


def test_config_from_env() -> None:
    """Every variable is read; 0/none disable a retention limit."""
    cfg = LocalSearchConfig.from_env(
        {
            "AGENT_RUNTIME_LOG_DB": "/var/log/agent/logs.db",
            "AGENT_RUNTIME_LOG_DB_MAX_RECORDS": "250_000",
            "AGENT_RUNTIME_LOG_DB_MAX_AGE": "36h",
            "AGENT_RUNTIME_LOG_DB_QUEUE": "5000",
            "AGENT_RUNTIME_LOG_DB_BATCH": "200",
        }
    )
    assert cfg == LocalSearchConfig(
        path="/var/log/agent/logs.db",
        max_records=250_000,
        max_age=129_600.0,
        max_queue=5000,
        batch_size=200,
    )
    off = LocalSearchConfig.from_env(
        {"AGENT_RUNTIME_LOG_DB_MAX_RECORDS": "none", "AGENT_RUNTIME_LOG_DB_MAX_AGE": "0"}
    )
    assert (off.max_records, off.max_age) == (None, None)


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("AGENT_RUNTIME_LOG_DB_MAX_RECORDS", "lots", "whole number >= 1, or 0/none"),
        ("AGENT_RUNTIME_LOG_DB_MAX_RECORDS", "-5", "whole number"),
        ("AGENT_RUNTIME_LOG_DB_MAX_AGE", "forever", "15m, 2h, 7d"),
        ("AGENT_RUNTIME_LOG_DB_QUEUE", "0", "whole number >= 1"),
        ("AGENT_RUNTIME_LOG_DB_BATCH", "big", "whole number >= 1"),
    ],
)
def test_config_from_env_rejects_bad_values(name: str, value: str, says: str) -> None:
    """A bad variable raises ValueError naming the variable and what is accepted."""
    with pytest.raises(ValueError, match=re.escape(name)) as info:
        LocalSearchConfig.from_env({name: value})
    assert says in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"path": ""},
        {"max_records": 0},
        {"max_age": 0},
        {"batch_size": 0},
        {"max_queue": -1},
        {"flush_interval": 0},
        {"prune_interval": -1},
        {"prune_batch": 0},
        {"busy_timeout": -1},
        {"batch_size": True},
    ],
)
def test_config_validation(kwargs: dict[str, Any]) -> None:
    """Out-of-range settings are refused at construction."""
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        LocalSearchConfig(**kwargs)


def test_config_is_frozen() -> None:
    """The configuration cannot be changed after construction."""
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        LocalSearchConfig().path = "x"  # type: ignore[misc]


def test_from_config_opens_with_its_limits(tmp_path: Path) -> None:
    """LocalLogStore.from_config uses the configured path and retention."""
    cfg = LocalSearchConfig(path=str(tmp_path / "c.db"), max_records=5, max_age=None)
    with LocalLogStore.from_config(cfg) as s:
        assert (s.path, s.max_records, s.max_age) == (tmp_path / "c.db", 5, None)


def test_time_fields_are_utc(store: LocalLogStore) -> None:
    """A record's timestamp and its position in time agree (UTC throughout)."""
    at = datetime(2025, 12, 31, 12, 0, tzinfo=UTC).timestamp()
    store.insert([entry("noon", at=at)])
    found = store.search(since="2025-12-31T11:59:59Z", until="2025-12-31T12:00:01Z")
    assert found[0]["timestamp"] == "2025-12-31T12:00:00.000000Z"
    assert time.gmtime(at).tm_hour == 12
