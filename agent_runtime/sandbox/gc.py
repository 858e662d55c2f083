"""The sweep: removing the containers, networks, disks and firewall chains of dead runtimes.

A runtime killed with SIGKILL cannot clean up. Everything it made carries this installation's
owner id and its creating process identity (see ``labels``), so the next ``DockerSandbox`` (at
start-up) or ``agent-runtime sandbox gc`` removes exactly the resources whose owner is this
installation and whose creator is provably dead on this host; resources of live processes, of
other hosts (liveness unknown) and of other owners are never touched, and names are never used
to decide. Loop-mounted workspace disks are unmounted and deleted only when they sit in this
installation's disk directory and their ``owner.json`` names this owner.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import docker
from docker.errors import DockerException, NotFound

from agent_runtime._process import ProcessIdentity, is_alive
from agent_runtime.errors import EgressProxyError
from agent_runtime.sandbox._disk import LoopDisk
from agent_runtime.sandbox._engine import connect
from agent_runtime.sandbox.firewall import HostFirewall
from agent_runtime.sandbox.labels import (
    LABEL_BRIDGE,
    LABEL_CREATOR,
    LABEL_DISK,
    LABEL_OWNER,
    owner_id,
    state_dir,
)

__all__ = ["GcReport", "sweep"]

_log = logging.getLogger(__name__)
_BRIDGE_RE = re.compile(r"^arsbx[0-9a-f]{8}$")

Liveness = Callable[[ProcessIdentity | str | None], bool | None]


@dataclass(frozen=True, slots=True)
class GcReport:
    """What a sweep removed and kept.

    Attributes:
        owner: The owner id swept.
        containers: Ids (12 hex digits) of the containers removed.
        networks: Names of the egress networks removed.
        disks: Workspace disk directories unmounted and deleted.
        firewall_chains: Bridges whose firewall chain was removed.
        kept: Resources of this owner left alone (creator alive, or on another host).
        errors: What could not be removed, and why.
    """

    owner: str
    containers: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    disks: tuple[str, ...] = ()
    firewall_chains: tuple[str, ...] = ()
    kept: int = 0
    errors: tuple[str, ...] = ()

    @property
    def removed(self) -> int:
        """How many resources were removed in total."""
        return (
            len(self.containers) + len(self.networks) + len(self.disks) + len(self.firewall_chains)
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (for ``agent-runtime sandbox gc --json``)."""
        out = asdict(self)
        out["removed"] = self.removed
        return out


def _disk_root(label: str | None, disks_dir: Path, owner: str) -> Path | None:
    """The disk directory named by a label, only if it is really one of this owner's disks."""
    if not label:
        return None
    root = Path(label)
    if root.parent != disks_dir or not root.is_dir():
        return None
    return root if LoopDisk.read_owner(root).get("owner") == owner else None


def sweep(
    *,
    owner: str | None = None,
    state_dir: Path | str | None = None,
    client: docker.DockerClient | None = None,
    docker_host: str | None = None,
    firewall: HostFirewall | None = None,
    alive: Liveness = is_alive,
) -> GcReport:
    """Remove this owner's orphaned sandbox resources.

    Args:
        owner: The owner id (``labels.owner_id`` by default).
        state_dir: The state directory holding the workspace disks.
        client: A connected Docker client (one is made from ``docker_host`` otherwise).
        docker_host: The engine address when no client is given.
        firewall: The firewall manager (removes the chains of swept networks).
        alive: Tells whether a creator process lives (injectable for tests).

    Returns:
        What was removed and kept.

    Raises:
        DockerUnavailableError: When no engine answers.
    """
    directory = _state_dir(state_dir)
    owner = owner or owner_id(directory)
    own_client = client is None
    if client is None:
        client, _ = connect(docker_host)
    firewall = firewall or HostFirewall()
    api = client.api
    disks_dir = directory / "sandbox" / "disks"
    removed_containers: list[str] = []
    removed_networks: list[str] = []
    removed_disks: list[str] = []
    removed_chains: list[str] = []
    errors: list[str] = []
    kept = 0
    live_disks: set[Path] = set()
    try:
        label = {"label": f"{LABEL_OWNER}={owner}"}
        for container in api.containers(all=True, filters=label):
            labels = container.get("Labels") or {}
            disk = _disk_root(labels.get(LABEL_DISK), disks_dir, owner)
            if alive(labels.get(LABEL_CREATOR)) is not False:
                kept += 1
                if disk is not None:
                    live_disks.add(disk)
                continue
            try:
                api.remove_container(container["Id"], force=True)
                removed_containers.append(container["Id"][:12])
            except NotFound:
                removed_containers.append(container["Id"][:12])
            except DockerException as exc:
                errors.append(f"container {container['Id'][:12]}: {exc}")
                continue
            if disk is not None:
                LoopDisk(disk).destroy()
                removed_disks.append(str(disk))
        for network in api.networks(filters=label):
            labels = network.get("Labels") or {}
            if alive(labels.get(LABEL_CREATOR)) is not False:
                kept += 1
                continue
            bridge = labels.get(LABEL_BRIDGE, "")
            try:
                details = api.inspect_network(network["Id"])
                for endpoint in details.get("Containers") or {}:
                    with contextlib.suppress(DockerException):
                        api.disconnect_container_from_network(endpoint, network["Id"], force=True)
                api.remove_network(network["Id"])
                removed_networks.append(network["Name"])
            except DockerException as exc:
                errors.append(f"network {network['Name']}: {exc}")
                continue
            if _BRIDGE_RE.match(bridge):
                try:
                    firewall.remove(bridge)
                    removed_chains.append(bridge)
                except (OSError, EgressProxyError) as exc:
                    errors.append(f"firewall chain for {bridge}: {exc}")
    finally:
        if own_client:
            client.close()
    removed_disks += _sweep_disks(disks_dir, owner, live_disks, alive, removed_disks)
    removed_chains += _sweep_stale_chains(firewall, removed_chains)
    report = GcReport(
        owner=owner,
        containers=tuple(removed_containers),
        networks=tuple(removed_networks),
        disks=tuple(removed_disks),
        firewall_chains=tuple(removed_chains),
        kept=kept,
        errors=tuple(errors),
    )
    if report.removed:
        _log.info("sandbox sweep for owner %s removed %d orphans", owner, report.removed)
    return report


def _state_dir(explicit: Path | str | None) -> Path:
    return state_dir(explicit)


def _sweep_disks(
    disks_dir: Path, owner: str, live: set[Path], alive: Liveness, done: list[str]
) -> list[str]:
    """Disks whose container is gone (a crash between mounting and creating, or a lost race)."""
    removed: list[str] = []
    if not disks_dir.is_dir():
        return removed
    for root in sorted(disks_dir.iterdir()):
        if root in live or str(root) in done or not root.is_dir():
            continue
        meta = LoopDisk.read_owner(root)
        if meta.get("owner") != owner or alive(meta.get("creator")) is not False:
            continue
        LoopDisk(root).destroy()
        removed.append(str(root))
    return removed


def _sweep_stale_chains(firewall: HostFirewall, done: list[str]) -> list[str]:
    """Chains whose bridge no longer exists: inert, whoever made them, so always safe to drop."""
    removed: list[str] = []
    try:
        bridges = firewall.chains()
    except OSError:
        return removed
    for bridge in bridges:
        if bridge in done or not _BRIDGE_RE.match(bridge):
            continue
        if not Path("/sys/class/net", bridge).exists():
            with contextlib.suppress(OSError, EgressProxyError):
                firewall.remove(bridge)
                removed.append(bridge)
    return removed
