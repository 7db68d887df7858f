"""Composition root of the enrollment service: settings, routes, errors, subscriptions."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.enrollment import api, handlers
from services.enrollment.settings import EnrollmentSettings
from services.enrollment.usecases import EnrollmentState
from shared.events import Topic
from shared.service import Runtime, ServiceSpec, create_app


def build_app(settings: EnrollmentSettings | None = None) -> FastAPI:
    """Factory for uvicorn (`uvicorn --factory services.enrollment.app:build_app`) and tests."""
    settings = settings or EnrollmentSettings()

    async def open_state(runtime: Runtime[EnrollmentState]) -> EnrollmentState:
        return EnrollmentState.open(runtime.pool, settings)

    return create_app(
        ServiceSpec(
            name="enrollment",
            settings=settings,
            migrations=Path(__file__).parent / "migrations",
            routers=list(api.ROUTERS),
            errors=api.ERRORS,
            subscriptions=handlers.subscriptions(settings),
            # What it publishes through its outbox, for the event documents (/asyncapi.json).
            publishes=[
                Topic.COURSE_CATALOG, Topic.ENROLLMENT_CHANGED, Topic.RECERTIFICATION_SCHEDULED, Topic.LEARNER_ERASED,
            ],
            open_state=open_state,
            title="Lessonstream enrollment: course catalog and enrollments",
            # The gateway asks on every request with Basic credentials (heartbeats included).
            quiet_routes=frozenset({("GET", "/internal/auth/basic")}),
        )
    )
