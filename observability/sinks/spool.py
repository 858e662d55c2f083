"""The on-disk spool: a bounded, append-only, crash-tolerant queue of log records.

A log sink writes records here while its destination is down and reads them back, oldest first,
once the destination answers again. The spool is a directory of numbered *segment* files, one
record per line (each record is one line of JSON text), plus a ``cursor`` file that says how far
delivery has got. Only the sink's own background thread touches a spool, so there is no locking
inside it.

Crash tolerance ("enough", not a database):

* Segments are only ever appended to, and a new process always starts a new segment, so a line
  half-written by a crashed process is the *last* line of a segment that nobody appends to again.
  Reading skips a line with no trailing newline and any line that is not valid JSON, and counts
  them, instead of failing.
* The cursor is replaced atomically (write a temporary file, ``os.replace``) after each delivered
  batch. A crash between delivering a batch and moving the cursor delivers that batch twice:
  delivery is at-least-once.
* A failed append (``ENOSPC``, ``EDQUOT``, I/O error) is truncated back to the last whole line, so
  a full disk never leaves a torn record in front of later ones. The error goes to the caller,
  which counts and drops the records.

The spool is bounded by ``max_bytes`` (the size of every segment file still on disk): an append
that does not fit writes the records that do and returns how many that was.

Several processes may share one spool directory (for example several workers started from the
same working directory): each claims a ``slot-N`` sub-directory with an exclusive ``flock`` and
the records a previous process left in that slot are delivered by the next process that claims
it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "DEFAULT_SPOOL_MAX_BYTES",
    "MAX_SLOTS",
    "Spool",
    "SpoolRead",
]

DEFAULT_SPOOL_MAX_BYTES: Final = 128 * 1024 * 1024
"""Default bound of one sink's spool on disk (128 MiB)."""

DEFAULT_SEGMENT_BYTES: Final = 4 * 1024 * 1024
"""Default size after which the spool starts a new segment file (4 MiB)."""

MAX_SLOTS: Final = 64
"""How many processes can share one spool directory."""

_SUFFIX: Final = ".seg"
_CURSOR: Final = "cursor"
_LOCK: Final = "lock"
_READ_CHUNK: Final = 1024 * 1024

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SpoolRead:
    """Records read from the spool, not yet consumed until :meth:`Spool.commit`.

    Attributes:
        records: The valid records, oldest first.
        segment: The segment the read stopped in.
        offset: The byte offset in ``segment`` right after the last line read.
        lines: Whole lines read (valid and corrupt), removed from the count on commit.
        corrupt: Lines skipped because they were torn or not valid JSON.
    """

    records: tuple[str, ...]
    segment: int
    offset: int
    lines: int
    corrupt: int


class Spool:
    """A bounded on-disk FIFO of one-line JSON records.

    Args:
        directory: The sink's spool directory; created if missing. The spool claims a
            ``slot-N`` sub-directory in it.
        max_bytes: The bound on the segment files' total size.
        segment_bytes: Start a new segment file once the current one reaches this size.

    Raises:
        ValueError: If a size is not positive.
        OSError: If the directory cannot be created or written, or all :data:`MAX_SLOTS`
            slots are held by other processes; the message names the directory.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"spool max_bytes must be positive, got {max_bytes}")
        if segment_bytes <= 0:
            raise ValueError(f"spool segment_bytes must be positive, got {segment_bytes}")
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        root = Path(directory)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot create the log spool directory {root}: {exc.strerror}; "
                "point the sink's spool_dir at a writable directory",
            ) from exc
        self.directory, self._lock_fd = _claim_slot(root)
        self._segments: list[int] = []
        self._sizes: dict[int, int] = {}
        self._write_seq: int | None = None
        self._write_fd: int | None = None
        self._reader: tuple[int, BinaryIO] | None = None
        self._cursor = (0, 0)
        self._count = 0
        self._next_seq = 1
        self._closed = False
        self._load()

    # -- state ------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Whole records on disk not yet consumed."""
        return self._count

    @property
    def size_bytes(self) -> int:
        """Bytes the segment files take on disk (what ``max_bytes`` bounds)."""
        return sum(self._sizes.values())

    def segment_path(self, seq: int) -> Path:
        """Return the path of segment number ``seq`` (a fresh slot starts at 1).

        Args:
            seq: The segment number.

        Returns:
            The file path.
        """
        return self.directory / f"{seq:016d}{_SUFFIX}"

    # -- writing ----------------------------------------------------------------------------

    def append(self, records: Sequence[str]) -> int:
        """Append records (oldest first) as whole lines, as many as the bound allows.

        Args:
            records: One-line JSON texts.

        Returns:
            How many of ``records`` were written (a prefix); fewer than given when the bound
            is reached.

        Raises:
            OSError: If the write failed (``ENOSPC`` on a full disk). Nothing of this call is
                left on disk.
        """
        if not records or self._closed:
            return 0
        room = self.max_bytes - self.size_bytes
        lines: list[bytes] = []
        size = 0
        for record in records:
            line = record.encode("utf-8", "surrogatepass") + b"\n"
            if size + len(line) > room:
                break
            lines.append(line)
            size += len(line)
        if not lines:
            return 0
        fd, seq = self._writer()
        start = self._sizes[seq]
        data = memoryview(b"".join(lines))
        try:
            while data:
                written = os.write(fd, data)
                data = data[written:]
        except OSError:
            self._undo_write(fd, seq, start)
            raise
        self._sizes[seq] = start + size
        self._count += len(lines)
        return len(lines)

    def _writer(self) -> tuple[int, int]:
        if (
            self._write_fd is not None
            and self._write_seq is not None
            and self._sizes[self._write_seq] < self.segment_bytes
        ):
            return self._write_fd, self._write_seq
        self._close_writer()
        seq = self._next_seq
        path = self.segment_path(seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._next_seq = seq + 1
        self._write_fd, self._write_seq = fd, seq
        self._segments.append(seq)
        self._sizes[seq] = 0
        if len(self._segments) == 1:
            self._cursor = (seq, 0)
        return fd, seq

    def _undo_write(self, fd: int, seq: int, start: int) -> None:
        # Cut the torn tail so the next append does not glue a record onto half a line. If
        # that fails too, abandon the segment: readers skip a torn last line of an old segment.
        try:
            os.ftruncate(fd, start)
        except OSError:
            self._close_writer()
            if start == 0:
                self._forget_segment(seq)
            else:
                self._sizes[seq] = _file_size(self.segment_path(seq))

    def _close_writer(self) -> None:
        if self._write_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._write_fd)
        self._write_fd = None
        self._write_seq = None

    def _forget_segment(self, seq: int) -> None:
        if self._reader is not None and self._reader[0] == seq:
            self._reader[1].close()
            self._reader = None
        with contextlib.suppress(OSError):
            self.segment_path(seq).unlink()
        if seq in self._segments:
            self._segments.remove(seq)
        self._sizes.pop(seq, None)
        if self._cursor[0] == seq:
            self._cursor = (self._segments[0], 0) if self._segments else (0, 0)

    # -- reading ----------------------------------------------------------------------------

    def read(self, max_records: int) -> SpoolRead:
        """Read up to ``max_records`` records from the cursor on, without consuming them.

        Torn and non-JSON lines are skipped and counted. The read is empty only when nothing
        valid is left.

        Args:
            max_records: The batch size.

        Returns:
            The records and where the read stopped; pass it to :meth:`commit` once delivered.
        """
        records: list[str] = []
        lines = corrupt = 0
        seq, offset = self._cursor
        if not self._segments:
            return SpoolRead((), seq, offset, 0, 0)
        while len(records) < max_records:
            stream = self._reader_for(seq)
            stream.seek(offset)
            at_end = False
            while len(records) < max_records:
                line = stream.readline()
                if not line:
                    at_end = True
                    break
                offset += len(line)
                if not line.endswith(b"\n"):
                    # A torn last line: the process writing it died mid-write.
                    corrupt += 1
                    at_end = True
                    break
                lines += 1
                try:
                    text = line[:-1].decode("utf-8")
                    json.loads(text)
                except ValueError:
                    corrupt += 1
                    continue
                records.append(text)
            if not at_end or seq == self._write_seq:
                break
            later = [s for s in self._segments if s > seq]
            if not later:
                break
            seq, offset = later[0], 0
        return SpoolRead(tuple(records), seq, offset, lines, corrupt)

    def _reader_for(self, seq: int) -> BinaryIO:
        if self._reader is not None and self._reader[0] == seq:
            return self._reader[1]
        if self._reader is not None:
            self._reader[1].close()
        stream = self.segment_path(seq).open("rb")
        self._reader = (seq, stream)
        return stream

    def commit(self, read: SpoolRead) -> None:
        """Consume what ``read`` returned: move the cursor and delete finished segments.

        Args:
            read: The result of the last :meth:`read`.
        """
        for seq in [s for s in self._segments if s < read.segment]:
            self._forget_segment(seq)
        self._cursor = (read.segment, read.offset)
        if not read.records and not read.lines:
            self._count = 0  # nothing readable is left, whatever the count said
        self._count = max(0, self._count - read.lines)
        if self._count == 0 and self._at_end():
            self._clear()
            return
        self._write_cursor()

    def _at_end(self) -> bool:
        seq, offset = self._cursor
        return not self._segments or (seq == self._segments[-1] and offset >= self._sizes[seq])

    def _clear(self) -> None:
        # Everything was delivered: leave an empty slot behind, not a trail of old segments.
        self._close_writer()
        for seq in list(self._segments):
            self._forget_segment(seq)
        with contextlib.suppress(FileNotFoundError):
            (self.directory / _CURSOR).unlink()
        self._cursor = (0, 0)

    def _write_cursor(self) -> None:
        seq, offset = self._cursor
        path = self.directory / _CURSOR
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(f"{seq} {offset}\n", encoding="ascii")
            os.replace(tmp, path)
        except OSError as exc:
            # The records are delivered; a stale cursor only means they may be sent again
            # after a restart (at-least-once), which is better than stopping delivery.
            _log.warning("cannot update the log spool cursor %s: %s", path, exc)

    # -- life cycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Sync the open segment to disk and release the slot (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._write_fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._write_fd)
        if self._count == 0 and self._segments and self._at_end():
            self._clear()
        self._close_writer()
        if self._reader is not None:
            self._reader[1].close()
            self._reader = None
        os.close(self._lock_fd)

    def _load(self) -> None:
        segments: list[int] = []
        for path in self.directory.iterdir():
            if path.suffix != _SUFFIX or not path.stem.isdigit():
                continue
            if not path.is_file():
                _log.warning("ignoring %s in the log spool: not a regular file", path)
                continue
            seq = int(path.stem)
            segments.append(seq)
            self._sizes[seq] = _file_size(path)
        segments.sort()
        self._segments = segments
        self._next_seq = (segments[-1] + 1) if segments else 1
        if not segments:
            return
        self._cursor = self._read_cursor(segments)
        seq, offset = self._cursor
        for s in segments:
            if s >= seq:
                self._count += _count_lines(self.segment_path(s), offset if s == seq else 0)

    def _read_cursor(self, segments: list[int]) -> tuple[int, int]:
        path = self.directory / _CURSOR
        try:
            seq_text, offset_text = path.read_text(encoding="ascii").split()
            seq, offset = int(seq_text), int(offset_text)
        except FileNotFoundError:
            return segments[0], 0
        except (OSError, ValueError):
            _log.warning(
                "log spool cursor %s is unreadable; re-reading the spool from the start", path
            )
            return segments[0], 0
        if seq not in self._sizes or not 0 <= offset <= self._sizes[seq]:
            return segments[0], 0
        return seq, offset


def _claim_slot(root: Path) -> tuple[Path, int]:
    for n in range(MAX_SLOTS):
        slot = root / f"slot-{n}"
        try:
            slot.mkdir(exist_ok=True)
            fd = os.open(slot / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot use the log spool directory {slot}: {exc.strerror}; "
                "point the sink's spool_dir at a writable directory",
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return slot, fd
    raise OSError(
        errno.EBUSY,
        f"all {MAX_SLOTS} log spool slots in {root} are held by other processes; "
        "give each group of processes its own spool_dir",
    )


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _count_lines(path: Path, offset: int) -> int:
    count = 0
    with path.open("rb") as stream:
        stream.seek(offset)
        while chunk := stream.read(_READ_CHUNK):
            count += chunk.count(b"\n")
    return count
