"""Composition root of the progress service: settings, routes, subscriptions, lifespan."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from pydantic import AliasChoices, Field

from services.progress.analytics.api import ERRORS as ANALYTICS_ERRORS
from services.progress.analytics.api import router as analytics_router
from services.progress.analytics.folder import AnalyticsFolder
from services.progress.api import heartbeat_route, internal_router, router
from services.progress.handlers import Handlers
from services.progress.heartbeats import HeartbeatBuffer
from services.progress.replicas import Replicas
from services.progress.tracking import ProgressState, Tracker
from shared.events import CertificateIssued, CourseCatalogEntry, EnrollmentChanged, Topic
from shared.inbox import Subscription
from shared.internal import internal_client
from shared.service import Runtime, ServiceSpec, create_app
from shared.settings import ServiceSettings


class ProgressSettings(ServiceSettings):
    DEFAULT_DATABASE = "lessonstream_progress"
    service_name: str = "progress"
    # Heartbeat positions are written in one batch at least this often; a crash can lose
    # at most this much of them (never a completion).
    heartbeat_flush_interval_s: float = Field(
        0.5, gt=0, le=10,
        validation_alias=AliasChoices("HEARTBEAT_FLUSH_INTERVAL_S", "heartbeat_flush_interval_s"),
    )
    # How long this process trusts a catalog entry or an active enrollment it has read.
    replica_cache_ttl_s: float = Field(
        5.0, ge=0, validation_alias=AliasChoices("REPLICA_CACHE_TTL_S", "replica_cache_ttl_s")
    )
    # How often pending analytics deltas are folded into the cohort histograms. Reports
    # are exact either way; folding keeps them fast.
    analytics_fold_interval_s: float = Field(
        1.0, gt=0, le=300,
        validation_alias=AliasChoices("ANALYTICS_FOLD_INTERVAL_S", "analytics_fold_interval_s"),
    )
    # Course-completed decisions deferred while the enrollment service was unreachable are
    # re-checked this often; a failing one waits this long times 2**attempts (at most 60 s).
    completion_recheck_interval_s: float = Field(
        1.0, gt=0, le=60,
        validation_alias=AliasChoices("COMPLETION_RECHECK_INTERVAL_S", "completion_recheck_interval_s"),
    )


def build_app(settings: ProgressSettings | None = None) -> FastAPI:
    """Factory for uvicorn (`uvicorn --factory services.progress.app:build_app`) and tests."""
    settings = settings or ProgressSettings()
    handlers = Handlers()

    async def open_state(runtime: Runtime[ProgressState]) -> ProgressState:
        client = internal_client(settings, settings.enrollment_internal_url)
        replicas = Replicas(runtime.pool, client, settings.replica_cache_ttl_s)
        buffer = HeartbeatBuffer(runtime.pool, settings.heartbeat_flush_interval_s)
        buffer.start()
        folder = AnalyticsFolder(runtime.pool, settings.analytics_fold_interval_s)
        folder.start()
        handlers.replicas = replicas
        interval = settings.completion_recheck_interval_s
        tracker = Tracker(runtime.pool, replicas, buffer, recheck_backoff_s=interval)
        tracker.start_rechecks(interval)
        return ProgressState(client, replicas, buffer, folder, tracker)

    async def close_state(state: ProgressState) -> None:
        await state.close()

    app = create_app(
        ServiceSpec(
            name="progress",
            settings=settings,
            migrations=Path(__file__).parent / "migrations",
            routers=[router, analytics_router, internal_router],
            errors=ANALYTICS_ERRORS,
            quiet_routes=frozenset({("POST", "/api/progress")}),
            subscriptions=[
                Subscription(Topic.COURSE_CATALOG, CourseCatalogEntry, handlers.on_course, "progress-catalog"),
                Subscription(
                    Topic.ENROLLMENT_CHANGED, EnrollmentChanged, handlers.on_enrollment, "progress-enrollments"
                ),
                Subscription(
                    Topic.CERTIFICATE_ISSUED, CertificateIssued, handlers.on_certificate, "progress-certificates"
                ),
            ],
            open_state=open_state,
            close_state=close_state,
        )
    )
    app.router.routes.insert(0, heartbeat_route)  # matched first: POST /api/progress, see api.HeartbeatEndpoint
    return app
