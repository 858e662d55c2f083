"""The ``Sandbox`` protocol: what the runtime needs from any way of running untrusted commands.

Like httpx's transports, the runtime depends on this small protocol, not on Docker:
``DockerSandbox`` is the real isolation, ``ProcessSandbox`` the explicit fallback for hosts
without an engine, and both return the same ``SandboxResult``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Protocol, runtime_checkable

from agent_runtime.sandbox.result import SandboxResult
from agent_runtime.sandbox.spec import SandboxSpec

__all__ = ["Sandbox"]


@runtime_checkable
class Sandbox(Protocol):
    """Runs commands in isolation and moves workspace files in and out."""

    backend: str
    """``"docker"`` or ``"process"``."""

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
        """Run ``command`` (argv list, or a ``/bin/sh -c`` string) and wait for its result.

        Args:
            command: What to run.
            spec: Limits and settings; the sandbox's default when None.
            workspace: Host directory seen at ``/workspace``; changes are synced back.
            env: Extra environment variables.
            run_id: The run it belongs to (labels, events).
            traceparent: The run's W3C trace context, passed in as ``TRACEPARENT``.

        Returns:
            The result, whatever the command did.
        """
        ...

    def put_file(
        self, workspace: Path, path: str | PurePosixPath, data: bytes, *, mode: int = 0o644
    ) -> None:
        """Write ``data`` to ``path`` inside ``workspace`` (symlinks never followed)."""
        ...

    def get_file(self, workspace: Path, path: str | PurePosixPath) -> bytes:
        """Read ``path`` inside ``workspace`` (symlinks never followed)."""
        ...

    def close(self) -> None:
        """Release everything the sandbox holds (containers, networks, threads)."""
        ...
