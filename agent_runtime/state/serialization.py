"""Serializers for step outputs, run inputs and results, and the checkpoint checksum.

JSON is the default: readable in the database, portable across Python versions, safe to load.
A step that returns something JSON cannot hold fails with a :class:`SerializationError` naming the
step and the type, before the workflow continues. Other types need a serializer: implement the
:class:`Serializer` protocol (``name``, ``dumps``, ``loads``), :func:`register` it, and pass it as
``serializer=`` to the workflow or the step. The name is stored with every value, so a checkpoint
is always read back with the serializer that wrote it. :class:`PickleSerializer` ships for Python
objects; only use it on a database nobody else writes to (unpickling runs code).

The checksum covers the run id, the step position and name, the serializer and the payload, so
a row edited in place or copied to another position fails verification on replay.
"""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import threading
from typing import Any, Protocol, runtime_checkable

from agent_runtime.errors import ConfigurationError, SerializationError

__all__ = [
    "JSONSerializer",
    "PickleSerializer",
    "Serializer",
    "checksum",
    "get_serializer",
    "register",
]


@runtime_checkable
class Serializer(Protocol):
    """Turns values into text and back."""

    name: str

    def dumps(self, value: Any) -> str:
        """Serialize ``value``; raise TypeError or ValueError if it cannot."""

    def loads(self, data: str) -> Any:
        """Deserialize what :meth:`dumps` produced."""


class JSONSerializer:
    """Strict JSON: no NaN, no silent ``default=str``; tuples come back as lists."""

    name = "json"

    def dumps(self, value: Any) -> str:
        """Serialize ``value`` as compact JSON."""
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    def loads(self, data: str) -> Any:
        """Parse JSON text."""
        return json.loads(data)


class PickleSerializer:
    """Pickle (protocol 5) as base64 text, for Python objects JSON cannot hold."""

    name = "pickle"

    def dumps(self, value: Any) -> str:
        """Pickle ``value`` and base64-encode it."""
        return base64.b64encode(pickle.dumps(value, protocol=5)).decode("ascii")

    def loads(self, data: str) -> Any:
        """Decode and unpickle (runs code: trust the database)."""
        return pickle.loads(base64.b64decode(data))  # documented opt-in: trust the database


_registry: dict[str, Serializer] = {"json": JSONSerializer(), "pickle": PickleSerializer()}
_lock = threading.Lock()


def register(serializer: Serializer) -> None:
    """Make ``serializer`` available by its name for reading values back.

    Raises:
        ConfigurationError: When another serializer already uses that name.
    """
    with _lock:
        existing = _registry.get(serializer.name)
        if existing is not None and existing is not serializer:
            if type(existing) is type(serializer):
                return
            raise ConfigurationError(
                f"a different serializer is already registered as {serializer.name!r}; "
                "give yours another name"
            )
        _registry[serializer.name] = serializer


def get_serializer(name: str) -> Serializer:
    """Return the serializer registered as ``name``.

    Raises:
        SerializationError: When none is (register it before resuming runs that used it).
    """
    try:
        return _registry[name]
    except KeyError:
        raise SerializationError(
            f"no serializer named {name!r} is registered; call "
            "agent_runtime.state.serialization.register(...) with it before resuming",
            value_type=name,
        ) from None


def encode(
    serializer: Serializer, value: Any, *, what: str, run_id: str | None, step: str | None
) -> str:
    """Serialize ``value``, turning any failure into a :class:`SerializationError`."""
    try:
        return serializer.dumps(value)
    except (TypeError, ValueError, OverflowError, pickle.PicklingError, AttributeError) as exc:
        type_name = type(value).__qualname__
        raise SerializationError(
            f"{what} of type {type_name} cannot be serialized with the {serializer.name!r} "
            f"serializer ({exc}); return JSON-compatible data (dict, list, str, int, float, bool, "
            "None) or pass serializer=PickleSerializer() or your own Serializer",
            value_type=type_name,
            run_id=run_id,
            step=step,
        ) from exc


def checksum(run_id: str, position: int, name: str, serializer: str, payload: str) -> str:
    """Return the checksum of one checkpoint (32 hex characters)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{run_id}\x00{position}\x00{name}\x00{serializer}\x00".encode())
    h.update(payload.encode("utf-8", "surrogatepass"))
    return h.hexdigest()
