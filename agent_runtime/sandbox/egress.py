"""The egress proxy: the only way out of an allowlisted sandbox's internal network.

An HTTP forward proxy (``CONNECT host:port`` for TLS and anything else, absolute-URI requests for
plain HTTP) written on asyncio streams, run by the runtime in a background thread on the
internal network's gateway address. It is small on purpose: it checks each destination against
the allowlist of the sandbox that connects (identified by its source address on the internal
network, which a sandbox without ``CAP_NET_ADMIN``/``CAP_NET_RAW`` cannot forge), resolves
names itself, refuses IP literals that are not allowlisted as IPs, and refuses names that resolve
to this host or to loopback, link-local (cloud metadata) or multicast addresses unless that very
address is allowlisted. Every refusal emits an ``EgressBlocked`` event with the run id and trace
id, which the observability bridge logs and counts. General-purpose proxies (mitmproxy,
proxy.py) were passed over: they bring TLS interception and plugin machinery the sandbox does
not want, and would need the same per-client allowlist hook anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from agent_runtime.errors import EgressProxyError
from agent_runtime.events import EgressBlocked, hooks
from agent_runtime.sandbox.spec import AllowRule

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "EgressBinding",
    "EgressDecision",
    "EgressProxy",
    "decide",
]

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 300.0
_HEAD_LIMIT = 64 * 1024
_HEAD_TIMEOUT = 30.0
_HOP_HEADERS = frozenset(
    {
        "proxy-connection",
        "proxy-authorization",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
    }
)
_log = logging.getLogger(__name__)

Resolver = Callable[[str, int], Iterable[str]]
"""Resolves a host name and port to IP address strings."""


@dataclass(frozen=True, slots=True)
class EgressBinding:
    """What the proxy knows about the sandbox behind one source address.

    Attributes:
        rules: The sandbox's parsed allowlist.
        run_id: The run using the sandbox, for ``EgressBlocked`` events.
        trace_id: The run's trace id (32 hex digits), for ``EgressBlocked`` events.
    """

    rules: tuple[AllowRule, ...]
    run_id: str | None = None
    trace_id: str | None = None
    blocked: list[str] = field(default_factory=list, compare=False)


@dataclass(frozen=True, slots=True)
class EgressDecision:
    """Whether a destination may be reached, and where to connect.

    Attributes:
        allowed: Whether the connection may proceed.
        addresses: The IP addresses to try, in order (empty when refused).
        reason: Why it was refused (empty when allowed).
    """

    allowed: bool
    addresses: tuple[str, ...] = ()
    reason: str = ""


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def is_host_local(address: str) -> bool:
    """Whether ``address`` belongs to this host (binding a socket to it succeeds)."""
    ip = _ip(address)
    if ip is None:
        return False
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((str(ip), 0))
        except OSError:
            return False
    return True


def _internal(address: str) -> str | None:
    """Why a resolved address must not be reached by name, or None when it may."""
    ip = _ip(address)
    if ip is None:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (e.g. a cloud metadata endpoint)"
    if ip.is_unspecified or ip.is_multicast:
        return "an unspecified or multicast address"
    if is_host_local(str(ip)):
        return "an address of the sandbox's host"
    return None


def _system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen


def decide(
    rules: Iterable[AllowRule], host: str, port: int, *, resolver: Resolver = _system_resolver
) -> EgressDecision:
    """Decide whether a sandbox may reach ``host:port`` (pure, apart from name resolution).

    Args:
        rules: The sandbox's allowlist.
        host: The requested host: a name or an IP literal.
        port: The requested port.
        resolver: Resolves a name to addresses (the system resolver by default).

    Returns:
        The decision, with the addresses to connect to when allowed.
    """
    rules = tuple(rules)
    ip = _ip(host)
    if ip is not None:
        text = str(ip)
        if any(rule.is_ip and rule.matches(text, port) for rule in rules):
            return EgressDecision(True, (text,))
        return EgressDecision(False, reason="IP address not on the allowlist")
    if not any(not rule.is_ip and rule.matches(host, port) for rule in rules):
        return EgressDecision(False, reason="not on the allowlist")
    try:
        resolved = list(resolver(host, port))
    except OSError as exc:
        return EgressDecision(False, reason=f"name does not resolve ({exc})")
    usable: list[str] = []
    refused: list[str] = []
    for address in resolved:
        why = _internal(address)
        explicit = any(rule.is_ip and rule.matches(address, port) for rule in rules)
        if why is None or explicit:
            usable.append(address)
        else:
            refused.append(f"{address} is {why}")
    if not usable:
        detail = "; ".join(refused) or "no address"
        return EgressDecision(False, reason=f"resolves only to refused addresses ({detail})")
    return EgressDecision(True, tuple(usable))


def _split_authority(authority: str, default_port: int) -> tuple[str, int] | None:
    authority = authority.strip()
    if authority.startswith("["):
        host, sep, rest = authority[1:].partition("]")
        if not sep:
            return None
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_text = authority.rpartition(":")
        if not sep:
            host, port_text = authority, ""
    if not host:
        return None
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


class EgressProxy:
    """A per-client allowlisting HTTP forward proxy running in a background thread.

    Args:
        host: The address to listen on (the internal network's gateway).
        port: The port; 0 picks a free one.
        resolver: Name resolution (injected in tests); the system resolver by default.
        clock: Epoch-seconds clock for ``EgressBlocked.at``.
        connect_timeout: Seconds to wait for an upstream connection.
        idle_timeout: Seconds a tunnel may stay silent in both directions before it is closed.
    """

    def __init__(
        self,
        host: str,
        port: int = 0,
        *,
        resolver: Resolver = _system_resolver,
        clock: Callable[[], float] = time.time,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self._host = host
        self._port = port
        self._resolver = resolver
        self._clock = clock
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._bindings: dict[str, EgressBinding] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The ``(host, port)`` the proxy listens on (after ``start``)."""
        return self._host, self._port

    @property
    def url(self) -> str:
        """The proxy URL to put in ``HTTP_PROXY``/``HTTPS_PROXY``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    def start(self) -> None:
        """Start listening.

        Raises:
            EgressProxyError: When the address cannot be bound.
        """
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="egress-proxy", daemon=True)
        thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, self._host, self._port, reuse_address=True), loop
        )
        try:
            server = future.result(timeout=10)
        except (OSError, TimeoutError) as exc:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            loop.close()
            raise EgressProxyError(
                f"the egress proxy cannot listen on {self._host}:{self._port} ({exc}); check "
                "that the sandbox network exists on this host and the port is free"
            ) from exc
        self._loop, self._thread, self._server = loop, thread, server
        self._port = int(server.sockets[0].getsockname()[1])

    def bind(self, client: str, binding: EgressBinding) -> None:
        """Route requests from source address ``client`` through ``binding``'s allowlist."""
        with self._lock:
            self._bindings[client] = binding

    def unbind(self, client: str) -> tuple[str, ...]:
        """Forget ``client``; return the destinations refused to it while bound."""
        with self._lock:
            binding = self._bindings.pop(client, None)
        return tuple(binding.blocked) if binding is not None else ()

    def close(self) -> None:
        """Stop listening and close open tunnels; idempotent."""
        loop, thread, server = self._loop, self._thread, self._server
        self._loop = self._thread = self._server = None
        if loop is None or thread is None:
            return

        async def _shutdown() -> None:
            if server is not None:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()

    # -- connection handling (runs on the proxy's event loop) ---------------------------------

    def _block(self, client: str, binding: EgressBinding | None, host: str, port: int) -> None:
        destination = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if binding is not None:
            binding.blocked.append(destination)
        hooks.emit(
            EgressBlocked(
                destination=destination,
                at=self._clock(),
                run_id=binding.run_id if binding else None,
                trace_id=binding.trace_id if binding else None,
            )
        )

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if peer else "?"
        try:
            await self._serve(client, reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        except Exception:  # never let one odd client take the proxy down
            _log.exception("egress proxy: unexpected error serving %s", client)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(
        self, client: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEAD_TIMEOUT)
        if len(head) > _HEAD_LIMIT:
            await _reply(writer, 431, "request head too large")
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            await _reply(writer, 400, "not an HTTP request")
            return
        method, target, version = parts
        if method.upper() == "CONNECT":
            authority = _split_authority(target, 443)
            path = ""
        else:
            url = urlsplit(target)
            if url.scheme.lower() != "http" or not url.netloc:
                await _reply(
                    writer, 400, "use CONNECT for https, or an absolute http:// URL via the proxy"
                )
                return
            authority = _split_authority(url.netloc.rpartition("@")[2], 80)
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        if authority is None:
            await _reply(writer, 400, f"bad destination {target!r}")
            return
        host, port = authority
        with self._lock:
            binding = self._bindings.get(client)
        loop = asyncio.get_running_loop()
        if binding is None:
            decision = EgressDecision(False, reason="this sandbox has no egress allowlist")
        else:
            decision = await loop.run_in_executor(
                None, lambda: decide(binding.rules, host, port, resolver=self._resolver)
            )
        if not decision.allowed:
            self._block(client, binding, host, port)
            await _reply(writer, 403, f"egress to {host}:{port} refused: {decision.reason}")
            return
        upstream = await self._connect(decision.addresses, port)
        if upstream is None:
            await _reply(writer, 502, f"cannot connect to {host}:{port}")
            return
        up_reader, up_writer = upstream
        try:
            if method.upper() == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                await writer.drain()
            else:
                up_writer.write(_rewrite(method, path, version, lines[1:]))
                await up_writer.drain()
            await self._pipe(reader, writer, up_reader, up_writer)
        finally:
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()

    async def _connect(
        self, addresses: tuple[str, ...], port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for address in addresses:
            with contextlib.suppress(OSError, TimeoutError):
                return await asyncio.wait_for(
                    asyncio.open_connection(address, port), self._connect_timeout
                )
        return None

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        last = [time.monotonic()]

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while chunk := await src.read(65536):
                    last[0] = time.monotonic()
                    dst.write(chunk)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()

        tasks = {
            asyncio.ensure_future(copy(reader, up_writer)),
            asyncio.ensure_future(copy(up_reader, writer)),
        }
        try:
            pending = tasks
            while pending:
                _, pending = await asyncio.wait(pending, timeout=self._idle_timeout)
                if pending and time.monotonic() - last[0] >= self._idle_timeout:
                    break
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _rewrite(method: str, path: str, version: str, headers: list[str]) -> bytes:
    kept = [h for h in headers if h and h.split(":", 1)[0].strip().lower() not in _HOP_HEADERS]
    head = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""])
    return head.encode("latin-1")


async def _reply(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    reasons = {
        400: "Bad Request",
        403: "Forbidden",
        431: "Request Header Fields Too Large",
        502: "Bad Gateway",
    }
    body = (message + "\n").encode()
    writer.write(
        (
            f"HTTP/1.1 {status} {reasons.get(status, 'Error')}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            "X-Agent-Runtime-Egress: refused\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        + body
    )
    with contextlib.suppress(OSError, ConnectionError):
        await writer.drain()
