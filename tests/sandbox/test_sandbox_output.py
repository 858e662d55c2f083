"""Bounded output capture and line streaming as SandboxOutput events."""

from __future__ import annotations

from sandbox_helpers import Recorder

from agent_runtime.events import SandboxOutput
from agent_runtime.sandbox._output import MAX_LINE_BYTES, OutputCollector, truncation_marker


def test_lines_are_split_across_chunks_and_emitted(recorder: Recorder) -> None:
    """Lines split over several chunks are reassembled and emitted with the run id."""
    out = OutputCollector(limit=1024, run_id="run-1")
    out.feed("stdout", b"hel")
    out.feed("stdout", b"lo\nwor")
    out.feed("stderr", b"oops\r\n")
    out.feed("stdout", b"ld")
    out.finish()
    assert out.lines == (("stdout", "hello"), ("stderr", "oops"), ("stdout", "world"))
    events = recorder.of(SandboxOutput)
    assert [(e.stream, e.line, e.run_id) for e in events] == [
        ("stdout", "hello", "run-1"),
        ("stderr", "oops", "run-1"),
        ("stdout", "world", "run-1"),
    ]
    assert out.text("stdout") == ("hello\nworld", 0)


def test_output_over_the_limit_keeps_head_and_tail_with_marker() -> None:
    """Past the limit, the head and the tail are kept around a truncation marker."""
    out = OutputCollector(limit=1000, run_id=None)
    payload = b"A" * 600 + b"B" * 5000 + b"C" * 600
    for start in range(0, len(payload), 700):
        out.feed("stdout", payload[start : start + 700])
    text, dropped = out.text("stdout")
    assert dropped == len(payload) - 1000
    assert text.startswith("A" * 500)
    assert text.endswith("C" * 500)
    assert truncation_marker(dropped) in text
    assert out.total_bytes == len(payload)


def test_streamed_lines_stop_at_the_limit_with_one_notice(recorder: Recorder) -> None:
    """Lines beyond the byte budget are dropped and announced once per stream."""
    out = OutputCollector(limit=1024, run_id="r")
    for index in range(200):
        out.feed("stdout", f"line {index:04d}\n".encode())
    out.finish()
    kept = len(out.lines)
    assert 0 < kept < 200
    assert out.lines_dropped == 200 - kept
    notices = [e for e in recorder.of(SandboxOutput) if "not streamed" in e.line]
    assert len(notices) == 1
    assert len(recorder.of(SandboxOutput)) == kept + 1


def test_very_long_line_is_streamed_in_pieces() -> None:
    """A line without newline longer than MAX_LINE_BYTES is streamed in pieces."""
    out = OutputCollector(limit=10 * MAX_LINE_BYTES, run_id=None)
    out.feed("stdout", b"x" * (MAX_LINE_BYTES + 10))
    out.finish()
    assert [len(line) for _, line in out.lines] == [MAX_LINE_BYTES, 10]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    """Undecodable bytes become replacement characters."""
    out = OutputCollector(limit=1024, run_id=None)
    out.feed("stderr", b"bad \xff byte\n")
    out.finish()
    assert out.lines == (("stderr", "bad \ufffd byte"),)
