"""``DockerSandbox``: untrusted commands in hardened, limited, disposable Docker containers.

Each command gets a fresh container that is destroyed afterwards (never reused across runs).
Under Docker's init (``--init``, which reaps zombies) the container runs a tiny POSIX-shell
launcher that waits on its attached stdin for one job (the command, its environment and a random
token), runs it in a subshell with no stdin, then prints the exit status after the token on both
streams and idles. Starting a command is therefore a write on a socket the runtime attached
before the container started, not a ``docker exec`` (which costs a runc invocation, ~40 ms):
that is what makes warm-pool starts fast, and cold starts cost one ``docker run``. The idle
launcher keeps the container alive after the command, so the runtime can still read the memory
cgroup (peak memory, OOM kills), check whether the workspace or /tmp filled up and copy the
workspace out before removing it. An image needs ``/bin/sh`` and ``base64`` (coreutils or
busybox) for the launcher.

Hardening by default: a numeric non-root user, ``cap_drop=ALL``, ``no-new-privileges``, a
read-only root filesystem, a size-capped ``noexec`` tmpfs at /tmp, ``--init``, a pids limit,
memory with swap equal to memory, CPU quota, Docker's default seccomp profile (whatever the
engine reports as active is stated in the result), no network unless an allowlist is given,
and nothing from the host but the workspace. ``runsc`` (gVisor) is used when a spec names it and
the engine has it.

The workspace: a run's host directory is copied into the container's capped workspace before the
command and synced back after it (see ``_files``). As root, the capped workspace is a
loop-mounted ext4 image per container, bind-mounted at ``/workspace`` (the files stay on the
host, so they are synced back even after a timeout); otherwise it is a size-capped tmpfs that the
runtime fills and empties with ``tar`` through ``docker exec`` (a container killed at its
deadline then loses its changes, and the workspace stays as it was). Warm containers get their
own empty disk at creation; the run's files are copied in when a run claims one.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import logging
import os
import secrets
import shlex
import shutil
import socket
import tarfile
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from docker.errors import DockerException, ImageNotFound, NotFound
from docker.utils.socket import STDERR, STDOUT, frames_iter

from agent_runtime._process import current_identity
from agent_runtime.errors import (
    ConfigurationError,
    EgressProxyError,
    SandboxError,
    SandboxImageError,
)
from agent_runtime.events import SandboxFinished, SandboxScope, SandboxStarted, hooks
from agent_runtime.sandbox import _files
from agent_runtime.sandbox._cgroup import CgroupProbe
from agent_runtime.sandbox._disk import LoopDisk, loop_disks_supported
from agent_runtime.sandbox._engine import connect
from agent_runtime.sandbox._output import OutputCollector
from agent_runtime.sandbox.egress import EgressBinding, EgressProxy
from agent_runtime.sandbox.firewall import HostFirewall
from agent_runtime.sandbox.gc import GcReport, sweep
from agent_runtime.sandbox.labels import (
    LABEL_BRIDGE,
    LABEL_CREATOR,
    LABEL_DISK,
    LABEL_KIND,
    LABEL_OWNER,
    LABEL_RUN_ID,
    LABEL_WARM,
    owner_id,
)
from agent_runtime.sandbox.labels import state_dir as _state_dir
from agent_runtime.sandbox.pool import WarmPool
from agent_runtime.sandbox.result import DiskLimitMechanism, SandboxResult, TerminationReason
from agent_runtime.sandbox.spec import SandboxSpec, check_env, format_size, parse_user

__all__ = ["DiskMode", "DockerSandbox", "argv_of", "trace_id_of"]

_log = logging.getLogger(__name__)

DiskMode = Literal["auto", "loop", "tmpfs"]
# The container's main process (under Docker's init): it waits for one job on its attached stdin,
# runs it, reports the exit status after a per-run random token on both streams (so that all
# output is known to have arrived), then idles so the container stays up for post-run checks.
_LAUNCHER = 'IFS= read -r job || exit 0; eval "$(printf %s "$job" | base64 -d)"'
_MAIN_COMMAND = ["/bin/sh", "-c", _LAUNCHER]
_WORKSPACE = "/workspace"
_ENOSPC_MARKERS = ("No space left on device", "Disk quota exceeded")
_FULL_SLACK_BYTES = 64 * 1024  # a filesystem with less than this free is "full"
_WARM_WAIT = 120.0


def argv_of(command: Sequence[str] | str) -> list[str]:
    """Turn a command into an argv list (a string runs through ``/bin/sh -c``).

    Raises:
        ConfigurationError: When the command is empty or not strings.
    """
    if isinstance(command, str):
        if not command.strip():
            raise ConfigurationError("command is empty: give an argv list or a shell string")
        return ["/bin/sh", "-c", command]
    argv = list(command)
    if not argv or not all(isinstance(arg, str) for arg in argv):
        raise ConfigurationError(
            f"command {command!r} must be a non-empty list of strings or a shell string"
        )
    if any("\0" in arg for arg in argv):
        raise ConfigurationError("command arguments must not contain NUL characters")
    return argv


def trace_id_of(traceparent: str | None) -> str | None:
    """Extract the 32-hex-digit trace id from a W3C ``traceparent``, or None."""
    if not traceparent:
        return None
    parts = traceparent.strip().split("-")
    if len(parts) >= 4 and len(parts[1]) == 32:
        try:
            int(parts[1], 16)
        except ValueError:
            return None
        return parts[1].lower()
    return None


@dataclass(frozen=True, slots=True)
class _Key:
    """What is fixed when a container is created (the warm pool's key)."""

    image: str
    cpus: float
    memory: int
    pids: int
    disk: int
    tmp: int
    user: str
    runtime: str | None
    networked: bool

    @classmethod
    def of(cls, spec: SandboxSpec) -> _Key:
        return cls(
            image=spec.image,
            cpus=float(spec.cpus),
            memory=spec.memory_bytes,
            pids=spec.pids,
            disk=spec.disk_bytes,
            tmp=spec.tmp_bytes,
            user=spec.user,
            runtime=spec.runtime,
            networked=bool(spec.allow),
        )


@dataclass(eq=False)
class _Box:
    """One started container, ready for exactly one command."""

    id: str
    key: _Key
    disk: LoopDisk | None
    ip: str | None
    probe: CgroupProbe | None
    warm: bool
    attach: Any = None
    """The hijacked attach connection to the launcher's stdin/stdout/stderr."""

    @property
    def raw(self) -> socket.socket:
        return self.attach._sock  # type: ignore[no-any-return]

    def close_attach(self) -> None:
        attach, self.attach = self.attach, None
        if attach is not None:
            raw = attach._sock
            with contextlib.suppress(OSError):
                attach.close()
                raw.close()


@dataclass(eq=False)
class _Egress:
    network_id: str
    network_name: str
    bridge: str
    gateway: str
    proxy: EgressProxy


class _Killswitch:
    """Lets another thread (a timer, ``arun`` cancellation, ``close``) stop one execution."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._action: Callable[[], None] | None = None
        self.fired: str | None = None

    def arm(self, action: Callable[[], None]) -> None:
        with self._lock:
            self._action = action
            fire_now = self.fired is not None
        if fire_now:
            action()

    def disarm(self) -> None:
        with self._lock:
            self._action = None

    def fire(self, why: str) -> None:
        with self._lock:
            if self.fired is None:
                self.fired = why
            action = self._action
        if action is not None:
            action()


@dataclass
class _Outcome:
    exit_code: int | None = None
    duration_s: float = 0.0
    peak: int | None = None
    oom: bool = False
    container_alive: bool = True
    not_found: bool = False
    notes: list[str] = field(default_factory=list)


_live: weakref.WeakSet[DockerSandbox] = weakref.WeakSet()


@atexit.register
def _close_live_sandboxes() -> None:  # a normal exit leaves nothing behind either
    for sandbox in list(_live):
        with contextlib.suppress(Exception):
            sandbox.close()


class DockerSandbox:
    """Runs commands in hardened, limited, disposable Docker containers.

    Args:
        spec: The default spec for ``run`` calls that give none.
        warm: Containers to keep ready for the default spec (0: no warm pool).
        docker_host: The engine address; None uses ``DOCKER_HOST`` or the default socket.
        state_dir: Where loop-mounted workspace images live (see ``labels.state_dir``).
        owner: The installation's owner id for labels and sweeps (see ``labels.owner_id``).
        disk_mode: ``"loop"`` (ext4 image, needs root), ``"tmpfs"`` or ``"auto"`` (loop when
            possible).
        sweep_on_start: Remove this owner's orphaned containers, networks and disks now.
        firewall: The host firewall manager for egress networks (injected in tests).
        clock: Monotonic clock for durations.

    Raises:
        DockerUnavailableError: When no engine answers.
        ConfigurationError: When ``disk_mode="loop"`` is asked for but impossible here.
    """

    backend = "docker"

    def __init__(
        self,
        spec: SandboxSpec | None = None,
        *,
        warm: int = 0,
        docker_host: str | None = None,
        state_dir: Path | str | None = None,
        owner: str | None = None,
        disk_mode: DiskMode = "auto",
        sweep_on_start: bool = True,
        firewall: HostFirewall | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec or SandboxSpec()
        self._client, self.engine = connect(docker_host)
        self._api = self._client.api
        self._state_dir = _state_dir(state_dir)
        self.owner = owner or owner_id(self._state_dir)
        self._identity = str(current_identity())
        self._clock = clock
        self._firewall = firewall or HostFirewall()
        self._disks_dir = self._state_dir / "sandbox" / "disks"
        self._loop = self._choose_disk_mode(disk_mode)
        self._lock = threading.RLock()
        self._images: set[str] = set()
        self._egress: _Egress | None = None
        self._active: dict[str, _Killswitch] = {}
        self._boxes: set[_Box] = set()
        self._closed = False
        self._cleanup = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sandbox-cleanup")
        self._prep = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sandbox-disk")
        self._pool: WarmPool[_Key, _Box] = WarmPool(
            partial(self._create_box, warm=True), self._destroy_box
        )
        if sweep_on_start:
            self.last_sweep: GcReport | None = self.sweep()
        else:
            self.last_sweep = None
        _live.add(self)
        if warm:
            self.prewarm(self.spec, warm)

    # -- public API ---------------------------------------------------------------------------

    @property
    def disk_limit_mechanism(self) -> DiskLimitMechanism:
        """How this sandbox caps workspaces: ``loop-ext4`` or ``tmpfs``."""
        return DiskLimitMechanism.LOOP_EXT4 if self._loop else DiskLimitMechanism.TMPFS

    def run(
        self,
        command: Sequence[str] | str,
        *,
        spec: SandboxSpec | None = None,
        workspace: Path | None = None,
        env: Mapping[str, str] | None = None,
        run_id: str | None = None,
        traceparent: str | None = None,
    ) -> SandboxResult:
        """Run ``command`` in a fresh sandbox and wait for it.

        Args:
            command: An argv list, or a string run by ``/bin/sh -c``.
            spec: Limits and settings (the sandbox's default spec when None).
            workspace: A host directory seen at ``/workspace``: copied in before the command,
                changes synced back after it. None gives an empty scratch workspace.
            env: Extra environment variables (over ``spec.env``).
            run_id: The run this command belongs to, for labels and events.
            traceparent: The run's W3C trace context, passed in as ``TRACEPARENT``.

        Returns:
            The result; a failing command is a result, not an exception.

        Raises:
            ConfigurationError: For a bad command, spec or workspace.
            SandboxImageError: When the image is not on the engine.
            EgressProxyError: When an allowlist is given but egress cannot be set up here.
            SandboxError: When the sandbox itself cannot be started.
        """
        return self._run(command, spec, workspace, env, run_id, traceparent, _Killswitch())

    async def arun(
        self,
        command: Sequence[str] | str,
        *,
        spec: SandboxSpec | None = None,
        workspace: Path | None = None,
        env: Mapping[str, str] | None = None,
        run_id: str | None = None,
        traceparent: str | None = None,
    ) -> SandboxResult:
        """Async ``run``: runs in a worker thread; cancelling kills the sandbox.

        Args and Returns are those of ``run``; on cancellation the container is killed and
        ``CancelledError`` propagates once it is gone.
        """
        switch = _Killswitch()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            None, self._run, command, spec, workspace, env, run_id, traceparent, switch
        )
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            switch.fire("cancelled")
            with contextlib.suppress(Exception):
                await future
            raise

    def put_file(
        self, workspace: Path, path: str | PurePosixPath, data: bytes, *, mode: int = 0o644
    ) -> None:
        """Write a file into a run's workspace (seen by the next command at ``/workspace``).

        Args:
            workspace: The run's workspace directory on the host.
            path: A relative path inside it; parents are created; symlinks are not followed.
            data: The content.
            mode: Permission bits (setuid/setgid/sticky are dropped).

        Raises:
            ConfigurationError: When ``path`` is absolute or climbs out with ``..``.
            NotFoundError: When the workspace is missing or a parent is not a directory.
        """
        _files.write_file(Path(workspace), path, data, mode=mode)

    def get_file(self, workspace: Path, path: str | PurePosixPath) -> bytes:
        """Read a file a command left in a run's workspace.

        Args:
            workspace: The run's workspace directory on the host.
            path: A relative path inside it; symlinks are never followed.

        Returns:
            The file's bytes.

        Raises:
            ConfigurationError: When ``path`` is absolute or climbs out with ``..``.
            NotFoundError: When it does not exist or is not a regular file.
        """
        return _files.read_file(Path(workspace), path)

    def prewarm(self, spec: SandboxSpec | None = None, count: int = 1) -> None:
        """Keep ``count`` containers ready for ``spec``'s image and limits.

        Raises:
            SandboxImageError: When the image is not on the engine.
            EgressProxyError: When ``spec`` has an allowlist and egress cannot be set up.
        """
        spec = spec or self.spec
        self._check_spec(spec)
        if spec.allow:
            self._ensure_egress()
        self._pool.set_target(_Key.of(spec), count)

    def wait_warm(
        self, spec: SandboxSpec | None = None, count: int = 1, timeout: float = _WARM_WAIT
    ) -> bool:
        """Block until ``count`` warm containers are ready for ``spec`` (False on timeout)."""
        return self._pool.wait_ready(_Key.of(spec or self.spec), count, timeout)

    def warm_ready(self, spec: SandboxSpec | None = None) -> int:
        """How many warm containers are ready for ``spec`` now."""
        return self._pool.ready(_Key.of(spec or self.spec))

    def sweep(self) -> GcReport:
        """Remove this owner's containers, networks and disks whose creating process died."""
        return sweep(
            owner=self.owner,
            state_dir=self._state_dir,
            client=self._client,
            firewall=self._firewall,
        )

    def close(self) -> None:
        """Kill running commands, destroy warm containers, remove the egress network; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            switches = list(self._active.values())
        for switch in switches:
            switch.fire("closed")
        self._pool.close()
        self._cleanup.shutdown(wait=True)
        self._prep.shutdown(wait=True)
        with self._lock:
            leftovers = list(self._boxes)
        for box in leftovers:  # a run still finishing, or a removal that failed
            self._destroy_box(box)
        egress, self._egress = self._egress, None
        if egress is not None:
            self._teardown_egress(egress)
        _live.discard(self)
        with contextlib.suppress(Exception):
            self._client.close()

    def __enter__(self) -> DockerSandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- checks -------------------------------------------------------------------------------

    def _choose_disk_mode(self, mode: DiskMode) -> bool:
        if mode == "tmpfs":
            return False
        possible, why = loop_disks_supported()
        if possible and not self.engine.local:
            possible, why = False, f"the engine at {self.engine.docker_host} is not local"
        if mode == "loop" and not possible:
            raise ConfigurationError(
                f"disk_mode='loop' is impossible here ({why}); use disk_mode='tmpfs' or 'auto'"
            )
        if mode not in ("loop", "auto"):
            raise ConfigurationError(f"disk_mode {mode!r} must be 'auto', 'loop' or 'tmpfs'")
        if not possible:
            _log.info("sandbox workspaces use a capped tmpfs: %s", why)
        return possible

    def _check_spec(self, spec: SandboxSpec) -> None:
        if spec.runtime is not None and spec.runtime not in self.engine.runtimes:
            raise ConfigurationError(
                f"runtime {spec.runtime!r} is not installed in the Docker engine (it has: "
                f"{', '.join(self.engine.runtimes)}); install it (gVisor: runsc) or leave "
                "SandboxSpec.runtime as None"
            )
        if spec.cpus > self.engine.ncpu:
            raise ConfigurationError(
                f"cpus={spec.cpus} exceeds the {self.engine.ncpu} CPUs of the Docker engine"
            )
        if spec.image in self._images:
            return
        try:
            self._api.inspect_image(spec.image)
        except ImageNotFound:
            raise SandboxImageError(
                f"image {spec.image!r} is not on the Docker engine: build it with "
                "`agent-runtime sandbox build-image` (add --offline without a registry), or "
                "pull it",
                image=spec.image,
            ) from None
        except DockerException as exc:
            raise SandboxError(f"cannot inspect image {spec.image!r}: {exc}") from exc
        with self._lock:
            self._images.add(spec.image)

    # -- egress -------------------------------------------------------------------------------

    def _ensure_egress(self) -> _Egress:
        with self._lock:
            if self._closed:
                raise SandboxError("this DockerSandbox is closed")
            if self._egress is not None:
                return self._egress
            if not self.engine.local:
                raise EgressProxyError(
                    "an egress allowlist needs the Docker engine on this host (the proxy and "
                    f"its firewall rules run here), but DOCKER_HOST is {self.engine.docker_host}"
                )
            self._firewall.check()
            token = secrets.token_hex(4)
            bridge = f"arsbx{token}"
            name = f"agent-runtime-egress-{token}"
            try:
                network = self._client.networks.create(
                    name,
                    driver="bridge",
                    internal=True,
                    check_duplicate=True,
                    options={
                        "com.docker.network.bridge.enable_icc": "false",
                        "com.docker.network.bridge.name": bridge,
                    },
                    labels={
                        LABEL_OWNER: self.owner,
                        LABEL_CREATOR: self._identity,
                        LABEL_KIND: "egress-network",
                        LABEL_BRIDGE: bridge,
                    },
                )
                network.reload()
                gateway = str(network.attrs["IPAM"]["Config"][0]["Gateway"]).split("/")[0]
            except (DockerException, KeyError, IndexError) as exc:
                raise EgressProxyError(f"cannot create the sandbox egress network: {exc}") from exc
            proxy = EgressProxy(gateway)
            egress = _Egress(network.id, name, bridge, gateway, proxy)
            try:
                proxy.start()
                self._firewall.install(bridge, gateway, proxy.address[1])
            except BaseException:
                self._teardown_egress(egress)
                raise
            self._egress = egress
            return egress

    def _teardown_egress(self, egress: _Egress) -> None:
        with contextlib.suppress(Exception):
            self._firewall.remove(egress.bridge)
        egress.proxy.close()
        with contextlib.suppress(DockerException):
            self._api.remove_network(egress.network_id)

    # -- containers ---------------------------------------------------------------------------

    def _create_box(self, key: _Key, *, warm: bool, run_id: str | None = None) -> _Box:
        uid, gid = parse_user(key.user)
        labels = {
            LABEL_OWNER: self.owner,
            LABEL_CREATOR: self._identity,
            LABEL_KIND: "sandbox",
        }
        if warm:
            labels[LABEL_WARM] = "true"
        if run_id:
            labels[LABEL_RUN_ID] = run_id
        network_mode = "none"
        dns: list[str] | None = None
        if key.networked:  # before the disk: a refused egress setup must leave nothing behind
            egress = self._ensure_egress()
            network_mode = egress.network_name
            # Names resolve through the proxy; direct lookups fail fast instead of hanging 10 s.
            dns = [egress.gateway]
        tmpfs = {"/tmp": f"rw,noexec,nosuid,nodev,size={key.tmp},mode=1777"}
        binds: dict[str, dict[str, str]] = {}
        disk = None
        formatting: Future[None] | None = None
        if self._loop:
            disk = LoopDisk.allocate(
                self._disks_dir, key.disk, owner=self.owner, creator=self._identity
            )
            # Formatted and mounted while the container is created (it must be before start).
            try:
                formatting = self._prep.submit(disk.format_and_mount, uid=uid, gid=gid)
            except RuntimeError:  # closing
                disk.destroy()
                raise SandboxError("this DockerSandbox is closed; create a new one") from None
            labels[LABEL_DISK] = str(disk.root)
            binds[str(disk.mount)] = {"bind": _WORKSPACE, "mode": "rw"}
        else:
            tmpfs[_WORKSPACE] = (
                f"rw,exec,nosuid,nodev,size={key.disk},uid={uid},gid={gid},mode=0700"
            )
        container_id: str | None = None
        try:
            host_config = self._api.create_host_config(
                init=True,
                read_only=True,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges:true"],
                pids_limit=key.pids,
                mem_limit=key.memory,
                memswap_limit=key.memory,
                nano_cpus=int(key.cpus * 1e9),
                tmpfs=tmpfs,
                binds=binds or None,
                shm_size=key.tmp,
                network_mode=network_mode,
                dns=dns,
                dns_opt=["timeout:1", "attempts:1"] if dns else None,
                runtime=key.runtime,
                log_config={"type": "none", "config": {}},
            )
            created = self._api.create_container(
                key.image,
                command=_MAIN_COMMAND,
                stdin_open=True,
                user=key.user,
                working_dir=_WORKSPACE,
                hostname="sandbox",
                labels=labels,
                environment={"HOME": "/tmp"},
                host_config=host_config,
            )
            container_id = str(created["Id"])
            if formatting is not None:
                formatting.result()
        except BaseException as exc:
            if formatting is not None:
                with contextlib.suppress(BaseException):
                    formatting.result()  # never unmount under a mount still in progress
            if container_id is not None:
                with contextlib.suppress(DockerException):
                    self._api.remove_container(container_id, force=True)
            if disk is not None:
                disk.destroy()
            if isinstance(exc, DockerException):
                raise SandboxError(
                    f"cannot create a sandbox container from {key.image!r}: {exc}"
                ) from exc
            raise
        box = _Box(container_id, key, disk, None, None, warm)
        with self._lock:
            self._boxes.add(box)
        try:
            # Attached before start (as `docker run` does): no output can be missed.
            box.attach = self._api.attach_socket(
                container_id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
            self._api.start(container_id)
            state = self._api.inspect_container(container_id)
        except DockerException as exc:
            self._destroy_box(box)
            raise SandboxError(
                f"cannot start a sandbox container from {key.image!r}: {exc}"
            ) from exc
        if key.networked and self._egress is not None:
            networks = state.get("NetworkSettings", {}).get("Networks", {})
            box.ip = networks.get(self._egress.network_name, {}).get("IPAddress") or None
        pid = int(state.get("State", {}).get("Pid") or 0)
        if pid and self.engine.local:
            box.probe = CgroupProbe.for_pid(pid)
        return box

    def _destroy_box(self, box: _Box) -> None:
        box.close_attach()
        try:
            self._api.remove_container(box.id, force=True)
        except NotFound:
            pass
        except Exception as exc:  # the sweep retries what is left; the disk must still go
            _log.warning("removing sandbox container %s failed: %s", box.id[:12], exc)
        finally:
            if box.disk is not None:
                box.disk.destroy()
            with self._lock:
                self._boxes.discard(box)

    def _retire(self, box: _Box) -> None:
        try:
            self._cleanup.submit(self._destroy_box, box)
        except RuntimeError:  # executor shut down (closing): do it here
            self._destroy_box(box)

    def _acquire(self, key: _Key, run_id: str | None) -> _Box:
        box = self._pool.take(key)
        if box is not None:
            return box
        return self._create_box(key, warm=False, run_id=run_id)

    # -- one command --------------------------------------------------------------------------

    def _run(
        self,
        command: Sequence[str] | str,
        spec: SandboxSpec | None,
        workspace: Path | None,
        env: Mapping[str, str] | None,
        run_id: str | None,
        traceparent: str | None,
        switch: _Killswitch,
    ) -> SandboxResult:
        spec = spec or self.spec
        argv = argv_of(command)
        env = check_env(env)
        if workspace is not None:
            workspace = Path(workspace)
            if not workspace.is_dir() or workspace.is_symlink():
                raise ConfigurationError(
                    f"workspace {workspace} must be an existing directory (not a symlink)"
                )
        with self._lock:
            if self._closed:
                raise SandboxError("this DockerSandbox is closed; create a new one")
        self._check_spec(spec)
        key = _Key.of(spec)
        scope = SandboxScope(backend="docker", image=spec.image, command=tuple(argv), run_id=run_id)
        with hooks.scope(scope):
            box = self._acquire(key, run_id)
            token = secrets.token_hex(8)
            with self._lock:
                self._active[token] = switch
            try:
                return self._execute(box, argv, spec, workspace, env, run_id, traceparent, switch)
            finally:
                with self._lock:
                    self._active.pop(token, None)
                self._retire(box)

    def _execute(
        self,
        box: _Box,
        argv: list[str],
        spec: SandboxSpec,
        workspace: Path | None,
        env: Mapping[str, str] | None,
        run_id: str | None,
        traceparent: str | None,
        switch: _Killswitch,
    ) -> SandboxResult:
        outcome = _Outcome()
        if workspace is not None:
            self._copy_in(box, workspace, spec)
        exec_env = {"HOME": "/tmp", **spec.env, **(env or {})}
        if traceparent:
            exec_env["TRACEPARENT"] = traceparent
        egress = self._egress if box.key.networked else None
        if egress is not None and box.ip:
            egress.proxy.bind(
                box.ip, EgressBinding(spec.allow_rules, run_id, trace_id_of(traceparent))
            )
            url = egress.proxy.url
            for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
                exec_env[name] = exec_env[name.lower()] = url
            exec_env["NO_PROXY"] = exec_env["no_proxy"] = "localhost,127.0.0.1"
        collector = OutputCollector(limit=spec.output_limit, run_id=run_id)
        oom_before = box.probe.oom_kills() if box.probe else None
        try:
            self._stream(box, argv, spec, exec_env, collector, outcome, switch, run_id)
            outcome.oom = self._was_oom(box, outcome, oom_before)
            if box.probe is not None:
                outcome.peak = box.probe.peak_memory()
            reason = self._reason(box, outcome, collector, switch)
            synced = workspace is not None and self._copy_out(box, workspace, spec, outcome)
        finally:
            blocked = egress.proxy.unbind(box.ip) if egress is not None and box.ip else ()
        collector.finish()
        stdout, out_cut = collector.text("stdout")
        stderr, err_cut = collector.text("stderr")
        hooks.emit(
            SandboxFinished(
                backend="docker",
                reason=reason.value,
                exit_code=outcome.exit_code,
                duration_s=outcome.duration_s,
                peak_memory_bytes=outcome.peak,
                run_id=run_id,
            )
        )
        for note in outcome.notes:
            _log.warning("sandbox %s: %s", box.id[:12], note)
        return SandboxResult(
            reason=reason,
            exit_code=outcome.exit_code,
            duration_s=outcome.duration_s,
            peak_memory_bytes=outcome.peak,
            stdout=stdout,
            stderr=stderr,
            lines=collector.lines,
            backend="docker",
            isolation=self._isolation(spec),
            disk_limit_mechanism=self.disk_limit_mechanism,
            image=spec.image,
            warm=box.warm,
            workspace_synced=synced,
            egress_blocked=blocked,
            stdout_truncated_bytes=out_cut,
            stderr_truncated_bytes=err_cut,
            lines_dropped=collector.lines_dropped,
        )

    def _stream(
        self,
        box: _Box,
        argv: list[str],
        spec: SandboxSpec,
        exec_env: dict[str, str],
        collector: OutputCollector,
        outcome: _Outcome,
        switch: _Killswitch,
        run_id: str | None,
    ) -> None:
        token = secrets.token_hex(12)
        job = _job(argv, exec_env, token)

        def kill() -> None:
            with contextlib.suppress(DockerException):
                self._api.kill(box.id)

        timer = threading.Timer(spec.timeout, switch.fire, args=("timeout",))
        timer.daemon = True
        hooks.emit(SandboxStarted(backend="docker", image=spec.image, warm=box.warm, run_id=run_id))
        start = self._clock()
        switch.arm(kill)
        timer.start()
        markers = {STDOUT: _Marker(token), STDERR: _Marker(token)}
        try:
            box.raw.sendall(job)
            for stream, data in frames_iter(box.raw, tty=False):
                marker = markers.get(stream)
                if marker is None:
                    continue
                kept = marker.feed(data)
                if kept:
                    collector.feed("stderr" if stream == STDERR else "stdout", kept)
                if all(m.status is not None for m in markers.values()):
                    break
        except (DockerException, OSError) as exc:
            outcome.notes.append(f"the output stream broke: {exc}")
        finally:
            timer.cancel()
            switch.disarm()
            outcome.duration_s = self._clock() - start
        for stream, marker in markers.items():
            rest = marker.flush()
            if rest:
                collector.feed("stderr" if stream == STDERR else "stdout", rest)
        status = markers[STDERR].status or markers[STDOUT].status
        if status is not None:
            outcome.exit_code, outcome.not_found = status
        try:
            state = self._api.inspect_container(box.id).get("State", {})
            outcome.container_alive = bool(state.get("Running"))
            if not outcome.container_alive and state.get("OOMKilled"):
                outcome.oom = True
        except DockerException:
            outcome.container_alive = False

    @contextlib.contextmanager
    def _frames(self, exec_id: str) -> Iterator[Iterator[tuple[int, bytes]]]:
        """Start an exec and yield its ``(stream, chunk)`` frames; always closes the socket.

        (The SDK's ``stream=True`` generator leaves the hijacked socket open.)
        """
        sock = self._api.exec_start(exec_id, socket=True)
        raw = getattr(sock, "_sock", None)
        try:
            yield frames_iter(raw if raw is not None else sock, tty=False)
        finally:
            sock.close()
            if raw is not None:
                raw.close()

    def _was_oom(self, box: _Box, outcome: _Outcome, before: int | None) -> bool:
        if outcome.oom:
            return True
        if box.probe is not None and before is not None:
            after = box.probe.oom_kills()
            return after is not None and after > before
        if outcome.exit_code != 137:
            return False
        # No cgroup access (remote engine): Docker reports OOM kills as container events.
        try:
            events = self._api.events(
                since=int(time.time()) - int(outcome.duration_s) - 2,
                until=int(time.time()) + 1,
                filters={"container": box.id, "event": "oom"},
                decode=True,
            )
            return any(True for _ in events)
        except DockerException:
            return False

    def _reason(
        self, box: _Box, outcome: _Outcome, collector: OutputCollector, switch: _Killswitch
    ) -> TerminationReason:
        if switch.fired == "timeout":
            return TerminationReason.TIMEOUT
        if outcome.oom:
            return TerminationReason.OOM
        if switch.fired is not None:
            return TerminationReason.KILLED
        code = outcome.exit_code
        if code is None:
            return (
                TerminationReason.KILLED if not outcome.container_alive else TerminationReason.ERROR
            )
        if outcome.not_found:
            return TerminationReason.ERROR
        if code != 0 and self._disk_full(box, collector, outcome):
            return TerminationReason.DISK_LIMIT
        if 128 < code <= 128 + 64:
            return TerminationReason.KILLED
        return TerminationReason.EXITED

    def _disk_full(self, box: _Box, collector: OutputCollector, outcome: _Outcome) -> bool:
        stderr = collector.text("stderr")[0]
        if any(marker in stderr for marker in _ENOSPC_MARKERS):
            return True
        if not outcome.container_alive:
            return False
        try:
            exec_id = self._api.exec_create(
                box.id, ["stat", "-f", "-c", "%a %b %S", _WORKSPACE, "/tmp"], user=box.key.user
            )["Id"]
            with self._frames(exec_id) as frames:
                text = b"".join(data for stream, data in frames if stream == STDOUT).decode()
        except (DockerException, OSError, UnicodeDecodeError):
            return False
        for line in text.splitlines():
            fields = line.split()
            if len(fields) == 3 and all(f.isdigit() for f in fields):
                available, blocks, size = (int(f) for f in fields)
                if blocks and available * size < _FULL_SLACK_BYTES:
                    return True
        return False

    # -- workspace copy-in / copy-out -----------------------------------------------------------

    def _copy_in(self, box: _Box, workspace: Path, spec: SandboxSpec) -> None:
        uid, gid = spec.uid_gid
        if box.disk is not None:
            owner = (uid, gid) if os.geteuid() == 0 else None
            _files.copy_tree_in(workspace, box.disk.mount, owner=owner, limit=spec.disk_bytes)
            return
        size = _files.tree_size(workspace)
        if size > spec.disk_bytes:
            raise SandboxError(
                f"workspace {workspace} holds {size} bytes, more than the sandbox disk "
                f"({spec.disk}); raise SandboxSpec.disk or make the workspace smaller"
            )
        with tempfile.TemporaryFile() as archive:
            with tarfile.open(fileobj=archive, mode="w") as tar:
                for entry in sorted(os.listdir(workspace)):
                    tar.add(workspace / entry, arcname=entry, filter=_tar_member(uid, gid))
            archive.seek(0)
            code = self._exec_with_stdin(
                box,
                ["tar", "-x", "-p", "--no-same-owner", "-C", _WORKSPACE, "-f", "-"],
                archive,
                spec.user,
            )
        if code != 0:
            raise SandboxError(
                f"copying workspace {workspace} into the sandbox failed (tar {code})"
            )

    def _exec_with_stdin(self, box: _Box, argv: list[str], data: Any, user: str) -> int | None:
        exec_id = self._api.exec_create(box.id, argv, stdin=True, user=user)["Id"]
        sock = self._api.exec_start(exec_id, socket=True)
        raw: socket.socket = sock._sock
        try:
            while chunk := data.read(1 << 20):
                raw.sendall(chunk)
            raw.shutdown(socket.SHUT_WR)
            while raw.recv(65536):
                pass
        finally:
            sock.close()
            raw.close()
        code = self._api.exec_inspect(exec_id).get("ExitCode")
        return int(code) if code is not None else None

    def _copy_out(self, box: _Box, workspace: Path, spec: SandboxSpec, outcome: _Outcome) -> bool:
        limit = spec.disk_bytes
        if box.disk is not None:
            if outcome.container_alive and self._has_strays(box):
                with contextlib.suppress(DockerException):
                    self._api.pause(box.id)  # freeze stray writers while copying
            return self._sync_from(box.disk.mount, workspace, limit, outcome)
        if not outcome.container_alive:
            outcome.notes.append(
                "the container died, taking its tmpfs workspace with it: workspace unchanged"
            )
            return False
        scratch = Path(tempfile.mkdtemp(prefix="sandbox-out-", dir=self._scratch_dir()))
        try:
            if not self._untar_from(box, scratch, limit, outcome):
                return False
            return self._sync_from(scratch, workspace, limit, outcome)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _has_strays(self, box: _Box) -> bool:
        if box.probe is None:
            return True
        try:
            procs = (box.probe.path / "cgroup.procs").read_text().split()
        except OSError:
            return True
        return len(procs) > 2  # init and the idle process

    def _sync_from(self, src: Path, workspace: Path, limit: int, outcome: _Outcome) -> bool:
        size = _files.tree_size(src)
        if size > limit:
            outcome.notes.append(
                f"workspace not synced back: the sandbox left {size} bytes of files (sparse "
                f"files count at full size), over the {limit}-byte disk cap"
            )
            return False
        try:
            _files.sync_tree_back(src, workspace, limit=limit)
        except (OSError, SandboxError) as exc:
            outcome.notes.append(f"workspace sync back failed: {exc}")
            return False
        return True

    def _untar_from(self, box: _Box, dest: Path, limit: int, outcome: _Outcome) -> bool:
        try:
            exec_id = self._api.exec_create(
                box.id, ["tar", "-c", "-C", _WORKSPACE, "-f", "-", "."], user=box.key.user
            )["Id"]
            with tempfile.TemporaryFile(dir=self._scratch_dir()) as archive:
                received = 0
                with self._frames(exec_id) as frames:
                    for stream, data in frames:
                        if stream != STDOUT:
                            continue
                        received += len(data)
                        if received > limit + (4 << 20):
                            outcome.notes.append("workspace not synced back: archive over the cap")
                            return False
                        archive.write(data)
                archive.seek(0)
                with tarfile.open(fileobj=archive, mode="r") as tar:
                    members = [m for m in tar.getmembers() if m.isfile() or m.isdir() or m.issym()]
                    if sum(m.size for m in members) > limit:
                        outcome.notes.append("workspace not synced back: files over the disk cap")
                        return False
                    tar.extractall(dest, members=members, filter="data")
        except (DockerException, tarfile.TarError, OSError) as exc:
            outcome.notes.append(f"copying the workspace out of the sandbox failed: {exc}")
            return False
        return True

    def _scratch_dir(self) -> Path:
        path = self._state_dir / "sandbox" / "scratch"
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    # -- reporting ----------------------------------------------------------------------------

    def _isolation(self, spec: SandboxSpec) -> str:
        runtime = spec.runtime or self.engine.default_runtime
        seccomp = self.engine.seccomp
        parts = [
            f"Docker container (runtime {runtime}) as user {spec.user}",
            "all capabilities dropped",
            "no-new-privileges",
            "read-only root filesystem",
            f"seccomp profile {seccomp}" if seccomp else "NO seccomp (the engine reports none)",
        ]
        parts.extend(f"{lsm} active" for lsm in self.engine.lsm)
        parts += [
            "init process reaping zombies",
            f"at most {spec.pids} processes",
            f"memory {format_size(spec.memory_bytes)} without swap",
            f"{spec.cpus:g} CPUs",
            f"/tmp a noexec tmpfs of {format_size(spec.tmp_bytes)}",
            f"workspace capped at {format_size(spec.disk_bytes)} by {self.disk_limit_mechanism}",
        ]
        if spec.allow:
            parts.append(
                "network: an internal network whose only way out is the egress proxy "
                f"(allowlist: {', '.join(spec.allow)}), host ports firewalled"
            )
        else:
            parts.append("no network")
        return ", ".join(parts) + "."


def _tar_member(uid: int, gid: int) -> Callable[[tarfile.TarInfo], tarfile.TarInfo | None]:
    def member(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if not (info.isfile() or info.isdir() or info.issym()):
            return None
        info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
        info.mode &= 0o777
        return info

    return member


def _job(argv: list[str], env: Mapping[str, str], token: str) -> bytes:
    """The launcher's job: one base64 line of POSIX shell, every value quoted."""
    lines = [f"cd {_WORKSPACE} || cd /"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    lines += [
        "set -- " + " ".join(shlex.quote(arg) for arg in argv),
        # A subshell, so builtins such as `exit` or `cd` cannot touch the launcher; no stdin.
        '( exec "$@" ) </dev/null',
        "rc=$?",
        'found=1; [ "$rc" = 127 ] && ! command -v "$1" >/dev/null 2>&1 && found=0',
        f'printf \'\\n%s %s %s\\n\' {token} "$rc" "$found"',
        f'printf \'\\n%s %s %s\\n\' {token} "$rc" "$found" >&2',
        "while read -r _; do :; done",
    ]
    return base64.b64encode("\n".join(lines).encode()) + b"\n"


class _Marker:
    """Passes one stream's bytes through until the launcher's status line, then parses it."""

    def __init__(self, token: str) -> None:
        self._needle = b"\n" + token.encode() + b" "
        self._pending = b""
        self.status: tuple[int, bool] | None = None

    def feed(self, data: bytes) -> bytes:
        if self.status is not None:
            return b""  # output of strays after the command ended is not the command's
        buffer = self._pending + data
        index = buffer.find(self._needle)
        if index >= 0:
            end = buffer.find(b"\n", index + len(self._needle))
            if end < 0:
                self._pending = buffer[index:]
                return buffer[:index]
            fields = buffer[index + len(self._needle) : end].split()
            try:
                self.status = (int(fields[0]), fields[1:2] == [b"0"])
            except (IndexError, ValueError):
                self.status = (-1, False)
            self._pending = b""
            return buffer[:index]
        keep = len(self._needle) - 1
        if len(buffer) <= keep:
            self._pending = buffer
            return b""
        self._pending = buffer[-keep:]
        return buffer[:-keep]

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest
