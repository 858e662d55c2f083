"""Bounded capture of a sandboxed command's output, streamed line by line as events.

A sandbox may print without end; the runtime must not keep it all in memory, nor flood the logs.
Each stream keeps its head and its tail (the start says what ran, the end says why it failed)
around a truncation marker, and complete lines are emitted as ``SandboxOutput`` events, up to the
same byte budget, so the observability bridge logs them with the run's trace id.
"""

from __future__ import annotations

from agent_runtime.events import SandboxOutput, hooks

__all__ = ["MAX_LINE_BYTES", "OutputCollector", "truncation_marker"]

MAX_LINE_BYTES = 16 * 1024
"""A line longer than this is streamed in pieces of this size."""


def truncation_marker(dropped: int) -> str:
    """The marker put where output was left out."""
    return f"\n[agent-runtime: {dropped} bytes truncated]\n"


class _HeadTail:
    """Keeps the first ``limit // 2`` and the last ``limit - limit // 2`` bytes of a stream."""

    __slots__ = ("head", "head_cap", "tail", "tail_cap", "total")

    def __init__(self, limit: int) -> None:
        self.head_cap = limit // 2
        self.tail_cap = limit - self.head_cap
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > 2 * self.tail_cap:  # trim rarely: amortised O(1) per byte
                del self.tail[: len(self.tail) - self.tail_cap]

    def text(self) -> tuple[str, int]:
        if len(self.tail) > self.tail_cap:
            del self.tail[: len(self.tail) - self.tail_cap]
        dropped = self.total - len(self.head) - len(self.tail)
        if dropped <= 0:
            return (bytes(self.head) + bytes(self.tail)).decode("utf-8", "replace"), 0
        head = bytes(self.head).decode("utf-8", "replace")
        tail = bytes(self.tail).decode("utf-8", "replace")
        return head + truncation_marker(dropped) + tail, dropped


class OutputCollector:
    """Collects ``stdout``/``stderr`` chunks, keeps them bounded and streams complete lines.

    Args:
        limit: Bytes kept per stream, and bytes of lines streamed per stream.
        run_id: Carried by every ``SandboxOutput`` event.
    """

    def __init__(self, *, limit: int, run_id: str | None) -> None:
        self._run_id = run_id
        self._limit = limit
        self._buffers = {"stdout": _HeadTail(limit), "stderr": _HeadTail(limit)}
        self._pending = {"stdout": bytearray(), "stderr": bytearray()}
        self._line_bytes = {"stdout": 0, "stderr": 0}
        self._lines: list[tuple[str, str]] = []
        self.lines_dropped = 0

    def feed(self, stream: str, data: bytes) -> None:
        """Add a chunk of ``stream`` (``"stdout"`` or ``"stderr"``) output."""
        if not data:
            return
        self._buffers[stream].add(data)
        pending = self._pending[stream]
        pending += data
        start = 0
        while True:
            end = pending.find(b"\n", start)
            if end < 0:
                break
            self._line(stream, bytes(pending[start:end]))
            start = end + 1
        if start:
            del pending[:start]
        while len(pending) >= MAX_LINE_BYTES:
            self._line(stream, bytes(pending[:MAX_LINE_BYTES]))
            del pending[:MAX_LINE_BYTES]

    def finish(self) -> None:
        """Stream whatever partial lines remain (output that did not end with a newline)."""
        for stream, pending in self._pending.items():
            if pending:
                self._line(stream, bytes(pending))
                pending.clear()

    def _line(self, stream: str, raw: bytes) -> None:
        used = self._line_bytes[stream]
        if used + len(raw) + 1 > self._limit:
            if used <= self._limit:  # first line over budget: say so once per stream
                self._line_bytes[stream] = self._limit + 1
                note = f"[agent-runtime: further {stream} lines are not streamed; see the result]"
                hooks.emit(SandboxOutput(stream=stream, line=note, run_id=self._run_id))
            self.lines_dropped += 1
            return
        self._line_bytes[stream] = used + len(raw) + 1
        line = raw.decode("utf-8", "replace").rstrip("\r")
        self._lines.append((stream, line))
        hooks.emit(SandboxOutput(stream=stream, line=line, run_id=self._run_id))

    def text(self, stream: str) -> tuple[str, int]:
        """Return the kept text of ``stream`` and how many bytes were truncated from it."""
        return self._buffers[stream].text()

    @property
    def lines(self) -> tuple[tuple[str, str], ...]:
        """The streamed ``(stream, line)`` pairs, in order."""
        return tuple(self._lines)

    @property
    def total_bytes(self) -> int:
        """Bytes received on both streams, kept or not."""
        return sum(buffer.total for buffer in self._buffers.values())
