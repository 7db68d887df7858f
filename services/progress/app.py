"""Composition root of the progress service: settings, routes, subscriptions, lifespan."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from shared.service import ServiceSpec, create_app
from shared.settings import ServiceSettings


class ProgressSettings(ServiceSettings):
    DEFAULT_DATABASE = "lessonstream_progress"
    service_name: str = "progress"


def build_app(settings: ProgressSettings | None = None) -> FastAPI:
    """Factory for uvicorn (`uvicorn --factory services.progress.app:build_app`) and tests."""
    settings = settings or ProgressSettings()
    return create_app(
        ServiceSpec(
            name="progress",
            settings=settings,
            migrations=Path(__file__).parent / "migrations",
        )
    )
