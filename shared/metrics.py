"""Prometheus metrics common to every service, and the ``/metrics`` endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

HTTP_REQUESTS = Histogram(
    "lessonstream_http_request_duration_seconds",
    "HTTP request latency by route template",
    ["service", "method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
OUTBOX_PUBLISHED = Counter(
    "lessonstream_outbox_published_total", "Outbox rows published to Kafka", ["service"]
)
OUTBOX_PENDING = Gauge(
    "lessonstream_outbox_pending", "Outbox rows seen waiting by the relay (up to one batch)", ["service"]
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

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def prometheus_metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
