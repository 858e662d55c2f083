"""Helpers shared by the sandbox tests (imported by conftest and by test modules)."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path
from typing import Any

from agent_runtime.events import Event, Scope
from agent_runtime.sandbox import SandboxSpec

SMALL = SandboxSpec(memory="128m", disk="16m", tmp="8m", pids=64, timeout=20)
"""Small limits keep the suite fast and the host untouched."""


class Recorder:
    """A hook that records every event and scope it sees."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.scopes: list[Scope] = []
        self._lock = threading.Lock()

    def on_event(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def scope(self, scope: Scope) -> contextlib.AbstractContextManager[Any]:
        with self._lock:
            self.scopes.append(scope)
        return contextlib.nullcontext()

    def of(self, kind: type[Event]) -> list[Any]:
        with self._lock:
            return [event for event in self.events if isinstance(event, kind)]


def host_addresses() -> list[str]:
    """IPv4 addresses of this host (every interface), found with the kernel's routing table."""
    found: set[str] = set()
    text = Path("/proc/net/fib_trie").read_text().splitlines()
    for index, line in enumerate(text):
        if "/32 host LOCAL" in line and index > 0:
            address = text[index - 1].split()[-1]
            if not address.startswith("127."):
                found.add(address)
    return sorted(found)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def lan_address() -> str:
    """This host's address on its main (non-Docker) interface, for servers tests start."""
    import subprocess

    listed = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    for line in listed.splitlines():
        fields = line.split()
        name, address = fields[1], fields[3].split("/")[0]
        if name != "lo" and not name.startswith(("docker", "br-", "arsbx", "veth")):
            return address
    return host_addresses()[0]
