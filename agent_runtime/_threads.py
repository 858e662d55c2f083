"""Calling a sync function with a timeout: in a helper thread that is abandoned past it.

Python cannot stop a thread. A sync step or attempt with a timeout therefore runs in a daemon
thread (with the caller's context variables, so its span and log fields carry over); when the
timeout passes the caller stops waiting and reports a timeout, and the thread is left to finish
on its own. Both the runtime's step loop and the standalone retry drivers use this.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["call_abandonable"]


def call_abandonable(
    fn: Callable[..., Any], args: Any, kwargs: Any, *, timeout: float, name: str
) -> tuple[bool, Any, str]:
    """Call ``fn(*args, **kwargs)`` in a daemon thread and wait at most ``timeout`` seconds.

    Args:
        fn: The function.
        args: Its positional arguments.
        kwargs: Its keyword arguments.
        timeout: Seconds to wait.
        name: The thread's name (shown in logs and thread dumps).

    Returns:
        ``(finished, value, thread_name)``; ``finished`` is False when the timeout passed (the
        thread goes on running).

    Raises:
        BaseException: Whatever ``fn`` raised, when it finished in time.
    """
    box: dict[str, Any] = {}
    done = threading.Event()
    context = contextvars.copy_context()

    def target() -> None:
        try:
            box["value"] = context.run(fn, *args, **kwargs)
        except BaseException as exc:  # delivered to the caller below
            box["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=target, name=name, daemon=True)
    worker.start()
    if not done.wait(timeout):
        return False, None, worker.name
    if "error" in box:
        raise box["error"]
    return True, box["value"], worker.name
