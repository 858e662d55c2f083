"""Local stand-ins for Loki and Elasticsearch that check the documented wire formats strictly.

Loki and Elasticsearch cannot run on the test machines, so the sinks are tested against these
servers on 127.0.0.1. Each request is checked against the documented format (Loki's JSON push
API; Elasticsearch's ILM, index template and ``_bulk`` APIs with REST compatibility headers); a
deviation is answered the way the real server would (400, or a per-item error) and recorded in
``violations``, which every test asserts is empty. Failures (429, 500, a hung server, a server
that is down) are scripted per request.

Run ``python -m tests.observability.fakes`` to serve both (accepting everything, recording
counts only) for ``bench/bench_logging.py``; it prints ``loki=<url> elasticsearch=<url>`` and
stops when its standard input closes.
"""

from __future__ import annotations

import abc
import gzip
import json
import re
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

HANG = "hang"
"""A scripted action: keep the request open without answering until the server stops."""

LOKI_LABELS = frozenset({"service", "level", "env"})
LOKI_METADATA = frozenset({"trace_id", "span_id", "run_id"})
ES_COMPAT_JSON = "application/vnd.elasticsearch+json; compatible-with=8"
ES_COMPAT_NDJSON = "application/vnd.elasticsearch+x-ndjson; compatible-with=8"
ES_TOP_LEVEL = frozenset(
    {"@timestamp", "message", "log", "service", "trace", "span", "error", "labels", "ecs"}
    | {"agent_runtime"}
)
_NS = re.compile(r"[0-9]{19}")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ES_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX16 = re.compile(r"[0-9a-f]{16}")


class _FormatError(Exception):
    pass


def _need(condition: object, message: str) -> None:
    if not condition:
        raise _FormatError(message)


@dataclass(frozen=True)
class Request:
    """One request as received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Reply:
    """What the fake answers."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so a stopped server really is unreachable (no
    # kept-alive connection keeps serving after stop()).
    protocol_version = "HTTP/1.0"
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length) if length else b""
        request = Request(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        reply = self.server.fake.dispatch(request)
        if reply is None:  # hung until the server stops
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output clean."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeServer


class FakeServer(abc.ABC):
    """A threaded HTTP server on 127.0.0.1 that can be stopped and restarted on its port.

    Args:
        record: Keep what was received (False keeps counts only, for benchmarks).
    """

    def __init__(self, *, record: bool = True) -> None:
        self.record = record
        self.port = 0
        self.requests: list[Request] = []
        self.violations: list[str] = []
        self.script: deque[int | str] = deque()
        self.lock = threading.Lock()
        self._server: _Server | None = None
        self._release = threading.Event()

    @property
    def url(self) -> str:
        """The base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        """Listen (on the same port as before, after a stop)."""
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.fake = self
        self.port = server.server_address[1]
        self._release.clear()
        self._server = server
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        """Stop listening and release hung requests; connections are refused until start()."""
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail_next(self, *actions: int | str) -> None:
        """Answer the next requests with these statuses (or :data:`HANG`), in order."""
        with self.lock:
            self.script.extend(actions)

    def violation(self, message: str) -> None:
        """Record a deviation from the documented format."""
        with self.lock:
            self.violations.append(message)

    def dispatch(self, request: Request) -> Reply | None:
        """Answer one request (scripted failure first, else :meth:`handle`)."""
        with self.lock:
            if self.record:
                self.requests.append(request)
            action = self.script.popleft() if self.script else None
        if action == HANG:
            self._release.wait()
            return None
        if isinstance(action, int):
            return self.scripted(action)
        return self.handle(request)

    def scripted(self, status: int) -> Reply:
        """The reply for a scripted failure status."""
        return Reply(status, f"scripted failure {status}".encode())

    @abc.abstractmethod
    def handle(self, request: Request) -> Reply:
        """Answer a request that is not scripted to fail (each fake server implements it)."""


# -- Loki ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LokiEntry:
    """One log entry Loki accepted."""

    labels: dict[str, str]
    time_ns: int
    line: str
    metadata: dict[str, str] | None

    @property
    def record(self) -> dict[str, Any]:
        """The JSON line, decoded."""
        decoded: dict[str, Any] = json.loads(self.line)
        return decoded


class FakeLoki(FakeServer):
    """Loki's ``POST /loki/api/v1/push`` (JSON, gzip), checked against the documented format.

    Args:
        tenant: The ``X-Scope-OrgID`` every request must carry (None: none allowed).
        authorization: The exact ``Authorization`` header required (401 otherwise).
        labels: The exact label names every stream must have.
        record: Keep entries (False: counts only).
    """

    def __init__(
        self,
        *,
        tenant: str | None = None,
        authorization: str | None = None,
        labels: frozenset[str] = LOKI_LABELS,
        record: bool = True,
    ) -> None:
        super().__init__(record=record)
        self.tenant = tenant
        self.authorization = authorization
        self.labels = labels
        self.entries: list[LokiEntry] = []
        self.count = 0

    def handle(self, request: Request) -> Reply:
        """Check and store one push."""
        if request.method != "POST" or request.path != "/loki/api/v1/push":
            self.violation(f"unexpected {request.method} {request.path}")
            return Reply(404, b"404 page not found\n")
        if self.authorization is not None and (
            request.headers.get("authorization") != self.authorization
        ):
            return Reply(401, b"no org id or bad credentials\n")
        problems = self._check_headers(request)
        if problems:
            return self._bad(problems)
        try:
            payload = json.loads(gzip.decompress(request.body))
        except (OSError, ValueError) as exc:
            return self._bad([f"body is not gzipped JSON: {exc}"])
        entries, problems = self._parse(payload)
        if problems:
            return self._bad(problems)
        with self.lock:
            self.count += len(entries)
            if self.record:
                self.entries.extend(entries)
        return Reply(204)

    def _bad(self, problems: list[str]) -> Reply:
        for problem in problems:
            self.violation(problem)
        return Reply(400, ("; ".join(problems) + "\n").encode())

    def _check_headers(self, request: Request) -> list[str]:
        problems = []
        if request.headers.get("content-type") != "application/json":
            problems.append(f"Content-Type is {request.headers.get('content-type')!r}")
        if request.headers.get("content-encoding") != "gzip":
            problems.append(f"Content-Encoding is {request.headers.get('content-encoding')!r}")
        if request.headers.get("x-scope-orgid") != self.tenant:
            problems.append(f"X-Scope-OrgID is {request.headers.get('x-scope-orgid')!r}")
        return problems

    def _parse(self, payload: Any) -> tuple[list[LokiEntry], list[str]]:
        problems: list[str] = []
        entries: list[LokiEntry] = []
        if not isinstance(payload, dict) or set(payload) != {"streams"}:
            return [], [f"top level must be exactly {{'streams': [...]}}, got {payload!r:.200}"]
        streams = payload["streams"]
        if not isinstance(streams, list) or not streams:
            return [], ["streams must be a non-empty list"]
        for stream in streams:
            if not isinstance(stream, dict) or set(stream) != {"stream", "values"}:
                problems.append(f"a stream must have exactly stream and values: {stream!r:.200}")
                continue
            labels = stream["stream"]
            if not isinstance(labels, dict) or set(labels) != self.labels:
                problems.append(f"labels must be exactly {sorted(self.labels)}, got {labels!r}")
                continue
            for name, value in labels.items():
                if not _LABEL_NAME.fullmatch(name) or not isinstance(value, str) or not value:
                    problems.append(f"bad label {name}={value!r}")
            values = stream["values"]
            if not isinstance(values, list) or not values:
                problems.append("values must be a non-empty list")
                continue
            for value in values:
                entry, problem = self._entry(labels, value)
                if problem:
                    problems.append(problem)
                elif entry is not None:
                    entries.append(entry)
        return entries, problems

    def _entry(self, labels: dict[str, str], value: Any) -> tuple[LokiEntry | None, str]:
        if not isinstance(value, list) or len(value) not in (2, 3):
            return None, f"an entry must be [ts, line] or [ts, line, metadata]: {value!r:.200}"
        ts, line = value[0], value[1]
        if not isinstance(ts, str) or not _NS.fullmatch(ts):
            return None, f"timestamp must be unix nanoseconds as a string, got {ts!r}"
        if not isinstance(line, str):
            return None, f"line must be a string, got {type(line).__name__}"
        metadata = None
        if len(value) == 3:
            metadata = value[2]
            if not isinstance(metadata, dict) or not metadata:
                return None, f"structured metadata must be a non-empty object: {metadata!r}"
            for key, item in metadata.items():
                if key not in LOKI_METADATA or not isinstance(item, str):
                    return None, f"unexpected structured metadata {key}={item!r}"
        return LokiEntry(dict(labels), int(ts), line, metadata), ""


# -- Elasticsearch ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EsDocument:
    """One document Elasticsearch stored."""

    index: str
    source: dict[str, Any]


class FakeElasticsearch(FakeServer):
    """Elasticsearch's ILM, index template and ``_bulk`` APIs, checked strictly.

    Args:
        authorization: The exact ``Authorization`` header required (401 otherwise).
        product_header: Send ``X-Elastic-Product: Elasticsearch`` (the client refuses a
            server without it).
        record: Keep documents (False: counts only).
    """

    def __init__(
        self,
        *,
        authorization: str | None = None,
        product_header: bool = True,
        record: bool = True,
    ) -> None:
        super().__init__(record=record)
        self.authorization = authorization
        self.product_header = product_header
        self.policies: dict[str, dict[str, Any]] = {}
        self.templates: dict[str, dict[str, Any]] = {}
        self.documents: list[EsDocument] = []
        self.count = 0
        self.item_script: deque[int] = deque()
        self.template_status: int | None = None
        self._seq = 0

    def fail_items(self, *statuses: int) -> None:
        """Answer the next bulk documents with these per-item statuses, in order."""
        with self.lock:
            self.item_script.extend(statuses)

    def _reply(self, status: int, body: Any) -> Reply:
        headers = {"Content-Type": "application/vnd.elasticsearch+json;compatible-with=8"}
        if self.product_header:
            headers["X-Elastic-Product"] = "Elasticsearch"
        return Reply(status, json.dumps(body).encode(), headers)

    def _error(self, status: int, kind: str, reason: str) -> Reply:
        return self._reply(
            status, {"error": {"type": kind, "reason": reason, "root_cause": []}, "status": status}
        )

    def scripted(self, status: int) -> Reply:
        """A whole-request failure in Elasticsearch's error format."""
        kind = "es_rejected_execution_exception" if status == 429 else "scripted_failure"
        return self._error(status, kind, f"scripted failure {status}")

    def handle(self, request: Request) -> Reply:
        """Route and check one request."""
        if self.authorization is not None and (
            request.headers.get("authorization") != self.authorization
        ):
            return self._error(401, "security_exception", "unable to authenticate user")
        accept = request.headers.get("accept")
        if accept != ES_COMPAT_JSON:
            self.violation(f"Accept is {accept!r}, expected {ES_COMPAT_JSON!r}")
            return self._error(
                400, "media_type_header_exception", "Invalid media-type value on headers [Accept]"
            )
        path = request.path.split("?", 1)[0]
        parts = [p for p in path.split("/") if p]
        if request.method == "PUT" and len(parts) == 3 and parts[:2] == ["_ilm", "policy"]:
            return self._put_policy(parts[2], request)
        if request.method == "PUT" and len(parts) == 2 and parts[0] == "_index_template":
            return self._put_template(parts[1], request)
        if request.method in ("PUT", "POST") and len(parts) == 2 and parts[1] == "_bulk":
            return self._bulk(parts[0], request)
        self.violation(f"unexpected {request.method} {request.path}")
        return self._error(400, "illegal_argument_exception", "no handler found for uri")

    def _json_body(self, request: Request) -> Any:
        content_type = request.headers.get("content-type")
        if content_type != ES_COMPAT_JSON:
            self.violation(f"Content-Type is {content_type!r}, expected {ES_COMPAT_JSON!r}")
            return None
        try:
            return json.loads(request.body)
        except ValueError as exc:
            self.violation(f"body is not JSON: {exc}")
            return None

    def _put_policy(self, name: str, request: Request) -> Reply:
        body = self._json_body(request)
        try:
            _need(isinstance(body, dict) and set(body) == {"policy"}, "body must be {policy}")
            phases = body["policy"]["phases"]
            _need(set(phases) <= {"hot", "warm", "cold", "frozen", "delete"}, "unknown phase")
            _need("max_age" in phases["hot"]["actions"]["rollover"], "hot phase needs max_age")
            delete = phases["delete"]
            _need(re.fullmatch(r"[0-9]+[dhms]", delete["min_age"]), "delete.min_age format")
            _need(delete["actions"] == {"delete": {}}, "the delete phase must delete")
        except (_FormatError, KeyError, TypeError) as exc:
            self.violation(f"ILM policy {name}: {exc!r}")
            return self._error(400, "x_content_parse_exception", str(exc))
        with self.lock:
            self.policies[name] = body["policy"]
        return self._reply(200, {"acknowledged": True})

    def _put_template(self, name: str, request: Request) -> Reply:
        if self.template_status is not None:
            return self._error(self.template_status, "security_exception", "action unauthorized")
        body = self._json_body(request)
        allowed = {"index_patterns", "data_stream", "priority", "template", "_meta", "version"}
        try:
            _need(isinstance(body, dict) and set(body) <= allowed, f"keys {set(body or {})}")
            _need(isinstance(body["index_patterns"], list), "index_patterns must be a list")
            _need(body["data_stream"] == {}, "data_stream must be {}")
            priority = body["priority"]
            _need(isinstance(priority, int) and priority > 100, "priority must beat logs (100)")
            policy = body["template"]["settings"]["index"]["lifecycle"]["name"]
            _need(policy in self.policies, f"template refers to unknown ILM policy {policy}")
            props = body["template"]["mappings"]["properties"]
            _need(props["@timestamp"]["type"] in ("date", "date_nanos"), "@timestamp type")
        except (_FormatError, KeyError, TypeError) as exc:
            self.violation(f"index template {name}: {exc!r}")
            return self._error(400, "x_content_parse_exception", str(exc))
        with self.lock:
            self.templates[name] = body
        return self._reply(200, {"acknowledged": True})

    def _matches_template(self, target: str) -> bool:
        for template in self.templates.values():
            for pattern in template["index_patterns"]:
                regex = re.escape(pattern).replace(r"\*", ".*")
                if re.fullmatch(regex, target):
                    return True
        return False

    def _bulk(self, target: str, request: Request) -> Reply:
        content_type = request.headers.get("content-type")
        if content_type != ES_COMPAT_NDJSON:
            self.violation(f"bulk Content-Type is {content_type!r}")
            return self._error(400, "media_type_header_exception", "bad Content-Type")
        if not self._matches_template(target):
            self.violation(f"bulk into {target} before its index template was installed")
        text = request.body.decode()
        if not text.endswith("\n"):
            self.violation("bulk body must end with a newline")
            return self._error(400, "illegal_argument_exception", "must end with newline")
        lines = text[:-1].split("\n")
        if len(lines) % 2:
            self.violation("bulk body must be action/document pairs")
            return self._error(400, "illegal_argument_exception", "odd number of lines")
        items: list[dict[str, Any]] = []
        stored: list[EsDocument] = []
        errors = False
        backing = f".ds-{target}-2026.01.01-000001"
        for action_line, doc_line in zip(lines[::2], lines[1::2], strict=True):
            action = json.loads(action_line)
            op = next(iter(action))
            if len(action) != 1 or op != "create" or action[op] not in ({}, {"_index": target}):
                self.violation(f"bulk action must be create on the data stream: {action}")
                items.append(self._item_error(op, backing, 400, "illegal_argument_exception"))
                errors = True
                continue
            problem = self._check_document(doc_line)
            with self.lock:
                status = self.item_script.popleft() if self.item_script else None
            if problem:
                self.violation(problem)
                status = 400
            if status is not None:
                kind = (
                    "es_rejected_execution_exception"
                    if status == 429
                    else "document_parsing_exception"
                )
                items.append(self._item_error("create", backing, status, kind))
                errors = True
                continue
            self._seq += 1
            stored.append(EsDocument(target, json.loads(doc_line)))
            items.append(
                {
                    "create": {
                        "_index": backing,
                        "_id": f"doc-{self._seq}",
                        "_version": 1,
                        "result": "created",
                        "_shards": {"total": 1, "successful": 1, "failed": 0},
                        "_seq_no": self._seq,
                        "_primary_term": 1,
                        "status": 201,
                    }
                }
            )
        with self.lock:
            self.count += len(stored)
            if self.record:
                self.documents.extend(stored)
        return self._reply(200, {"took": 1, "errors": errors, "items": items})

    @staticmethod
    def _item_error(op: str, index: str, status: int, kind: str) -> dict[str, Any]:
        return {
            op: {
                "_index": index,
                "status": status,
                "error": {"type": kind, "reason": f"item failed with {status}"},
            }
        }

    @staticmethod
    def _check_document(line: str) -> str:
        try:
            doc = json.loads(line)
        except ValueError:
            return f"document is not JSON: {line[:200]}"
        if not isinstance(doc, dict):
            return "document must be an object"
        if not set(doc) <= ES_TOP_LEVEL:
            return f"non-ECS top-level fields {sorted(set(doc) - ES_TOP_LEVEL)}"
        checks = [
            (isinstance(doc.get("@timestamp"), str), "@timestamp must be a string"),
            (_ES_TIMESTAMP.fullmatch(str(doc.get("@timestamp"))), "@timestamp must be RFC 3339"),
            (isinstance(doc.get("message"), str), "message must be a string"),
            (isinstance(doc.get("log", {}).get("level"), str), "log.level missing"),
            (isinstance(doc.get("log", {}).get("logger"), str), "log.logger missing"),
            (isinstance(doc.get("service", {}).get("name"), str), "service.name missing"),
            (isinstance(doc.get("ecs", {}).get("version"), str), "ecs.version missing"),
        ]
        if "trace" in doc:
            checks.append((_HEX32.fullmatch(str(doc["trace"].get("id"))), "trace.id format"))
        if "span" in doc:
            checks.append((_HEX16.fullmatch(str(doc["span"].get("id"))), "span.id format"))
        if "labels" in doc:
            flat = all(
                isinstance(v, str | int | float | bool) and "." not in k
                for k, v in doc["labels"].items()
            )
            checks.append((flat, "labels must be flat scalar key/values"))
        if "error" in doc:
            checks.append((set(doc["error"]) <= {"type", "message", "stack_trace"}, "error.*"))
        for ok, message in checks:
            if not ok:
                return f"{message}: {line[:200]}"
        return ""


@dataclass
class Fakes:
    """Both fakes, started together."""

    loki: FakeLoki
    elasticsearch: FakeElasticsearch

    def stop(self) -> None:
        """Stop both."""
        self.loki.stop()
        self.elasticsearch.stop()


def main() -> None:
    """Serve both fakes until standard input closes (used by the logging benchmark)."""
    fakes = Fakes(FakeLoki(record=False).start(), FakeElasticsearch(record=False).start())
    try:
        print(f"loki={fakes.loki.url} elasticsearch={fakes.elasticsearch.url}", flush=True)
        sys.stdin.read()
        print(
            f"received loki={fakes.loki.count} elasticsearch={fakes.elasticsearch.count}",
            flush=True,
        )
    finally:
        fakes.stop()


if __name__ == "__main__":
    main()
