"""Runtime feature flags: typed, from a file and the environment, reloadable without a restart.

Sources, later ones winning: the defaults below, then the flags file (TOML or JSON, path in
``AGENT_RUNTIME_FLAGS_FILE``), then one environment variable per flag,
``AGENT_RUNTIME_FLAG_<NAME>`` (for example ``AGENT_RUNTIME_FLAG_BREAKER_ENABLED=false``).

Every flag has a **fail-safe default**: the value that keeps the runtime protective and correct
when nothing is configured (every resilience layer on, failed runs' workspaces rolled back).

``reload()`` re-reads the file and the environment and swaps the whole set atomically. A bad
source (syntax error, unknown flag, wrong type, missing file) is rejected with a ``FlagsError``
that names the source and what is wrong, and the flags in force stay as they were. The first
load happens lazily on first use; if it fails, the defaults stay in force and the error is
logged (a flags file must never stop the runtime from starting). ``FlagsReloaded`` is emitted
after every reload, successful or not.

A flags file is flat: one key per flag, for example (TOML)::

    retry_enabled = true
    breaker_enabled = false
    sandbox_warm_pool_size = 4

Components read ``current()`` at the moment they decide (the resilience pipeline does so on
every call), so a reload takes effect on the next call.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from agent_runtime import errors
from agent_runtime.events import FlagsReloaded, hooks

__all__ = [
    "ENV_FILE",
    "ENV_PREFIX",
    "FlagStore",
    "Flags",
    "current",
    "default_store",
    "env_name",
    "reload",
]

ENV_PREFIX: Final = "AGENT_RUNTIME_FLAG_"
ENV_FILE: Final = "AGENT_RUNTIME_FLAGS_FILE"

_log = logging.getLogger("agent_runtime.flags")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def _flag(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True, slots=True)
class Flags:
    """The set of feature flags in force (immutable; ``reload()`` swaps the whole set).

    Attributes:
        retry_enabled: Retry layer of ``resilient_call`` (off: one attempt, its timeout kept).
        breaker_enabled: Circuit-breaker layer (off: breakers neither consulted nor updated).
        limiter_enabled: Limiter layer (off: no concurrency limit, no queue).
        fallback_enabled: Fallback layer (off: only the primary alternative is called).
        sandbox_warm_pool: Keep pre-started sandbox containers ready.
        sandbox_warm_pool_size: Pre-started containers per (image, limits).
        workspace_auto_rollback: Restore a failed run's workspace automatically.
    """

    retry_enabled: bool = _flag(True, "Retry layer of resilient_call (off: one attempt).")
    breaker_enabled: bool = _flag(
        True, "Circuit-breaker layer (off: breakers neither consulted nor updated)."
    )
    limiter_enabled: bool = _flag(True, "Limiter layer (off: no concurrency limit, no queue).")
    fallback_enabled: bool = _flag(
        True, "Fallback layer (off: only the primary alternative is called)."
    )
    sandbox_warm_pool: bool = _flag(True, "Keep pre-started sandbox containers ready.")
    sandbox_warm_pool_size: int = _flag(2, "Pre-started sandbox containers per (image, limits).")
    workspace_auto_rollback: bool = _flag(True, "Restore a failed run's workspace automatically.")

    def as_dict(self) -> dict[str, Any]:
        """Return the flags as a JSON-ready dict.

        Returns:
            Flag name to value.
        """
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """Return every flag's name, type, default, environment variable and meaning.

        Returns:
            One dict per flag, in declaration order.
        """
        return [
            {
                "name": f.name,
                "type": _type_name(f.name),
                "default": f.default,
                "env": env_name(f.name),
                "doc": f.metadata.get("doc", ""),
            }
            for f in dataclasses.fields(cls)
        ]


_TYPES: Final[dict[str, type]] = {
    f.name: {"bool": bool, "int": int, "float": float, "str": str}[str(f.type)]
    for f in dataclasses.fields(Flags)
}


def _type_name(name: str) -> str:
    return _TYPES[name].__name__


def env_name(flag: str) -> str:
    """Return the environment variable of ``flag``.

    Args:
        flag: A flag name, e.g. ``breaker_enabled``.

    Returns:
        E.g. ``AGENT_RUNTIME_FLAG_BREAKER_ENABLED``.
    """
    return ENV_PREFIX + flag.upper()


def _unknown(name: str, source: str) -> errors.FlagsError:
    known = ", ".join(sorted(_TYPES))
    return errors.FlagsError(
        f"{source}: {name!r} is not a known flag (known flags: {known}); fix the name or remove it",
        source=source,
    )


def _from_file_value(name: str, value: Any, source: str) -> Any:
    expected = _TYPES[name]
    ok = (
        isinstance(value, bool)
        if expected is bool
        else isinstance(value, int) and not isinstance(value, bool)
        if expected is int
        else isinstance(value, int | float) and not isinstance(value, bool)
        if expected is float
        else isinstance(value, str)
    )
    if not ok:
        raise errors.FlagsError(
            f"{source}: flag {name!r} must be a {expected.__name__}, got "
            f"{type(value).__name__} {value!r}",
            source=source,
        )
    if expected is float:
        value = float(value)
        if not math.isfinite(value):
            raise errors.FlagsError(f"{source}: flag {name!r} must be finite", source=source)
    return value


def _from_env_value(name: str, raw: str, source: str) -> Any:
    expected = _TYPES[name]
    text = raw.strip()
    if expected is bool:
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise errors.FlagsError(
            f"{source}={raw!r}: flag {name!r} must be a boolean (true/false, 1/0, yes/no, on/off)",
            source=source,
        )
    if expected is str:
        return raw
    try:
        value = int(text) if expected is int else float(text)
    except ValueError:
        raise errors.FlagsError(
            f"{source}={raw!r}: flag {name!r} must be a {expected.__name__}", source=source
        ) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise errors.FlagsError(f"{source}: flag {name!r} must be finite", source=source)
    return value


def _read_file(path: Path) -> dict[str, Any]:
    source = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise errors.FlagsError(
            f"flags file {source} does not exist; create it or unset {ENV_FILE}", source=source
        ) from None
    except OSError as exc:
        raise errors.FlagsError(
            f"flags file {source} cannot be read: {exc.strerror or exc}", source=source
        ) from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            parsed: Any = tomllib.loads(data.decode("utf-8"))
        elif suffix == ".json":
            parsed = json.loads(data.decode("utf-8"))
        else:
            raise errors.FlagsError(
                f"flags file {source}: unknown format {suffix or '(no suffix)'!r}; name it "
                "*.toml or *.json",
                source=source,
            )
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise errors.FlagsError(
            f"flags file {source} is not valid {suffix[1:].upper()}: {exc}", source=source
        ) from None
    if not isinstance(parsed, dict):
        raise errors.FlagsError(
            f"flags file {source} must hold a table/object of flag = value, got "
            f"{type(parsed).__name__}",
            source=source,
        )
    values = {}
    for name, value in parsed.items():
        if name not in _TYPES:
            raise _unknown(name, source)
        values[name] = _from_file_value(name, value, source)
    return values


def _read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in _TYPES:
            raise _unknown(name, key)
        values[name] = _from_env_value(name, raw, key)
    return values


class FlagStore:
    """Holds the flags in force and reloads them (thread-safe).

    Args:
        path: The flags file; None reads ``AGENT_RUNTIME_FLAGS_FILE`` at every reload (unset or
            empty: no file).
        environ: The environment to read (default ``os.environ``, read at every reload).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._path = None if path is None else Path(path)
        self._environ = environ
        self._lock = threading.Lock()
        self._flags: Flags | None = None

    def _file(self, environ: Mapping[str, str]) -> Path | None:
        if self._path is not None:
            return self._path
        configured = environ.get(ENV_FILE, "").strip()
        return Path(configured) if configured else None

    @property
    def source(self) -> str:
        """Where the flags come from, for events and the admin endpoint."""
        environ = os.environ if self._environ is None else self._environ
        path = self._file(environ)
        return f"{path} + environment" if path is not None else "environment"

    def current(self) -> Flags:
        """Return the flags in force (loading them on first use, fail-safe).

        Returns:
            The flags.
        """
        flags = self._flags
        if flags is not None:
            return flags
        with self._lock:
            if self._flags is None:
                try:
                    self._flags = self._load()
                except errors.FlagsError as exc:
                    _log.error("feature flags rejected, the defaults stay in force: %s", exc)
                    self._flags = Flags()
            return self._flags

    def reload(self) -> Flags:
        """Re-read the flags file and the environment and swap the set in force.

        Returns:
            The new flags.

        Raises:
            FlagsError: A source is invalid; the previous flags stay in force.
        """
        with self._lock:
            try:
                flags = self._load()
            except errors.FlagsError:
                if self._flags is None:
                    self._flags = Flags()
                raise
            self._flags = flags
            return flags

    def _load(self) -> Flags:
        environ = os.environ if self._environ is None else self._environ
        path = self._file(environ)
        source = self.source
        try:
            values: dict[str, Any] = {}
            if path is not None:
                values.update(_read_file(path))
            values.update(_read_env(environ))
        except errors.FlagsError as exc:
            if hooks.active:
                hooks.emit(FlagsReloaded(ok=False, source=exc.source, error=exc.message))
            raise
        flags = Flags(**values)
        if hooks.active:
            hooks.emit(FlagsReloaded(ok=True, source=source))
        return flags


_default = FlagStore()


def default_store() -> FlagStore:
    """Return the process-wide flag store that :func:`current` and :func:`reload` use.

    Returns:
        The store.
    """
    return _default


def current() -> Flags:
    """Return the process-wide flags in force.

    Returns:
        The flags.
    """
    return _default.current()


def reload() -> Flags:
    """Reload the process-wide flags (see :meth:`FlagStore.reload`).

    Returns:
        The new flags.

    Raises:
        FlagsError: A source is invalid; the previous flags stay in force.
    """
    return _default.reload()
