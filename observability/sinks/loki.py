"""The Loki sink: structured records pushed to Grafana Loki without ever blocking the caller.

What python-logging-loki (``logging_loki``, last release 2019) is used for, and what replaces it:

* **Reused**: its ``LokiEmitter`` base class, for the HTTP session it manages (a
  ``requests.Session`` created lazily, with basic auth applied, closed by ``close()``) and for
  its label-name sanitiser ``format_label`` (Prometheus label rules), which checks the static
  labels a user configures. The push is a ``requests`` call on that session.
* **Replaced**: ``LokiHandler``/``LokiQueueHandler`` and the emitters' ``__call__`` and
  ``build_payload``. As shipped, the handler sends one blocking HTTP request per record with no
  timeout (from the thread that logged, or from an unbounded queue), defaults to the deprecated
  ``/api/prom/push`` endpoint (with a ``DeprecationWarning``), stamps the *send* time instead of
  the record's time, and turns ``level`` and the logger name into labels (``severity``,
  ``logger``: the logger label multiplies streams). Here the shared
  :class:`~observability.sinks._shipper.Shipper` queues, batches, gzips, retries and spools in
  a background thread, and the batch payload is built here.

The request (Loki's documented JSON push format)::

    POST {url}/loki/api/v1/push
    Content-Type: application/json
    Content-Encoding: gzip
    X-Scope-OrgID: {tenant}                 (optional)
    Authorization: Basic ... | Bearer ...   (optional)

    {"streams": [{"stream": {"service": "api", "level": "INFO", "env": "prod"},
                  "values": [["<unix ns, as a string>", "<the JSON line>",
                              {"trace_id": "...", "span_id": "...", "run_id": "..."}]]}]}

Labels stay low-cardinality: ``service``, ``level`` (as in the JSON line, ``INFO``) and ``env``,
plus any *static* labels configured. The timestamp is the record's own time. ``trace_id``,
``span_id`` and ``run_id`` go in the line and in structured metadata (Loki 3.x; switch it off
with ``structured_metadata=False`` for Loki 2.x), never in labels.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import requests
from logging_loki.emitter import LokiEmitter

from observability.records import LogEntry
from observability.sinks._shipper import (
    Delivery,
    DeliveryConfig,
    Shipper,
    env_bool,
    env_float,
    env_str,
    retryable_status,
    validate_http_url,
)

__all__ = [
    "DEFAULT_ENV",
    "DEFAULT_TIMEOUT",
    "METADATA_FIELDS",
    "PUSH_PATH",
    "DeliveryConfig",
    "LokiConfig",
    "LokiSink",
]

PUSH_PATH: Final = "/loki/api/v1/push"
"""Loki's v1 push endpoint, appended to the configured base URL."""

DEFAULT_ENV: Final = "dev"
"""The ``env`` label when none is configured."""

DEFAULT_TIMEOUT: Final = 10.0
"""Seconds one push request may take."""

METADATA_FIELDS: Final = ("trace_id", "span_id", "run_id")
"""Record fields sent as Loki structured metadata (when present)."""

_RESERVED_LABELS: Final = frozenset({"service", "level", "env"})
_HIGH_CARDINALITY: Final = frozenset({"trace_id", "span_id", "run_id", "step", "message"})
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_GZIP_LEVEL: Final = 1  # log JSON is repetitive: level 1 gets most of the ratio for little CPU
_ERROR_BODY: Final = 300
# Built once: json.dumps/loads with options build a new encoder/decoder per call.
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_DECODER: Final = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class LokiConfig:
    """Where and how to push records to Loki.

    Attributes:
        url: Loki's base URL (``http://loki:3100``); a URL ending in ``/loki/api/v1/push`` is
            accepted too.
        env: The ``env`` label (deployment environment).
        labels: Extra *static* labels (``{"cluster": "eu-1"}``); never per-record values.
        tenant: Sent as ``X-Scope-OrgID`` for multi-tenant Loki.
        username: Basic-auth user (with ``password``).
        password: Basic-auth password.
        token: Bearer token (instead of basic auth).
        timeout: Seconds one request may take.
        ca_certs: CA bundle to verify an https Loki with (default: the system's).
        structured_metadata: Send trace_id/span_id/run_id as structured metadata (Loki 3.x).
        delivery: Queue, batch, retry and spool settings.

    Raises:
        ValueError: If a value is malformed; the message says which and how to fix it.
    """

    url: str
    env: str = DEFAULT_ENV
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    tenant: str | None = None
    username: str | None = None
    password: str | None = None
    token: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    ca_certs: str | None = None
    structured_metadata: bool = True
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)

    def __post_init__(self) -> None:
        url = validate_http_url(self.url, "the Loki URL (AGENT_RUNTIME_LOKI_URL)")
        if url.endswith("/api/prom/push"):
            raise ValueError(
                f"the Loki URL {url!r} points at the deprecated /api/prom/push endpoint; "
                "give Loki's base URL (http://loki:3100): the sink uses /loki/api/v1/push"
            )
        url = url.removesuffix(PUSH_PATH)
        object.__setattr__(self, "url", url)
        if not isinstance(self.env, str) or not self.env.strip():
            raise ValueError("the Loki env label (AGENT_RUNTIME_ENV) must be a non-empty string")
        labels = dict(self.labels)
        for name, value in labels.items():
            if not isinstance(name, str) or not _LABEL_NAME.fullmatch(name):
                raise ValueError(
                    f"Loki label name {name!r} is invalid: use letters, digits and _, "
                    "not starting with a digit"
                )
            if name.startswith("__") or name in _RESERVED_LABELS:
                raise ValueError(
                    f"Loki label {name!r} is reserved (service, level and env are set by the "
                    "sink; __ names are Loki's own)"
                )
            if name in _HIGH_CARDINALITY:
                raise ValueError(
                    f"Loki label {name!r} would create a stream per value; per-record ids go "
                    "in the line and in structured metadata, not in labels"
                )
            if not isinstance(value, str) or not value:
                raise ValueError(f"Loki label {name!r} needs a non-empty string value")
        object.__setattr__(self, "labels", MappingProxyType(labels))
        if (self.username is None) != (self.password is None):
            raise ValueError(
                "Loki basic auth needs both a username and a password "
                "(AGENT_RUNTIME_LOKI_USERNAME and AGENT_RUNTIME_LOKI_PASSWORD)"
            )
        if self.token is not None and self.username is not None:
            raise ValueError("give Loki either a bearer token or a username and password, not both")
        if self.tenant is not None and not self.tenant.strip():
            raise ValueError("the Loki tenant (AGENT_RUNTIME_LOKI_TENANT) must not be blank")
        if (
            not isinstance(self.timeout, int | float)
            or isinstance(self.timeout, bool)
            or self.timeout <= 0
        ):
            raise ValueError(
                f"the Loki timeout (AGENT_RUNTIME_LOKI_TIMEOUT) must be > 0 seconds, "
                f"got {self.timeout!r}"
            )

    @property
    def push_url(self) -> str:
        """The full push endpoint."""
        return self.url + PUSH_PATH

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LokiConfig | None:
        """Build the configuration from ``AGENT_RUNTIME_LOKI_*`` variables.

        Reads ``AGENT_RUNTIME_LOKI_URL`` (required to enable the sink), ``AGENT_RUNTIME_ENV``,
        ``AGENT_RUNTIME_LOKI_LABELS`` (``name=value,name=value``), ``..._TENANT``,
        ``..._USERNAME``, ``..._PASSWORD``, ``..._TOKEN``, ``..._TIMEOUT``, ``..._CA_CERTS``,
        ``..._STRUCTURED_METADATA`` and the delivery settings (``..._QUEUE_SIZE``,
        ``..._BATCH_SIZE``, ``..._LINGER``, ``..._INITIAL_BACKOFF``, ``..._MAX_BACKOFF``,
        ``..._SPOOL_DIR``, ``..._SPOOL_MAX_BYTES``, ``..._SPOOL_SEGMENT_BYTES``).

        Args:
            environ: The environment (default ``os.environ``).

        Returns:
            The configuration, or None if ``AGENT_RUNTIME_LOKI_URL`` is unset (sink off).

        Raises:
            ValueError: If a variable is malformed; the message names it.
        """
        env = os.environ if environ is None else environ
        prefix = "AGENT_RUNTIME_LOKI_"
        url = env_str(env, prefix + "URL")
        if url is None:
            return None
        kwargs: dict[str, Any] = {"url": url}
        if (value := env_str(env, "AGENT_RUNTIME_ENV")) is not None:
            kwargs["env"] = value
        if (value := env_str(env, prefix + "LABELS")) is not None:
            kwargs["labels"] = _parse_labels(value, prefix + "LABELS")
        for name in ("tenant", "username", "password", "token", "ca_certs"):
            if (value := env_str(env, prefix + name.upper())) is not None:
                kwargs[name] = value
        if (timeout := env_float(env, prefix + "TIMEOUT")) is not None:
            kwargs["timeout"] = timeout
        if (metadata := env_bool(env, prefix + "STRUCTURED_METADATA")) is not None:
            kwargs["structured_metadata"] = metadata
        kwargs["delivery"] = DeliveryConfig.from_env(prefix, env)
        return cls(**kwargs)


def _parse_labels(text: str, name: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{name} must look like name=value,name=value; got {item!r}")
        labels[key.strip()] = value.strip()
    return labels


class _PushEmitter(LokiEmitter):  # type: ignore[misc]
    """logging_loki's emitter kept for its session and label rules; the push is batched here."""

    def __init__(self, config: LokiConfig) -> None:
        auth = (config.username, config.password) if config.username is not None else None
        super().__init__(config.push_url, tags=dict(config.labels), auth=auth)
        for name in config.labels:
            # The library's own sanitiser: a name it would rewrite is not a valid label.
            if self.format_label(name) != name:
                raise ValueError(f"Loki label name {name!r} is not a valid Prometheus label")
        self.headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        if config.tenant is not None:
            self.headers["X-Scope-OrgID"] = config.tenant
        if config.token is not None:
            self.headers["Authorization"] = f"Bearer {config.token}"
        self.verify: str | bool = config.ca_certs if config.ca_certs is not None else True

    def build_payload(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Group decoded records into Loki streams, keeping each stream's order."""
        streams: dict[tuple[tuple[str, str], ...], list[list[Any]]] = {}
        for record in records:
            labels: dict[str, str] = record["s"]
            value: list[Any] = [record["t"], record["l"]]
            if "m" in record:
                value.append(record["m"])
            streams.setdefault(tuple(sorted(labels.items())), []).append(value)
        return {
            "streams": [{"stream": dict(key), "values": values} for key, values in streams.items()]
        }

    def push(self, body: bytes, timeout: float) -> requests.Response:
        """POST a gzipped payload with a timeout (the library's ``__call__`` has none)."""
        response: requests.Response = self.session.post(
            self.url, data=body, headers=self.headers, timeout=timeout, verify=self.verify
        )
        return response


class _LokiTransport:
    """Encodes records as Loki entries and pushes batches of them."""

    def __init__(self, config: LokiConfig) -> None:
        self._config = config
        self._emitter = _PushEmitter(config)
        self._static = dict(config.labels)
        self._static["env"] = config.env
        self.destination = f"Loki at {config.url}"

    def encode(self, entry: LogEntry) -> str:
        fields = entry.fields
        labels = dict(self._static)
        labels["service"] = str(fields.get("service", ""))
        labels["level"] = entry.level
        record: dict[str, Any] = {"t": str(entry.time_ns), "s": labels, "l": entry.json()}
        if self._config.structured_metadata:
            metadata = {k: str(fields[k]) for k in METADATA_FIELDS if fields.get(k) is not None}
            if metadata:
                record["m"] = metadata
        return _ENCODER.encode(record)

    def send(self, records: Sequence[str], timeout: float) -> Delivery:
        count = len(records)
        payload = self._emitter.build_payload([_DECODER.decode(r) for r in records])
        body = gzip.compress(_ENCODER.encode(payload).encode(), compresslevel=_GZIP_LEVEL)
        try:
            response = self._emitter.push(body, timeout)
        except requests.RequestException as exc:
            return Delivery.failed(count, f"cannot reach {self.destination}: {exc}")
        status = response.status_code
        if 200 <= status < 300:
            return Delivery.ok(count)
        text = response.text.strip()[:_ERROR_BODY]
        error = f"{self.destination} answered HTTP {status}: {text or response.reason}"
        if status in (401, 403):
            error += (
                " (check AGENT_RUNTIME_LOKI_USERNAME/PASSWORD or AGENT_RUNTIME_LOKI_TOKEN and "
                "AGENT_RUNTIME_LOKI_TENANT)"
            )
        elif status == 404:
            error += " (AGENT_RUNTIME_LOKI_URL must be Loki's base URL, e.g. http://loki:3100)"
        if retryable_status(status):
            return Delivery.failed(count, error)
        return Delivery.refused(count, error)

    def close(self) -> None:
        self._emitter.close()


class LokiSink(Shipper):
    """Ship structured records to Loki in the background (see the module docstring).

    Example:
        >>> sink = LokiSink(LokiConfig(url="http://localhost:3100", env="prod"))
        >>> handler = StructuredHandler("api", sinks=[sink])

    Args:
        config: Where and how to push.
        clock: Monotonic seconds; schedules retries.
        sleep: Waits during a backoff.
        random: Jitter source in ``[0, 1)``.

    Raises:
        ValueError: If the configuration is invalid.
        OSError: If the spool directory cannot be used.
    """

    def __init__(
        self,
        config: LokiConfig,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
        random: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        injected: dict[str, Any] = {
            k: v for k, v in (("clock", clock), ("sleep", sleep), ("random", random)) if v
        }
        super().__init__(
            "loki", _LokiTransport(config), config.delivery, timeout=config.timeout, **injected
        )
