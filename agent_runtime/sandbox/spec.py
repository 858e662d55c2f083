"""What a sandboxed command may use: the ``SandboxSpec`` and the parsing of its values.

A spec is plain validated data (sizes in bytes, an egress allowlist parsed into rules); the
backends (``DockerSandbox``, ``ProcessSandbox``) decide how each limit is enforced. Every bad
value raises ``ConfigurationError`` naming the field, the value and what is accepted, so a typo
in a spec fails at construction time rather than deep inside a run.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from agent_runtime.errors import ConfigurationError

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
    "SandboxSpec",
    "check_env",
    "format_size",
    "parse_allow",
    "parse_size",
    "parse_user",
]

DEFAULT_IMAGE = "agent-runtime-sandbox:latest"
"""The image ``agent-runtime sandbox build-image`` builds (Python 3.11, non-root user)."""
DEFAULT_CPUS = 1.0
DEFAULT_MEMORY = "512m"
DEFAULT_PIDS = 128
DEFAULT_TIMEOUT = 60.0
DEFAULT_DISK = "256m"
DEFAULT_TMP = "64m"
DEFAULT_USER = "1000:1000"
DEFAULT_OUTPUT_LIMIT = 1 << 20
"""Bytes of stdout (and, separately, of stderr) kept in a result."""

_MIN_MEMORY = 6 << 20  # Docker refuses less than 6 MiB
_MIN_DISK = 2 << 20  # the smallest ext4 image worth mounting
_MIN_PIDS = 8  # init, the idle process, the command and a few helpers
_MIN_OUTPUT_LIMIT = 1024
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_HELP = "use a byte count (int) or a string like '512k', '256m', '2g' (binary units)"
_USER_RE = re.compile(r"^(\d+)(?::(\d+))?$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_ALLOW_HELP = (
    "accepted forms: 'host' (ports 80 and 443), 'host:port', 'host:*' (any port), "
    "'*.example.com' (any subdomain), an IPv4 address or '[IPv6]' with an optional ':port'"
)
_DEFAULT_PORTS = (80, 443)


def parse_size(value: int | str, *, name: str = "size") -> int:
    """Parse a size such as ``"256m"`` into bytes.

    Args:
        value: A byte count, or a number with an optional binary unit ``k``, ``m``, ``g``,
            ``t`` (case-insensitive; ``kb``/``kib`` spellings accepted).
        name: The field name used in the error message.

    Returns:
        The size in bytes.

    Raises:
        ConfigurationError: When the value is not a positive size.
    """
    if isinstance(value, bool):
        raise ConfigurationError(f"{name} {value!r} is not a size: {_SIZE_HELP}")
    if isinstance(value, int):
        if value <= 0:
            raise ConfigurationError(f"{name} must be positive, got {value}: {_SIZE_HELP}")
        return value
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} {value!r} is not a size: {_SIZE_HELP}")
    match = _SIZE_RE.match(value)
    if match is None:
        raise ConfigurationError(f"{name} {value!r} is not a size: {_SIZE_HELP}")
    number, unit = match.groups()
    size = int(float(number) * _UNITS[unit.lower()])
    if size <= 0:
        raise ConfigurationError(f"{name} must be positive, got {value!r}: {_SIZE_HELP}")
    return size


def format_size(size: int) -> str:
    """Format a byte count the way Docker spells sizes (``"256m"``, ``"1g"``, ``"1536k"``)."""
    for unit in ("t", "g", "m", "k"):
        factor = _UNITS[unit]
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


@dataclass(frozen=True, slots=True)
class AllowRule:
    """One parsed egress allowlist entry.

    Attributes:
        host: A lower-case host name, a ``*.``-prefixed domain wildcard, or an IP address
            (IPv6 without brackets).
        ports: The allowed ports; empty means any port.
        is_ip: Whether ``host`` is an IP address literal.
    """

    host: str
    ports: frozenset[int]
    is_ip: bool

    def matches(self, host: str, port: int) -> bool:
        """Whether a request for ``host:port`` is allowed by this rule.

        Args:
            host: The requested host (a name or an IP literal), any case.
            port: The requested port.

        Returns:
            True when the host and the port both match.
        """
        if self.ports and port not in self.ports:
            return False
        wanted = _normalise_host(host)
        if wanted is None:
            return False
        if self.is_ip:
            return wanted == self.host
        if self.host.startswith("*."):
            return wanted.endswith(self.host[1:]) and wanted != self.host[2:]
        return wanted == self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if not self.ports:
            return f"{host}:*"
        return ",".join(f"{host}:{port}" for port in sorted(self.ports))


def _normalise_host(host: str) -> str | None:
    """Lower-case a host name or canonicalise an IP literal; None when it is neither."""
    text = host.strip().rstrip(".").lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    labels = text.split(".")
    if text and all(_LABEL_RE.match(label) for label in labels):
        return text
    return None


def _parse_port(text: str, entry: str) -> frozenset[int]:
    if text == "*":
        return frozenset()
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigurationError(
            f"allow entry {entry!r} has an invalid port {text!r} (1-65535 or '*'); {_ALLOW_HELP}"
        )
    return frozenset({int(text)})


def _parse_allow_entry(entry: str) -> AllowRule:
    if not isinstance(entry, str) or not entry.strip():
        raise ConfigurationError(f"allow entry {entry!r} is empty or not a string; {_ALLOW_HELP}")
    text = entry.strip()
    if "://" in text or "/" in text:
        raise ConfigurationError(
            f"allow entry {entry!r} looks like a URL; give a host, not a URL: {_ALLOW_HELP}"
        )
    ports: frozenset[int] = frozenset(_DEFAULT_PORTS)
    if text.startswith("["):
        host_part, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigurationError(f"allow entry {entry!r} is not valid; {_ALLOW_HELP}")
        if rest:
            ports = _parse_port(rest[1:], entry)
        try:
            return AllowRule(str(ipaddress.IPv6Address(host_part)), ports, True)
        except ValueError:
            raise ConfigurationError(
                f"allow entry {entry!r} has an invalid IPv6 address; {_ALLOW_HELP}"
            ) from None
    if text.count(":") > 1:
        raise ConfigurationError(
            f"allow entry {entry!r}: write IPv6 addresses in brackets, e.g. '[2001:db8::1]:443'; "
            f"{_ALLOW_HELP}"
        )
    host_part, sep, port_part = text.partition(":")
    if sep:
        ports = _parse_port(port_part, entry)
    try:
        return AllowRule(str(ipaddress.IPv4Address(host_part)), ports, True)
    except ValueError:
        pass
    wildcard = host_part.startswith("*.")
    name = _normalise_host(host_part[2:] if wildcard else host_part)
    if name is None or _looks_numeric(name):
        raise ConfigurationError(f"allow entry {entry!r} is not a valid host; {_ALLOW_HELP}")
    return AllowRule(f"*.{name}" if wildcard else name, ports, False)


def _looks_numeric(name: str) -> bool:
    """Reject things like ``10.1.2`` that are neither a valid IP nor a sensible host name."""
    return all(label.isdigit() for label in name.split("."))


def parse_allow(entries: Iterable[str]) -> tuple[AllowRule, ...]:
    """Parse egress allowlist entries.

    Args:
        entries: Strings such as ``"api.example.com"``, ``"db.internal:5432"``,
            ``"10.1.2.3:8080"``, ``"*.example.com"`` or ``"[2001:db8::1]:443"``. A bare host
            allows ports 80 and 443; ``host:*`` allows any port.

    Returns:
        One rule per entry, in order.

    Raises:
        ConfigurationError: For an entry that is none of the accepted forms.
    """
    if isinstance(entries, str):
        raise ConfigurationError(
            f"allow must be a list of entries, not the string {entries!r}; {_ALLOW_HELP}"
        )
    return tuple(_parse_allow_entry(entry) for entry in entries)


def parse_user(user: str) -> tuple[int, int]:
    """Parse a numeric ``uid[:gid]`` (gid defaults to uid).

    Raises:
        ConfigurationError: When the user is not numeric.
    """
    match = _USER_RE.match(user.strip()) if isinstance(user, str) else None
    if match is None:
        raise ConfigurationError(
            f"user {user!r} must be numeric 'uid' or 'uid:gid' (e.g. '1000:1000'): the "
            "workspace is handed to that uid, which must not depend on the image's /etc/passwd"
        )
    uid = int(match.group(1))
    gid = int(match.group(2)) if match.group(2) is not None else uid
    return uid, gid


def check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """Validate environment variables for a sandboxed command.

    Args:
        env: Names (shell identifiers) to string values.

    Returns:
        A plain copy.

    Raises:
        ConfigurationError: For a name that is not an identifier, or a non-string or NUL value.
    """
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise ConfigurationError(f"env must be a mapping of names to strings, got {env!r}")
    out = dict(env)
    for key, value in out.items():
        if not isinstance(key, str) or not _ENV_NAME_RE.match(key):
            raise ConfigurationError(
                f"env name {key!r} is not a valid variable name (letters, digits, '_')"
            )
        if not isinstance(value, str) or "\0" in value:
            raise ConfigurationError(f"env {key}={value!r}: values must be strings without NUL")
    return out


def _check_number(name: str, value: Any, *, low: float, high: float, accepted: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} {value!r} is not a number; {accepted}")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise ConfigurationError(f"{name} {value!r} is out of range; {accepted}")
    return number


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """Limits and settings for one sandboxed command.

    Sizes accept a byte count or a string such as ``"256m"``; they are stored as given and read
    in bytes through the ``*_bytes`` properties.

    Attributes:
        image: The container image (``DEFAULT_IMAGE`` is built by ``agent-runtime sandbox
            build-image``).
        cpus: CPU share, e.g. ``0.5`` or ``2``.
        memory: Memory limit; swap is set equal, so the sandbox never swaps. Size-capped tmpfs
            mounts (``/tmp``, and the workspace on the tmpfs fallback) count towards it.
        pids: Maximum number of processes and threads in the sandbox.
        timeout: Wall-clock seconds; the sandbox is killed at the deadline.
        disk: Capacity of the writable workspace at ``/workspace``.
        tmp: Size of the ``noexec`` tmpfs at ``/tmp``.
        allow: Egress allowlist (stored as a tuple); empty means no network at all.
        env: Extra environment variables for the command.
        user: Numeric ``uid[:gid]`` the command runs as (non-root by default).
        runtime: A Docker runtime such as ``"runsc"`` (gVisor) when the engine has it; None
            uses the engine's default.
        output_limit: Bytes kept per stream (stdout, stderr) in the result; the rest is
            replaced by a truncation marker.
    """

    image: str = DEFAULT_IMAGE
    cpus: float = DEFAULT_CPUS
    memory: int | str = DEFAULT_MEMORY
    pids: int = DEFAULT_PIDS
    timeout: float = DEFAULT_TIMEOUT
    disk: int | str = DEFAULT_DISK
    tmp: int | str = DEFAULT_TMP
    allow: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    user: str = DEFAULT_USER
    runtime: str | None = None
    output_limit: int = DEFAULT_OUTPUT_LIMIT

    def __post_init__(self) -> None:
        if not isinstance(self.image, str) or not self.image.strip():
            raise ConfigurationError(f"image {self.image!r} must be a non-empty image reference")
        _check_number("cpus", self.cpus, low=0.01, high=1024, accepted="use 0.01 to 1024")
        _check_number(
            "timeout", self.timeout, low=0.001, high=7 * 86400, accepted="use 0.001s to 7 days"
        )
        if isinstance(self.pids, bool) or not isinstance(self.pids, int) or self.pids < _MIN_PIDS:
            raise ConfigurationError(f"pids {self.pids!r} must be an integer >= {_MIN_PIDS}")
        if (
            isinstance(self.output_limit, bool)
            or not isinstance(self.output_limit, int)
            or self.output_limit < _MIN_OUTPUT_LIMIT
        ):
            raise ConfigurationError(
                f"output_limit {self.output_limit!r} must be an integer >= {_MIN_OUTPUT_LIMIT}"
            )
        memory = parse_size(self.memory, name="memory")
        if memory < _MIN_MEMORY:
            raise ConfigurationError(f"memory {self.memory!r} is below Docker's minimum of 6m")
        if parse_size(self.disk, name="disk") < _MIN_DISK:
            raise ConfigurationError(f"disk {self.disk!r} must be at least 2m")
        if parse_size(self.tmp, name="tmp") >= memory:
            raise ConfigurationError(
                f"tmp {self.tmp!r} must be smaller than memory {self.memory!r}: /tmp is a tmpfs "
                "and its pages count as the sandbox's memory"
            )
        parse_allow(self.allow)  # before tuple(): a bare string must not become characters
        object.__setattr__(self, "allow", tuple(self.allow) if self.allow else ())
        object.__setattr__(self, "env", MappingProxyType(check_env(self.env)))
        parse_user(self.user)
        if self.runtime is not None and (not isinstance(self.runtime, str) or not self.runtime):
            raise ConfigurationError(f"runtime {self.runtime!r} must be a runtime name or None")

    @property
    def memory_bytes(self) -> int:
        """The memory limit in bytes."""
        return parse_size(self.memory, name="memory")

    @property
    def disk_bytes(self) -> int:
        """The workspace capacity in bytes."""
        return parse_size(self.disk, name="disk")

    @property
    def tmp_bytes(self) -> int:
        """The size of the /tmp tmpfs in bytes."""
        return parse_size(self.tmp, name="tmp")

    @property
    def allow_rules(self) -> tuple[AllowRule, ...]:
        """The parsed egress allowlist."""
        return parse_allow(self.allow)

    @property
    def uid_gid(self) -> tuple[int, int]:
        """The numeric uid and gid the command runs as."""
        return parse_user(self.user)
