"""What every scene of ``agent-runtime demo`` shares: checks, an event tap, loopback servers.

A scene prints one line per fact and checks what it claims with :class:`Checks`; the demo exits
1 when any check failed. :class:`EventTap` listens to the runtime's own events (the same ones
the observability layer turns into logs and metrics), so a scene can show and check what the
runtime reported, not only what the workflow returned. :class:`LoopbackServer` runs the small
HTTP servers the demo talks to; they listen on 127.0.0.1 only, so the demo never reaches any
machine but this one.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape

from agent_runtime.events import Event, Scope, hooks

__all__ = ["Checks", "EventTap", "LoopbackServer", "reserved_port", "say", "wait_for"]

E = TypeVar("E", bound=Event)


def say(console: Console, text: str) -> None:
    """Print one narrative line (indented; ``text`` is printed as is, never as markup)."""
    console.print(f"  {escape(text)}", highlight=False)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class Checks:
    """The facts a scene checks; any failure makes the demo exit 1.

    Args:
        console: Where the check marks are printed.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.failed: list[str] = []
        self.skipped: list[str] = []

    def check(self, ok: bool, what: str) -> bool:
        """Print ``what`` with a check mark (or a cross, and remember it); return ``ok``."""
        mark = "[green]✓[/]" if ok else "[red]✗[/]"
        self.console.print(f"  {mark} {escape(what)}", highlight=False)
        if not ok:
            self.failed.append(what)
        return ok

    def skip(self, what: str, why: str) -> None:
        """Print a check that was not made, and why (visible, never silent)."""
        self.console.print(f"  [yellow]-[/] {escape(what)} [dim](skipped: {escape(why)})[/]")
        self.skipped.append(what)


class EventTap:
    """Records the runtime's events while subscribed (a hook of :data:`events.hooks`)."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._lock = threading.Lock()

    def on_event(self, event: Event) -> None:
        """Keep ``event``."""
        with self._lock:
            self._events.append(event)

    def scope(self, scope: Scope) -> contextlib.AbstractContextManager[Any]:
        """Scopes are not recorded."""
        return contextlib.nullcontext()

    def of(self, kind: type[E], where: Callable[[E], bool] | None = None) -> list[E]:
        """Return the recorded events of type ``kind`` (matching ``where``), oldest first."""
        with self._lock:
            found = [e for e in self._events if isinstance(e, kind)]
        return [e for e in found if where is None or where(e)]

    def __enter__(self) -> EventTap:
        hooks.subscribe(self)
        return self

    def __exit__(self, *exc: object) -> None:
        hooks.unsubscribe(self)


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 (a free port, or a socket bound beforehand).

    Args:
        handler: The request handler class.
        sock: A socket already bound to 127.0.0.1 (it is put in listening state here); None
            binds a free port.
    """

    def __init__(
        self,
        handler: type[http.server.BaseHTTPRequestHandler],
        sock: socket.socket | None = None,
    ) -> None:
        if sock is None:
            self._server = _QuietServer(("127.0.0.1", 0), handler)
        else:
            self._server = _QuietServer(sock.getsockname(), handler, bind_and_activate=False)
            self._server.socket.close()
            self._server.socket = sock
            self._server.server_activate()
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="demo-server", daemon=True
        )

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def reserved_port() -> Iterator[socket.socket]:
    """A socket bound to a free 127.0.0.1 port and not listening: connections are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        yield sock
    finally:
        sock.close()
