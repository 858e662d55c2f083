"""``ProcessSandbox``: the explicit, weaker fallback for hosts without a Docker engine.

It runs the command as a host process with resource limits (``RLIMIT_AS`` for memory,
``RLIMIT_NPROC`` for processes, ``RLIMIT_FSIZE`` per file, ``RLIMIT_CPU`` as a backstop), in its
own session so the whole process group is killed at the wall-clock deadline, in a fresh network
namespace with no interfaces up (``unshare --net`` as root, ``unshare --net --map-root-user``
where unprivileged user namespaces are allowed), and, as root, as the spec's unprivileged uid with
the workspace on a loop-mounted ext4 image that really caps disk. It shares the host's kernel and
filesystem view, has no seccomp filter and no capability drop beyond the uid change: every
result says so in ``isolation``. It is never chosen automatically; a caller constructs it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import IO

from agent_runtime._process import current_identity
from agent_runtime.errors import ConfigurationError
from agent_runtime.events import SandboxFinished, SandboxScope, SandboxStarted, hooks
from agent_runtime.sandbox import _files
from agent_runtime.sandbox._disk import LoopDisk, loop_disks_supported
from agent_runtime.sandbox._output import OutputCollector
from agent_runtime.sandbox.docker_sandbox import argv_of
from agent_runtime.sandbox.labels import owner_id, state_dir
from agent_runtime.sandbox.result import DiskLimitMechanism, SandboxResult, TerminationReason
from agent_runtime.sandbox.spec import SandboxSpec, check_env, format_size

__all__ = ["ProcessSandbox"]

_log = logging.getLogger(__name__)
_OOM_MARKERS = ("MemoryError", "Cannot allocate memory", "out of memory", "std::bad_alloc")
_DISK_MARKERS = ("No space left on device", "File too large", "Disk quota exceeded")
_FULL_SLACK_BYTES = 64 * 1024
_STRAY_GRACE = 2.0


def _probe_unshare(args: list[str]) -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        done = subprocess.run(
            ["unshare", *args, "--", "true"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


class ProcessSandbox:
    """Runs commands as limited host processes (weaker isolation than ``DockerSandbox``).

    Args:
        spec: The default spec for ``run`` calls that give none (``image`` is ignored).
        state_dir: Where loop-mounted workspace images live when running as root.
        clock: Monotonic clock for durations.
    """

    backend = "process"

    def __init__(
        self,
        spec: SandboxSpec | None = None,
        *,
        state_dir: Path | str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec or SandboxSpec()
        self._state_dir = _state(state_dir)
        self._clock = clock
        self._root = os.geteuid() == 0
        self._loop, _ = loop_disks_supported()
        if self._root:
            self._unshare = ["--net"] if _probe_unshare(["--net"]) else None
        else:
            probe = ["--net", "--map-root-user"]
            self._unshare = probe if _probe_unshare(probe) else None
        self._identity = str(current_identity())
        self._owner = owner_id(self._state_dir)
        if self._unshare is None:
            _log.warning(
                "ProcessSandbox: no fresh network namespace available here; commands share the "
                "host's network (results say so)"
            )

    @property
    def network_isolated(self) -> bool:
        """Whether commands get a fresh network namespace without interfaces."""
        return self._unshare is not None

    @property
    def disk_limit_mechanism(self) -> DiskLimitMechanism:
        """``loop-ext4`` as root with loop devices, else ``rlimit-fsize`` (per file only)."""
        return DiskLimitMechanism.LOOP_EXT4 if self._loop else DiskLimitMechanism.RLIMIT_FSIZE

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
        """Run ``command`` as a limited host process and wait for it.

        Args:
            command: An argv list, or a string run by ``/bin/sh -c``.
            spec: Limits (``image`` and ``runtime`` do not apply; ``allow`` must be empty).
            workspace: A host directory: copied into a private working directory before the
                command and synced back after it. None gives an empty one.
            env: Extra environment variables (over ``spec.env``).
            run_id: Carried by the events.
            traceparent: Passed in as ``TRACEPARENT``.

        Returns:
            The result; ``isolation`` describes the weaker isolation.

        Raises:
            ConfigurationError: For a bad command or workspace, or an egress allowlist (a
                process cannot be held to one: use ``DockerSandbox``).
        """
        spec = spec or self.spec
        argv = argv_of(command)
        env = check_env(env)
        if spec.allow:
            raise ConfigurationError(
                "ProcessSandbox cannot enforce an egress allowlist (its commands get no network "
                "at all, or the host's whole network); use DockerSandbox for SandboxSpec.allow"
            )
        if workspace is not None and (not Path(workspace).is_dir() or Path(workspace).is_symlink()):
            raise ConfigurationError(f"workspace {workspace} must be an existing directory")
        scope = SandboxScope(backend="process", image=_image(), command=tuple(argv), run_id=run_id)
        with hooks.scope(scope):
            return self._run(
                argv, spec, Path(workspace) if workspace else None, env, run_id, traceparent
            )

    def put_file(
        self, workspace: Path, path: str | PurePosixPath, data: bytes, *, mode: int = 0o644
    ) -> None:
        """Write a file into a workspace (see ``DockerSandbox.put_file``)."""
        _files.write_file(Path(workspace), path, data, mode=mode)

    def get_file(self, workspace: Path, path: str | PurePosixPath) -> bytes:
        """Read a file from a workspace (see ``DockerSandbox.get_file``)."""
        return _files.read_file(Path(workspace), path)

    def close(self) -> None:
        """Nothing to release: every command cleans up after itself."""

    def __enter__(self) -> ProcessSandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _run(
        self,
        argv: list[str],
        spec: SandboxSpec,
        workspace: Path | None,
        env: Mapping[str, str] | None,
        run_id: str | None,
        traceparent: str | None,
    ) -> SandboxResult:
        uid, gid = spec.uid_gid
        disk: LoopDisk | None = None
        # The system temp dir, not the state dir: the dropped uid must be able to reach TMPDIR
        # by its absolute path even when the state dir sits under a private home.
        scratch = Path(tempfile.mkdtemp(prefix="agent-runtime-process-"))
        try:
            if self._loop:
                disk = LoopDisk.create(
                    self._state_dir / "sandbox" / "disks",
                    spec.disk_bytes,
                    uid=uid,
                    gid=gid,
                    owner=self._owner,
                    creator=self._identity,
                )
                work = disk.mount
                # The command runs as ``uid`` and must reach its workspace by absolute path
                # (``python3 /…/mnt/script.py``): let it traverse, not list, the parents.
                for parent in (disk.root.parent, disk.root):
                    os.chmod(parent, 0o711)
            else:
                work = scratch / "workspace"
                work.mkdir(mode=0o700)
            tmp = scratch / "tmp"
            tmp.mkdir(mode=0o1777)
            os.chmod(tmp, 0o1777)
            owner = (uid, gid) if self._root else None
            if self._root:
                os.chown(work, uid, gid)
                os.chmod(scratch, 0o711)
            if workspace is not None:
                _files.copy_tree_in(workspace, work, owner=owner, limit=spec.disk_bytes)
            result = self._spawn(argv, spec, work, tmp, env, run_id, traceparent, disk)
            synced = False
            if workspace is not None:
                size = _files.tree_size(work)
                if size <= spec.disk_bytes:
                    _files.sync_tree_back(work, workspace, limit=spec.disk_bytes)
                    synced = True
                else:
                    _log.warning("workspace not synced back: %d bytes over the disk cap", size)
            return _with(result, workspace_synced=synced)
        finally:
            if disk is not None:
                disk.destroy()
            shutil.rmtree(scratch, ignore_errors=True)

    def _spawn(
        self,
        argv: list[str],
        spec: SandboxSpec,
        work: Path,
        tmp: Path,
        env: Mapping[str, str] | None,
        run_id: str | None,
        traceparent: str | None,
        disk: LoopDisk | None,
    ) -> SandboxResult:
        uid, gid = spec.uid_gid
        child_env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(tmp),
            "TMPDIR": str(tmp),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            **spec.env,
            **(env or {}),
        }
        if traceparent:
            child_env["TRACEPARENT"] = traceparent
        prefix: list[str] = []
        if self._unshare is not None:
            prefix = ["unshare", *self._unshare]
            if self._root:
                prefix += [f"--setgid={gid}", f"--setuid={uid}"]
            prefix.append("--")
        limits = _limits(spec)
        collector = OutputCollector(limit=spec.output_limit, run_id=run_id)
        hooks.emit(SandboxStarted(backend="process", image=_image(), warm=False, run_id=run_id))
        start = self._clock()
        try:
            proc = subprocess.Popen(
                prefix + argv,
                cwd=work,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=partial_limits(
                    limits, None if self._unshare or not self._root else (uid, gid)
                ),
            )
        except OSError as exc:
            duration = self._clock() - start
            return self._finish(
                collector,
                TerminationReason.ERROR,
                None,
                duration,
                None,
                spec,
                run_id,
                stderr_note=f"cannot start {argv[0]!r}: {exc}",
            )
        timed_out = threading.Event()

        def on_deadline() -> None:
            timed_out.set()
            _kill_group(proc.pid)

        timer = threading.Timer(spec.timeout, on_deadline)
        timer.daemon = True
        timer.start()
        chunks: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        readers = [
            threading.Thread(target=_pump, args=(proc.stdout, "stdout", chunks), daemon=True),
            threading.Thread(target=_pump, args=(proc.stderr, "stderr", chunks), daemon=True),
        ]
        for reader in readers:
            reader.start()
        open_streams = len(readers)
        exited_at: float | None = None
        while open_streams:
            try:
                item = chunks.get(timeout=0.1)
            except queue.Empty:
                # A stray that escaped the session may hold the pipes open: stop reading a
                # moment after the command (or the deadline) ended, as ``docker exec`` does.
                if exited_at is None and (proc.poll() is not None or timed_out.is_set()):
                    exited_at = time.monotonic()
                if exited_at is not None and time.monotonic() - exited_at > _STRAY_GRACE:
                    break
                continue
            if item is None:
                open_streams -= 1
            else:
                collector.feed(*item)
        if timed_out.is_set():
            _kill_group(proc.pid)
        proc.wait()
        timer.cancel()
        duration = self._clock() - start
        _kill_group(proc.pid)  # strays left in the session die with the command
        code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        # No peak memory: without a cgroup, ru_maxrss of a forked child starts at the
        # runtime's own resident size, which would be reported as the command's.
        peak = None
        stderr = collector.text("stderr")[0]
        if timed_out.is_set():
            reason = TerminationReason.TIMEOUT
        elif code != 0 and any(marker in stderr for marker in _OOM_MARKERS):
            reason = TerminationReason.OOM
        elif code != 0 and (
            code == 128 + signal.SIGXFSZ
            or any(marker in stderr for marker in _DISK_MARKERS)
            or (disk is not None and _full(disk.mount))
            or _full(tmp)
        ):
            reason = TerminationReason.DISK_LIMIT
        elif 128 < code <= 128 + 64:
            reason = TerminationReason.KILLED
        else:
            reason = TerminationReason.EXITED
        return self._finish(collector, reason, code, duration, peak, spec, run_id)

    def _finish(
        self,
        collector: OutputCollector,
        reason: TerminationReason,
        code: int | None,
        duration: float,
        peak: int | None,
        spec: SandboxSpec,
        run_id: str | None,
        stderr_note: str = "",
    ) -> SandboxResult:
        collector.finish()
        stdout, out_cut = collector.text("stdout")
        stderr, err_cut = collector.text("stderr")
        hooks.emit(
            SandboxFinished(
                backend="process",
                reason=reason.value,
                exit_code=code,
                duration_s=duration,
                peak_memory_bytes=peak,
                run_id=run_id,
            )
        )
        return SandboxResult(
            reason=reason,
            exit_code=code,
            duration_s=duration,
            peak_memory_bytes=peak,
            stdout=stdout,
            stderr=stderr + stderr_note,
            lines=collector.lines,
            backend="process",
            isolation=self._isolation(spec),
            disk_limit_mechanism=self.disk_limit_mechanism,
            image=_image(),
            stdout_truncated_bytes=out_cut,
            stderr_truncated_bytes=err_cut,
            lines_dropped=collector.lines_dropped,
        )

    def _isolation(self, spec: SandboxSpec) -> str:
        who = f"uid {spec.user}" if self._root else f"the runtime's own uid {os.geteuid()}"
        network = (
            "a fresh network namespace with no interfaces up"
            if self._unshare is not None
            else "the HOST'S NETWORK (no network namespace could be created)"
        )
        disk = (
            f"a {format_size(spec.disk_bytes)} loop-mounted ext4 workspace"
            if self._loop
            else f"files capped at {format_size(spec.disk_bytes)} each (RLIMIT_FSIZE), total "
            "disk use NOT capped"
        )
        return (
            "Host process, WEAKER than a container: it shares the host's kernel and filesystem "
            f"view, with no seccomp filter and no capability drop; it runs as {who}, with "
            f"rlimits (address space {format_size(spec.memory_bytes)}, "
            f"{spec.pids} processes, CPU time), its own session killed at the deadline (a "
            "process that starts a new session escapes that), "
            f"{network}, and {disk}."
        )


def _image() -> str:
    return f"host-process (python {sys.version.split()[0]})"


def _state(explicit: Path | str | None) -> Path:
    return state_dir(explicit)


def _limits(spec: SandboxSpec) -> list[tuple[int, int]]:
    cpu = math.ceil(spec.timeout * max(spec.cpus, 1.0)) + 1
    return [
        (resource.RLIMIT_AS, spec.memory_bytes),
        (resource.RLIMIT_FSIZE, spec.disk_bytes),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_CORE, 0),
        # Counts every process of the uid on the host, not only this sandbox's; root ignores it.
        (resource.RLIMIT_NPROC, spec.pids),
    ]


def partial_limits(
    limits: list[tuple[int, int]], drop_to: tuple[int, int] | None
) -> Callable[[], None]:
    """The ``preexec_fn`` that applies ``limits`` (and drops to ``uid, gid`` when given)."""

    def apply() -> None:
        for which, value in limits:
            soft_hard = (value, value)
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(which, soft_hard)
        if drop_to is not None:
            os.setgroups([])
            os.setgid(drop_to[1])
            os.setuid(drop_to[0])

    return apply


def _pump(stream: IO[bytes] | None, name: str, out: queue.Queue[tuple[str, bytes] | None]) -> None:
    try:
        if stream is not None:
            while chunk := stream.read1(65536):  # type: ignore[attr-defined]
                out.put((name, chunk))
    finally:
        if stream is not None:
            stream.close()
        out.put(None)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _full(path: Path) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _FULL_SLACK_BYTES


def _with(result: SandboxResult, *, workspace_synced: bool) -> SandboxResult:
    return replace(result, workspace_synced=workspace_synced)
