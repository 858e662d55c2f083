"""The warm pool on the real engine: ready containers, one run each, refilled, own workspace."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox_helpers import SMALL, lan_address

from agent_runtime.sandbox import DockerSandbox
from agent_runtime.sandbox.labels import LABEL_OWNER, LABEL_WARM

pytestmark = pytest.mark.docker

CONTAINER_ID = "tail -c 65 /proc/self/cgroup | head -c 64; echo"


@pytest.fixture(scope="module")
def warm_sandbox(sandbox_image: str, owner: str, state_dir: Path) -> Iterator[DockerSandbox]:
    """A sandbox keeping two warm containers for the small spec."""
    box = DockerSandbox(SMALL, warm=2, owner=f"{owner}-warm", state_dir=state_dir)
    assert box.wait_warm(SMALL, 2, timeout=60)
    yield box
    box.close()


def _labelled(box: DockerSandbox) -> list[dict[str, object]]:
    found = box._api.containers(all=True, filters={"label": f"{LABEL_OWNER}={box.owner}"})
    return list(found)


def test_warm_runs_use_ready_containers_and_never_reuse_them(warm_sandbox: DockerSandbox) -> None:
    """Each run gets a different pre-started container; nothing carries over between runs."""
    first = warm_sandbox.run(f"{CONTAINER_ID}; echo secret > /tmp/mark; echo left > scratch")
    second = warm_sandbox.run(f"{CONTAINER_ID}; cat /tmp/mark scratch 2>&1 || true")
    assert first.ok
    assert first.warm
    assert second.warm
    first_id, second_id = first.stdout.split()[0], second.stdout.split()[0]
    assert len(first_id) == 64
    assert first_id != second_id
    assert "secret" not in second.stdout
    assert "left" not in second.stdout


def test_pool_refills_in_the_background(warm_sandbox: DockerSandbox) -> None:
    """After runs take containers, the pool is back to its target and used ones are gone."""
    used = [warm_sandbox.run(CONTAINER_ID).stdout.strip() for _ in range(3)]
    assert warm_sandbox.wait_warm(SMALL, 2, timeout=60)
    deadline = time.monotonic() + 30  # used containers are removed in the background
    alive = {str(c["Id"]) for c in _labelled(warm_sandbox)}
    while not alive.isdisjoint(used) and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = {str(c["Id"]) for c in _labelled(warm_sandbox)}
    assert alive.isdisjoint(used)
    labels = [c.get("Labels") or {} for c in _labelled(warm_sandbox)]
    assert len([label for label in labels if LABEL_WARM in label]) >= 2  # type: ignore[operator]


def test_warm_container_gets_the_runs_own_workspace(
    warm_sandbox: DockerSandbox, tmp_path: Path
) -> None:
    """A warm container sees the run's workspace, and its changes come back."""
    (tmp_path / "input.txt").write_text("from the host")
    result = warm_sandbox.run("cat input.txt; echo done > output.txt", workspace=tmp_path)
    assert result.ok
    assert result.warm
    assert result.stdout == "from the host"
    assert (tmp_path / "output.txt").read_text() == "done\n"


def test_other_limits_start_cold(warm_sandbox: DockerSandbox) -> None:
    """A spec whose limits differ from the warm key gets a cold container."""
    result = warm_sandbox.run("true", spec=dataclasses.replace(SMALL, memory="160m"))
    assert result.ok
    assert not result.warm


def test_warm_allowlisted_container_binds_its_run(
    warm_sandbox: DockerSandbox, host_server: int
) -> None:
    """Warm containers on the egress network are bound to the claiming run's allowlist."""
    target = f"{lan_address()}:{host_server}"
    spec = dataclasses.replace(SMALL, allow=(target,))
    warm_sandbox.prewarm(spec, 1)
    assert warm_sandbox.wait_warm(spec, 1, timeout=60)
    fetch = (
        "import sys, urllib.request\n"
        "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())\n"
    )
    result = warm_sandbox.run(["python3", "-c", fetch, f"http://{target}/warm"], spec=spec)
    assert result.ok, result.stderr
    assert result.warm
    assert result.stdout.strip() == "hello from /warm"
    warm_sandbox.prewarm(spec, 0)


def test_concurrent_runs_keep_their_own_output_and_workspace(
    warm_sandbox: DockerSandbox, tmp_path: Path
) -> None:
    """Runs started together (warm and cold) never see each other's output or files."""
    from concurrent.futures import ThreadPoolExecutor

    workspaces = []
    for index in range(4):
        workspace = tmp_path / f"ws{index}"
        workspace.mkdir()
        (workspace / "who").write_text(str(index))
        workspaces.append(workspace)

    def one(index: int) -> tuple[int, str, str]:
        result = warm_sandbox.run(
            'cat who; echo; echo "$WHO" > seen; ls',
            workspace=workspaces[index],
            env={"WHO": str(index)},
        )
        assert result.ok, result.stderr
        return index, result.stdout, (workspaces[index] / "seen").read_text()

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(one, range(4)))
    for index, stdout, seen in outcomes:
        assert stdout.splitlines() == [str(index), "seen", "who"]
        assert seen == f"{index}\n"
