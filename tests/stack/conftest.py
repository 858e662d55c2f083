"""Fixtures of the stack tests: one real Prometheus per test session, loaded with the shipped
alert rules, for every test that needs a PromQL engine."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The test modules import the helpers as `stack_tools`; pytest's default import mode puts this
# directory on sys.path, this keeps that true under --import-mode=importlib as well.
sys.path.insert(0, str(Path(__file__).parent))

from stack_tools import (
    ServerProcess,
    render_prometheus_config,
    start_prometheus,
)


@pytest.fixture(scope="session")
def prometheus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A Debian Prometheus on a free loopback port, evaluating alerts/rules every second."""
    workdir: Path = tmp_path_factory.mktemp("prometheus")
    config = render_prometheus_config(workdir / "prometheus.yml", evaluation_interval="1s")
    server = start_prometheus(workdir, config)
    try:
        yield server
    finally:
        server.stop()
