"""What every service process is made of: database, migrations, outbox relay, Kafka
subscribers, and a FastAPI app with errors, auth, request ids, metrics and health.

A service's ``app.py`` describes itself with a ``ServiceSpec`` and calls
``create_app``; this module owns the start-up and shut-down order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import bus, db, metrics
from shared.auth import TokenVerifier
from shared.errors import error_response, install_error_handlers
from shared.events import EVENT_TYPES, Topic
from shared.inbox import Subscription, invalid_message_middleware, prune, subscribe
from shared.logs import configure_logging, request_id_var
from shared.outbox import OutboxRelay
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)

S = TypeVar("S")


@dataclass
class ServiceSpec(Generic[S]):
    name: str
    settings: ServiceSettings
    migrations: Path
    routers: list[APIRouter] = field(default_factory=list)
    subscriptions: list[Subscription[Any]] = field(default_factory=list)
    publishes: list[Topic] = field(default_factory=list)  # documented in /asyncapi.json
    # The service's own live objects (clients, buffers, background loops) as one typed
    # value: opened once the pool and the relay are up and before any subscriber starts,
    # closed after the subscribers have stopped (see ``Runtime.start`` and ``stop``).
    open_state: Callable[[Runtime[S]], Awaitable[S]] | None = None
    close_state: Callable[[S], Awaitable[None]] | None = None
    title: str = ""
    # (method, route template) whose successful requests get no access-log line: the
    # heartbeat path would write thousands a second. Metrics still count them; errors log.
    quiet_routes: frozenset[tuple[str, str]] = frozenset()
    # Whose migrations these are: processes sharing one database (the certificates API and
    # its workers) must record them under the same name, or each would apply them again.
    migration_component: str = ""


class Runtime(Generic[S]):
    """The live resources of one service process, shared with routes via ``app.state``."""

    def __init__(self, spec: ServiceSpec[S]) -> None:
        self.spec = spec
        self._state: S | None = None
        self.settings = spec.settings
        self._pool: asyncpg.Pool | None = None
        invalid = invalid_message_middleware(spec.settings, lambda: self.pool, spec.subscriptions)
        self.broker: KafkaBroker = bus.create_broker(spec.settings, middlewares=[invalid])
        self.relay = OutboxRelay(spec.settings)
        self.broker_started = False
        self._broker_task: asyncio.Task[None] | None = None
        self._prune_task: asyncio.Task[None] | None = None
        for sub in spec.subscriptions:
            subscribe(self.broker, spec.settings, lambda: self.pool, sub)
        for topic in spec.publishes:
            # Declared for the AsyncAPI document only: events leave through the outbox relay.
            self.broker.publisher(
                spec.settings.topic(topic.value), schema=EVENT_TYPES[topic], title=f"{spec.name}:{topic.value}",
                description=f"{EVENT_TYPES[topic].__name__} events published by {spec.name} (through its outbox)",
            )

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("database pool is not open")
        return self._pool

    @property
    def state(self) -> S:
        """The service's own objects (``ServiceSpec.open_state``), once the runtime has started."""
        if self._state is None:
            raise RuntimeError(f"{self.spec.name} has no state: not started, or it has none")
        return self._state

    async def start(self) -> None:
        """Database, relay, the service's own state, then (in the background) subscribers.

        The state is opened before any subscriber can deliver an event, so handlers always
        find it; ``stop`` undoes it all in the reverse order.
        """
        s = self.settings
        component = self.spec.migration_component or self.spec.name
        await db.migrate_service(s.database_url, component, self.spec.migrations)
        self._pool = await db.create_pool(s.database_url, min_size=s.db_pool_min, max_size=s.db_pool_max)
        await self.relay.start()
        if self.spec.open_state is not None:
            self._state = await self.spec.open_state(self)
        # Kafka may come up after us: subscribers start in the background, the API serves now.
        self._broker_task = asyncio.create_task(self._start_broker(), name="broker-start")
        if self.spec.subscriptions:
            self._prune_task = asyncio.create_task(self._prune_inbox(), name="inbox-prune")

    async def _start_broker(self) -> None:
        backoff = 0.2
        while True:
            try:
                await bus.ensure_topics(self.settings)
                if self.spec.subscriptions:
                    await self.broker.start()
                self.broker_started = True
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("broker not available yet: %r; retrying in %.1fs", exc, backoff)
                with contextlib.suppress(Exception):
                    await self.broker.stop()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _prune_inbox(self) -> None:
        while True:
            try:
                deleted = await prune(self.pool, self.settings.inbox_retention_days)
                if deleted:
                    log.info("pruned %d applied-event markers", deleted)
            except Exception as exc:
                log.warning("inbox pruning failed: %r", exc)
            await asyncio.sleep(3600)

    async def stop(self) -> None:
        """Subscribers first (no event arrives at a half-stopped service), then the state,
        the relay (which may still publish what closing the state wrote), and the pool."""
        for task in (self._broker_task, self._prune_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.broker.stop(), 10)
        state, self._state = self._state, None
        if state is not None and self.spec.close_state is not None:
            try:
                await self.spec.close_state(state)
            except Exception:
                log.exception("closing the service's state failed")
        await self.relay.stop()
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 10)

    async def readiness(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(self.pool.fetchval("SELECT 1"), 2)
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unavailable: {type(exc).__name__}"
        checks["broker"] = "ok" if await self.relay.broker_reachable() else "unavailable"
        if self.spec.subscriptions:
            checks["subscribers"] = "ok" if self.broker_started else "starting"
        return checks


class BareRoute(Route):
    """A route to a bare ASGI endpoint (a hot path skipping FastAPI's request handling) that
    still names its template in the scope, as FastAPI's routes do, for metrics and logs."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match != Match.NONE:
            child["route"] = self
        return match, child


class RequestContextMiddleware:
    """Request id in and out, per-route latency metrics, one JSON access-log line.

    Pure ASGI (not BaseHTTPMiddleware): it sits on the heartbeat hot path.
    """

    def __init__(
        self, app: ASGIApp, service: str, quiet_routes: frozenset[tuple[str, str]] = frozenset()
    ) -> None:
        self.app = app
        self.service = service
        self.quiet = quiet_routes | {("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics")}
        self.log = logging.getLogger(f"{service}.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")[:128]
                break
        request_id = request_id or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        extra_headers = [
            (b"x-request-id", request_id.encode("latin-1")),
            (b"x-lessonstream-service", self.service.encode()),
        ]

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = list(message.get("headers", [])) + extra_headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            metrics.HTTP_REQUESTS.labels(self.service, scope["method"], template, str(status)).observe(elapsed)
            if status >= 400 or (scope["method"], template) not in self.quiet:
                self.log.info(
                    "%s %s %d", scope["method"], scope["path"], status,
                    extra={"fields": {"status": status, "ms": round(elapsed * 1000, 2), "route": template}},
                )
            request_id_var.reset(token)


def create_app(spec: ServiceSpec[Any]) -> FastAPI:
    configure_logging(spec.name, spec.settings.log_level)
    runtime = Runtime(spec)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title=spec.title or f"Lessonstream {spec.name}", lifespan=lifespan)
    app.state.runtime = runtime
    app.state.settings = spec.settings
    app.state.token_verifier = TokenVerifier(spec.settings)
    install_error_handlers(app)

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": spec.name}

    @app.get("/ready", include_in_schema=False, response_model=None)
    async def ready() -> JSONResponse | dict[str, Any]:
        checks = await runtime.readiness()
        if all(v == "ok" for v in checks.values()):
            return {"status": "ready", "service": spec.name, "checks": checks}
        return error_response(503, "not_ready", f"{spec.name} is not ready", checks=checks)

    @app.get("/asyncapi.json", include_in_schema=False)
    async def asyncapi() -> Response:
        """The topics this service consumes and publishes, with their event schemas."""
        document = AsyncAPI(runtime.broker, title=f"Lessonstream {spec.name} events", version="1.0.0")
        return Response(document.to_specification().to_json(), media_type="application/json")

    app.include_router(metrics.router)
    for router in spec.routers:
        app.include_router(router)
    app.add_middleware(RequestContextMiddleware, service=spec.name, quiet_routes=spec.quiet_routes)
    return app


def runtime_of(request: Request) -> Runtime[Any]:
    runtime: Runtime[Any] = request.app.state.runtime
    return runtime


def state_of(request: Request, kind: type[S]) -> S:
    """The service's typed state (``ServiceSpec.open_state``) for a route."""
    state = runtime_of(request).state
    if not isinstance(state, kind):
        raise TypeError(f"the service's state is {type(state).__name__}, not {kind.__name__}")
    return state


def _pool(request: Request) -> asyncpg.Pool:
    return runtime_of(request).pool


DbPool = Annotated[asyncpg.Pool, Depends(_pool)]
