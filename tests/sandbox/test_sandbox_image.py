"""The sandbox image: the shipped Dockerfile, the cached offline build and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent_runtime.errors import SandboxImageError
from agent_runtime.sandbox import DockerSandbox, build_image, dockerfile_path
from agent_runtime.sandbox.cli import app
from agent_runtime.sandbox.image import main, recipe_digest


def test_dockerfile_is_shipped_with_a_slim_python_base_and_a_non_root_user() -> None:
    """The recipe users build starts FROM python:3.11-slim and switches to uid 1000."""
    text = dockerfile_path().read_text()
    assert "ARG BASE=python:3.11-slim" in text
    assert "FROM ${BASE}" in text
    assert "USER ${SANDBOX_UID}:${SANDBOX_GID}" in text
    assert "ARG SANDBOX_UID=1000" in text
    assert "/usr/local/bin/python" in text


def test_recipe_digest_depends_on_the_base() -> None:
    """The cache key changes with the base image (online and offline builds differ)."""
    assert recipe_digest("python:3.11-slim") != recipe_digest("agent-runtime-sandbox-base:bookworm")


@pytest.mark.docker
def test_offline_build_is_cached(sandbox_image: str) -> None:
    """A second build with the same recipe keeps the existing image."""
    again = build_image(sandbox_image, offline=True)
    assert not again.built
    assert again.image_id.startswith("sha256:")


@pytest.mark.docker
def test_image_has_python_on_path_and_a_non_root_user(sandbox_image: str, tmp_path: Path) -> None:
    """`python` resolves in the image, with the standard library, as uid 1000."""
    with DockerSandbox(owner="image-test", state_dir=tmp_path) as box:
        result = box.run(
            "command -v python; python -c 'import json, urllib.request, venv; print(\"ok\")'; "
            "id -un"
        )
    assert result.ok, result.stderr
    assert result.stdout.split() == ["/usr/local/bin/python", "ok", "sandbox"]


@pytest.mark.docker
def test_cli_build_image_reports_the_cached_image(sandbox_image: str) -> None:
    """`sandbox build-image --offline` on an up-to-date image says it is cached."""
    result = CliRunner().invoke(app, ["build-image", "--offline", "--image", sandbox_image])
    assert result.exit_code == 0, result.output
    assert "cached" in result.output


@pytest.mark.docker
def test_module_entry_point_reports_the_cached_image(
    sandbox_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m agent_runtime.sandbox.image --offline` works like the CLI."""
    assert main(["--offline", "--image", sandbox_image]) == 0
    assert "cached" in capsys.readouterr().out


@pytest.mark.docker
def test_failed_debootstrap_is_a_clear_image_error() -> None:
    """When debootstrap cannot fetch packages the error says so (nothing is tagged)."""
    with pytest.raises(SandboxImageError, match="debootstrap failed"):
        build_image(
            "agent-runtime-sandbox-never-built:test",
            offline=True,
            force=True,
            mirror="http://127.0.0.1:9/debian",
        )
