"""The embedded log search: structured records in one local SQLite file, searchable in milliseconds.

When no Loki or Elasticsearch is configured, the runtime keeps its log records in a local indexed
store that ``agent-runtime logs search`` queries. It is built on the standard library's
``sqlite3`` (no service to run, nothing to install) with the FTS5 full-text index for the
message text, in WAL mode so that several processes can write the same file while others read.

Layout (one file, :data:`SCHEMA_VERSION`):

* ``log_records``: one row per record holding the full JSON line, plus the columns the filters
  use (``level_no``, ``logger``, ``trace_id``, ``run_id``), each with an index.
* The row id is the record's own time: ``(microseconds since the epoch << 10) + n`` where ``n``
  separates records of the same microsecond. Row id order is therefore time order, so "newest
  first" is a backwards walk of the primary key (or of a full-text doclist, or of an index on
  ``trace_id``/``run_id``, which SQLite orders by row id within one key) that stops after
  ``limit`` rows: no sort of the matches, whatever their number. The ``since``/``until`` bounds
  are row id ranges.
* ``log_fts_YYYY_MM_DD``: one FTS5 index per UTC day over the message and the exception (type
  and message). The indexes are contentless: the text is stored once, in the JSON, and read
  through generated columns of ``log_records`` when a record is indexed or unindexed, in the
  same transaction as the record itself. One index per day because FTS5 deletes are
  tombstones that only vanish when a merge reaches the segment holding the original entries:
  with a single index, retention would leave the text index several times its live size.
  Instead a day that has expired entirely is dropped at once, and only the oldest day, when
  retention trims it by count, carries tombstones until it goes. A search walks the days
  newest first and stops at ``limit``, so recent matches never wait for old days.

Why wrap SQLite this way rather than use it directly: FTS5 parses its own query language, so
raw user text (``"``, ``*``, ``AND``, ``(``, ``-``, ``:``) would raise syntax errors; SQLite
raises bare ``DatabaseError`` for a file that is not (or no longer) a database; and the file
grows without bound unless something deletes old rows. This module quotes every query term,
turns SQLite's errors into messages that say what to do, and prunes old records in batches.

Text search: every whitespace-separated term must appear in the message or the exception (all
terms, any order, case- and accent-insensitive). A term matches a whole word; a term ending in
``*`` matches words starting with it (``time*`` finds ``timeout``; the prefix needs 3 letters or
more, a shorter one matches the whole word); a term made of several words
(``connection-refused``, ``run_id``, or words in double quotes) matches them as a phrase. Any
other punctuation is not searchable and is ignored (text made only of punctuation finds
nothing).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from observability.records import LogEntry

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_BUSY_TIMEOUT",
    "DEFAULT_FLUSH_INTERVAL",
    "DEFAULT_LIMIT",
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_RECORDS",
    "DEFAULT_PATH",
    "DEFAULT_PRUNE_BATCH",
    "DEFAULT_PRUNE_INTERVAL",
    "ENV_BATCH",
    "ENV_MAX_AGE",
    "ENV_MAX_RECORDS",
    "ENV_PATH",
    "ENV_QUEUE",
    "LEVELS",
    "SCHEMA_VERSION",
    "LocalLogStore",
    "LocalSearchConfig",
    "StoreStats",
    "level_number",
    "parse_duration",
    "parse_time",
]

DEFAULT_PATH: Final = ".agent_runtime/logs.db"
DEFAULT_MAX_RECORDS: Final = 1_000_000
DEFAULT_MAX_AGE: Final = 7 * 86_400.0
DEFAULT_BATCH_SIZE: Final = 1_000
DEFAULT_MAX_QUEUE: Final = 20_000
DEFAULT_FLUSH_INTERVAL: Final = 0.25
DEFAULT_PRUNE_INTERVAL: Final = 60.0
DEFAULT_PRUNE_BATCH: Final = 2_000
DEFAULT_BUSY_TIMEOUT: Final = 5.0
DEFAULT_LIMIT: Final = 100

ENV_PATH: Final = "AGENT_RUNTIME_LOG_DB"
ENV_MAX_RECORDS: Final = "AGENT_RUNTIME_LOG_DB_MAX_RECORDS"
ENV_MAX_AGE: Final = "AGENT_RUNTIME_LOG_DB_MAX_AGE"
ENV_QUEUE: Final = "AGENT_RUNTIME_LOG_DB_QUEUE"
ENV_BATCH: Final = "AGENT_RUNTIME_LOG_DB_BATCH"

SCHEMA_VERSION: Final = 1
"""The layout version written to ``PRAGMA user_version``."""

LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
"""The level names a ``level`` filter accepts (plus the aliases ``WARN`` and ``FATAL``)."""

# "ARLG" (agent-runtime logs): marks the file as ours, so another SQLite file at the path is
# recognised and refused instead of being written into.
_APPLICATION_ID: Final = 0x41524C47

# A text search within one trace or run reads the text matches once, within the span of that
# trace's records, when it has fewer than this many; otherwise it walks the text matches.
_PROBE_CAP: Final = 5_000
# Prefixes shorter than this match the whole word: a 1- or 2-letter prefix expands to so many
# words that FTS5 would merge most of the index to answer it (seconds over a million records).
_MIN_PREFIX: Final = 3

_SEQ_BITS: Final = 10
_SEQ_SPAN: Final = 1 << _SEQ_BITS
# Largest microsecond count whose id still fits a signed 64-bit row id (year 2255).
_MAX_US: Final = (2**63 - 1 - 2 * _SEQ_SPAN) >> _SEQ_BITS

_LEVEL_ALIASES: Final = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "WARN": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
    "FATAL": logging.CRITICAL,
}

_UNITS: Final = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hrs": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86_400.0,
    "day": 86_400.0,
    "days": 86_400.0,
    "w": 604_800.0,
    "week": 604_800.0,
    "weeks": 604_800.0,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*$", re.IGNORECASE)
_NUMBER = re.compile(r"^\s*\d+(?:\.\d+)?\s*$")
_TIME_FORMATS: Final = (
    "a datetime, epoch seconds (1767225600), an RFC 3339 / ISO 8601 time "
    "(2026-01-02T03:04:05Z, 2026-01-02), 'now', or a duration ago (30s, 15m, 2h, 7d, 1w)"
)
_DURATION_FORMATS: Final = "a number of seconds or a duration such as 30s, 15m, 2h, 7d, 1w"

# A query term: a double-quoted phrase (the closing quote may be missing) or a bare word.
_TERM = re.compile(r'"([^"]*)"?(\*?)|([^\s"]+)')
# What the FTS5 unicode61 tokenizer keeps: letters and digits (the underscore separates).
_WORD_CHAR = re.compile(r"[^\W_]")
_WORD = re.compile(r"[^\W_]+")

_log = logging.getLogger(__name__)

_SCHEMA: Final = (
    """
    CREATE TABLE IF NOT EXISTS log_records (
        id INTEGER PRIMARY KEY,
        level_no INTEGER NOT NULL,
        logger TEXT NOT NULL,
        trace_id TEXT,
        run_id TEXT,
        record TEXT NOT NULL,
        message TEXT GENERATED ALWAYS AS (json_extract(record, '$.message')) VIRTUAL,
        exc_text TEXT GENERATED ALWAYS AS (
            trim(ifnull(json_extract(record, '$.exception.type'), '') || ' '
                 || ifnull(json_extract(record, '$.exception.message'), ''))
        ) VIRTUAL
    )
    """,
    "CREATE INDEX IF NOT EXISTS log_records_trace ON log_records (trace_id) "
    "WHERE trace_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS log_records_run ON log_records (run_id) WHERE run_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS log_records_level ON log_records (level_no)",
    "CREATE INDEX IF NOT EXISTS log_records_logger ON log_records (logger)",
)

# The id is the record's microsecond shifted left, plus one more than the largest id already
# used in that microsecond; computed inside the write transaction, so concurrent writers (which
# SQLite serialises) never collide. A microsecond with all 1,024 slots taken (only a bulk
# import with one timestamp could do that) goes after the newest record instead of failing.
_INSERT: Final = f"""
    INSERT INTO log_records (id, level_no, logger, trace_id, run_id, record)
    SELECT CASE
               WHEN m IS NULL THEN :lo
               WHEN m < :lo + {_SEQ_SPAN - 1} THEN m + 1
               ELSE (SELECT max(id) + 1 FROM log_records)
           END,
           :level_no, :logger, :trace_id, :run_id, :record
    FROM (SELECT max(id) AS m FROM log_records WHERE id >= :lo AND id < :lo + {_SEQ_SPAN})
    RETURNING id
"""

# One text index per UTC day (see the module docstring); ``{name}`` is a checked
# ``log_fts_YYYY_MM_DD``, never user input.
_FTS_TABLE: Final = """
    CREATE VIRTUAL TABLE IF NOT EXISTS {name} USING fts5 (
        message, exc_text, content = '', columnsize = 0,
        tokenize = 'unicode61 remove_diacritics 2'
    )
"""
# The text index is written by these statements, one per batch and day, and not by triggers:
# FTS5 flushes its pending terms at every statement savepoint, so a trigger firing per row
# writes one index segment per record (four times slower to insert). The text always comes from
# the generated columns, so what is unindexed is exactly what was indexed.
_INDEX_TEXT: Final = """
    INSERT INTO {name} (rowid, message, exc_text)
    SELECT id, message, exc_text FROM log_records WHERE id IN (SELECT value FROM json_each(?))
"""
_UNINDEX: Final = """
    INSERT INTO {name} ({name}, rowid, message, exc_text)
    SELECT 'delete', id, message, exc_text FROM log_records WHERE id >= ? AND id <= ?
"""
_PARTITION_NAME = re.compile(r"^log_fts_(\d{4})_(\d{2})_(\d{2})$")
_DAY_US: Final = 86_400_000_000
_MERGE_MIN_PAGES: Final = 16
_RECORDS_PER_MERGE_PAGE: Final = 4
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


# -- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalSearchConfig:
    """Where the embedded log store lives, how much it keeps and how its sink batches.

    Attributes:
        path: The SQLite file (parent directories are created).
        max_records: Keep at most this many records (oldest pruned first); None for no limit.
        max_age: Keep records at most this many seconds; None for no limit.
        batch_size: Records the sink writes per transaction.
        max_queue: Records the sink holds in memory before it drops new ones.
        flush_interval: Seconds the sink waits to fill a batch before writing a partial one.
        prune_interval: Seconds between retention passes of the sink.
        prune_batch: Records deleted per retention transaction (keeps write locks short).
        busy_timeout: Seconds a statement waits for another process's write lock.
    """

    path: str = DEFAULT_PATH
    max_records: int | None = DEFAULT_MAX_RECORDS
    max_age: float | None = DEFAULT_MAX_AGE
    batch_size: int = DEFAULT_BATCH_SIZE
    max_queue: int = DEFAULT_MAX_QUEUE
    flush_interval: float = DEFAULT_FLUSH_INTERVAL
    prune_interval: float = DEFAULT_PRUNE_INTERVAL
    prune_batch: int = DEFAULT_PRUNE_BATCH
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT

    def __post_init__(self) -> None:
        if not str(self.path):
            raise ValueError("path must name the log store file, e.g. .agent_runtime/logs.db")
        _check_retention(self.max_records, self.max_age)
        for name in ("batch_size", "max_queue", "prune_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        for name in ("flush_interval", "prune_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        if (
            isinstance(self.busy_timeout, bool)
            or not isinstance(self.busy_timeout, int | float)
            or self.busy_timeout < 0
        ):
            raise ValueError(f"busy_timeout must be seconds >= 0, got {self.busy_timeout!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LocalSearchConfig:
        """Build the configuration from environment variables (unset ones keep their default).

        ``AGENT_RUNTIME_LOG_DB`` (path), ``AGENT_RUNTIME_LOG_DB_MAX_RECORDS`` (a count, or
        ``0``/``none`` for no limit), ``AGENT_RUNTIME_LOG_DB_MAX_AGE`` (``7d``, ``12h``, seconds,
        or ``0``/``none``), ``AGENT_RUNTIME_LOG_DB_QUEUE`` and ``AGENT_RUNTIME_LOG_DB_BATCH``.

        Args:
            environ: The variables to read (default ``os.environ``).

        Returns:
            The configuration.

        Raises:
            ValueError: A variable has a value that cannot be used; the message names it and
                says what is accepted.
        """
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {}
        path = env.get(ENV_PATH, "").strip()
        if path:
            kwargs["path"] = path
        raw = env.get(ENV_MAX_RECORDS, "").strip()
        if raw:
            kwargs["max_records"] = _env_count(ENV_MAX_RECORDS, raw, allow_none=True)
        raw = env.get(ENV_MAX_AGE, "").strip()
        if raw:
            if raw.lower() in ("0", "none", "off"):
                kwargs["max_age"] = None
            else:
                try:
                    kwargs["max_age"] = parse_duration(raw)
                except ValueError:
                    raise ValueError(
                        f"{ENV_MAX_AGE}={raw!r} is not a duration: use {_DURATION_FORMATS}, "
                        "or 0/none for no age limit"
                    ) from None
        raw = env.get(ENV_QUEUE, "").strip()
        if raw:
            kwargs["max_queue"] = _env_count(ENV_QUEUE, raw, allow_none=False)
        raw = env.get(ENV_BATCH, "").strip()
        if raw:
            kwargs["batch_size"] = _env_count(ENV_BATCH, raw, allow_none=False)
        return cls(**kwargs)


def _env_count(name: str, raw: str, *, allow_none: bool) -> int | None:
    if allow_none and raw.lower() in ("0", "none", "off"):
        return None
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        extra = ", or 0/none for no limit" if allow_none else ""
        raise ValueError(f"{name}={raw!r} is not usable: use a whole number >= 1{extra}")
    return value


def _check_retention(max_records: int | None, max_age: float | None) -> None:
    if max_records is not None and (
        isinstance(max_records, bool) or not isinstance(max_records, int) or max_records < 1
    ):
        raise ValueError(f"max_records must be a whole number >= 1 or None, got {max_records!r}")
    if max_age is not None and (
        isinstance(max_age, bool) or not isinstance(max_age, int | float) or max_age <= 0
    ):
        raise ValueError(f"max_age must be seconds > 0 or None, got {max_age!r}")


# -- parsing of user input -----------------------------------------------------------------------


def parse_duration(value: str | float | timedelta) -> float:
    """Parse a duration: ``timedelta``, seconds, or text such as ``30s``, ``15m``, ``2h``, ``7d``.

    Args:
        value: The duration.

    Returns:
        The duration in seconds (>= 0).

    Raises:
        ValueError: ``value`` is not a duration; the message says what is accepted.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration: use {_DURATION_FORMATS}")
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        if _NUMBER.match(value):
            seconds = float(value)
        else:
            match = _DURATION.match(value)
            unit = _UNITS.get(match.group(2).lower()) if match else None
            if match is None or unit is None:
                raise ValueError(f"{value!r} is not a duration: use {_DURATION_FORMATS}")
            seconds = float(match.group(1)) * unit
    else:
        raise ValueError(f"{value!r} is not a duration: use {_DURATION_FORMATS}")
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"{value!r} is not a duration: it must not be negative")
    return seconds


def parse_time(value: datetime | timedelta | str | float, *, now: float | None = None) -> float:
    """Parse a point in time for ``since``/``until``.

    Accepted: an aware ``datetime`` (a naive one is taken as UTC, like the records' own
    timestamps); epoch seconds as a number or digits; an RFC 3339 / ISO 8601 string (without an
    offset it is UTC); ``now``; a ``timedelta`` or a duration text (``30s``, ``15m``, ``2h``,
    ``7d``, ``1w``) meaning that long before ``now``.

    Args:
        value: The time.
        now: The current epoch time for relative values (default ``time.time()``).

    Returns:
        Epoch seconds.

    Raises:
        ValueError: ``value`` cannot be read as a time; the message lists what is accepted.
    """
    current = time.time() if now is None else now
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return aware.timestamp()
    if isinstance(value, timedelta):
        return current - parse_duration(value)
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a time: use {_TIME_FORMATS}")
    if isinstance(value, int | float):
        if value < 0 or value != value:
            raise ValueError(f"{value!r} is not a time: epoch seconds must be >= 0")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a time: use {_TIME_FORMATS}")
    text = value.strip()
    if text.lower() == "now":
        return current
    if _NUMBER.match(text):
        return float(text)
    match = _DURATION.match(text)
    if match and match.group(2).lower() in _UNITS:
        return current - parse_duration(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a time: use {_TIME_FORMATS}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def level_number(level: str | int) -> int:
    """Return the numeric level of a level filter (``ERROR`` -> 40); names are case-insensitive.

    Args:
        level: A name from :data:`LEVELS` (or ``WARN``/``FATAL``) or a number 0-50.

    Returns:
        The number.

    Raises:
        ValueError: Unknown level; the message lists the accepted names.
    """
    if isinstance(level, int) and not isinstance(level, bool) and 0 <= level <= 50:
        return level
    if isinstance(level, str):
        name = level.strip().upper()
        if name in _LEVEL_ALIASES:
            return _LEVEL_ALIASES[name]
        if name.isdigit() and int(name) <= 50:
            return int(name)
    raise ValueError(
        f"unknown level {level!r}: use one of {', '.join(LEVELS)} (or a number from 0 to 50); "
        "records at that level and above are returned"
    )


def _record_level_number(name: str) -> int:
    """The number stored for a record's level name (custom levels registered in this process)."""
    known = _LEVEL_ALIASES.get(name.upper())
    if known is not None:
        return known
    custom = logging.getLevelNamesMapping().get(name)
    if custom is not None:
        return custom
    if name.startswith("Level ") and name[6:].isdigit():
        return int(name[6:])
    return 0


def _match_query(text: str) -> str | None:
    """Turn user text into an FTS5 query in which no user character is FTS5 syntax.

    Every term becomes a double-quoted FTS5 string (a double quote inside is doubled, although
    the term pattern never lets one through), so operators, column filters, parentheses and
    stray quotes are plain text that the tokenizer splits away. A trailing ``*`` outside the
    quotes is the only operator produced: the prefix match the user asked for. Returns None
    when no term has a letter or digit: no record can match that.
    """
    parts: list[str] = []
    # FTS5 reads its query as a C string: a NUL would end it inside an open quote.
    for match in _TERM.finditer(text.replace("\x00", " ")):
        phrase, phrase_star, bare = match.group(1), match.group(2), match.group(3)
        if bare is not None:
            prefix = bare.endswith("*")
            body = bare.rstrip("*")
        else:
            prefix = bool(phrase_star) or phrase.endswith("*")
            body = phrase.rstrip("*")
        if not _WORD_CHAR.search(body):
            continue
        if prefix and len(_WORD.findall(body)[-1]) < _MIN_PREFIX:
            prefix = False
        quoted = '"' + body.replace('"', '""') + '"'
        parts.append(quoted + "*" if prefix else quoted)
    return " ".join(parts) if parts else None


def _to_id(epoch_seconds: float) -> int:
    micros = min(max(int(epoch_seconds * 1_000_000), 0), _MAX_US)
    return micros << _SEQ_BITS


def _id_time(row_id: int) -> float:
    return (row_id >> _SEQ_BITS) / 1_000_000


# -- the store -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreStats:
    """What a log store holds, for ``doctor`` and the CLI.

    Attributes:
        path: The SQLite file.
        records: Number of records.
        oldest: Epoch seconds of the oldest record (None when empty).
        newest: Epoch seconds of the newest record (None when empty).
        size_bytes: Size of the file plus its write-ahead log.
        max_records: The retention count limit (None: none).
        max_age: The retention age limit in seconds (None: none).
    """

    path: str
    records: int
    oldest: float | None
    newest: float | None
    size_bytes: int
    max_records: int | None
    max_age: float | None


class LocalLogStore:
    """A local, indexed, multi-process log store in one SQLite file.

    Thread-safe: writes go through one connection under a lock, each search borrows a read
    connection from a small pool (WAL readers never wait for the writer). Several processes may
    open the same file; writes take SQLite's write lock for one short transaction each and wait
    up to ``busy_timeout`` for it.

    Args:
        path: The SQLite file. Its parent directories are created when ``create`` is true.
        max_records: Retention: keep at most this many records (None: no count limit).
        max_age: Retention: keep records at most this many seconds (None: no age limit).
        busy_timeout: Seconds to wait for another process's write lock.
        create: Create the file and its tables if missing; with False, a missing file or one
            without a log store raises (what a read-only ``logs search`` wants).
        clock: Returns the current epoch time (relative ``since``/``until``, ``max_age``).

    Raises:
        ValueError: A retention limit is invalid.
        FileNotFoundError: ``create`` is false and there is no store at ``path``.
        OSError: The file cannot be opened, is not an SQLite database, is damaged, or belongs to
            something else; the message says to move it away (it is never modified or deleted).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_records: int | None = DEFAULT_MAX_RECORDS,
        max_age: float | None = DEFAULT_MAX_AGE,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        create: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _check_retention(max_records, max_age)
        self.path = Path(path)
        self.max_records = max_records
        self.max_age = max_age
        self.busy_timeout = float(busy_timeout)
        self._clock = clock
        self._write_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        if create:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _os_error(
                    exc.errno or errno.EIO,
                    f"cannot create the directory of the log store {str(self.path)!r}: "
                    f"{exc.strerror}; choose a writable path with {ENV_PATH}",
                ) from exc
        elif not self.path.is_file():
            raise _os_error(
                errno.ENOENT,
                f"no log store at {str(self.path)!r}: nothing has been logged there yet "
                f"(the local log sink creates it); point {ENV_PATH} at the file to search",
            )
        self._writer: sqlite3.Connection = self._open(create=create)

    @classmethod
    def from_config(
        cls,
        config: LocalSearchConfig,
        *,
        create: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> LocalLogStore:
        """Open the store a :class:`LocalSearchConfig` describes.

        Args:
            config: The configuration.
            create: See the class.
            clock: See the class.

        Returns:
            The open store.

        Raises:
            FileNotFoundError: See the class.
            OSError: See the class.
        """
        return cls(
            config.path,
            max_records=config.max_records,
            max_age=config.max_age,
            busy_timeout=config.busy_timeout,
            create=create,
            clock=clock,
        )

    # -- connections ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable across process crashes
            conn.execute("PRAGMA temp_store = MEMORY")
            conn.execute("PRAGMA cache_size = -32000")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open(self, *, create: bool) -> sqlite3.Connection:
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise self._error(exc, "open") from exc
        try:
            self._prepare(conn, create=create)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise self._error(exc, "open") from exc
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection, *, create: bool) -> None:
        # Reading the schema is the first real read: a non-SQLite file fails here.
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        ours = "log_records" in tables and app_id == _APPLICATION_ID
        if (tables or app_id) and not ours:
            shown = ", ".join(sorted(t for t in tables if not t.startswith("sqlite_"))[:5])
            raise _os_error(
                errno.EINVAL,
                f"{str(self.path)!r} is an SQLite database but not an agent-runtime log store "
                f"(it holds: {shown or 'no tables'}); point {ENV_PATH} at another file, or move "
                "this one away if it is yours to move (agent-runtime never modifies it)",
            )
        if ours and version > SCHEMA_VERSION:
            raise _os_error(
                errno.EINVAL,
                f"the log store {str(self.path)!r} was written by a newer agent-runtime (layout "
                f"{version}, this one reads {SCHEMA_VERSION}); upgrade agent-runtime or point "
                f"{ENV_PATH} at another file",
            )
        if not ours and not create:
            raise _os_error(
                errno.ENOENT,
                f"{str(self.path)!r} holds no log records yet (an empty file); point {ENV_PATH} "
                "at the store the local log sink writes",
            )
        mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        if mode != "wal":
            self._retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
        # Checkpoint every 32 MB of log rather than 4 MB: each checkpoint syncs the file, and at
        # the default they cost a quarter of the insert time. Then trim the log file back.
        conn.execute("PRAGMA wal_autocheckpoint = 8192")
        conn.execute("PRAGMA journal_size_limit = 67108864")
        if not ours:
            with self._transaction(conn):
                conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                for statement in _SCHEMA:
                    conn.execute(statement)

    def _retry_busy(self, action: Callable[[], object]) -> None:
        # Switching to WAL needs a moment of exclusive access, for which SQLite does not always
        # call the busy handler; two processes opening a new file at once would otherwise fail.
        deadline = time.monotonic() + max(self.busy_timeout, 0.1)
        while True:
            try:
                action()
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    @staticmethod
    @contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front, so the busy timeout applies to it; a deferred
        # transaction that upgrades later can fail at once with SQLITE_BUSY under WAL.
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise ValueError(f"the log store {str(self.path)!r} is closed")
        with self._pool_lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            try:
                conn = self._connect()
                conn.execute("PRAGMA query_only = 1")
            except sqlite3.Error as exc:
                raise self._error(exc, "search") from exc
        try:
            yield conn
        finally:
            with self._pool_lock:
                if self._closed or len(self._idle) >= 4:
                    conn.close()
                else:
                    self._idle.append(conn)

    def _error(self, exc: sqlite3.Error, action: str) -> OSError:
        """Translate an SQLite error into an ``OSError`` that says what to do."""
        where = repr(str(self.path))
        text = str(exc)
        lowered = text.lower()
        if _is_busy(exc):
            return _os_error(
                errno.EBUSY,
                f"the log store {where} stayed locked by another process for more than "
                f"{self.busy_timeout:g} s during {action}; try again, or look for a process "
                "holding a long transaction on it",
            )
        if "disk is full" in lowered or "database or disk is full" in lowered:
            return _os_error(
                errno.ENOSPC,
                f"the disk of the log store {where} is full; free space or lower "
                f"{ENV_MAX_RECORDS} / {ENV_MAX_AGE}",
            )
        if "readonly" in lowered or "read-only" in lowered:
            return _os_error(
                errno.EROFS,
                f"the log store {where} is read-only ({text}); make it and its directory "
                f"writable or set {ENV_PATH} to a writable path",
            )
        if "unable to open" in lowered:
            return _os_error(
                errno.EACCES,
                f"cannot open the log store {where} ({text}); check that its directory exists "
                f"and is writable, or set {ENV_PATH} to another path",
            )
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(
            exc, sqlite3.OperationalError | sqlite3.IntegrityError | sqlite3.ProgrammingError
        ):
            return _os_error(
                errno.EIO,
                f"{where} is not a readable agent-runtime log store (SQLite says: {text}). "
                f"Move it away (for example: mv {self.path} {self.path}.broken) so a new store is "
                f"created, or set {ENV_PATH} to another path; agent-runtime never deletes it",
            )
        return _os_error(errno.EIO, f"log store {where}: {action} failed: {text}")

    # -- writing -------------------------------------------------------------------------------

    def insert(self, entries: Iterable[LogEntry]) -> int:
        """Write records in one transaction.

        Args:
            entries: The records.

        Returns:
            The number written.

        Raises:
            OSError: The write failed (busy past the timeout: ``errno.EBUSY``; disk full:
                ``ENOSPC``; damaged file: ``EIO``); nothing of the batch was written.
            ValueError: The store is closed.
        """
        rows = [_row(entry) for entry in entries]
        if not rows:
            return 0
        with self._write_lock:
            if self._closed:
                raise ValueError(f"the log store {str(self.path)!r} is closed")
            try:
                conn = self._writer
                with self._transaction(conn):
                    by_day: dict[int, list[int]] = {}
                    for row in rows:
                        row_id = conn.execute(_INSERT, row).fetchone()[0]
                        by_day.setdefault(_day_of(row_id), []).append(row_id)
                    for day, ids in by_day.items():
                        name = _Partition.of_day(day).name
                        conn.execute(_FTS_TABLE.format(name=name))
                        conn.execute(_INDEX_TEXT.format(name=name), (json.dumps(ids),))
            except sqlite3.Error as exc:
                raise self._error(exc, "insert") from exc
        return len(rows)

    def prune(self, batch: int = DEFAULT_PRUNE_BATCH) -> int:
        """Delete at most ``batch`` records past the retention limits, oldest first.

        One short transaction per limit, so writers of other processes are held up briefly.
        Call it again while it returns ``batch`` to catch up with a large backlog.

        Args:
            batch: The most records to delete in this call.

        Returns:
            The number deleted.

        Raises:
            OSError: The store could not be written (see :meth:`insert`).
            ValueError: ``batch`` is below 1, or the store is closed.
        """
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch!r}")
        deleted = 0
        with self._write_lock:
            if self._closed:
                raise ValueError(f"the log store {str(self.path)!r} is closed")
            conn = self._writer
            try:
                if self.max_age is not None:
                    cutoff = _to_id(self._clock() - self.max_age)
                    with self._transaction(conn):
                        deleted += _delete_oldest(
                            conn,
                            "SELECT id FROM log_records WHERE id < ? ORDER BY id LIMIT ?",
                            (cutoff, batch),
                        )
                if self.max_records is not None and deleted < batch:
                    # Counting reads the small level index, not the records.
                    count = conn.execute("SELECT count(*) FROM log_records").fetchone()[0]
                    excess = min(count - self.max_records, batch - deleted)
                    if excess > 0:
                        with self._transaction(conn):
                            deleted += _delete_oldest(
                                conn, "SELECT id FROM log_records ORDER BY id LIMIT ?", (excess,)
                            )
            except sqlite3.Error as exc:
                raise self._error(exc, "prune") from exc
        return deleted

    # -- reading -------------------------------------------------------------------------------

    def search(
        self,
        text: str | None = None,
        *,
        trace_id: str | None = None,
        run_id: str | None = None,
        level: str | int | None = None,
        since: datetime | timedelta | str | float | None = None,
        until: datetime | timedelta | str | float | None = None,
        logger: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> list[dict[str, Any]]:
        """Find records, newest first.

        Order: by the records' own timestamps, newest first (to the microsecond; records of one
        microsecond newest-inserted first). All filters combine with AND.

        Args:
            text: Words that must all appear in the message or exception (see the module
                docstring: ``word``, ``prefix*``, ``"a phrase"``); FTS5 syntax in it is taken as
                plain text. Empty or blank text is no text filter; text without any letter or
                digit matches nothing.
            trace_id: Only records of this trace (32 hex digits; case-insensitive).
            run_id: Only records of this run.
            level: Only records at this level and above (``WARNING`` gives WARNING, ERROR and
                CRITICAL).
            since: Only records at or after this time (see :func:`parse_time`: datetime, epoch
                seconds, RFC 3339, or a duration ago such as ``15m``, ``2h``, ``7d``).
            until: Only records at or before this time (same forms).
            logger: Only records of this logger or its children (``agent_runtime`` matches
                ``agent_runtime.sandbox``).
            limit: The most records to return (>= 1).

        Returns:
            The records as the JSON dicts that were logged (``timestamp``, ``level``,
            ``logger``, ``message``, ``service``, ``trace_id``, ``span_id``, ``run_id``,
            ``step``, extras, ``exception``...).

        Raises:
            ValueError: A filter cannot be used (unknown level, unreadable time, limit below
                1); the message says what is accepted.
            OSError: The store cannot be read (damaged, locked past the timeout).
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a whole number >= 1, got {limit!r}")
        now = self._clock()
        # Time bounds are row id bounds (see the module docstring); the walk below applies them
        # to whichever side drives the query.
        low = None if since is None else _to_id(parse_time(since, now=now))
        high = None if until is None else _to_id(parse_time(until, now=now)) + _SEQ_SPAN - 1
        conditions: list[str] = []
        params: list[Any] = []
        if level is not None:
            conditions.append("r.level_no >= ?")
            params.append(level_number(level))
        if trace_id is not None:
            conditions.append("r.trace_id = ?")
            params.append(str(trace_id).strip().lower())
        if run_id is not None:
            conditions.append("r.run_id = ?")
            params.append(str(run_id))
        if logger is not None:
            name = str(logger).strip()
            conditions.append("(r.logger = ? OR (r.logger >= ? AND r.logger < ?))")
            params += [name, name + ".", name + "/"]  # "/" sorts right after "."
        match = None
        if text is not None and text.strip():
            match = _match_query(text)
            if match is None:
                return []  # only punctuation: no word of any record can match it
        # Time bounds are row id bounds (see the module docstring).
        bounds: list[tuple[str, int]] = []
        if low is not None:
            bounds.append((">=", low))
        if high is not None:
            bounds.append(("<=", high))
        with self._reader() as conn:
            try:
                conn.execute("BEGIN")  # one snapshot for the probe and the query
                try:
                    rows = self._run_search(
                        conn,
                        match,
                        bounds,
                        conditions,
                        params,
                        one_trace_or_run=trace_id is not None or run_id is not None,
                        limit=limit,
                    )
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._error(exc, "search") from exc
        return [json.loads(row[0]) for row in rows]

    @staticmethod
    def _run_search(
        conn: sqlite3.Connection,
        match: str | None,
        bounds: list[tuple[str, int]],
        conditions: list[str],
        params: list[Any],
        *,
        one_trace_or_run: bool,
        limit: int,
    ) -> list[tuple[str]]:
        """Pick the plan for these filters and run it (measured in bench/bench_log_search.py)."""
        bound_params = [value for _, value in bounds]
        where = " AND ".join([f"r.id {op} ?" for op, _ in bounds] + conditions)
        where = f" WHERE {where}" if where else ""
        if match is None:
            # Walk the records newest first (primary key, or an index whose entries are in row
            # id order within one key) and stop at ``limit``.
            sql = f"SELECT r.record FROM log_records AS r{where} ORDER BY r.id DESC LIMIT ?"
            return conn.execute(sql, [*bound_params, *params, limit]).fetchall()
        low = next((value for op, value in bounds if op == ">="), 0)
        high = next((value for op, value in bounds if op == "<="), 2**63 - 1)
        days = [p for p in reversed(_partitions(conn)) if p.high >= low and p.low <= high]
        if one_trace_or_run:
            # One trace or run holds few records: list them from their index, then read the
            # text matches within their row id span once and keep the intersection. (Testing
            # each record against the text index instead re-reads a prefix's whole doclist
            # for every record: seconds.)
            count, first, last = conn.execute(
                "SELECT count(*), min(id), max(id) FROM "
                f"(SELECT r.id AS id FROM log_records AS r{where} LIMIT ?)",
                [*bound_params, *params, _PROBE_CAP],
            ).fetchone()
            if count == 0:
                return []
            if count < _PROBE_CAP:
                spanned = [p.name for p in days if p.high >= first and p.low <= last]
                if not spanned:
                    return []
                matches = " UNION ALL ".join(
                    f"SELECT rowid FROM {name} WHERE {name} MATCH ? AND rowid >= ? AND rowid <= ?"
                    for name in spanned
                )
                sql = (
                    f"SELECT r.record FROM log_records AS r{where} AND r.id IN ({matches}) "
                    "ORDER BY r.id DESC LIMIT ?"
                )
                span_params = [match, first, last] * len(spanned)
                return conn.execute(sql, [*bound_params, *params, *span_params, limit]).fetchall()
        # Walk the text matches day by day, newest first (FTS5 returns them in row id order,
        # which is time order), test the other filters on each, and stop at ``limit``: no
        # sort, however many records match. Level and logger filters are tested this way too:
        # they rarely select so few records that reading all their text matches would be
        # cheaper.
        rows: list[tuple[str]] = []
        for part in days:
            name = part.name
            walk = " AND ".join(
                [f"{name} MATCH ?", *(f"{name}.rowid {op} ?" for op, _ in bounds), *conditions]
            )
            sql = (
                f"SELECT r.record FROM {name} CROSS JOIN log_records AS r "
                f"ON r.id = {name}.rowid WHERE {walk} ORDER BY {name}.rowid DESC LIMIT ?"
            )
            wanted = limit - len(rows)
            rows += conn.execute(sql, [match, *bound_params, *params, wanted]).fetchall()
            if len(rows) >= limit:
                break
        return rows

    def stats(self) -> StoreStats:
        """Return the number of records, their time span and the file size.

        Returns:
            The statistics.

        Raises:
            OSError: The store cannot be read.
        """
        with self._reader() as conn:
            try:
                count = conn.execute("SELECT count(*) FROM log_records").fetchone()[0]
                low, high = conn.execute("SELECT min(id), max(id) FROM log_records").fetchone()
            except sqlite3.Error as exc:
                raise self._error(exc, "stats") from exc
        size = 0
        for suffix in ("", "-wal"):
            with suppress(OSError):
                size += os.stat(f"{self.path}{suffix}").st_size
        return StoreStats(
            path=str(self.path),
            records=int(count),
            oldest=None if low is None else _id_time(low),
            newest=None if high is None else _id_time(high),
            size_bytes=size,
            max_records=self.max_records,
            max_age=self.max_age,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection (idempotent); later calls raise ``ValueError``."""
        with self._pool_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        with self._write_lock:
            # Fold the write-ahead log back into the file while we hold the last handle.
            with suppress(sqlite3.Error):
                self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._writer.close()

    def __enter__(self) -> LocalLogStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LocalLogStore({str(self.path)!r})"


def _delete_oldest(conn: sqlite3.Connection, select_ids: str, params: tuple[int, ...]) -> int:
    """Delete the records ``select_ids`` picks (the oldest ones) and their text; return how many.

    Runs inside the caller's write transaction, so no other process deletes them in between
    (deleting text that is no longer indexed would corrupt the FTS5 index).
    """
    count, last = conn.execute(f"SELECT count(*), max(id) FROM ({select_ids})", params).fetchone()
    if not count:
        return 0
    expired = []
    trimmed = None
    for part in _partitions(conn):
        if part.low > last:
            break
        if part.high <= last:
            expired.append(part)  # every record of that day goes: drop its index whole
        else:
            conn.execute(_UNINDEX.format(name=part.name), (part.low, last))
            trimmed = part
    conn.execute("DELETE FROM log_records WHERE id <= ?", (last,))
    if (
        trimmed is not None
        and not conn.execute(
            "SELECT 1 FROM log_records WHERE id >= ? AND id <= ? LIMIT 1",
            (trimmed.low, trimmed.high),
        ).fetchone()
    ):
        expired.append(trimmed)  # its last records just went
        trimmed = None
    for part in expired:
        conn.execute(f"DROP TABLE {part.name}")
    if trimmed is not None:
        # Trimming a day by count leaves tombstones in its index until the day is dropped; when
        # the whole retention fits in one day that is never. A negative merge is an
        # incremental optimize: this much work per deleted record keeps the index near its
        # live size (measured by tests/observability/test_search.py).
        pages = max(_MERGE_MIN_PAGES, count // _RECORDS_PER_MERGE_PAGE)
        conn.execute(
            f"INSERT INTO {trimmed.name} ({trimmed.name}, rank) VALUES ('merge', ?)", (-pages,)
        )
    return int(count)


@dataclass(frozen=True, slots=True)
class _Partition:
    """One day's text index: its table name and the row ids (inclusive) of that UTC day."""

    name: str
    low: int
    high: int

    @classmethod
    def of_day(cls, day: int) -> _Partition:
        date = _EPOCH + timedelta(days=day)
        low = (day * _DAY_US) << _SEQ_BITS
        high = (((day + 1) * _DAY_US) << _SEQ_BITS) - 1
        return cls(f"log_fts_{date:%Y_%m_%d}", low, high)


def _day_of(row_id: int) -> int:
    return (row_id >> _SEQ_BITS) // _DAY_US


def _partitions(conn: sqlite3.Connection) -> list[_Partition]:
    """The day indexes in the file, oldest first."""
    days = []
    for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB 'log_fts_[0-9]*'"
    ):
        match = _PARTITION_NAME.match(name)  # skips FTS5's own shadow tables
        if match:
            year, month, day = (int(g) for g in match.groups())
            days.append((datetime(year, month, day, tzinfo=UTC) - _EPOCH).days)
    return [_Partition.of_day(day) for day in sorted(days)]


def _os_error(code: int, message: str) -> OSError:
    """An ``OSError`` with ``errno`` set whose text is just ``message`` (no ``[Errno n]``)."""
    cls = FileNotFoundError if code == errno.ENOENT else OSError
    exc = cls(message)
    exc.errno = code
    return exc


def _is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def _row(entry: LogEntry) -> dict[str, Any]:
    fields = entry.fields
    trace_id = fields.get("trace_id")
    run_id = fields.get("run_id")
    return {
        "lo": min(max(entry.time_ns // 1000, 0), _MAX_US) << _SEQ_BITS,
        "level_no": _record_level_number(str(entry.level)),
        "logger": str(fields.get("logger", "")),
        "trace_id": None if trace_id is None else str(trace_id).lower(),
        "run_id": None if run_id is None else str(run_id),
        "record": entry.json(),
    }
