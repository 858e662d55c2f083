"""A real ``agent-runtime serve`` process for end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.stack.stack_tools import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Served:
    """A running service."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    db_url: str
    log_db: Path

    def log_tail(self, lines: int = 60) -> str:
        """The last lines the service wrote."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def start_service(tmp_path: Path, *, host: str = "127.0.0.1", **env: str) -> Served:
    """Start ``agent-runtime --app tests.e2e.app serve`` and wait for /healthz."""
    port = free_port()
    db_url = f"sqlite:///{tmp_path}/state.db"
    log_db = tmp_path / "logs.db"
    log = tmp_path / "serve.log"
    environ = {
        **os.environ,
        "AGENT_RUNTIME_DB": db_url,
        "AGENT_RUNTIME_LOG_DB": str(log_db),
        "OTEL_SERVICE_NAME": "agent-runtime-e2e",
        "PYTHONPATH": str(ROOT),
        **env,
    }
    out = log.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent_runtime",
            "--app",
            "tests.e2e.app",
            "serve",
            "--host",
            host,
            "--port",
            str(port),
        ],
        cwd=tmp_path,
        env=environ,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    out.close()
    served = Served(f"http://127.0.0.1:{port}", port, process, log, db_url, log_db)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited with {process.returncode}:\n{served.log_tail()}")
        try:
            with urllib.request.urlopen(served.url + "/healthz", timeout=1) as response:
                if response.status == 200:
                    return served
        except OSError:
            time.sleep(0.1)
    stop_service(served)
    raise AssertionError(f"serve not ready after 30 s:\n{served.log_tail()}")


def stop_service(served: Served) -> None:
    """Stop the service (SIGTERM, then SIGKILL after 10 s)."""
    if served.process.poll() is None:
        served.process.terminate()
        try:
            served.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            served.process.kill()
            served.process.wait(timeout=10)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start services on demand; all are stopped after the test."""
    started: list[Served] = []

    def start(**kwargs: str) -> Served:
        served = start_service(tmp_path / f"svc{len(started)}", **kwargs)
        started.append(served)
        return served

    for directory in (tmp_path / f"svc{i}" for i in range(4)):
        directory.mkdir()
    yield start
    for served in started:
        stop_service(served)
