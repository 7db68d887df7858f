"""Prometheus metrics common to every service, and the ``/metrics`` endpoint.

One exporter per process: every service process (each uvicorn process, each replica, each
certificate worker) serves its own ``/metrics`` and is its own scrape target; Prometheus
adds them up (``sum by``) or, for figures every process of a group reports alike (a
consumer group's lag, a database's outbox), takes one (``max by``). Why not prometheus_client's
multiprocess mode: every process is started as one uvicorn process on its own port or in its
own container (``lessonstream/stack.py``, ``docker-compose.yml``), several of them are
scaled as replicas, not as uvicorn workers; and the figures read at scrape time (lag, outbox,
queues) need a live process to answer, which a directory of counter files cannot do. So a
service refuses to run under several uvicorn workers (``check_single_process``): their
scrapes would each see one worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

HTTP_REQUESTS = Histogram(
    "lessonstream_http_request_duration_seconds",
    "HTTP request latency by route template",
    ["service", "method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
OUTBOX_PUBLISHED = Counter(
    "lessonstream_outbox_published_total", "Outbox rows published to Kafka", ["service"]
)
# Read from the database at scrape: every process of one database reports the same figure
# (take ``max by (database)``).
OUTBOX_PENDING = Gauge(
    "lessonstream_outbox_pending", "Outbox rows not yet published (read at scrape)", ["service", "database"]
)
OUTBOX_OLDEST_AGE = Gauge(
    "lessonstream_outbox_oldest_pending_age_seconds",
    "Age of the oldest outbox row not yet published, 0 when none is (read at scrape)",
    ["service", "database"],
)
OUTBOX_REPUBLISHED = Counter(
    "lessonstream_outbox_republished_total",
    "Retained outbox rows queued again for a broker that had not received them",
    ["service"],
)
EVENTS_CONSUMED = Counter(
    "lessonstream_events_consumed_total",
    "Events handled by consumers, by outcome (applied, duplicate, dead_lettered, retried, erased)",
    ["service", "topic", "outcome"],
)
EVENT_HANDLING = Histogram(
    "lessonstream_event_handling_seconds", "Time to handle one event", ["service", "topic"]
)
EVENT_AGE = Histogram(
    "lessonstream_event_age_seconds",
    "Time from an event's occurred_at to the start of its handling (the lag in time, also where "
    "the broker cannot tell the lag in messages)",
    ["service", "group", "topic"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
DEAD_LETTERS = Counter(
    "lessonstream_dead_letters_total",
    "Messages a consumer gave up on and wrote to the dead-letter topic, by source topic",
    ["service", "group", "source_topic"],
)
# Every process of a consumer group reports the whole group's lag (take ``max by (group, topic)``).
CONSUMER_LAG = Gauge(
    "lessonstream_consumer_lag_messages",
    "Messages of a topic the consumer group has not committed yet: log end minus committed "
    "offset, summed over the topic's partitions (read from the broker at scrape)",
    ["service", "group", "topic"],
)
SCRAPE_ERRORS = Counter(
    "lessonstream_metrics_scrape_errors_total",
    "Figures that could not be read at scrape (what: outbox, lag, or the service's own)",
    ["service", "what"],
)

# What a scrape may spend reading figures from the database and the broker: a slow
# dependency leaves the last figures (or none) rather than a scrape that times out.
SCRAPE_TIMEOUT_S = 3.0


def check_single_process(argv: list[str] | None = None) -> None:
    """Refuse several uvicorn workers behind one port (``--workers N`` or ``WEB_CONCURRENCY``):
    each scrape would see one worker's figures. Scale with replicas instead (see the module).
    A worker sees uvicorn's command line: spawned processes inherit ``sys.argv``."""
    args = sys.argv if argv is None else argv
    asked = os.environ.get("WEB_CONCURRENCY", "").strip()
    for i, arg in enumerate(args):
        if arg == "--workers" and i + 1 < len(args):
            asked = args[i + 1]
        elif arg.startswith("--workers="):
            asked = arg.split("=", 1)[1]
    # A benchmark of raw throughput may run workers anyway, accepting per-worker figures.
    allowed = os.environ.get("LESSONSTREAM_ALLOW_UVICORN_WORKERS", "").lower() in {"1", "true", "yes"}
    if asked and asked.strip() != "1" and not allowed:
        raise RuntimeError(
            f"{asked} uvicorn workers (--workers or WEB_CONCURRENCY): run one uvicorn process per container "
            "or port and scale with replicas; each process is its own metrics target"
        )


async def read_figures(service: str, readers: dict[str, Callable[[], Awaitable[None]]]) -> None:
    """Run the scrape-time readers side by side, each bounded; one failing costs only its figures."""

    async def one(what: str, reader: Callable[[], Awaitable[None]]) -> None:
        try:
            await asyncio.wait_for(reader(), SCRAPE_TIMEOUT_S)
        except Exception as exc:
            SCRAPE_ERRORS.labels(service, what).inc()
            log.warning("metrics: reading the %s figures failed: %r", what, exc)

    await asyncio.gather(*(one(what, reader) for what, reader in readers.items()))


def router(refresh: Callable[[], Awaitable[None]] | None = None) -> APIRouter:
    """``GET /metrics``: what this process recorded, after ``refresh`` read the figures
    taken at scrape (outbox, lag, queues)."""
    routes = APIRouter()

    @routes.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        if refresh is not None:
            await refresh()
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return routes
