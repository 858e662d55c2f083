"""``ctx.sandbox`` and ``ctx.workspace``: a run's sandbox and its tracked workspace.

Inside a workflow, ``ctx.sandbox.run(cmd, spec=...)`` runs untrusted code in the runtime's
sandbox backend (one :class:`DockerSandbox` per runtime, created on first use; a
:class:`ProcessSandbox` only when passed explicitly) with:

* the run's **workspace** (``<state dir>/workspaces/<run id>``) at ``/workspace``;
* the run's trace context as ``TRACEPARENT`` (the current span: the sandbox step's);
* the run id on the container's labels and on every output line's log record.

The command is a **checkpointed step** (named ``sandbox:<program>`` unless ``name=`` says
otherwise): its :class:`SandboxResult` is recorded, so a resumed run does not run it again. A
command that fails is a result (``result.ok`` is False), not an exception; only the sandbox
being unable to run anything raises, and that is retried like any step.

The workspace is snapshotted after every step of the run (unchanged files cost a ``stat``), so
``agent-runtime diff RUN_ID`` shows what each step changed and ``agent-runtime rollback RUN_ID
[--to-step N]`` restores any point. When a run fails its workspace goes back to its initial
state (``workspace_auto_rollback`` flag, on by default); when a run is resumed after a crash,
changes made by the step in flight are undone first, so the workspace matches the last
checkpoint. Rollbacks are recorded as ``rollback`` events of the run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_runtime.sandbox.result import SandboxResult
from agent_runtime.sandbox.spec import SandboxSpec
from agent_runtime.workspace import SqlSnapshotStore, Workspace, WorkspaceConfig
from agent_runtime.workspace.config import workspace_root_for
from agent_runtime.workspace.rollback import RollbackSummary
from observability.tracing import current_traceparent

if TYPE_CHECKING:
    from agent_runtime.context import RunContext
    from agent_runtime.runtime import Runtime
    from agent_runtime.sandbox.protocol import Sandbox

__all__ = ["RunSandbox", "has_workspace", "open_workspace", "rollback_reason"]

_log = logging.getLogger("agent_runtime.sandbox")


def rollback_reason(summary: RollbackSummary) -> str:
    """The text of a rollback's run event."""
    target = "the initial state" if summary.position < 0 else f"step {summary.position}"
    how = "automatic" if summary.automatic else "by hand"
    return (
        f"workspace rolled back to {target} ({how}): {len(summary.restored)} restored, "
        f"{len(summary.recreated)} recreated, {len(summary.deleted)} deleted"
    )


def has_workspace(runtime: Runtime, run_id: str) -> bool:
    """Whether ``run_id`` ever opened a workspace (it has snapshots)."""
    return SqlSnapshotStore(runtime.store.engine).latest(run_id) is not None


def open_workspace(runtime: Runtime, run_id: str, *, auto_rollback: bool) -> Workspace:
    """Open (creating on first use) the workspace of ``run_id``, recording rollbacks as events."""

    def record(summary: RollbackSummary) -> None:
        if summary.changed:
            runtime.store.record_event(run_id, "rollback", rollback_reason(summary))

    return Workspace(
        workspace_root_for(run_id, runtime.state_dir),
        run_id,
        SqlSnapshotStore(runtime.store.engine),
        state_dir=runtime.state_dir,
        config=WorkspaceConfig(rollback_on_failure=auto_rollback),
        on_rollback=record,
    )


def _program(command: Sequence[str] | str) -> str:
    if isinstance(command, str):
        first = command.strip().split(" ", 1)[0]
    else:
        first = command[0] if command else "?"
    return os.path.basename(first) or "?"


class RunSandbox:
    """The run's sandbox (``ctx.sandbox``).

    Args:
        ctx: The run's context.
        runtime: The runtime (owns the sandbox backend).
        workspace: Returns the run's workspace (created on first use).
    """

    def __init__(
        self, ctx: RunContext, runtime: Runtime, workspace: Callable[[], Workspace]
    ) -> None:
        self._ctx = ctx
        self._runtime = runtime
        self._workspace = workspace

    @property
    def backend(self) -> Sandbox:
        """The runtime's sandbox backend (created on first use)."""
        return self._runtime.sandbox

    def run(
        self,
        command: Sequence[str] | str,
        *,
        spec: SandboxSpec | None = None,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> Any:
        """Run ``command`` in the sandbox as a checkpointed step.

        Args:
            command: An argv list, or a string for ``/bin/sh -c``.
            spec: Limits and settings (default: the backend's default spec).
            env: Extra environment variables.
            name: Step name (default ``sandbox:<program>``).

        Returns:
            The :class:`SandboxResult` (an awaitable of it in an ``async def`` workflow).

        Raises:
            DockerUnavailableError: No Docker engine answers (and no other backend was given).
            SandboxError: The sandbox could not run anything (retried per the step's policy).
        """
        step = name or f"sandbox:{_program(command)}"
        recorded = self._ctx.step(
            self._execute, command, spec, dict(env or {}), name=step, retry=None
        )
        if self._runtime_is_async():
            return self._finish_async(recorded)
        return SandboxResult.from_dict(recorded)

    async def _finish_async(self, recorded: Any) -> SandboxResult:
        return SandboxResult.from_dict(await recorded)

    def _runtime_is_async(self) -> bool:
        return self._ctx._wf.is_async

    def _execute(
        self, command: Sequence[str] | str, spec: SandboxSpec | None, env: dict[str, str]
    ) -> dict[str, Any]:
        workspace = self._workspace()
        result = self.backend.run(
            command,
            spec=spec,
            workspace=workspace.root,
            env=env,
            run_id=self._ctx.run_id,
            traceparent=current_traceparent(self._ctx.trace_id),
        )
        return result.to_dict()

    def put_file(self, path: str, data: bytes | str, *, mode: int = 0o644) -> None:
        """Write a file into the run's workspace (seen at ``/workspace/<path>``)."""
        self._workspace().put_file(path, data, mode=mode)

    def get_file(self, path: str) -> bytes:
        """Read a file from the run's workspace."""
        return self._workspace().get_file(path)

    @property
    def workspace_dir(self) -> Path:
        """The host directory of the run's workspace."""
        return self._workspace().root
