"""Composition root of the enrollment service: settings, routes, errors, subscriptions."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.enrollment import api, handlers
from services.enrollment.settings import EnrollmentSettings
from shared.service import ServiceSpec, create_app


def build_app(settings: EnrollmentSettings | None = None) -> FastAPI:
    """Factory for uvicorn (`uvicorn --factory services.enrollment.app:build_app`) and tests."""
    settings = settings or EnrollmentSettings()
    return create_app(
        ServiceSpec(
            name="enrollment",
            settings=settings,
            migrations=Path(__file__).parent / "migrations",
            routers=list(api.ROUTERS),
            errors=api.ERRORS,
            subscriptions=handlers.subscriptions(settings),
            title="Lessonstream enrollment: course catalog and enrollments",
        )
    )
