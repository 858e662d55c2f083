"""Reading a container's memory cgroup from the host: peak memory and OOM kills.

Commands run through ``docker exec`` in a container that outlives them, so Docker's own
``State.OOMKilled`` (set only when the container's main process dies) does not see an exec'd
process killed by the OOM killer, and the stats API is slow. The kernel's counters are exact and
synchronous: ``memory.max_usage_in_bytes`` and ``oom_kill`` in ``memory.oom_control`` (cgroup
v1), or ``memory.peak`` and ``memory.events`` (cgroup v2). Only possible for a local engine;
callers fall back to the Docker API elsewhere.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

__all__ = ["CgroupProbe"]


@cache
def _mounts() -> tuple[Path | None, Path | None]:
    """Return the cgroup v1 memory controller mount and the cgroup v2 mount, if any."""
    v1: Path | None = None
    v2: Path | None = None
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return None, None
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, extra = left.split(), right.split()
        if len(fields) < 5 or len(extra) < 3:
            continue
        if extra[0] == "cgroup" and "memory" in extra[2].split(","):
            v1 = Path(fields[4])
        elif extra[0] == "cgroup2" and v2 is None:
            v2 = Path(fields[4])
    return v1, v2


@dataclass(frozen=True, slots=True)
class CgroupProbe:
    """The memory cgroup of one container.

    Attributes:
        path: The cgroup directory on the host.
        version: 1 or 2.
    """

    path: Path
    version: int

    @classmethod
    def for_pid(cls, pid: int) -> CgroupProbe | None:
        """Find the memory cgroup of process ``pid`` (e.g. a container's init), or None."""
        v1, v2 = _mounts()
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return None
        unified: str | None = None
        for line in lines:
            _, controllers, rel = line.split(":", 2)
            if v1 is not None and "memory" in controllers.split(","):
                path = v1 / rel.lstrip("/")
                return cls(path, 1) if path.is_dir() else None
            if controllers == "":
                unified = rel
        if unified is not None and v2 is not None:
            path = v2 / unified.lstrip("/")
            if (path / "memory.events").exists():
                return cls(path, 2)
        return None

    def _read(self, name: str) -> str | None:
        with contextlib.suppress(OSError):
            return (self.path / name).read_text()
        return None

    def peak_memory(self) -> int | None:
        """Peak memory use of the cgroup in bytes, or None when unreadable."""
        text = self._read("memory.max_usage_in_bytes" if self.version == 1 else "memory.peak")
        with contextlib.suppress(TypeError, ValueError):
            return int(str(text).strip())
        return None

    def oom_kills(self) -> int | None:
        """How many processes the OOM killer killed in this cgroup, or None when unknown."""
        text = self._read("memory.oom_control" if self.version == 1 else "memory.events")
        if text is None:
            return None
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                with contextlib.suppress(ValueError):
                    return int(value)
        return None
