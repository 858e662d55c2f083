"""Identity and liveness of processes, for leases and for the sandbox garbage collector.

A process identity is ``host/pid/start/token``: the host name, the pid, the process start time
(clock ticks since boot, from ``/proc/<pid>/stat``, so a recycled pid is not mistaken for the old
process) and a random token. A run lease and a sandbox container both record the identity of the
process that owns them; another process on the same host can then tell at once whether that owner
is dead (its pid is gone or now belongs to a younger process) instead of waiting for a lease to
lapse. Across hosts, or where ``/proc`` is missing, liveness is unknown and callers fall back to
lease expiry.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from functools import cache

__all__ = ["ProcessIdentity", "current_identity", "is_alive", "parse_identity"]


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    """Who a process is.

    Attributes:
        host: The host name.
        pid: The process id.
        start: Process start time in clock ticks since boot (0 when unknown).
        token: Random, distinguishes runtimes created in one process.
    """

    host: str
    pid: int
    start: int
    token: str

    def __str__(self) -> str:
        return f"{self.host}/{self.pid}/{self.start}/{self.token}"


def _stat_fields(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return []
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return stat[stat.rfind(")") + 2 :].split()


def _start_ticks(pid: int) -> int:
    fields = _stat_fields(pid)
    try:
        return int(fields[19])  # field 22 of stat: starttime
    except (IndexError, ValueError):
        return 0


@cache
def _host() -> str:
    return socket.gethostname()


def current_identity(token: str | None = None) -> ProcessIdentity:
    """Return the identity of the calling process (a fresh random token unless one is given)."""
    pid = os.getpid()
    return ProcessIdentity(_host(), pid, _start_ticks(pid), token or secrets.token_hex(4))


def parse_identity(text: str | None) -> ProcessIdentity | None:
    """Parse ``host/pid/start/token``; None for anything else (older or foreign owners)."""
    if not text:
        return None
    parts = text.rsplit("/", 3)
    if len(parts) != 4:
        return None
    host, pid, start, token = parts
    try:
        return ProcessIdentity(host, int(pid), int(start), token)
    except ValueError:
        return None


def is_alive(identity: ProcessIdentity | str | None) -> bool | None:
    """Tell whether the process ``identity`` names is still running.

    Returns:
        True or False when it can be known (same host, ``/proc`` readable); None when it cannot
        (another host, unparseable identity), in which case the caller must rely on lease expiry.
    """
    ident = parse_identity(identity) if isinstance(identity, str) or identity is None else identity
    if ident is None or ident.host != _host():
        return None
    try:
        os.kill(ident.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists but belongs to another user
    fields = _stat_fields(ident.pid)
    if fields and fields[0] in ("Z", "X"):
        return False  # exited, not yet reaped by its parent
    # A different start time means the pid was recycled by a younger process.
    return not (ident.start and fields and _start_ticks(ident.pid) != ident.start)
