"""What every service process is made of: database, migrations, outbox relay, Kafka
subscribers, and a FastAPI app with errors, auth, request ids, metrics and health.

A service's ``app.py`` describes itself with a ``ServiceSpec`` and calls
``create_app``; this module owns the start-up and shut-down order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from faststream.kafka import KafkaBroker
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.specification import AsyncAPI
from prometheus_client import REGISTRY

from shared import bus, db, dead_letters, metrics, openapi, outbox
from shared.auth import TokenVerifier
from shared.errors import ErrorMap, error_response, install_error_handlers
from shared.events import EVENT_TYPES, Topic
from shared.http import RequestContextMiddleware
from shared.inbox import Subscription, invalid_message_middleware, prune, subscribe
from shared.lag import LagMonitor, Watched
from shared.logs import configure_logging
from shared.outbox import OutboxRelay
from shared.periodic import Periodic
from shared.retry import Backoff, retry
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)

S = TypeVar("S")

# Kafka may start after the service: its subscribers keep trying, at most every 5 s.
BROKER_START_BACKOFF = Backoff(first_s=0.2, max_s=5.0)


@dataclass
class ServiceSpec(Generic[S]):
    name: str
    settings: ServiceSettings
    migrations: Path
    routers: list[APIRouter] = field(default_factory=list)
    subscriptions: list[Subscription[Any]] = field(default_factory=list)
    # Consumer groups of the service's other processes whose lag this one reports too: the
    # certificates API reports its workers' groups, so their backlog stays on the dashboards
    # (and in the alerts) while every worker is stopped, hung or not started yet.
    also_watched: list[Watched] = field(default_factory=list)
    publishes: list[Topic] = field(default_factory=list)  # documented in /asyncapi.json
    # The service's own live objects (clients, buffers, background loops) as one typed
    # value: opened once the pool and the relay are up and before any subscriber starts,
    # closed after the subscribers have stopped (see ``Runtime.start`` and ``stop``).
    # Without a ``close_state``, a state with an ``async close()`` is closed by it.
    open_state: Callable[[Runtime[S]], Awaitable[S]] | None = None
    close_state: Callable[[S], Awaitable[None]] | None = None
    # Where the service's domain errors become HTTP answers: one place per service (its api.py).
    errors: ErrorMap = field(default_factory=dict)
    title: str = ""
    # (method, route template) whose successful requests get no access-log line: the
    # heartbeat path would write thousands a second. Metrics still count them; errors log.
    quiet_routes: frozenset[tuple[str, str]] = frozenset()
    # Whose migrations these are: processes sharing one database (the certificates API and
    # its workers) must record them under the same name, or each would apply them again.
    migration_component: str = ""
    # The service's own figures read at scrape (``/metrics``), beside the outbox and the lag
    # every service has: notifications' queues by state. Bounded and isolated by the caller.
    read_figures: Callable[[Runtime[S]], Awaitable[None]] | None = None


async def _close_method(state: object) -> None:
    close = getattr(state, "close", None)
    if close is not None:
        await close()


class Runtime(Generic[S]):
    """The live resources of one service process, shared with routes via ``app.state``."""

    def __init__(self, spec: ServiceSpec[S]) -> None:
        self.spec = spec
        self._state: S | None = None
        self.settings = spec.settings
        self._pool: asyncpg.Pool | None = None
        invalid = invalid_message_middleware(spec.settings, lambda: self.pool, spec.subscriptions)
        # FastStream's own consumer and publisher metrics (received, in process, duration by
        # handler), under our prefix; its container reuses what the registry already holds.
        faststream_metrics = KafkaPrometheusMiddleware(
            registry=REGISTRY, app_name=spec.name, metrics_prefix="lessonstream_faststream"
        )
        self.broker: KafkaBroker = bus.create_broker(spec.settings, middlewares=[faststream_metrics, invalid])
        self.lag = LagMonitor(
            spec.settings, [*(Watched(sub.consumer, sub.topic) for sub in spec.subscriptions), *spec.also_watched]
        )
        self.relay = OutboxRelay(spec.settings)
        self.broker_started = False
        self._broker_task: asyncio.Task[None] | None = None
        self._pruning = Periodic(3600, self._prune, "inbox and dead-letter pruning", at_once=True)
        for sub in spec.subscriptions:
            subscribe(self.broker, spec.settings, lambda: self.pool, sub, lambda: self._state)
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
            self._pruning.start()

    async def _start_broker(self) -> None:
        async def start_once() -> None:
            await bus.ensure_topics(self.settings)
            if self.spec.subscriptions:
                # The subscribers start side by side: each joins its own consumer group,
                # and one after another (FastStream's ``broker.start``) a service with six
                # groups took seconds per group to become ready.
                await self.broker.connect()
                await asyncio.gather(*(sub.start() for sub in self.broker.subscribers))
                self.broker.running = True

        async def stop_half_started() -> None:
            with contextlib.suppress(Exception):
                await self.broker.stop()

        await retry(start_once, on=(Exception,), backoff=BROKER_START_BACKOFF, what="starting the subscribers",
                    after_failure=stop_half_started)
        self.broker_started = True

    async def _prune(self) -> None:
        deleted = await prune(self.pool, self.settings.inbox_retention_days)
        if deleted:
            log.info("pruned %d applied-event markers", deleted)
        settled = await dead_letters.prune_settled(self.pool, self.settings.dead_letter_retention_days)
        if settled:
            log.info("pruned %d settled dead letters", settled)

    async def read_figures(self) -> None:
        """The figures read at scrape: this database's outbox, the lag of this process's
        consumer groups, and the service's own (``ServiceSpec.read_figures``)."""
        name = self.spec.name
        database = self.spec.migration_component or name

        async def outbox_figures() -> None:
            pending, oldest_s = await outbox.pending_figures(self.pool)
            metrics.OUTBOX_PENDING.labels(name, database).set(pending)
            metrics.OUTBOX_OLDEST_AGE.labels(name, database).set(oldest_s)

        async def lag_figures() -> None:
            try:
                lags = await self.lag.read()
            except Exception:
                # No figure rather than a stale one: the last reading may be long past.
                for w in self.lag.watched:
                    with contextlib.suppress(KeyError):
                        metrics.CONSUMER_LAG.remove(name, w.group, w.topic.value)
                raise
            for w, lag in lags.items():
                metrics.CONSUMER_LAG.labels(name, w.group, w.topic.value).set(lag)

        readers: dict[str, Callable[[], Awaitable[None]]] = {}
        if self._pool is not None:
            readers["outbox"] = outbox_figures
        if self.lag.watched:
            readers["lag"] = lag_figures
        own = self.spec.read_figures
        if own is not None and self._state is not None:
            readers[name] = lambda: own(self)
        await metrics.read_figures(name, readers)

    async def stop(self) -> None:
        """Subscribers first (no event arrives at a half-stopped service), then the state,
        the relay (which may still publish what closing the state wrote), and the pool."""
        await self._pruning.stop()
        if self._broker_task is not None:
            self._broker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._broker_task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.broker.stop(), 10)
        state, self._state = self._state, None
        close = self.spec.close_state or _close_method
        if state is not None:
            try:
                await close(state)
            except Exception:
                log.exception("closing the service's state failed")
        await self.relay.stop()
        await self.lag.close()
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


def create_app(spec: ServiceSpec[Any]) -> FastAPI:
    configure_logging(spec.name, spec.settings.log_level)
    metrics.check_single_process()
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
    install_error_handlers(app, spec.errors)

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

    app.include_router(metrics.router(runtime.read_figures))
    for router in spec.routers:
        app.include_router(router)
    app.add_middleware(RequestContextMiddleware, service=spec.name, quiet_routes=spec.quiet_routes)
    # /openapi.json: the public operations only, accurate on errors and auth (shared.openapi).
    openapi.install(app)
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
