"""A real container changes a bind-mounted workspace as an unprivileged user; rollback undoes it.

The image is built on the fly from the host's busybox and the libraries it links (``docker
import``, no registry needed), so the test depends on nothing but the Docker Engine and the
``busybox`` package. The container runs the way the sandbox runs agent code: non-root, no
capabilities, read-only root file system, no network, the workspace as its only writable mount.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_runtime.workspace import BlobStore, MemorySnapshotStore, Workspace

pytestmark = pytest.mark.docker

SANDBOX_UID = 1000
SCRIPT = """
set -e
cd /workspace
echo overwritten > input/data.csv
chmod 600 run.sh
rm input/keep-me.txt
mkdir -p out/deep
head -c 4096 /dev/urandom > out/deep/blob.bin
: > out/empty
ln -s /etc/passwd passwd-link
ln -s / rootfs
mkdir -p input/sub && chmod 700 input/sub
"""


def _busybox_rootfs() -> bytes:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("the docker workspace test needs busybox on the host: apt-get install busybox")
    ldd = subprocess.run(["ldd", busybox], capture_output=True, text=True, check=False).stdout
    libs = set(re.findall(r"(/\S+\.so[.\d]*)", ldd))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(os.path.realpath(busybox), arcname="bin/busybox")
        for lib in sorted(libs):
            tar.add(os.path.realpath(lib), arcname=lib.lstrip("/"))
        for applet in ("sh", "head", "mkdir", "chmod", "ln", "rm"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
        for name in ("etc", "tmp", "workspace", "dev"):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
    return buf.getvalue()


@pytest.fixture(scope="module")
def docker_client() -> Iterator[Any]:
    """A client of the real Docker Engine."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # the docker SDK raises several unrelated types here
        pytest.fail(f"Docker Engine not reachable ({exc}); run the README's test command")
    yield client
    client.close()


@pytest.fixture(scope="module")
def busybox_image(docker_client: Any) -> Iterator[str]:
    """A throw-away image holding the host's busybox, removed afterwards."""
    tag = f"agent-runtime-test-workspace:{secrets.token_hex(4)}"
    repo, version = tag.split(":")
    docker_client.api.import_image_from_data(_busybox_rootfs(), repository=repo, tag=version)
    yield tag
    docker_client.images.remove(tag, force=True)


def test_rollback_restores_what_a_container_changed(
    tmp_path: Path,
    docker_client: Any,
    busybox_image: str,
    read_tree: Callable[[Path], dict[str, tuple[Any, ...]]],
) -> None:
    """Exact bytes, modes and owners come back; planted symlinks to / and /etc never followed."""
    root = tmp_path / "ws"
    root.mkdir()
    os.chown(root, SANDBOX_UID, SANDBOX_UID)
    ws = Workspace(root, "docker-run", MemorySnapshotStore(), blobs=BlobStore(tmp_path / "b"))
    ws.put_file("input/data.csv", "a,b\n1,2\n")
    ws.put_file("input/keep-me.txt", "")
    ws.put_file("run.sh", "#!/bin/sh\necho run\n", mode=0o755)
    ws.snapshot(0, "inputs")
    expected = read_tree(root)
    assert expected["run.sh"][1:3] == (0o755, SANDBOX_UID)
    host_passwd = Path("/etc/passwd").read_bytes()

    container = docker_client.containers.run(
        busybox_image,
        ["/bin/sh", "-c", SCRIPT],
        user=f"{SANDBOX_UID}:{SANDBOX_UID}",
        volumes={str(root): {"bind": "/workspace", "mode": "rw"}},
        network_mode="none",
        cap_drop=["ALL"],
        read_only=True,
        labels={"agent-runtime.test": "workspace"},
        detach=True,
    )
    try:
        result = container.wait(timeout=60)
        logs = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    assert result["StatusCode"] == 0, logs

    snap = ws.snapshot(1, "agent")
    assert snap.entries["rootfs"].kind == "symlink"
    assert snap.entries["rootfs"].target == "/"
    assert snap.entries["passwd-link"].target == "/etc/passwd"
    assert snap.entries["out/deep/blob.bin"].uid == SANDBOX_UID
    changes = ws.changes(1)
    assert {c.path for c in changes.modified} == {"input/data.csv", "run.sh"}
    assert [c.path for c in changes.deleted] == ["input/keep-me.txt"]
    assert "rootfs" in {c.path for c in changes.added}

    summary = ws.rollback(0)
    assert read_tree(root) == expected
    assert summary.recreated == ("input/keep-me.txt",)
    assert Path("/etc/passwd").read_bytes() == host_passwd
    assert ws.rollback(0).changed == 0
