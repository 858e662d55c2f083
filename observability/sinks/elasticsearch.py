"""The Elasticsearch sink: ECS documents bulk-written to a data stream in the background.

The official ``elasticsearch`` client does the HTTP work: its ``helpers.streaming_bulk`` builds
the NDJSON body, splits it by size and reports a status per document, and its ``ilm`` and
``indices`` APIs install the lifecycle policy and index template. What is wrapped, and why:

* The helper's own retry (``max_retries``) sleeps with ``time.sleep`` inside the bulk call and
  forgets the documents when the process stops. It is switched off (``max_retries=0``, the
  transport's too); the shared :class:`~observability.sinks._shipper.Shipper` retries 429/5xx
  per document with backoff and jitter and keeps them in its on-disk spool meanwhile.
* ``streaming_bulk`` lets connection errors (``TransportError``) escape even with
  ``raise_on_exception=False``; they are caught here and retried like a 503.
* The client's native OpenTelemetry spans ignore OpenTelemetry's suppression keys, so a shipper
  would trace its own bulk calls; they are switched off for the sink's client (a subclass, so
  that the copies ``.options()`` makes keep the setting).
* A 9.x client sends ``compatible-with=9`` media types, which Elasticsearch 8.x refuses with a
  400. A node class rewrites them to ``compatible_with`` (default 8): Elasticsearch 8.x serves
  its own version and 9.x serves version-8 compatibility, so one client works with both.

Documents use ECS field names: ``@timestamp`` (the record's time, nanoseconds), ``message``,
``log.level``, ``log.logger``, ``service.name``, ``service.environment``, ``trace.id``,
``span.id``, ``error.type``/``error.message``/``error.stack_trace``; the record's other scalar
fields (``run_id``, ``step``, ``workflow``, extras) go under ``labels`` and structured ones under
``agent_runtime`` (a ``flattened`` field, so user-supplied extras never cause mapping conflicts).

They are written with the ``create`` operation (the only one a data stream accepts) to the data
stream ``logs-agent_runtime-default`` by default. On first use the sink installs an index
template for exactly that name (priority 200, above the built-in ``logs`` template) and an ILM
policy that rolls over daily and deletes after the retention (default 7 days). ILM was chosen over
the data stream lifecycle (``data_retention``) because ILM is available on every Elasticsearch
8.x and 9.x release, whereas the data stream lifecycle is GA only from 8.14.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, cast

from elastic_transport import HttpHeaders, TransportError, Urllib3HttpNode
from elastic_transport.client_utils import DEFAULT, DefaultType
from elasticsearch import ApiError, Elasticsearch, UnsupportedProductError
from elasticsearch.helpers import streaming_bulk

from observability.records import LogEntry

if TYPE_CHECKING:
    from elastic_transport._node import NodeApiResponse
from observability.sinks._shipper import (
    Delivery,
    DeliveryConfig,
    Shipper,
    env_bool,
    env_float,
    env_int,
    env_str,
    retryable_status,
    validate_http_url,
)

__all__ = [
    "DEFAULT_COMPATIBLE_WITH",
    "DEFAULT_DATA_STREAM",
    "DEFAULT_ENV",
    "DEFAULT_RETENTION",
    "DEFAULT_TIMEOUT",
    "ECS_VERSION",
    "DeliveryConfig",
    "ElasticsearchConfig",
    "ElasticsearchSink",
    "ecs_document",
    "index_template",
    "lifecycle_policy",
    "retention_seconds",
]

DEFAULT_DATA_STREAM: Final = "logs-agent_runtime-default"
"""The data stream records are written to."""

DEFAULT_RETENTION: Final = "7d"
"""How long records are kept (ILM delete phase)."""

DEFAULT_ENV: Final = "dev"
"""``service.environment`` when none is configured."""

DEFAULT_TIMEOUT: Final = 10.0
"""Seconds one request may take."""

DEFAULT_COMPATIBLE_WITH: Final = 8
"""The REST API compatibility version requested (works with Elasticsearch 8.x and 9.x)."""

ECS_VERSION: Final = "8.11.0"
"""The ECS version the documents follow."""

_TEMPLATE_PRIORITY: Final = 200  # above the built-in ``logs`` template (100)
_ROLLOVER_MAX_AGE_SECONDS: Final = 86_400
_RETENTION = re.compile(r"([1-9][0-9]*)(d|h|m|s)")
_UNIT_SECONDS: Final = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_INVALID_STREAM_CHARS = re.compile(r'[\\/*?"<>| ,#:A-Z]')
_ECS_OWN: Final = frozenset(
    {"timestamp", "level", "logger", "message", "service", "trace_id", "span_id", "exception"}
)
_COMPAT = re.compile(rb"compatible-with=\d+")

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ElasticsearchConfig:
    """Where and how to write records to Elasticsearch.

    Attributes:
        url: The cluster URL (``http://elasticsearch:9200``).
        api_key: An API key (the encoded ``id:key`` string Kibana shows).
        username: Basic-auth user (with ``password``).
        password: Basic-auth password.
        data_stream: The target data stream (lower case, ``logs-<dataset>-<namespace>``).
        retention: How long records are kept: a number and ``d``, ``h``, ``m`` or ``s``.
        env: ``service.environment`` on every document.
        install_template: Install the index template and ILM policy on first use (needs the
            ``manage_index_templates`` and ``manage_ilm`` privileges).
        compatible_with: REST API compatibility version to request (None: the client's own).
        timeout: Seconds one request may take.
        ca_certs: CA bundle to verify an https cluster with.
        delivery: Queue, batch, retry and spool settings.

    Raises:
        ValueError: If a value is malformed; the message says which and how to fix it.
    """

    url: str
    api_key: str | None = None
    username: str | None = None
    password: str | None = None
    data_stream: str = DEFAULT_DATA_STREAM
    retention: str = DEFAULT_RETENTION
    env: str = DEFAULT_ENV
    install_template: bool = True
    compatible_with: int | None = DEFAULT_COMPATIBLE_WITH
    timeout: float = DEFAULT_TIMEOUT
    ca_certs: str | None = None
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "url",
            validate_http_url(self.url, "the Elasticsearch URL (AGENT_RUNTIME_ELASTICSEARCH_URL)"),
        )
        if (self.username is None) != (self.password is None):
            raise ValueError(
                "Elasticsearch basic auth needs both a username and a password "
                "(AGENT_RUNTIME_ELASTICSEARCH_USERNAME and AGENT_RUNTIME_ELASTICSEARCH_PASSWORD)"
            )
        if self.api_key is not None and self.username is not None:
            raise ValueError(
                "give Elasticsearch either an API key or a username and password, not both"
            )
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the Elasticsearch API key must not be blank")
        _check_data_stream(self.data_stream)
        retention_seconds(self.retention)
        if not isinstance(self.env, str) or not self.env.strip():
            raise ValueError("the environment (AGENT_RUNTIME_ENV) must be a non-empty string")
        if self.compatible_with is not None and (
            isinstance(self.compatible_with, bool)
            or not isinstance(self.compatible_with, int)
            or self.compatible_with < 7
        ):
            raise ValueError(
                "compatible_with (AGENT_RUNTIME_ELASTICSEARCH_COMPATIBLE_WITH) must be an "
                f"Elasticsearch major version such as 8, got {self.compatible_with!r}"
            )
        if (
            not isinstance(self.timeout, int | float)
            or isinstance(self.timeout, bool)
            or self.timeout <= 0
        ):
            raise ValueError(
                "the Elasticsearch timeout (AGENT_RUNTIME_ELASTICSEARCH_TIMEOUT) must be > 0 "
                f"seconds, got {self.timeout!r}"
            )

    @property
    def policy_name(self) -> str:
        """The ILM policy installed for the data stream."""
        return f"{self.data_stream}-retention"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ElasticsearchConfig | None:
        """Build the configuration from ``AGENT_RUNTIME_ELASTICSEARCH_*`` variables.

        Reads ``AGENT_RUNTIME_ELASTICSEARCH_URL`` (required to enable the sink),
        ``..._API_KEY``, ``..._USERNAME``, ``..._PASSWORD``, ``..._DATA_STREAM``,
        ``..._RETENTION``, ``AGENT_RUNTIME_ENV``, ``..._INSTALL_TEMPLATE``,
        ``..._COMPATIBLE_WITH`` (``0`` for the client's own), ``..._TIMEOUT``, ``..._CA_CERTS``
        and the delivery settings (``..._QUEUE_SIZE``, ``..._BATCH_SIZE``, ``..._LINGER``,
        ``..._INITIAL_BACKOFF``, ``..._MAX_BACKOFF``, ``..._SPOOL_DIR``, ``..._SPOOL_MAX_BYTES``,
        ``..._SPOOL_SEGMENT_BYTES``).

        Args:
            environ: The environment (default ``os.environ``).

        Returns:
            The configuration, or None if ``AGENT_RUNTIME_ELASTICSEARCH_URL`` is unset.

        Raises:
            ValueError: If a variable is malformed; the message names it.
        """
        env = os.environ if environ is None else environ
        prefix = "AGENT_RUNTIME_ELASTICSEARCH_"
        url = env_str(env, prefix + "URL")
        if url is None:
            return None
        kwargs: dict[str, Any] = {"url": url}
        for name in ("api_key", "username", "password", "data_stream", "retention", "ca_certs"):
            if (value := env_str(env, prefix + name.upper())) is not None:
                kwargs[name] = value
        if (value := env_str(env, "AGENT_RUNTIME_ENV")) is not None:
            kwargs["env"] = value
        if (install := env_bool(env, prefix + "INSTALL_TEMPLATE")) is not None:
            kwargs["install_template"] = install
        if (compat := env_int(env, prefix + "COMPATIBLE_WITH")) is not None:
            kwargs["compatible_with"] = compat or None
        if (timeout := env_float(env, prefix + "TIMEOUT")) is not None:
            kwargs["timeout"] = timeout
        kwargs["delivery"] = DeliveryConfig.from_env(prefix, env)
        return cls(**kwargs)


def _check_data_stream(name: object) -> None:
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or name[0] in "-_+."
        or _INVALID_STREAM_CHARS.search(name)
        or len(name.encode()) > 255
    ):
        raise ValueError(
            f"data stream name {name!r} is invalid (AGENT_RUNTIME_ELASTICSEARCH_DATA_STREAM): "
            "use lower case letters, digits, - and _, like logs-agent_runtime-default"
        )


def retention_seconds(retention: object) -> int:
    """Return the retention (``7d``, ``12h``, ``30m``, ``90s``) in seconds.

    Args:
        retention: The configured value.

    Returns:
        Seconds.

    Raises:
        ValueError: If it is not a positive number followed by d, h, m or s.
    """
    match = _RETENTION.fullmatch(retention) if isinstance(retention, str) else None
    if match is None:
        raise ValueError(
            f"retention (AGENT_RUNTIME_ELASTICSEARCH_RETENTION) must be a positive number "
            f"followed by d, h, m or s, such as 7d; got {retention!r}"
        )
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


# -- what is sent -------------------------------------------------------------------------------


def lifecycle_policy(config: ElasticsearchConfig) -> dict[str, Any]:
    """Return the ILM policy: roll over daily (or at 50 GB), delete after the retention.

    Args:
        config: The sink configuration.

    Returns:
        The ``policy`` object of ``PUT _ilm/policy/<name>``.
    """
    max_age = config.retention
    if retention_seconds(config.retention) >= _ROLLOVER_MAX_AGE_SECONDS:
        max_age = "1d"
    return {
        "_meta": {"managed_by": "agent-runtime", "data_stream": config.data_stream},
        "phases": {
            "hot": {
                "min_age": "0ms",
                "actions": {"rollover": {"max_age": max_age, "max_primary_shard_size": "50gb"}},
            },
            "delete": {"min_age": config.retention, "actions": {"delete": {}}},
        },
    }


def index_template(config: ElasticsearchConfig) -> dict[str, Any]:
    """Return the composable index template body for the data stream.

    Args:
        config: The sink configuration.

    Returns:
        The body of ``PUT _index_template/<data stream>``.
    """
    keyword = {"type": "keyword", "ignore_above": 1024}
    return {
        "index_patterns": [config.data_stream],
        "data_stream": {},
        "priority": _TEMPLATE_PRIORITY,
        "template": {
            "settings": {"index": {"lifecycle": {"name": config.policy_name}}},
            "mappings": {
                "dynamic_templates": [
                    {"labels": {"path_match": "labels.*", "mapping": dict(keyword)}}
                ],
                "properties": {
                    "@timestamp": {"type": "date_nanos"},
                    "message": {"type": "match_only_text"},
                    "log": {"properties": {"level": keyword, "logger": keyword}},
                    "service": {"properties": {"name": keyword, "environment": keyword}},
                    "trace": {"properties": {"id": keyword}},
                    "span": {"properties": {"id": keyword}},
                    "error": {
                        "properties": {
                            "type": keyword,
                            "message": {"type": "match_only_text"},
                            "stack_trace": {"type": "wildcard"},
                        }
                    },
                    "ecs": {"properties": {"version": keyword}},
                    "labels": {"type": "object"},
                    "agent_runtime": {"type": "flattened", "ignore_above": 8191},
                },
            },
        },
        "_meta": {"managed_by": "agent-runtime", "retention": config.retention},
    }


_second_cache: tuple[int, str] = (-1, "")


def _timestamp_ns(time_ns: int) -> str:
    global _second_cache
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    cached_second, text = _second_cache
    if seconds != cached_second:  # strftime is the costly part: once per second, not per record
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_cache = (seconds, text)
    return f"{text}.{nanos:09d}Z"


def ecs_document(entry: LogEntry, env: str) -> dict[str, Any]:
    """Map a structured record to an ECS document.

    Args:
        entry: The record.
        env: The ``service.environment`` value.

    Returns:
        The document (see the module docstring for the fields).
    """
    fields = entry.fields
    doc: dict[str, Any] = {
        "@timestamp": _timestamp_ns(entry.time_ns),
        "message": str(fields.get("message", "")),
        "log": {"level": entry.level, "logger": str(fields.get("logger", ""))},
        "service": {"name": str(fields.get("service", "")), "environment": env},
        "ecs": {"version": ECS_VERSION},
    }
    if (trace_id := fields.get("trace_id")) is not None:
        doc["trace"] = {"id": str(trace_id)}
    if (span_id := fields.get("span_id")) is not None:
        doc["span"] = {"id": str(span_id)}
    exc = fields.get("exception")
    if isinstance(exc, Mapping):
        doc["error"] = {
            "type": str(exc.get("type", "")),
            "message": str(exc.get("message", "")),
            "stack_trace": str(exc.get("stack", "")),
        }
    labels: dict[str, Any] = {}
    custom: dict[str, Any] = {}
    for key, value in fields.items():
        if key in _ECS_OWN:
            continue
        if isinstance(value, str | int | float | bool):
            # ECS labels are flat keyword pairs: a dot would make an object path.
            labels[key.replace(".", "_")] = value
        else:
            custom[key] = value
    if labels:
        doc["labels"] = labels
    if custom:
        doc["agent_runtime"] = custom
    return doc


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


# One encoder for every record: json.dumps with options builds a new encoder per call.
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_json_default)


# -- the client ---------------------------------------------------------------------------------


def _compat_node(version: int) -> type[Urllib3HttpNode]:
    replacement = f"compatible-with={version}".encode()

    class CompatNode(Urllib3HttpNode):
        """Requests REST compatibility ``version`` whatever the client's major version."""

        def perform_request(
            self,
            method: str,
            target: str,
            body: bytes | None = None,
            headers: HttpHeaders | None = None,
            request_timeout: DefaultType | float | None = DEFAULT,
        ) -> NodeApiResponse:
            if headers is not None:
                headers = headers.copy()
                for name in ("accept", "content-type"):
                    value = headers.get(name)
                    if value is not None:
                        headers[name] = _COMPAT.sub(replacement, value.encode()).decode()
            return super().perform_request(method, target, body, headers, request_timeout)

    return CompatNode


class _ShipperClient(Elasticsearch):
    """The client without its native OpenTelemetry spans (they ignore suppression)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        otel = getattr(self, "_otel", None)
        if otel is not None:
            otel.enabled = False


def _make_client(config: ElasticsearchConfig) -> Elasticsearch:
    kwargs: dict[str, Any] = {
        "request_timeout": config.timeout,
        "max_retries": 0,  # the shipper retries, with backoff and a spool
        "retry_on_timeout": False,
    }
    if config.api_key is not None:
        kwargs["api_key"] = config.api_key
    if config.username is not None and config.password is not None:
        kwargs["basic_auth"] = (config.username, config.password)
    if config.ca_certs is not None:
        kwargs["ca_certs"] = config.ca_certs
    if config.compatible_with is not None:
        kwargs["node_class"] = _compat_node(config.compatible_with)
    return _ShipperClient(config.url, **kwargs)


def _describe(exc: ApiError) -> str:
    body = exc.body
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping):
            return f"{error.get('type', '')}: {error.get('reason', '')}".strip(": ")
        if error:
            return str(error)
    return str(exc.message)


def _item_error(info: Mapping[str, Any]) -> str:
    error = info.get("error")
    if isinstance(error, Mapping):
        return f"{error.get('type', 'error')}: {error.get('reason', '')}"
    return str(error)


class _ElasticsearchTransport:
    """Encodes records as ECS documents and bulk-creates them in the data stream."""

    def __init__(self, config: ElasticsearchConfig) -> None:
        self._config = config
        self._client = _make_client(config)
        self._installed = not config.install_template
        self.destination = f"Elasticsearch at {config.url}"

    def encode(self, entry: LogEntry) -> str:
        return _ENCODER.encode(ecs_document(entry, self._config.env))

    def send(self, records: Sequence[str], timeout: float) -> Delivery:
        count = len(records)
        client = self._client.options(request_timeout=timeout)
        if not self._installed:
            failure = self._install(client, count)
            if failure is not None:
                return failure
        results: list[tuple[bool, dict[str, Any]]] = []
        try:
            # Whole-request failures are raised (raise_on_exception) and handled below; the
            # per-document outcomes come back in order (raise_on_error=False).
            for result in streaming_bulk(
                client,
                records,
                index=self._config.data_stream,
                chunk_size=count,
                raise_on_error=False,
                raise_on_exception=True,
                max_retries=0,
                expand_action_callback=_create_action,
            ):
                results.append(result)
        except UnsupportedProductError:
            return Delivery.failed(count, self._not_elasticsearch())
        except ApiError as exc:
            return self._sort(results, count, self._request_failure(exc))
        except TransportError as exc:
            return self._sort(results, count, (True, f"cannot reach {self.destination}: {exc}"))
        return self._sort(results, count, None)

    def _request_failure(self, exc: ApiError) -> tuple[bool, str]:
        # 401/403/404 mean misconfiguration: kept for later like a 5xx, not dropped.
        status = int(exc.status_code)
        return retryable_status(status), self._request_error(status, exc, "")

    def _not_elasticsearch(self) -> str:
        return (
            f"the server at {self._config.url} is not Elasticsearch (no 'X-Elastic-Product: "
            "Elasticsearch' header); check AGENT_RUNTIME_ELASTICSEARCH_URL"
        )

    def _sort(
        self,
        results: list[tuple[bool, dict[str, Any]]],
        count: int,
        unanswered: tuple[bool, str] | None,
    ) -> Delivery:
        delivered = rejected = 0
        retry: list[int] = []
        error = ""
        for index, (ok, item) in enumerate(results):
            if ok:
                delivered += 1
                continue
            info = next(iter(item.values()))
            status = int(info.get("status", 500))
            error = error or (
                f"{self.destination} refused a document with HTTP {status}: {_item_error(info)}"
            )
            if status == 429 or status >= 500:
                retry.append(index)
            else:
                rejected += 1
        if unanswered is not None:
            # The documents after the last answered chunk share the request's fate.
            again, message = unanswered
            error = message
            rest = range(len(results), count)
            if again:
                retry.extend(rest)
            else:
                rejected += len(rest)
        return Delivery(delivered=delivered, retry=tuple(retry), rejected=rejected, error=error)

    def _request_error(self, status: int, exc: ApiError, during: str) -> str:
        message = f"{self.destination} answered HTTP {status}{during}: {_describe(exc)}"
        if status in (401, 403):
            message += (
                " (check AGENT_RUNTIME_ELASTICSEARCH_API_KEY or USERNAME/PASSWORD and the "
                "credentials' privileges on the data stream)"
            )
        elif status == 404:
            message += " (check AGENT_RUNTIME_ELASTICSEARCH_URL)"
        return message

    def _install(self, client: Elasticsearch, count: int) -> Delivery | None:
        config = self._config
        try:
            client.ilm.put_lifecycle(name=config.policy_name, policy=lifecycle_policy(config))
            body = index_template(config)
            client.indices.put_index_template(
                name=config.data_stream,
                index_patterns=body["index_patterns"],
                data_stream=body["data_stream"],
                priority=body["priority"],
                template=body["template"],
                meta=body["_meta"],
            )
        except TransportError as exc:
            return Delivery.failed(count, f"cannot reach {self.destination}: {exc}")
        except UnsupportedProductError:
            return Delivery.failed(count, self._not_elasticsearch())
        except ApiError as exc:
            status = int(exc.status_code)
            if status == 401 or status == 429 or status >= 500:
                return Delivery.failed(
                    count, self._request_error(status, exc, " while installing the index template")
                )
            # Missing privileges or an old cluster: ship anyway, into whatever template
            # matches (the built-in logs-*-* one still makes it a data stream).
            _log_template_failure(config, status, _describe(exc))
        self._installed = True
        return None

    def close(self) -> None:
        self._client.close()


_CREATE: Final = b'{"create":{}}'


def _create_action(
    record: bytes | str | dict[str, Any],
) -> tuple[dict[str, Any], bytes | dict[str, Any] | None]:
    # A data stream only takes the ``create`` op. Both lines are handed over already encoded:
    # the transport's serializers pass bytes through, so the helper does not serialize the
    # same action object once per document. (The helper only inspects an action as a dict
    # when it reports a whole-request failure itself, which raise_on_exception=True avoids.)
    body = record.encode() if isinstance(record, str) else record
    return cast("dict[str, Any]", _CREATE), body


def _log_template_failure(config: ElasticsearchConfig, status: int, reason: str) -> None:
    _log.warning(
        "elasticsearch: could not install the index template and ILM policy for %s (HTTP %d: "
        "%s); records are still written, with the cluster's default mappings and retention. "
        "Grant the manage_index_templates and manage_ilm privileges, or set "
        "AGENT_RUNTIME_ELASTICSEARCH_INSTALL_TEMPLATE=false",
        config.data_stream,
        status,
        reason,
    )


class ElasticsearchSink(Shipper):
    """Ship structured records to an Elasticsearch data stream (see the module docstring).

    Example:
        >>> sink = ElasticsearchSink(ElasticsearchConfig(url="http://localhost:9200"))
        >>> handler = StructuredHandler("api", sinks=[sink])

    Args:
        config: Where and how to write.
        clock: Monotonic seconds; schedules retries.
        sleep: Waits during a backoff.
        random: Jitter source in ``[0, 1)``.

    Raises:
        ValueError: If the configuration is invalid.
        OSError: If the spool directory cannot be used.
    """

    def __init__(
        self,
        config: ElasticsearchConfig,
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
            "elasticsearch",
            _ElasticsearchTransport(config),
            config.delivery,
            timeout=config.timeout,
            **injected,
        )
