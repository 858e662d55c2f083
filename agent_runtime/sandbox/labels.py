"""Who owns a sandbox resource: the labels put on every container and network, and the owner id.

Garbage collection must never remove another installation's containers, nor rely on name
prefixes (two runtimes on one engine share prefixes). Every container and network therefore
carries the installation's stable **owner id**, the **identity of the process that created it**
(host, pid, start time: see ``agent_runtime._process``) and, when known, the **run id**. The
sweep removes resources whose owner is this installation and whose creator is provably dead.

The owner id is ``AGENT_RUNTIME_OWNER`` when set, otherwise derived from the host name and the
absolute state directory (``AGENT_RUNTIME_STATE_DIR``, default ``./.agent_runtime``), so two
checkouts on one machine do not sweep each other's sandboxes.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

__all__ = [
    "LABEL_BRIDGE",
    "LABEL_CREATOR",
    "LABEL_DISK",
    "LABEL_KIND",
    "LABEL_OWNER",
    "LABEL_PREFIX",
    "LABEL_RUN_ID",
    "LABEL_WARM",
    "OWNER_ENV",
    "STATE_DIR_ENV",
    "owner_id",
    "state_dir",
]

LABEL_PREFIX = "io.agent-runtime."
LABEL_OWNER = LABEL_PREFIX + "owner"
"""The installation's owner id."""
LABEL_CREATOR = LABEL_PREFIX + "creator"
"""``host/pid/start/token`` of the process that created the resource."""
LABEL_RUN_ID = LABEL_PREFIX + "run-id"
"""The run the container was created for (absent on warm-pool containers: labels are fixed at
creation, before a run claims the container)."""
LABEL_KIND = LABEL_PREFIX + "kind"
"""``sandbox`` (a container) or ``egress-network``."""
LABEL_WARM = LABEL_PREFIX + "warm"
"""``true`` on containers started ahead of time by the warm pool."""
LABEL_DISK = LABEL_PREFIX + "disk"
"""The host directory holding the container's loop-mounted workspace image, if any."""
LABEL_BRIDGE = LABEL_PREFIX + "bridge"
"""On egress networks: the Linux bridge name, whose firewall chain the sweep removes."""

OWNER_ENV = "AGENT_RUNTIME_OWNER"
STATE_DIR_ENV = "AGENT_RUNTIME_STATE_DIR"
_DEFAULT_STATE_DIR = ".agent_runtime"


def state_dir(explicit: Path | str | None = None) -> Path:
    """Return the absolute state directory.

    Args:
        explicit: A directory given by the caller; wins over the environment.

    Returns:
        ``explicit``, else ``AGENT_RUNTIME_STATE_DIR``, else ``./.agent_runtime``, made absolute.
    """
    chosen = explicit or os.environ.get(STATE_DIR_ENV) or _DEFAULT_STATE_DIR
    return Path(chosen).expanduser().absolute()


def owner_id(directory: Path | str | None = None) -> str:
    """Return this installation's stable owner id.

    Args:
        directory: The state directory the id is derived from (see ``state_dir``).

    Returns:
        ``AGENT_RUNTIME_OWNER`` when set, else 16 hex digits of a hash of the host name and the
        absolute state directory.
    """
    explicit = os.environ.get(OWNER_ENV, "").strip()
    if explicit:
        return explicit
    seed = f"{socket.gethostname()}\0{state_dir(directory)}"
    return hashlib.sha256(seed.encode()).hexdigest()[:16]
