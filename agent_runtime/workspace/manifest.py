"""Manifests: what a workspace held at one moment, and how two such moments differ.

A :class:`Snapshot` is the manifest taken after a step (position ``-1`` is the initial state): one
:class:`Entry` per file, directory and symlink, with its SHA-256 (files), size, permission bits,
owner and symlink target. The stat fields (``mtime_ns``, ``ctime_ns``, ``ino``) are kept only so
that the next snapshot can skip re-reading a file whose metadata did not move. :func:`compare` is
the pure comparison behind per-step changes, diffs and the rollback plan. The JSON form is what
the snapshot store persists.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from agent_runtime import errors

__all__ = [
    "DIR",
    "FILE",
    "MANIFEST_FORMAT",
    "SYMLINK",
    "Entry",
    "FileChange",
    "ScanStats",
    "Snapshot",
    "WorkspaceChanges",
    "compare",
    "entries_from_json",
    "entries_to_json",
]

FILE: Final = "file"
DIR: Final = "dir"
SYMLINK: Final = "symlink"
_KINDS: Final = frozenset({FILE, DIR, SYMLINK})

MANIFEST_FORMAT: Final = 1
_FIELDS: Final = (
    "path",
    "kind",
    "mode",
    "size",
    "sha256",
    "target",
    "uid",
    "gid",
    "mtime_ns",
    "ctime_ns",
    "ino",
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One file, directory or symlink of a workspace.

    Attributes:
        path: Workspace-relative POSIX path (``src/main.py``).
        kind: ``file``, ``dir`` or ``symlink``.
        mode: Permission bits including set-id and sticky bits (``0o755``).
        size: Bytes (files), length of the target (symlinks), 0 (directories).
        sha256: Hex SHA-256 of the content (files only).
        target: Where the symlink points, verbatim (symlinks only; never resolved).
        uid: Owner user id.
        gid: Owner group id.
        mtime_ns: Modification time, restored on rollback and used by the stat cache.
        ctime_ns: Status-change time, used by the stat cache only.
        ino: Inode number, used by the stat cache only.
    """

    path: str
    kind: str
    mode: int
    size: int = 0
    sha256: str | None = None
    target: str | None = None
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    ino: int = 0

    def differences(self, other: Entry, *, owner: bool = True) -> tuple[str, ...]:
        """Say how ``other`` differs from this entry, ignoring the cache-only stat fields.

        Args:
            other: The entry at the same path in another manifest.
            owner: Whether a different uid/gid counts.

        Returns:
            A subset of ``("type", "content", "target", "mode", "owner")``; empty when equal.
        """
        if self.kind != other.kind:
            return ("type",)
        out: list[str] = []
        if self.kind == FILE and self.sha256 != other.sha256:
            out.append("content")
        if self.kind == SYMLINK and self.target != other.target:
            out.append("target")
        # Linux has no symlink permissions (they are always 0o777), so only others count.
        if self.kind != SYMLINK and self.mode != other.mode:
            out.append("mode")
        if owner and (self.uid, self.gid) != (other.uid, other.gid):
            out.append("owner")
        return tuple(out)

    def as_dict(self) -> dict[str, Any]:
        """Return the user-facing fields as a JSON-ready mapping (no cache-only fields)."""
        out: dict[str, Any] = {
            "path": self.path,
            "kind": self.kind,
            "mode": f"{self.mode:04o}",
            "size": self.size,
            "uid": self.uid,
            "gid": self.gid,
        }
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        if self.target is not None:
            out["target"] = self.target
        return out


@dataclass(frozen=True, slots=True)
class ScanStats:
    """What taking one snapshot cost.

    Attributes:
        entries: Entries in the manifest.
        hashed: Files read and hashed.
        reused: Files whose hash came from the previous snapshot (metadata unchanged).
        new_blobs: Blobs written (content not stored before).
        bytes_hashed: Bytes read to hash.
        ignored: Paths skipped because they are neither file, directory nor symlink (FIFOs,
            sockets, devices): they cannot be snapshotted and a rollback deletes them.
        duration_s: Wall-clock seconds the snapshot took.
    """

    entries: int = 0
    hashed: int = 0
    reused: int = 0
    new_blobs: int = 0
    bytes_hashed: int = 0
    ignored: tuple[str, ...] = ()
    duration_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The manifest of a workspace after one step.

    Attributes:
        run_id: The run the workspace belongs to.
        position: The step's 0-based position, or -1 for the initial state.
        step: The step's name (``initial`` for position -1).
        root: The workspace directory on the host when the snapshot was taken.
        created_at: Epoch seconds.
        scanned_at_ns: Wall-clock nanoseconds when the scan began (for the stat cache).
        entries: Path -> entry, directories before their contents, names sorted within each.
        stats: What taking it cost (only on a snapshot just taken, not on a loaded one).
    """

    run_id: str
    position: int
    step: str
    root: str
    created_at: float
    scanned_at_ns: int
    entries: Mapping[str, Entry]
    stats: ScanStats | None = field(default=None, compare=False)

    @property
    def file_count(self) -> int:
        """Number of regular files."""
        return sum(1 for e in self.entries.values() if e.kind == FILE)

    @property
    def total_bytes(self) -> int:
        """Sum of the sizes of the regular files."""
        return sum(e.size for e in self.entries.values() if e.kind == FILE)


def entries_to_json(entries: Iterable[Entry], *, scanned_at_ns: int) -> str:
    """Serialize entries into the stored manifest format (compact, one array per entry).

    Args:
        entries: The entries (their order is kept).
        scanned_at_ns: When the scan began.

    Returns:
        A JSON document (ASCII; undecodable file names survive as escaped surrogates).
    """
    rows = [[getattr(e, name) for name in _FIELDS] for e in entries]
    doc = {
        "format": MANIFEST_FORMAT,
        "scanned_at_ns": scanned_at_ns,
        "fields": list(_FIELDS),
        "entries": rows,
    }
    return json.dumps(doc, separators=(",", ":"))


def entries_from_json(text: str) -> tuple[dict[str, Entry], int]:
    """Parse a stored manifest.

    Args:
        text: What :func:`entries_to_json` produced.

    Returns:
        ``(entries by path, scanned_at_ns)``.

    Raises:
        WorkspaceError: The document is not a manifest, or one of a newer format.
    """
    try:
        doc = json.loads(text)
        version = doc["format"]
        if version != MANIFEST_FORMAT:
            raise errors.WorkspaceError(
                f"workspace manifest has format {version}, this agent-runtime reads format "
                f"{MANIFEST_FORMAT}; upgrade agent-runtime"
            )
        names = doc["fields"]
        entries: dict[str, Entry] = {}
        for row in doc["entries"]:
            entry = Entry(**dict(zip(names, row, strict=True)))
            if entry.kind not in _KINDS:
                raise ValueError(f"unknown entry kind {entry.kind!r}")
            entries[entry.path] = entry
        return entries, int(doc["scanned_at_ns"])
    except errors.WorkspaceError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise errors.WorkspaceError(f"workspace manifest is unreadable: {exc}") from exc


@dataclass(frozen=True, slots=True)
class FileChange:
    """One path that differs between two manifests.

    Attributes:
        path: Workspace-relative path.
        change: ``added``, ``modified`` or ``deleted``.
        old: The entry before (None when added).
        new: The entry after (None when deleted).
        aspects: For ``modified``: which of ``type``, ``content``, ``target``, ``mode``,
            ``owner`` changed.
    """

    path: str
    change: str
    old: Entry | None
    new: Entry | None
    aspects: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """The entry kind after the change (before it, for a deletion)."""
        entry = self.new or self.old
        assert entry is not None  # a change always has one side
        return entry.kind

    @property
    def old_sha256(self) -> str | None:
        """Content hash before the change (files only)."""
        return self.old.sha256 if self.old else None

    @property
    def new_sha256(self) -> str | None:
        """Content hash after the change (files only)."""
        return self.new.sha256 if self.new else None

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping."""
        return {
            "path": self.path,
            "change": self.change,
            "kind": self.kind,
            "aspects": list(self.aspects),
            "old": self.old.as_dict() if self.old else None,
            "new": self.new.as_dict() if self.new else None,
        }


def compare(
    old: Mapping[str, Entry], new: Mapping[str, Entry], *, owner: bool = True
) -> list[FileChange]:
    """Compare two manifests.

    Args:
        old: Entries before.
        new: Entries after.
        owner: Whether an owner change counts as a modification.

    Returns:
        The changes, sorted by path.
    """
    out: list[FileChange] = []
    for path in sorted(old.keys() | new.keys()):
        before, after = old.get(path), new.get(path)
        if before is None:
            out.append(FileChange(path, "added", None, after))
        elif after is None:
            out.append(FileChange(path, "deleted", before, None))
        else:
            aspects = before.differences(after, owner=owner)
            if aspects:
                out.append(FileChange(path, "modified", before, after, aspects))
    return out


@dataclass(frozen=True, slots=True)
class WorkspaceChanges:
    """What one step changed in the workspace, against the snapshot before it.

    Attributes:
        run_id: The run.
        position: The step's position.
        step: The step's name.
        base_position: The position compared against (None: compared against an empty tree,
            which is the case for the initial snapshot).
        added: Paths that appeared.
        modified: Paths whose content, target, type, mode or owner changed.
        deleted: Paths that disappeared.
    """

    run_id: str
    position: int
    step: str
    base_position: int | None
    added: tuple[FileChange, ...]
    modified: tuple[FileChange, ...]
    deleted: tuple[FileChange, ...]

    @classmethod
    def between(cls, base: Snapshot | None, snapshot: Snapshot) -> WorkspaceChanges:
        """Build the changes from ``base`` (None = empty) to ``snapshot``.

        Args:
            base: The earlier snapshot, or None.
            snapshot: The later one.

        Returns:
            The changes, grouped.
        """
        changes = compare(base.entries if base else {}, snapshot.entries)
        return cls(
            run_id=snapshot.run_id,
            position=snapshot.position,
            step=snapshot.step,
            base_position=base.position if base else None,
            added=tuple(c for c in changes if c.change == "added"),
            modified=tuple(c for c in changes if c.change == "modified"),
            deleted=tuple(c for c in changes if c.change == "deleted"),
        )

    def __bool__(self) -> bool:
        return bool(self.added or self.modified or self.deleted)

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping."""
        return {
            "run_id": self.run_id,
            "position": self.position,
            "step": self.step,
            "base_position": self.base_position,
            "added": [c.as_dict() for c in self.added],
            "modified": [c.as_dict() for c in self.modified],
            "deleted": [c.as_dict() for c in self.deleted],
        }
