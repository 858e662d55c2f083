"""Egress: none by default, an allowlist through the proxy, and no path to the host's services."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sandbox_helpers import SMALL, Recorder, host_addresses, lan_address

from agent_runtime.errors import EgressProxyError
from agent_runtime.events import EgressBlocked, SandboxOutput
from agent_runtime.sandbox import DockerSandbox, HostFirewall, SandboxResult, SandboxSpec

pytestmark = pytest.mark.docker

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"

# Fetch URLs the way ordinary programs do: urllib honours HTTP_PROXY.
FETCH = r"""
import json, sys, urllib.error, urllib.request
out = {}
for url in sys.argv[1:]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            out[url] = [reply.status, reply.read().decode()]
    except urllib.error.HTTPError as exc:
        out[url] = [exc.code, exc.read().decode()]
    except OSError as exc:
        out[url] = ["error", repr(exc)]
print(json.dumps(out))
"""

# Dial addresses directly, ignoring any proxy variable.
DIAL = r"""
import json, socket, sys
port, out = int(sys.argv[1]), {}
for host in sys.argv[2:]:
    try:
        conn = socket.create_connection((host, port), timeout=3)
        conn.sendall(b"GET /direct HTTP/1.0\r\n\r\n")
        out[host] = "OPEN " + conn.recv(64).decode(errors="replace")
        conn.close()
    except OSError as exc:
        out[host] = type(exc).__name__
print(json.dumps(out))
"""

# Tunnel with CONNECT through the proxy named in HTTPS_PROXY.
CONNECT = r"""
import os, socket, sys
proxy = os.environ["HTTPS_PROXY"].split("//", 1)[1]
host, port = proxy.rsplit(":", 1)
conn = socket.create_connection((host, int(port)), timeout=5)
conn.sendall(f"CONNECT {sys.argv[1]} HTTP/1.1\r\n\r\n".encode())
print(conn.recv(200).split(b"\r\n")[0].decode())
"""


def _allow(*entries: str) -> SandboxSpec:
    return dataclasses.replace(SMALL, allow=entries)


def _json(result: SandboxResult) -> dict[str, Any]:
    assert result.ok, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def test_allowed_destination_works_through_the_proxy(
    docker_sandbox: DockerSandbox, host_server: int
) -> None:
    """An allowlisted destination is reachable by a program honouring HTTP_PROXY."""
    target = f"{lan_address()}:{host_server}"
    url = f"http://{target}/allowed"
    result = docker_sandbox.run(["python3", "-c", FETCH, url], spec=_allow(target))
    assert _json(result)[url] == [200, "hello from /allowed"]
    tunnel = docker_sandbox.run(["python3", "-c", CONNECT, target], spec=_allow(target))
    assert tunnel.stdout.startswith("HTTP/1.1 200")
    assert result.egress_blocked == ()
    assert "egress proxy" in result.isolation


def test_blocked_destination_is_refused_and_logged(
    docker_sandbox: DockerSandbox, host_server: int, recorder: Recorder
) -> None:
    """A destination not on the allowlist gets 403 and an EgressBlocked with run and trace."""
    # The name is refused before any lookup: nothing leaves this machine.
    url = f"http://blocked.example.com:{host_server}/blocked"
    allowed = f"{lan_address()}:{host_server}"
    result = docker_sandbox.run(
        ["python3", "-c", FETCH, url],
        spec=_allow(allowed),
        run_id="run-egress",
        traceparent=TRACEPARENT,
    )
    status, body = _json(result)[url]
    assert status == 403
    assert "not on the allowlist" in body
    (event,) = recorder.of(EgressBlocked)
    assert event.destination == f"blocked.example.com:{host_server}"
    assert (event.run_id, event.trace_id) == ("run-egress", TRACE_ID)
    assert abs(event.at - time.time()) < 60
    assert result.egress_blocked == (f"blocked.example.com:{host_server}",)


def test_direct_ip_through_the_proxy_is_refused_and_logged(
    docker_sandbox: DockerSandbox, host_server: int, recorder: Recorder
) -> None:
    """An IP literal that is not allowlisted as an IP is refused, even for an allowed name."""
    address = lan_address()
    url = f"http://{address}:{host_server}/by-ip"
    result = docker_sandbox.run(
        ["python3", "-c", FETCH, url], spec=_allow(f"localhost:{host_server}"), run_id="run-ip"
    )
    status, body = _json(result)[url]
    assert status == 403
    assert "IP address not on the allowlist" in body
    tunnel = docker_sandbox.run(
        ["python3", "-c", CONNECT, f"{address}:{host_server}"],
        spec=_allow(f"localhost:{host_server}"),
        run_id="run-ip",
    )
    assert tunnel.stdout.startswith("HTTP/1.1 403")
    blocked = [(e.destination, e.run_id) for e in recorder.of(EgressBlocked)]
    assert blocked == [(f"{address}:{host_server}", "run-ip")] * 2


def test_allowed_name_resolving_to_the_host_is_refused(
    docker_sandbox: DockerSandbox, host_server: int, recorder: Recorder
) -> None:
    """An allowlisted name that resolves to loopback does not open a path to the host."""
    result = docker_sandbox.run(
        ["python3", "-c", CONNECT, f"localhost:{host_server}"],
        spec=_allow(f"localhost:{host_server}"),
    )
    assert result.stdout.startswith("HTTP/1.1 403")
    assert [e.destination for e in recorder.of(EgressBlocked)] == [f"localhost:{host_server}"]


def test_host_services_are_unreachable_from_an_allowlisted_sandbox(
    docker_sandbox: DockerSandbox, host_server: int
) -> None:
    """Dialling any host address directly (gateways included) is refused by the firewall."""
    addresses = host_addresses()
    assert addresses, "the host has no non-loopback IPv4 address"
    result = docker_sandbox.run(
        ["python3", "-c", DIAL, str(host_server), *addresses],
        spec=_allow(f"{lan_address()}:{host_server}"),
    )
    outcome = _json(result)
    assert set(outcome) == set(addresses)
    assert not [host for host, state in outcome.items() if str(state).startswith("OPEN")], outcome
    # Without an allowlist there is no route at all.
    offline = docker_sandbox.run(["python3", "-c", DIAL, str(host_server), *addresses])
    assert not [h for h, s in _json(offline).items() if str(s).startswith("OPEN")]


def test_sandboxes_on_the_egress_network_cannot_reach_each_other(
    docker_sandbox: DockerSandbox, host_server: int, recorder: Recorder
) -> None:
    """Inter-container traffic on the egress network is off."""
    spec = dataclasses.replace(_allow(f"{lan_address()}:{host_server}"), timeout=15)
    serve = (
        "import os, socket\n"
        "gw = os.environ['HTTP_PROXY'].split('//')[1].rsplit(':', 1)[0]\n"
        "probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); probe.connect((gw, 9))\n"
        "server = socket.socket(); server.bind(('0.0.0.0', 8080)); server.listen()\n"
        "print('ADDR', probe.getsockname()[0], flush=True)\n"
        "server.settimeout(4)\n"
        "try:\n"
        "    server.accept(); print('ACCEPTED', flush=True)\n"
        "except OSError:\n"
        "    print('nobody', flush=True)\n"
    )
    results: list[SandboxResult] = []
    listener = threading.Thread(
        target=lambda: results.append(docker_sandbox.run(["python3", "-c", serve], spec=spec))
    )
    listener.start()
    address = ""
    deadline = time.monotonic() + 20
    while not address and time.monotonic() < deadline:
        time.sleep(0.1)
        lines = [e.line for e in recorder.of(SandboxOutput) if e.line.startswith("ADDR ")]
        address = lines[0].split()[1] if lines else ""
    assert address, "the listening sandbox never reported its address"
    dial = docker_sandbox.run(["python3", "-c", DIAL, "8080", address], spec=spec)
    listener.join(timeout=30)
    assert not str(_json(dial)[address]).startswith("OPEN")
    assert "ACCEPTED" not in results[0].stdout


def test_firewall_rules_follow_the_sandbox_lifecycle(
    sandbox_image: str, owner: str, state_dir: Path, host_server: int
) -> None:
    """The isolation chain exists while the egress network does, and goes with close()."""
    firewall = HostFirewall()
    box = DockerSandbox(SMALL, owner=owner, state_dir=state_dir, sweep_on_start=False)
    try:
        result = box.run("true", spec=_allow(f"{lan_address()}:{host_server}"))
        assert result.ok
        egress = box._egress
        assert egress is not None
        assert firewall.installed(egress.bridge)
        firewall.install(egress.bridge, egress.gateway, egress.proxy.address[1])  # idempotent
        assert firewall.installed(egress.bridge)
    finally:
        box.close()
    assert not firewall.installed(egress.bridge)
    assert egress.bridge not in firewall.chains()
    networks = box._client.networks.list(names=[egress.network_name])
    assert networks == []


def test_allowlist_without_firewall_privileges_is_refused_not_weakened(
    sandbox_image: str, owner: str, state_dir: Path
) -> None:
    """When the host rules cannot be installed, allowlisted runs fail with what to do."""
    broken = HostFirewall(iptables="iptables-not-installed-here")
    with DockerSandbox(SMALL, owner=owner, state_dir=state_dir, firewall=broken) as box:
        with pytest.raises(EgressProxyError, match="CAP_NET_ADMIN"):
            box.run("true", spec=_allow("api.example.com"))
        assert box.run("echo offline").stdout == "offline\n"
