"""Workspace diffs between two snapshots: per-file unified text diffs, as text and as JSON.

The content of both sides comes from the blob store, so a diff can be shown long after the run
(and on another machine sharing the database and blobs). Text files get a unified diff built with
:mod:`difflib`; binary files (a NUL byte, or not UTF-8) are only reported as differing; files over
``max_diff_file_bytes`` are not read, and a diff longer than ``max_diff_lines`` is cut with a
marker, so one huge log file never floods a terminal or a JSON response.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any, Final

from agent_runtime import errors
from agent_runtime.workspace.blobs import BlobStore
from agent_runtime.workspace.config import WorkspaceConfig
from agent_runtime.workspace.manifest import DIR, FILE, SYMLINK, Entry, FileChange, Snapshot
from agent_runtime.workspace.manifest import compare as compare_entries

__all__ = ["FileDiff", "WorkspaceDiff", "build_diff"]

_NO_NEWLINE: Final = "\\ No newline at end of file\n"


@dataclass(frozen=True, slots=True)
class FileDiff:
    """How one path differs between the two snapshots of a diff.

    Attributes:
        change: The change (path, added/modified/deleted, both entries, what changed).
        diff: The unified diff of the content (empty when there is none to show).
        binary: The content is binary; no line diff.
        too_large: A side is over the size limit; no line diff.
        truncated: The line diff was cut at the line limit.
        note: Why content is not shown, when it cannot be (a blob is missing).
    """

    change: FileChange
    diff: str = ""
    binary: bool = False
    too_large: bool = False
    truncated: bool = False
    note: str | None = None

    @property
    def path(self) -> str:
        """The workspace-relative path."""
        return self.change.path

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping."""
        out = self.change.as_dict()
        out.update(
            diff=self.diff,
            binary=self.binary,
            too_large=self.too_large,
            truncated=self.truncated,
            note=self.note,
        )
        return out

    def to_text(self) -> str:
        """Render this file's part of the diff, git-style."""
        c, old, new = self.change, self.change.old, self.change.new
        lines = [f"diff --workspace a/{c.path} b/{c.path}"]
        if c.change == "added" and new is not None:
            lines.append(f"new {_describe(new)}")
        elif c.change == "deleted" and old is not None:
            lines.append(f"deleted {_describe(old)}")
        elif old is not None and new is not None:
            if "type" in c.aspects:
                lines.append(f"type changed: {_describe(old)} -> {_describe(new)}")
            if "mode" in c.aspects:
                lines.append(f"old mode {old.mode:04o}")
                lines.append(f"new mode {new.mode:04o}")
            if "owner" in c.aspects:
                lines.append(f"owner {old.uid}:{old.gid} -> {new.uid}:{new.gid}")
            if "target" in c.aspects:
                lines.append(f"symlink target {old.target!r} -> {new.target!r}")
        if c.old_sha256 or c.new_sha256:
            before = (c.old_sha256 or "0" * 64)[:12]
            after = (c.new_sha256 or "0" * 64)[:12]
            if before != after:
                lines.append(f"index {before}..{after}")
        if self.note:
            lines.append(self.note)
        elif self.too_large:
            lines.append("Large file: content diff not shown")
        elif self.binary:
            lines.append(f"Binary files a/{c.path} and b/{c.path} differ")
        text = "\n".join(lines) + "\n"
        return text + self.diff


def _describe(entry: Entry) -> str:
    if entry.kind == SYMLINK:
        return f"symlink -> {entry.target!r}"
    if entry.kind == DIR:
        return f"directory mode {entry.mode:04o}"
    return f"file mode {entry.mode:04o}, {entry.size} bytes"


@dataclass(frozen=True, slots=True)
class WorkspaceDiff:
    """The difference between two snapshots of a run's workspace.

    Attributes:
        run_id: The run.
        from_position: The earlier snapshot's position (-1 = initial state).
        to_position: The later snapshot's position.
        from_step: Its step name.
        to_step: Its step name.
        files: One entry per differing path, sorted by path.
    """

    run_id: str
    from_position: int
    to_position: int
    from_step: str
    to_step: str
    files: tuple[FileDiff, ...]

    def _count(self, change: str) -> int:
        return sum(1 for f in self.files if f.change.change == change)

    @property
    def added(self) -> int:
        """Number of added paths."""
        return self._count("added")

    @property
    def modified(self) -> int:
        """Number of modified paths."""
        return self._count("modified")

    @property
    def deleted(self) -> int:
        """Number of deleted paths."""
        return self._count("deleted")

    def summary(self) -> str:
        """One line: which snapshots, and how many paths were added, modified and deleted."""
        return (
            f"workspace of run {self.run_id}: position {self.from_position} ({self.from_step}) "
            f"-> {self.to_position} ({self.to_step}): {self.added} added, {self.modified} "
            f"modified, {self.deleted} deleted"
        )

    def to_text(self) -> str:
        """Render the whole diff as text: the summary line, then each file git-style."""
        return "\n".join([self.summary(), *(f.to_text() for f in self.files)])

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping."""
        return {
            "run_id": self.run_id,
            "from_position": self.from_position,
            "to_position": self.to_position,
            "from_step": self.from_step,
            "to_step": self.to_step,
            "added": self.added,
            "modified": self.modified,
            "deleted": self.deleted,
            "files": [f.as_dict() for f in self.files],
        }

    def to_json(self, *, indent: int | None = None) -> str:
        """Render the diff as a JSON document.

        Args:
            indent: Passed to :func:`json.dumps`.

        Returns:
            The JSON text.
        """
        return json.dumps(self.as_dict(), indent=indent)


def _decode(data: bytes) -> str | None:
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _file_diff(change: FileChange, blobs: BlobStore, config: WorkspaceConfig) -> FileDiff:
    old = change.old if change.old is not None and change.old.kind == FILE else None
    new = change.new if change.new is not None and change.new.kind == FILE else None
    content_changed = change.change != "modified" or bool({"content", "type"} & set(change.aspects))
    if (old is None and new is None) or not content_changed:
        return FileDiff(change)
    if any(e is not None and e.size > config.max_diff_file_bytes for e in (old, new)):
        return FileDiff(change, too_large=True)
    sides: list[str] = []
    for entry in (old, new):
        if entry is None or entry.sha256 is None:
            sides.append("")
            continue
        try:
            data = blobs.read(entry.sha256)
        except errors.WorkspaceError as exc:
            return FileDiff(change, note=f"content not available: {exc}")
        text = _decode(data)
        if text is None:
            return FileDiff(change, binary=True)
        sides.append(text)
    path = change.path
    lines = list(
        difflib.unified_diff(
            sides[0].splitlines(keepends=True),
            sides[1].splitlines(keepends=True),
            fromfile=f"a/{path}" if old else "/dev/null",
            tofile=f"b/{path}" if new else "/dev/null",
        )
    )
    dropped = max(0, len(lines) - config.max_diff_lines)
    lines = lines[: config.max_diff_lines]
    out = [line if line.endswith("\n") else line + "\n" + _NO_NEWLINE for line in lines]
    truncated = dropped > 0
    if truncated:
        out.append(f"... diff truncated: {dropped} more lines not shown\n")
    return FileDiff(change, diff="".join(out), truncated=truncated)


def build_diff(
    before: Snapshot, after: Snapshot, blobs: BlobStore, config: WorkspaceConfig | None = None
) -> WorkspaceDiff:
    """Diff two snapshots of the same run.

    Args:
        before: The earlier snapshot.
        after: The later snapshot.
        blobs: Where both snapshots' contents are stored.
        config: Size and line limits (defaults when None).

    Returns:
        The diff.
    """
    cfg = config or WorkspaceConfig()
    changes = compare_entries(before.entries, after.entries)
    return WorkspaceDiff(
        run_id=after.run_id,
        from_position=before.position,
        to_position=after.position,
        from_step=before.step,
        to_step=after.step,
        files=tuple(_file_diff(c, blobs, cfg) for c in changes),
    )
