"""Connecting to the Docker engine, and the engine facts the sandbox depends on.

The ``docker`` SDK raises a bare ``DockerException`` with a requests/urllib3 message when no
engine answers; this module turns that into ``DockerUnavailableError`` naming the address tried
and what to do. It also reads once what the engine offers (runtimes such as ``runsc``, active
security options such as seccomp, CPU count) so that specs are checked against the real engine
and results can say honestly what isolated a command.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import docker
from docker.errors import DockerException

from agent_runtime.errors import DockerUnavailableError

__all__ = ["DEFAULT_DOCKER_HOST", "EngineInfo", "connect", "is_local_host"]

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
_API_TIMEOUT = 60.0
_PROBE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What the Docker engine in use offers.

    Attributes:
        docker_host: The address connected to.
        local: Whether the engine runs on this host (bind mounts, loop disks, the egress proxy
            and firewall rules need that).
        server_version: The engine version.
        runtimes: The OCI runtimes it knows (``runc``, ``runsc``...).
        default_runtime: The runtime used when a spec names none.
        security_options: ``docker info`` security options, e.g. ``name=seccomp,profile=default``.
        ncpu: CPUs available to containers.
    """

    docker_host: str
    local: bool
    server_version: str
    runtimes: tuple[str, ...]
    default_runtime: str
    security_options: tuple[str, ...]
    ncpu: int

    @property
    def seccomp(self) -> str | None:
        """The active seccomp profile (``default`` for Docker's own), or None when off."""
        for option in self.security_options:
            fields = dict(part.split("=", 1) for part in option.split(",") if "=" in part)
            if fields.get("name") == "seccomp":
                return fields.get("profile", "default")
        return None

    @property
    def lsm(self) -> tuple[str, ...]:
        """Active Linux security modules reported by the engine (``apparmor``, ``selinux``)."""
        names = []
        for option in self.security_options:
            fields = dict(part.split("=", 1) for part in option.split(",") if "=" in part)
            if fields.get("name") in ("apparmor", "selinux"):
                names.append(fields["name"])
        return tuple(names)


def is_local_host(docker_host: str) -> bool:
    """Whether ``docker_host`` designates an engine on this machine."""
    url = urlparse(docker_host)
    if url.scheme in ("unix", "http+unix", "npipe"):
        return True
    return url.hostname in ("localhost", "127.0.0.1", "::1")


def connect(docker_host: str | None = None) -> tuple[docker.DockerClient, EngineInfo]:
    """Connect to the engine and read its facts.

    Args:
        docker_host: The engine address; None uses ``DOCKER_HOST`` (and its TLS variables) or
            the default socket.

    Returns:
        The SDK client and the engine's facts.

    Raises:
        DockerUnavailableError: When no engine answers at the address.
    """
    address = docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
    try:
        _probe_unix_socket(address)
        if docker_host is None:
            client = docker.from_env(timeout=int(_API_TIMEOUT))
        else:
            client = docker.DockerClient(base_url=docker_host, timeout=int(_API_TIMEOUT))
        info: dict[str, Any] = client.info()
    except (DockerException, OSError) as exc:
        raise DockerUnavailableError(
            f"no Docker engine answers at {address} ({_short(exc)}). Start the engine "
            "(e.g. `dockerd &` or `systemctl start docker`), or point DOCKER_HOST at a running "
            "one; to run without Docker, choose ProcessSandbox() explicitly (weaker isolation).",
            docker_host=address,
        ) from exc
    runtimes = tuple(sorted((info.get("Runtimes") or {}).keys()))
    return client, EngineInfo(
        docker_host=address,
        local=is_local_host(address),
        server_version=str(info.get("ServerVersion", "")),
        runtimes=runtimes,
        default_runtime=str(info.get("DefaultRuntime", "runc")),
        security_options=tuple(info.get("SecurityOptions") or ()),
        ncpu=int(info.get("NCPU") or os.cpu_count() or 1),
    )


def _probe_unix_socket(address: str) -> None:
    """Fail fast on a dead unix socket (the SDK leaks its socket when that connect fails)."""
    url = urlparse(address)
    if url.scheme not in ("unix", "http+unix") or not url.path:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(_PROBE_TIMEOUT)
        probe.connect(url.path)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
