"""Host firewall rules that keep allowlisted sandboxes away from the host's own services.

Docker's ``--internal`` networks stop forwarding to other networks, but not traffic to the host
itself: a container can connect to any port the host serves, on any of the host's addresses
(its own gateway, other bridges' gateways, the LAN address), which exposes the runtime's
service, PostgreSQL, a TCP Docker API or anything else listening on ``0.0.0.0``. For each
sandbox bridge this module installs one iptables chain, jumped to from ``INPUT`` (traffic to the
host) and from ``DOCKER-USER`` (traffic Docker would forward), that accepts only TCP to the
egress proxy's address and port and rejects everything else at once (TCP reset, ICMP
unreachable), so a program that ignores the proxy fails fast instead of hanging.

Installing and removing are idempotent (``-C`` before ``-I``; the chain is flushed and refilled).
This needs root or ``CAP_NET_ADMIN`` and the ``iptables`` binary on the Docker host; without
them ``check`` raises ``EgressProxyError`` and allowlisted sandboxes refuse to start (network
``none`` sandboxes need none of this). IPv6 is disabled inside containers on these networks by
Docker; ip6tables rules are still added as a second line when ``ip6tables`` works, and a
warning is logged when it does not.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence

from agent_runtime.errors import EgressProxyError

__all__ = ["HostFirewall", "chain_name"]

_log = logging.getLogger(__name__)
_CHAIN_PREFIX = "AGENT-RT-"
_COMMENT = "agent-runtime sandbox egress isolation"
_CAP_NET_ADMIN = 12

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _run(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=False)


def chain_name(bridge: str) -> str:
    """The iptables chain that holds the rules for ``bridge`` (at most 28 characters)."""
    return (_CHAIN_PREFIX + bridge)[:28]


def _has_net_admin() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return False


class HostFirewall:
    """Installs and removes the per-bridge isolation chain.

    Args:
        runner: Runs one command (``subprocess.run`` by default).
        iptables: The IPv4 tool.
        ip6tables: The IPv6 tool (optional on the host).
    """

    def __init__(
        self, *, runner: Runner = _run, iptables: str = "iptables", ip6tables: str = "ip6tables"
    ) -> None:
        self._runner = runner
        self._iptables = iptables
        self._ip6tables = ip6tables

    def check(self) -> None:
        """Make sure rules can be installed here.

        Raises:
            EgressProxyError: When the process lacks root/``CAP_NET_ADMIN`` or ``iptables``.
        """
        why = None
        if shutil.which(self._iptables) is None:
            why = f"the {self._iptables} binary is not installed"
        elif not _has_net_admin():
            why = "this process is neither root nor holds CAP_NET_ADMIN"
        else:
            probe = self._runner([self._iptables, "-w", "5", "-S", "INPUT"])
            if probe.returncode != 0:
                why = f"`{self._iptables} -S INPUT` failed: {probe.stderr.strip()}"
        if why is not None:
            raise EgressProxyError(
                "an egress allowlist needs host firewall rules so the sandbox cannot reach the "
                f"host's own services, and {why}. Run the runtime as root (or with "
                "CAP_NET_ADMIN) on the Docker host with iptables installed, or run without "
                "SandboxSpec.allow (no network at all)."
            )

    def _ipt(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self._runner([tool, "-w", "5", *args])

    def _ensure_jump(self, tool: str, parent: str, bridge: str, chain: str) -> None:
        rule = ["-i", bridge, "-m", "comment", "--comment", _COMMENT, "-j", chain]
        if self._ipt(tool, "-C", parent, *rule).returncode != 0:
            done = self._ipt(tool, "-I", parent, "1", *rule)
            if done.returncode != 0:
                raise EgressProxyError(
                    f"cannot add the {parent} rule for sandbox bridge {bridge}: "
                    f"{done.stderr.strip()}"
                )

    def _forward_parent(self, tool: str) -> str:
        listed = self._ipt(tool, "-S", "DOCKER-USER")
        return "DOCKER-USER" if listed.returncode == 0 else "FORWARD"

    def install(self, bridge: str, gateway: str, proxy_port: int) -> None:
        """Install (or refresh) the rules for ``bridge``; idempotent.

        Args:
            bridge: The Linux bridge of the sandbox network.
            gateway: The host's address on that bridge, where the egress proxy listens.
            proxy_port: The egress proxy's port.

        Raises:
            EgressProxyError: When a rule cannot be installed (the rules already added are
                removed again).
        """
        chain = chain_name(bridge)
        try:
            self._fill(
                self._iptables,
                chain,
                [
                    ["-p", "tcp", "-d", gateway, "--dport", str(proxy_port), "-j", "ACCEPT"],
                    ["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
                    ["-j", "REJECT", "--reject-with", "icmp-port-unreachable"],
                ],
            )
            self._ensure_jump(self._iptables, "INPUT", bridge, chain)
            self._ensure_jump(self._iptables, self._forward_parent(self._iptables), bridge, chain)
        except EgressProxyError:
            self.remove(bridge)
            raise
        self._install_v6(bridge, chain)

    def _fill(self, tool: str, chain: str, rules: list[list[str]]) -> None:
        self._ipt(tool, "-N", chain)  # fails harmlessly when it exists; -F below resets it
        flushed = self._ipt(tool, "-F", chain)
        if flushed.returncode != 0:
            raise EgressProxyError(f"cannot create iptables chain {chain}: {flushed.stderr}")
        for rule in rules:
            done = self._ipt(tool, "-A", chain, *rule)
            if done.returncode != 0:
                raise EgressProxyError(
                    f"cannot add a rule to iptables chain {chain}: {done.stderr.strip()}"
                )

    def _install_v6(self, bridge: str, chain: str) -> None:
        if shutil.which(self._ip6tables) is None:
            _log.warning("ip6tables is missing: IPv6 from %s relies on Docker alone", bridge)
            return
        try:
            self._fill(self._ip6tables, chain, [["-j", "REJECT"]])
            self._ensure_jump(self._ip6tables, "INPUT", bridge, chain)
            self._ensure_jump(self._ip6tables, self._forward_parent(self._ip6tables), bridge, chain)
        except EgressProxyError as exc:
            _log.warning("IPv6 isolation rules for %s not installed: %s", bridge, exc)

    def installed(self, bridge: str) -> bool:
        """Whether the IPv4 ``INPUT`` jump for ``bridge`` is in place."""
        rule = ["-i", bridge, "-m", "comment", "--comment", _COMMENT, "-j", chain_name(bridge)]
        return self._ipt(self._iptables, "-C", "INPUT", *rule).returncode == 0

    def remove(self, bridge: str) -> None:
        """Remove the rules for ``bridge``; idempotent, and quiet when nothing is installed."""
        chain = chain_name(bridge)
        rule = ["-i", bridge, "-m", "comment", "--comment", _COMMENT, "-j", chain]
        for tool in (self._iptables, self._ip6tables):
            if shutil.which(tool) is None:
                continue
            for parent in ("INPUT", "DOCKER-USER", "FORWARD"):
                while self._ipt(tool, "-C", parent, *rule).returncode == 0:
                    if self._ipt(tool, "-D", parent, *rule).returncode != 0:
                        break
            self._ipt(tool, "-F", chain)
            self._ipt(tool, "-X", chain)

    def chains(self) -> list[str]:
        """The bridges that currently have an isolation chain (IPv4), for the sweep."""
        listed = self._ipt(self._iptables, "-S")
        bridges = []
        for line in listed.stdout.splitlines():
            if line.startswith(f"-N {_CHAIN_PREFIX}"):
                bridges.append(line[3 + len(_CHAIN_PREFIX) :].strip())
        return bridges
