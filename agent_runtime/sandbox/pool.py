"""The warm pool: sandboxes started ahead of time, handed out once, refilled in the background.

Starting a container costs about 200 ms; a ``docker exec`` into a running one about 45 ms. The
pool keeps a target number of ready sandboxes per key (the image and the limits that are fixed at
container creation); ``take`` hands one out and a background thread immediately starts a
replacement. A sandbox is never given to a second run: the caller destroys it after use. The
pool is generic over what a "sandbox" is (``create``/``destroy`` callables), so its bookkeeping
is independent of Docker.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["DEFAULT_RETRY_DELAY", "WarmPool"]

K = TypeVar("K", bound=Hashable)
B = TypeVar("B")

DEFAULT_RETRY_DELAY = 5.0
"""Seconds the filler waits after a failed start before trying again."""
_MAX_RETRY_DELAY = 60.0
_log = logging.getLogger(__name__)


class WarmPool(Generic[K, B]):
    """Ready sandboxes per key, refilled by one background thread.

    Args:
        create: Starts one sandbox for a key (may raise; the filler retries with backoff).
        destroy: Disposes of a sandbox that will not be used (on ``close``).
        retry_delay: First backoff after a failed ``create``; doubles up to a minute.
        wait: Waits on an event for up to a timeout (injected so tests need not sleep).
    """

    def __init__(
        self,
        create: Callable[[K], B],
        destroy: Callable[[B], None],
        *,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        wait: Callable[[threading.Event, float], bool] | None = None,
    ) -> None:
        self._create = create
        self._destroy = destroy
        self._retry_delay = retry_delay
        self._wait = wait or (lambda event, timeout: event.wait(timeout))
        self._targets: dict[K, int] = {}
        self._ready: dict[K, deque[B]] = {}
        self._starting: dict[K, int] = {}
        self._errors: dict[K, str] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.created = 0
        """How many sandboxes the pool has started in total."""

    def set_target(self, key: K, count: int) -> None:
        """Keep ``count`` sandboxes ready for ``key`` (0 stops refilling it)."""
        with self._cond:
            if self._stop.is_set():
                return
            self._targets[key] = max(0, count)
            self._ensure_thread()
            self._cond.notify_all()

    def take(self, key: K) -> B | None:
        """Hand out a ready sandbox for ``key`` (never again to anyone), or None if none is."""
        with self._cond:
            queue = self._ready.get(key)
            box = queue.popleft() if queue else None
            self._cond.notify_all()  # the filler replaces it
            return box

    def ready(self, key: K) -> int:
        """How many sandboxes are ready for ``key`` now."""
        with self._cond:
            return len(self._ready.get(key, ()))

    def last_error(self, key: K) -> str | None:
        """The last start failure for ``key``, if the latest attempt failed."""
        with self._cond:
            return self._errors.get(key)

    def wait_ready(self, key: K, count: int, timeout: float) -> bool:
        """Block until ``count`` sandboxes are ready for ``key`` or ``timeout`` passes."""
        with self._cond:
            return (
                self._cond.wait_for(
                    lambda: len(self._ready.get(key, ())) >= count or self._stop.is_set(), timeout
                )
                and not self._stop.is_set()
            )

    def close(self) -> None:
        """Stop refilling and destroy every ready sandbox; idempotent."""
        with self._cond:
            self._stop.set()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=120)
        with self._cond:
            boxes = [box for queue in self._ready.values() for box in queue]
            self._ready.clear()
        for box in boxes:
            try:
                self._destroy(box)
            except Exception:
                _log.warning("warm pool: destroying a ready sandbox failed", exc_info=True)

    # -- filler ------------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._fill, name="warm-pool", daemon=True)
            self._thread.start()

    def _next_key(self) -> K | None:
        for key, target in self._targets.items():
            have = len(self._ready.get(key, ())) + self._starting.get(key, 0)
            if have < target:
                return key
        return None

    def _fill(self) -> None:
        delay = self._retry_delay
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stop.is_set() or self._next_key() is not None)
                if self._stop.is_set():
                    return
                key = self._next_key()
                if key is None:
                    continue
                self._starting[key] = self._starting.get(key, 0) + 1
            try:
                box = self._create(key)
            except Exception as exc:
                with self._cond:
                    self._starting[key] -= 1
                    self._errors[key] = f"{type(exc).__name__}: {exc}"
                _log.warning("warm pool: starting a sandbox failed; retrying in %.0fs", delay)
                if self._wait(self._stop, delay):
                    return
                delay = min(delay * 2, _MAX_RETRY_DELAY)
                continue
            delay = self._retry_delay
            with self._cond:
                self._starting[key] -= 1
                self._errors.pop(key, None)
                self.created += 1
                if self._stop.is_set():
                    orphan: B | None = box
                else:
                    self._ready.setdefault(key, deque()).append(box)
                    orphan = None
                self._cond.notify_all()
            if orphan is not None:
                self._destroy(orphan)
                return
