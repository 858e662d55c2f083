"""Sandboxed execution: Docker containers with hard limits, an egress allowlist and a warm pool.

``DockerSandbox`` runs untrusted commands in hardened, disposable containers; ``ProcessSandbox``
is the explicit, weaker fallback for hosts without Docker. Both implement the ``Sandbox``
protocol and return a ``SandboxResult`` whose ``reason`` says why the command ended.
"""

from agent_runtime.sandbox.docker_sandbox import DockerSandbox
from agent_runtime.sandbox.egress import EgressBinding, EgressDecision, EgressProxy
from agent_runtime.sandbox.firewall import HostFirewall
from agent_runtime.sandbox.gc import GcReport, sweep
from agent_runtime.sandbox.image import ImageBuild, build_image, dockerfile_path
from agent_runtime.sandbox.labels import owner_id
from agent_runtime.sandbox.pool import WarmPool
from agent_runtime.sandbox.process_sandbox import ProcessSandbox
from agent_runtime.sandbox.protocol import Sandbox
from agent_runtime.sandbox.result import DiskLimitMechanism, SandboxResult, TerminationReason
from agent_runtime.sandbox.spec import (
    DEFAULT_CPUS,
    DEFAULT_DISK,
    DEFAULT_IMAGE,
    DEFAULT_MEMORY,
    DEFAULT_OUTPUT_LIMIT,
    DEFAULT_PIDS,
    DEFAULT_TIMEOUT,
    DEFAULT_TMP,
    DEFAULT_USER,
    AllowRule,
    SandboxSpec,
    parse_allow,
    parse_size,
)

__all__ = [
    "DEFAULT_CPUS",
    "DEFAULT_DISK",
    "DEFAULT_IMAGE",
    "DEFAULT_MEMORY",
    "DEFAULT_OUTPUT_LIMIT",
    "DEFAULT_PIDS",
    "DEFAULT_TIMEOUT",
    "DEFAULT_TMP",
    "DEFAULT_USER",
    "AllowRule",
    "DiskLimitMechanism",
    "DockerSandbox",
    "EgressBinding",
    "EgressDecision",
    "EgressProxy",
    "GcReport",
    "HostFirewall",
    "ImageBuild",
    "ProcessSandbox",
    "Sandbox",
    "SandboxResult",
    "SandboxSpec",
    "TerminationReason",
    "WarmPool",
    "build_image",
    "dockerfile_path",
    "owner_id",
    "parse_allow",
    "parse_size",
    "sweep",
]
