"""The egress proxy and its decisions, on loopback (the Docker path is in the network tests)."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest
from sandbox_helpers import Recorder

from agent_runtime.errors import EgressProxyError
from agent_runtime.events import EgressBlocked
from agent_runtime.sandbox import EgressBinding, EgressProxy, parse_allow
from agent_runtime.sandbox.egress import decide, is_host_local

TRACE = "0123456789abcdef0123456789abcdef"


class _Echo(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, dict[str, str]]] = []

    def do_GET(self) -> None:
        _Echo.seen.append((self.path, dict(self.headers)))
        body = f"upstream saw {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[int]:
    """An HTTP server on loopback; yields its port."""
    _Echo.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy() -> Iterator[EgressProxy]:
    """An egress proxy on loopback with a fixed clock."""
    egress = EgressProxy("127.0.0.1", clock=lambda: 1234.5)
    egress.start()
    yield egress
    egress.close()


def _ask(proxy: EgressProxy, request: bytes) -> bytes:
    with socket.create_connection(proxy.address, timeout=5) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_decide_refuses_unlisted_hosts_and_unlisted_ip_literals() -> None:
    """Names must be allowlisted; IP literals must be allowlisted as IPs."""
    rules = parse_allow(["api.example.com", "10.9.8.7:8080"])
    assert not decide(rules, "other.example.com", 443).allowed
    assert not decide(rules, "api.example.com", 22).allowed
    assert decide(rules, "10.9.8.7", 8080).allowed
    refused = decide(rules, "10.9.8.6", 8080)
    assert not refused.allowed
    assert "IP address" in refused.reason


def test_decide_resolves_names_itself_and_refuses_host_internal_answers() -> None:
    """A name resolving to loopback, link-local (metadata) or this host is refused."""
    rules = parse_allow(["api.example.com", "meta.example.com", "me.example.com"])
    answers = {
        "api.example.com": ["203.0.113.7"],
        "meta.example.com": ["169.254.169.254"],
        "me.example.com": ["127.0.0.1", "::1"],
    }

    def resolver(host: str, port: int) -> list[str]:
        return answers[host]

    allowed = decide(rules, "api.example.com", 443, resolver=resolver)
    assert allowed.allowed
    assert allowed.addresses == ("203.0.113.7",)
    metadata = decide(rules, "meta.example.com", 80, resolver=resolver)
    assert not metadata.allowed
    assert "link-local" in metadata.reason
    loop = decide(rules, "me.example.com", 443, resolver=resolver)
    assert not loop.allowed
    assert "loopback" in loop.reason


def test_decide_allows_an_internal_address_only_when_listed_as_ip() -> None:
    """Listing the exact IP:port is the explicit way to reach a host-internal address."""
    rules = parse_allow(["svc.example.com:8080", "127.0.0.1:8080"])
    decision = decide(rules, "svc.example.com", 8080, resolver=lambda h, p: ["127.0.0.1"])
    assert decision.allowed
    assert decision.addresses == ("127.0.0.1",)


def test_decide_reports_unresolvable_names() -> None:
    """A name that does not resolve is refused with the resolver's reason."""

    def resolver(host: str, port: int) -> list[str]:
        raise socket.gaierror("no such name")

    decision = decide(parse_allow(["gone.example.com"]), "gone.example.com", 443, resolver=resolver)
    assert not decision.allowed
    assert "does not resolve" in decision.reason


def test_is_host_local_knows_this_hosts_addresses() -> None:
    """Loopback is local; a documentation address is not."""
    assert is_host_local("127.0.0.1")
    assert not is_host_local("203.0.113.9")


def test_connect_tunnel_to_allowed_destination(proxy: EgressProxy, upstream: int) -> None:
    """CONNECT to an allowlisted IP:port opens a tunnel that carries the traffic."""
    proxy.bind("127.0.0.1", EgressBinding(parse_allow([f"127.0.0.1:{upstream}"]), "run-1", TRACE))
    with socket.create_connection(proxy.address, timeout=5) as conn:
        conn.sendall(f"CONNECT 127.0.0.1:{upstream} HTTP/1.1\r\n\r\n".encode())
        assert conn.recv(1024).startswith(b"HTTP/1.1 200")
        conn.sendall(b"GET /tunnelled HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    assert b"upstream saw /tunnelled" in reply


def test_plain_http_is_forwarded_in_origin_form(proxy: EgressProxy, upstream: int) -> None:
    """An absolute-URI request is forwarded as origin-form, without proxy headers."""
    proxy.bind("127.0.0.1", EgressBinding(parse_allow([f"127.0.0.1:{upstream}"])))
    reply = _ask(
        proxy,
        f"GET http://127.0.0.1:{upstream}/a?b=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Proxy-Authorization: secret\r\nProxy-Connection: keep-alive\r\n\r\n".encode(),
    )
    assert reply.startswith(b"HTTP/1.0 200")
    assert b"upstream saw /a?b=1" in reply
    path, headers = _Echo.seen[-1]
    assert path == "/a?b=1"
    assert "Proxy-Authorization" not in headers
    assert headers.get("Connection") == "close"


def test_blocked_destination_gets_403_and_an_event(
    proxy: EgressProxy, upstream: int, recorder: Recorder
) -> None:
    """A refused destination answers 403 and emits EgressBlocked with run and trace ids."""
    proxy.bind("127.0.0.1", EgressBinding(parse_allow(["api.example.com"]), "run-7", TRACE))
    reply = _ask(proxy, f"CONNECT 127.0.0.1:{upstream} HTTP/1.1\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 403")
    assert b"not on the allowlist" in reply
    (event,) = recorder.of(EgressBlocked)
    assert event.destination == f"127.0.0.1:{upstream}"
    assert (event.run_id, event.trace_id, event.at) == ("run-7", TRACE, 1234.5)
    assert proxy.unbind("127.0.0.1") == (f"127.0.0.1:{upstream}",)
    assert _Echo.seen == []


def test_unbound_client_is_refused(proxy: EgressProxy, recorder: Recorder) -> None:
    """A source address without a binding (no allowlist) is refused and logged."""
    reply = _ask(proxy, b"CONNECT api.example.com:443 HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 403")
    (event,) = recorder.of(EgressBlocked)
    assert event.run_id is None
    assert event.destination == "api.example.com:443"


@pytest.mark.parametrize(
    "request_bytes",
    [b"GET /relative HTTP/1.1\r\n\r\n", b"garbage\r\n\r\n", b"GET https://x/ HTTP/1.1\r\n\r\n"],
)
def test_malformed_requests_get_400(proxy: EgressProxy, request_bytes: bytes) -> None:
    """Requests that are not proxy requests get a 400 explaining what to send."""
    proxy.bind("127.0.0.1", EgressBinding(parse_allow(["x.example.com"])))
    assert _ask(proxy, request_bytes).startswith(b"HTTP/1.1 400")


def test_proxy_cannot_listen_on_a_foreign_address() -> None:
    """Starting on an address this host does not have raises EgressProxyError."""
    with pytest.raises(EgressProxyError, match="cannot listen"):
        EgressProxy("203.0.113.9").start()
