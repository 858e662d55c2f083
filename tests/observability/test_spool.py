"""Tests for the on-disk spool: order, bounds, restart, torn lines, full disk, slots."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from observability.sinks.spool import Spool, SpoolRead


def _records(start: int, stop: int) -> list[str]:
    return [json.dumps({"n": i, "pad": "x" * 40}) for i in range(start, stop)]


def _numbers(read: SpoolRead) -> list[int]:
    return [json.loads(r)["n"] for r in read.records]


def _drain(spool: Spool, batch: int = 7) -> list[int]:
    out: list[int] = []
    while spool.count:
        read = spool.read(batch)
        out.extend(_numbers(read))
        spool.commit(read)
    return out


def test_reads_back_in_order_across_segments(tmp_path: Path) -> None:
    """Records come back oldest first across many small segments, which are then deleted."""
    spool = Spool(tmp_path, segment_bytes=200)
    records = _records(0, 30)
    for start in range(0, 30, 3):  # a segment rolls over between appends, never within one
        assert spool.append(records[start : start + 3]) == 3
    assert spool.count == 30
    assert len(list(spool.directory.glob("*.seg"))) > 3
    assert _drain(spool) == list(range(30))
    assert spool.count == 0
    assert list(spool.directory.glob("*.seg")) == []
    spool.close()


def test_uncommitted_read_is_read_again(tmp_path: Path) -> None:
    """A read that was not committed (delivery failed) returns the same records next time."""
    spool = Spool(tmp_path)
    spool.append(_records(0, 5))
    first = spool.read(3)
    assert _numbers(first) == [0, 1, 2]
    assert _numbers(spool.read(3)) == [0, 1, 2]
    spool.commit(first)
    assert _numbers(spool.read(10)) == [3, 4]
    spool.close()


def test_interleaved_appends_and_reads_keep_order(tmp_path: Path) -> None:
    """Appending while draining keeps one FIFO order."""
    spool = Spool(tmp_path, segment_bytes=300)
    spool.append(_records(0, 10))
    read = spool.read(4)
    spool.commit(read)
    spool.append(_records(10, 20))
    assert [*_numbers(read), *_drain(spool, 5)] == list(range(20))
    spool.close()


def test_survives_reopen(tmp_path: Path) -> None:
    """A new Spool on the same directory (a restart) sees exactly the unconsumed records."""
    spool = Spool(tmp_path, segment_bytes=250)
    spool.append(_records(0, 12))
    spool.commit(spool.read(5))
    spool.close()
    again = Spool(tmp_path, segment_bytes=250)
    assert again.count == 7
    again.append(_records(12, 15))
    assert _drain(again) == list(range(5, 15))
    again.close()


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    """A half-written last line (a crash mid-write) is skipped and counted, not fatal."""
    spool = Spool(tmp_path)
    spool.append(_records(0, 3))
    spool.close()
    segment = next(tmp_path.glob("slot-0/*.seg"))
    with segment.open("ab") as f:
        f.write(b'{"n": 99, "pad": "xx')  # the process died here
    again = Spool(tmp_path)
    again.append(_records(3, 5))
    read = again.read(100)
    assert _numbers(read) == [0, 1, 2, 3, 4]
    assert read.corrupt == 1
    again.commit(read)
    assert again.count == 0
    again.close()


def test_garbage_line_is_skipped(tmp_path: Path) -> None:
    """A line that is not JSON (disk damage) is skipped and counted; the rest is delivered."""
    spool = Spool(tmp_path)
    spool.append(_records(0, 2))
    spool.close()
    segment = next(tmp_path.glob("slot-0/*.seg"))
    with segment.open("ab") as f:
        f.write(b"\x00\x00\x00\n")
    again = Spool(tmp_path)
    again.append(_records(2, 4))
    assert again.count == 5
    read = again.read(100)
    assert _numbers(read) == [0, 1, 2, 3]
    assert read.corrupt == 1
    again.commit(read)
    assert again.count == 0
    again.close()


def test_unreadable_cursor_rereads_from_start(tmp_path: Path) -> None:
    """A damaged cursor file means re-delivery from the oldest segment, not a crash."""
    spool = Spool(tmp_path)
    spool.append(_records(0, 4))
    spool.commit(spool.read(2))
    spool.close()
    (tmp_path / "slot-0" / "cursor").write_text("garbage", encoding="ascii")
    again = Spool(tmp_path)
    assert _drain(again) == [0, 1, 2, 3]
    again.close()


def test_bound_writes_a_prefix(tmp_path: Path) -> None:
    """Past max_bytes only the records that fit are written, and append says how many."""
    records = _records(0, 100)
    line = len(records[0]) + 1
    spool = Spool(tmp_path, max_bytes=line * 10 + 5, segment_bytes=line * 3)
    assert spool.append(records[:6]) == 6
    assert spool.append(records[6:]) == 4
    assert spool.append(records[10:]) == 0
    assert spool.size_bytes <= spool.max_bytes
    assert _drain(spool) == list(range(10))
    assert spool.append(records[10:12]) == 2  # room again once delivered
    spool.close()


def test_full_disk_raises_and_leaves_no_torn_record(tmp_path: Path) -> None:
    """ENOSPC (a segment on /dev/full) raises OSError and later appends work and read clean."""
    spool = Spool(tmp_path)
    os.symlink("/dev/full", spool.segment_path(1))
    with pytest.raises(OSError, match="No space left") as info:
        spool.append(_records(0, 3))
    assert info.value.errno == errno.ENOSPC
    assert spool.count == 0
    assert not spool.segment_path(1).exists()
    assert spool.append(_records(3, 5)) == 2
    assert _drain(spool) == [3, 4]
    spool.close()


_PARTIAL_WRITE = """
import errno, json, os, resource, signal, sys
from observability.sinks.spool import Spool

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
records = [json.dumps({"n": i, "pad": "x" * 40}) for i in range(6)]
spool = Spool(sys.argv[1])
spool.append(records[:2])
size = spool.segment_path(1).stat().st_size
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 30, hard))  # the next write stops mid-line
try:
    spool.append(records[2:4])
except OSError as exc:
    assert exc.errno == errno.EFBIG, exc
else:
    raise AssertionError("the append should have failed")
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
assert spool.segment_path(1).stat().st_size == size, "torn bytes were left behind"
assert spool.append(records[4:]) == 2
read = spool.read(10)
print(json.dumps({"numbers": [json.loads(r)["n"] for r in read.records], "corrupt": read.corrupt}))
"""


def test_failed_append_is_truncated_away(tmp_path: Path) -> None:
    """A write that stops half-way (file size limit) is cut back to the last whole line."""
    result = subprocess.run(
        [sys.executable, "-c", _PARTIAL_WRITE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"numbers": [0, 1, 4, 5], "corrupt": 0}


def test_second_process_claims_another_slot(tmp_path: Path) -> None:
    """Two spools on one directory lock different slots; a closed slot is reused."""
    first = Spool(tmp_path)
    second = Spool(tmp_path)
    assert first.directory.name == "slot-0"
    assert second.directory.name == "slot-1"
    first.append(_records(0, 2))
    first.close()
    third = Spool(tmp_path)
    assert third.directory.name == "slot-0"
    assert third.count == 2
    second.close()
    third.close()


def test_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    """A spool directory that cannot be created raises OSError naming it."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="spool directory"):
        Spool(blocker / "spool")


def test_sizes_must_be_positive(tmp_path: Path) -> None:
    """Zero or negative bounds are refused with ValueError."""
    with pytest.raises(ValueError, match="max_bytes"):
        Spool(tmp_path, max_bytes=0)
    with pytest.raises(ValueError, match="segment_bytes"):
        Spool(tmp_path, segment_bytes=-1)
