"""Composition root of the progress service: settings, routes, subscriptions, lifespan."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.progress.analytics_api import router as analytics_router
from services.progress.analytics_folder import AnalyticsFolder
from services.progress.api import heartbeat_route, internal_router, router
from services.progress.handlers import Handlers
from services.progress.heartbeats import HeartbeatBuffer
from services.progress.replicas import Replicas
from services.progress.settings import ProgressSettings
from services.progress.tracking import ProgressState, Tracker
from shared.events import CertificateIssued, CourseCatalogEntry, EnrollmentChanged, Topic
from shared.inbox import Subscription
from shared.internal import internal_client
from shared.service import Runtime, ServiceSpec, create_app


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
