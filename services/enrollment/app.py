"""Composition root of the enrollment service: settings, routes, subscriptions, lifespan."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.enrollment.api import ROUTERS
from services.enrollment.handlers import SUBSCRIPTIONS
from shared.service import ServiceSpec, create_app
from shared.settings import ServiceSettings


class EnrollmentSettings(ServiceSettings):
    DEFAULT_DATABASE = "lessonstream_enrollment"
    service_name: str = "enrollment"


def build_app(settings: EnrollmentSettings | None = None) -> FastAPI:
    """Factory for uvicorn (`uvicorn --factory services.enrollment.app:build_app`) and tests."""
    settings = settings or EnrollmentSettings()
    return create_app(
        ServiceSpec(
            name="enrollment",
            settings=settings,
            migrations=Path(__file__).parent / "migrations",
            routers=list(ROUTERS),
            subscriptions=list(SUBSCRIPTIONS),
            title="Lessonstream enrollment: course catalog and enrollments",
        )
    )
