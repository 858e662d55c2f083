"""What a sandboxed command produced: ``SandboxResult`` and its termination reason.

The result is the same type for every backend, so callers (and the runtime's retry and rollback
decisions) branch on ``reason`` rather than on backend-specific exit codes or exceptions. A
command that fails is a result, not an exception: ``SandboxError`` is reserved for the sandbox
itself being unable to run anything.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = ["DiskLimitMechanism", "SandboxResult", "TerminationReason"]


class TerminationReason(StrEnum):
    """Why a sandboxed command ended."""

    EXITED = "exited"
    """The command exited by itself (``exit_code`` says how)."""
    TIMEOUT = "timeout"
    """The wall-clock deadline passed and the sandbox was killed."""
    OOM = "oom"
    """The kernel's OOM killer ended it at the memory limit."""
    DISK_LIMIT = "disk_limit"
    """It failed after filling the capped workspace or /tmp."""
    KILLED = "killed"
    """A signal ended it (its own doing, or the sandbox was cancelled or closed)."""
    ERROR = "error"
    """The sandbox could not start or observe the command (see ``stderr``)."""


class DiskLimitMechanism(StrEnum):
    """How the writable workspace's capacity was really enforced."""

    LOOP_EXT4 = "loop-ext4"
    """A loop-mounted ext4 image of exactly ``disk`` bytes (files stay on the host)."""
    TMPFS = "tmpfs"
    """A size-capped tmpfs inside the container; the workspace is copied in and out."""
    RLIMIT_FSIZE = "rlimit-fsize"
    """``RLIMIT_FSIZE``: caps each file's size, not the total (process fallback only)."""


@dataclass(frozen=True, slots=True)
class SandboxResult:
    """The outcome of one sandboxed command.

    Attributes:
        reason: Why it ended.
        exit_code: The command's exit code (``128 + signal`` when a signal ended it); None when
            no status came back (the sandbox was killed at the deadline or cancelled, or the
            command never started).
        duration_s: Wall-clock seconds from the command's start to its end.
        peak_memory_bytes: The sandbox's peak memory use, when the backend can measure it.
        stdout: Standard output, decoded as UTF-8; when over ``output_limit`` the head and the
            tail are kept around a ``[agent-runtime: N bytes truncated]`` marker.
        stderr: Standard error, bounded the same way.
        lines: The ``(stream, line)`` pairs in the order they were streamed (and emitted as
            ``SandboxOutput`` events), up to ``output_limit`` bytes per stream.
        backend: ``"docker"`` or ``"process"``.
        isolation: One sentence on what isolated the command (the process fallback says it is
            weaker than a container).
        disk_limit_mechanism: What really capped the workspace.
        image: The image the command ran in (the interpreter's description for processes).
        warm: Whether a pre-started container from the warm pool was used.
        workspace_synced: Whether the workspace directory now reflects the command's changes
            (False when there was none, or when the fallback tmpfs was lost with a killed
            container).
        egress_blocked: Destinations the egress proxy refused during the run.
        stdout_truncated_bytes: Bytes of stdout left out of ``stdout``.
        stderr_truncated_bytes: Bytes of stderr left out of ``stderr``.
        lines_dropped: Lines not kept in ``lines`` (nor emitted) past the limit.
    """

    reason: TerminationReason
    exit_code: int | None
    duration_s: float
    peak_memory_bytes: int | None
    stdout: str
    stderr: str
    lines: tuple[tuple[str, str], ...]
    backend: str
    isolation: str
    disk_limit_mechanism: DiskLimitMechanism
    image: str = ""
    warm: bool = False
    workspace_synced: bool = False
    egress_blocked: tuple[str, ...] = ()
    stdout_truncated_bytes: int = 0
    stderr_truncated_bytes: int = 0
    lines_dropped: int = 0

    @property
    def ok(self) -> bool:
        """Whether the command exited by itself with exit code 0."""
        return self.reason is TerminationReason.EXITED and self.exit_code == 0

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-ready data (how a run's checkpoint records it)."""
        data = dataclasses.asdict(self)
        data["reason"] = self.reason.value
        data["disk_limit_mechanism"] = self.disk_limit_mechanism.value
        data["lines"] = [list(pair) for pair in self.lines]
        data["egress_blocked"] = list(self.egress_blocked)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SandboxResult:
        """Rebuild a result from :meth:`to_dict` data (a replayed checkpoint)."""
        values = dict(data)
        values["reason"] = TerminationReason(values["reason"])
        values["disk_limit_mechanism"] = DiskLimitMechanism(values["disk_limit_mechanism"])
        values["lines"] = tuple((str(a), str(b)) for a, b in values.get("lines", ()))
        values["egress_blocked"] = tuple(values.get("egress_blocked", ()))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
