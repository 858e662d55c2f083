"""No Docker engine: a clear error naming the address and what to do, never a silent fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent_runtime.errors import DockerUnavailableError, SandboxError
from agent_runtime.sandbox import DockerSandbox, build_image, sweep
from agent_runtime.sandbox._engine import is_local_host
from agent_runtime.sandbox.cli import app


@pytest.fixture
def dead_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """DOCKER_HOST pointing at a socket nobody serves."""
    address = f"unix://{tmp_path}/no-engine.sock"
    monkeypatch.setenv("DOCKER_HOST", address)
    return address


def test_docker_sandbox_without_engine_raises_with_what_to_do(dead_engine: str) -> None:
    """DockerSandbox names the address tried, how to start an engine and the explicit fallback."""
    with pytest.raises(DockerUnavailableError) as caught:
        DockerSandbox()
    error = caught.value
    assert isinstance(error, SandboxError)
    assert error.docker_host == dead_engine
    assert dead_engine in str(error)
    assert "DOCKER_HOST" in str(error)
    assert "ProcessSandbox()" in str(error)


def test_explicit_docker_host_argument_is_used(tmp_path: Path) -> None:
    """An explicit docker_host wins over the environment and is named in the error."""
    address = f"unix://{tmp_path}/other.sock"
    with pytest.raises(DockerUnavailableError, match=r"other\.sock"):
        DockerSandbox(docker_host=address)


def test_sweep_and_build_without_engine_raise_the_same_error(dead_engine: str) -> None:
    """The sweep and the image build fail the same clear way."""
    with pytest.raises(DockerUnavailableError):
        sweep(owner="nobody")
    with pytest.raises(DockerUnavailableError):
        build_image(offline=True)


def test_cli_reports_a_dead_engine_and_exits_1(dead_engine: str) -> None:
    """The CLI prints the error and exits with status 1."""
    runner = CliRunner()
    gc = runner.invoke(app, ["gc", "--json"])
    assert gc.exit_code == 1
    assert "no Docker engine answers" in gc.output
    build = runner.invoke(app, ["build-image", "--offline"])
    assert build.exit_code == 1
    assert "no Docker engine answers" in build.output


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("unix:///var/run/docker.sock", True),
        ("tcp://127.0.0.1:2375", True),
        ("tcp://localhost:2376", True),
        ("tcp://10.0.0.5:2376", False),
        ("ssh://user@builder", False),
    ],
)
def test_local_engine_detection(address: str, local: bool) -> None:
    """Only engines on this host may use loop disks, the egress proxy and firewall rules."""
    assert is_local_host(address) is local
