"""The HTTP service: metrics, health, admin flags and the runs API, on Starlette.

Routes:

* ``GET /metrics``: Prometheus exposition (OpenMetrics with ``trace_id`` exemplars when the
  scraper asks for it, as Prometheus does with exemplar storage on).
* ``GET /healthz``: the process answers. ``GET /readyz``: the state database answers and every
  log sink is healthy (503 with the failing checks otherwise).
* ``GET /admin/flags``, ``POST /admin/reload-flags``: behind a bearer token
  (``AGENT_RUNTIME_ADMIN_TOKEN``; with no token configured the admin endpoints are disabled),
  compared in constant time; 401 without a token, 403 with a wrong one.
* ``POST /runs`` (start a registered workflow), ``GET /runs/{run_id}``, ``GET /runs?status=``.
  Run starts pass through a :class:`~agent_runtime.resilience.limiter.Limiter`: a slot is held
  for the whole run, so at most ``max_concurrency`` runs started here execute at once, and past
  the queue a start is refused with 503 and ``Retry-After``.

The middleware (pure ASGI, so it wraps errors too) continues an incoming ``traceparent`` (a
malformed one is ignored and a new trace starts), opens a server span per request, answers with
the trace id (``X-Trace-Id`` and W3C ``traceresponse``), logs one structured line per request
(method, route template, status, duration, trace id), counts it in the HTTP metrics and refuses
bodies over the size limit with 413.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_runtime import errors
from agent_runtime.resilience.limiter import Limiter, LimiterConfig
from agent_runtime.state.machine import RunStatus
from agent_runtime.state.views import RunInfo
from observability import metrics as m
from observability.tracing import format_traceparent, tracer

if TYPE_CHECKING:
    from agent_runtime.flags import FlagStore
    from agent_runtime.runtime import Runtime
    from observability import Observability

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_PORT",
    "ServiceConfig",
    "create_app",
]

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8787
DEFAULT_MAX_BODY_BYTES: Final = 1024 * 1024
DEFAULT_RUN_CONCURRENCY: Final = 8
DEFAULT_RUN_QUEUE: Final = 32
DEFAULT_RUN_QUEUE_TIMEOUT: Final = 30.0

_log = logging.getLogger("agent_runtime.service")
_access = logging.getLogger("agent_runtime.service.access")


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """Settings of the service.

    Attributes:
        host: Address to listen on (``0.0.0.0`` to be scraped from a Docker network).
        port: TCP port.
        admin_token: Bearer token of the admin endpoints (None: admin endpoints disabled).
        max_body_bytes: Largest request body accepted (413 beyond).
        run_limiter: Limits on runs started through ``POST /runs``.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    admin_token: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    run_limiter: LimiterConfig = field(
        default_factory=lambda: LimiterConfig(
            DEFAULT_RUN_CONCURRENCY, DEFAULT_RUN_QUEUE, DEFAULT_RUN_QUEUE_TIMEOUT
        )
    )

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise errors.ConfigurationError(f"port must be 1-65535, got {self.port}")
        if self.max_body_bytes < 1:
            raise errors.ConfigurationError("max_body_bytes must be >= 1")
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise errors.ConfigurationError(
                "the admin token must be at least 16 characters (AGENT_RUNTIME_ADMIN_TOKEN); "
                "generate one with `python -c 'import secrets; print(secrets.token_urlsafe())'`"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServiceConfig:
        """Read ``AGENT_RUNTIME_SERVICE_HOST``/``_PORT``/``_MAX_BODY``,
        ``AGENT_RUNTIME_ADMIN_TOKEN`` and ``AGENT_RUNTIME_RUN_CONCURRENCY``/``_QUEUE``/
        ``_QUEUE_TIMEOUT``; ``overrides`` win over the environment."""
        env = os.environ if environ is None else environ

        def number(name: str, default: float, kind: type = int) -> Any:
            raw = env.get(name)
            if raw in (None, ""):
                return default
            try:
                return kind(raw)
            except ValueError:
                raise errors.ConfigurationError(
                    f"{name} must be a {kind.__name__}, got {raw!r}"
                ) from None

        values: dict[str, Any] = {
            "host": env.get("AGENT_RUNTIME_SERVICE_HOST") or DEFAULT_HOST,
            "port": number("AGENT_RUNTIME_SERVICE_PORT", DEFAULT_PORT),
            "admin_token": env.get("AGENT_RUNTIME_ADMIN_TOKEN") or None,
            "max_body_bytes": number("AGENT_RUNTIME_SERVICE_MAX_BODY", DEFAULT_MAX_BODY_BYTES),
            "run_limiter": LimiterConfig(
                number("AGENT_RUNTIME_RUN_CONCURRENCY", DEFAULT_RUN_CONCURRENCY),
                number("AGENT_RUNTIME_RUN_QUEUE", DEFAULT_RUN_QUEUE),
                number("AGENT_RUNTIME_RUN_QUEUE_TIMEOUT", DEFAULT_RUN_QUEUE_TIMEOUT, float),
            ),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


# -- middleware --------------------------------------------------------------------------------


class _ObservedRequests:
    """Trace, time, log and count every request; enforce the body size limit."""

    def __init__(self, app: ASGIApp, routes: list[Route], max_body_bytes: int) -> None:
        self.app = app
        self.routes = routes
        self.max_body_bytes = max_body_bytes

    def _route(self, scope: Scope) -> str:
        partial = None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route.path
            if match == Match.PARTIAL and partial is None:
                partial = route.path  # the path matched, the method did not (405)
        return partial or "(unmatched)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        route = self._route(scope)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        parent = propagate.extract(headers)
        started = time.perf_counter()
        status_box = {"status": 500}
        span = tracer().start_span(
            f"{method} {route}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": route},
        )
        if not span.get_span_context().is_valid:
            # No SDK tracer provider (tracing off): still give the request, and the runs it
            # starts, a trace id, continuing the caller's when it sent one.
            span = NonRecordingSpan(_fallback_context(parent))
        with trace.use_span(span, end_on_exit=True):
            span_ctx = span.get_span_context()
            trace_id = format(span_ctx.trace_id, "032x")
            extra_headers = [
                (b"x-trace-id", trace_id.encode()),
                (
                    b"traceresponse",
                    format_traceparent(trace_id, format(span_ctx.span_id, "016x")).encode(),
                ),
            ]

            async def send_with_trace(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status_box["status"] = message["status"]
                    message = {**message, "headers": [*message.get("headers", []), *extra_headers]}
                await send(message)

            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                response = _error(
                    413,
                    f"request body of {length} bytes is over the {self.max_body_bytes}-byte limit",
                )
                await response(scope, receive, send_with_trace)
            else:
                try:
                    await self.app(scope, receive, send_with_trace)
                except Exception as exc:
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    _log.exception("unhandled error in %s %s", method, route)
                    response = _error(500, "internal error; see the service logs for this trace")
                    await response(scope, receive, send_with_trace)
            status = status_box["status"]
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            duration = time.perf_counter() - started
            m.HTTP_REQUESTS.labels(method, route, str(status)).inc()
            m.HTTP_REQUEST_SECONDS.labels(method, route).observe(
                duration, exemplar={"trace_id": trace_id}
            )
            if route != "/metrics":
                _access.info(
                    "%s %s %d %.1f ms",
                    method,
                    route,
                    status,
                    duration * 1000,
                    extra={
                        "http_method": method,
                        "http_route": route,
                        "http_status": status,
                        "duration_ms": round(duration * 1000, 3),
                    },
                )


def _fallback_context(parent: Context) -> SpanContext:
    incoming = trace.get_current_span(parent).get_span_context()
    trace_id = incoming.trace_id if incoming.is_valid else secrets.randbits(128) or 1
    return SpanContext(trace_id, secrets.randbits(64) or 1, False, TraceFlags(TraceFlags.SAMPLED))


# -- the application ---------------------------------------------------------------------------


def create_app(
    runtime: Runtime,
    *,
    config: ServiceConfig | None = None,
    flags: FlagStore | None = None,
    observability: Observability | None = None,
) -> ASGIApp:
    """Build the ASGI application over ``runtime``.

    Args:
        runtime: The runtime whose runs the API starts and reads.
        config: Service settings (default: from the environment).
        flags: The feature-flag store the admin endpoints show and reload.
        observability: What ``observability.configure`` installed (for sink health).

    Returns:
        The ASGI application.
    """
    cfg = config or ServiceConfig.from_env()
    if flags is None:
        from agent_runtime.flags import default_store

        flags = default_store()
    flag_store = flags
    limiter = Limiter("runs", cfg.run_limiter)

    async def metrics(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        body = await asyncio.to_thread(encoder, REGISTRY)
        return Response(body, media_type=content_type)

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> Response:
        checks: dict[str, Any] = {}
        ready = True
        try:
            await asyncio.to_thread(runtime.store.ping)
            checks["database"] = {"ok": True}
        except errors.AgentRuntimeError as exc:
            ready = False
            checks["database"] = {"ok": False, "detail": str(exc)}
        for health in observability.health() if observability is not None else []:
            checks[f"sink:{health.name}"] = {
                "ok": health.healthy,
                "detail": health.detail,
                "queued": health.queued,
                "spooled": health.spooled,
                "dropped": health.dropped,
            }
            ready = ready and health.healthy
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    def authorize(request: Request) -> Response | None:
        if cfg.admin_token is None:
            return _error(
                403,
                "admin endpoints are disabled: no admin token is configured "
                "(set AGENT_RUNTIME_ADMIN_TOKEN)",
            )
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            response = _error(401, "missing bearer token: send Authorization: Bearer <token>")
            response.headers["WWW-Authenticate"] = 'Bearer realm="agent-runtime admin"'
            return response
        if not hmac.compare_digest(token.strip().encode(), cfg.admin_token.encode()):
            return _error(403, "wrong admin token")
        return None

    async def admin_flags(request: Request) -> Response:
        denied = authorize(request)
        if denied is not None:
            return denied
        current = await asyncio.to_thread(flag_store.current)
        return JSONResponse({"source": flag_store.source, "flags": current.as_dict()})

    async def admin_reload_flags(request: Request) -> Response:
        denied = authorize(request)
        if denied is not None:
            return denied
        try:
            reloaded = await asyncio.to_thread(flag_store.reload)
        except errors.FlagsError as exc:
            current = await asyncio.to_thread(flag_store.current)
            return _error(
                422,
                str(exc),
                source=exc.source,
                flags=current.as_dict(),
                note="the previous flags stay in force",
            )
        return JSONResponse({"source": flag_store.source, "flags": reloaded.as_dict()})

    async def start_run(request: Request) -> Response:
        body = bytearray()
        async for chunk in request.stream():  # chunked bodies have no Content-Length to check
            body += chunk
            if len(body) > cfg.max_body_bytes:
                return _error(413, f"request body is over the {cfg.max_body_bytes}-byte limit")
        try:
            payload = json.loads(bytes(body) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, f"request body is not valid JSON: {exc}")
        if not isinstance(payload, dict) or not isinstance(payload.get("workflow"), str):
            return _error(
                422,
                'expected a JSON object {"workflow": "<registered name>", "args": [...], '
                '"kwargs": {...}}',
            )
        args = payload.get("args", [])
        kwargs = payload.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            return _error(422, '"args" must be a JSON array and "kwargs" a JSON object')
        unknown = set(payload) - {"workflow", "args", "kwargs"}
        if unknown:
            return _error(422, f"unknown field(s): {', '.join(sorted(unknown))}")
        name = payload["workflow"]
        try:
            runtime._resolve(name)
        except errors.WorkflowNotFoundError as exc:
            return _error(404, str(exc), known=list(exc.known))
        try:
            acquired = await limiter.acquire_async()
        except errors.LimiterRejectedError as exc:
            response = _error(
                503,
                f"too many runs in progress ({exc.reason}); retry after {exc.retry_after:.1f} s",
            )
            response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
            return response
        try:
            handle = await asyncio.to_thread(runtime.start, name, *args, **kwargs)
        except BaseException:
            limiter.release(acquired)
            raise
        future = handle._future
        if future is None:  # pragma: no cover - start() always returns a local future
            limiter.release(acquired)
        else:
            future.add_done_callback(lambda _f: limiter.release(acquired))
        return JSONResponse(
            {"run_id": handle.id, "trace_id": handle.trace_id, "status": "pending"},
            status_code=202,
            headers={"Location": f"/runs/{handle.id}"},
        )

    async def get_run(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        row = await asyncio.to_thread(runtime.store.get_run, run_id)
        body: dict[str, Any] = RunInfo.from_row(row).as_dict()
        if row.status == RunStatus.SUCCESS.value:
            body["result"] = await asyncio.to_thread(runtime.get(run_id).result, 0)
        return JSONResponse(body)

    async def list_runs(request: Request) -> Response:
        status = request.query_params.getlist("status") or None
        valid = {s.value for s in RunStatus}
        bad = [s for s in status or [] if s not in valid]
        if bad:
            return _error(422, f"unknown status {bad[0]!r}; use one of {', '.join(sorted(valid))}")
        try:
            limit = int(request.query_params.get("limit", "50"))
        except ValueError:
            return _error(422, "limit must be a whole number")
        if not 1 <= limit <= 1000:
            return _error(422, "limit must be between 1 and 1000")
        rows = await asyncio.to_thread(
            runtime.store.list_runs,
            status=status,
            workflow=request.query_params.get("workflow"),
            limit=limit,
        )
        return JSONResponse({"runs": [RunInfo.from_row(r).as_dict() for r in rows]})

    routes = [
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/admin/flags", admin_flags, methods=["GET"]),
        Route("/admin/reload-flags", admin_reload_flags, methods=["POST"]),
        Route("/runs", start_run, methods=["POST"]),
        Route("/runs", list_runs, methods=["GET"]),
        Route("/runs/{run_id}", get_run, methods=["GET"]),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, str(exc))

    async def unavailable(request: Request, exc: Exception) -> Response:
        return _error(503, str(exc))

    exception_handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        errors.NotFoundError: not_found,
        errors.DatabaseUnavailableError: unavailable,
    }
    app = Starlette(routes=routes, exception_handlers=exception_handlers)
    app.state.runtime = runtime
    app.state.limiter = limiter
    return _ObservedRequests(app, routes, cfg.max_body_bytes)
