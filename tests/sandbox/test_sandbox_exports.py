"""The public surface of agent_runtime.sandbox."""

from __future__ import annotations

import agent_runtime.sandbox as sandbox


def _isort_key(name: str) -> tuple[int, str]:
    # ruff's RUF022 order: CONSTANTS, then Classes, then functions.
    rank = 0 if name.isupper() else 1 if name[0].isupper() else 2
    return rank, name


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted (constants, classes, functions), and every name in it exists."""
    assert sandbox.__all__ == sorted(sandbox.__all__, key=_isort_key)
    missing = [name for name in sandbox.__all__ if not hasattr(sandbox, name)]
    assert missing == []


def test_the_names_the_runtime_builds_on_are_exported() -> None:
    """The runtime's integration (ctx.sandbox, the CLI) relies on these names."""
    expected = {
        "DockerSandbox",
        "ProcessSandbox",
        "Sandbox",
        "SandboxResult",
        "SandboxSpec",
        "TerminationReason",
        "DiskLimitMechanism",
        "build_image",
        "sweep",
    }
    assert expected <= set(sandbox.__all__)
