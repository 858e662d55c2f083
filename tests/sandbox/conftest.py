"""Fixtures for the sandbox tests: the offline image (built once), owners, hooks recorders."""

from __future__ import annotations

import http.server
import secrets
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox_helpers import SMALL, Recorder

from agent_runtime.events import hooks
from agent_runtime.sandbox import DockerSandbox, build_image
from agent_runtime.sandbox.spec import DEFAULT_IMAGE


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """Subscribe a recording hook for the duration of a test."""
    hook = Recorder()
    hooks.subscribe(hook)
    yield hook
    hooks.unsubscribe(hook)


@pytest.fixture(scope="session")
def sandbox_image() -> str:
    """The offline-built sandbox image (built once; cached across sessions by its recipe)."""
    build_image(DEFAULT_IMAGE, offline=True)
    return DEFAULT_IMAGE


@pytest.fixture(scope="session")
def owner() -> str:
    """An owner id of this test session: sweeps never touch anybody else's sandboxes."""
    return f"test-{secrets.token_hex(6)}"


def _mounts_under(path: Path) -> list[str]:
    return [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(str(path))
    ]


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The state directory of this session's sandboxes; no loop mount may outlive the session."""
    path = tmp_path_factory.mktemp("sandbox-state")
    yield path
    leaked = _mounts_under(path)
    for mount in leaked:
        subprocess.run(["umount", "-l", mount], check=False)
    assert leaked == [], f"sandbox disks left mounted: {leaked}"


@pytest.fixture(scope="module", autouse=True)
def _no_disk_leaks_per_module(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each module's sandboxes unmount their disks by the time the module ends."""
    yield
    if "state_dir" in request.fixturenames:
        path: Path = request.getfixturevalue("state_dir")
        assert _mounts_under(path) == [], f"{request.module.__name__} left disks mounted"


@pytest.fixture(scope="module")
def docker_sandbox(sandbox_image: str, owner: str, state_dir: Path) -> Iterator[DockerSandbox]:
    """A Docker sandbox shared by a test module (closed, leaving nothing behind, afterwards)."""
    box = DockerSandbox(SMALL, owner=owner, state_dir=state_dir)
    yield box
    box.close()


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def host_server() -> Iterator[int]:
    """An HTTP server on 0.0.0.0 of this host (every host address); yields its port."""
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()
