"""Composition root of the notifications service: settings, routes, subscriptions, lifespan."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from shared.service import ServiceSpec, create_app
from shared.settings import ServiceSettings


class NotificationsSettings(ServiceSettings):
    DEFAULT_DATABASE = "lessonstream_notifications"
    service_name: str = "notifications"


def build_app(settings: NotificationsSettings | None = None) -> FastAPI:
    """Factory for uvicorn (`uvicorn --factory services.notifications.app:build_app`) and tests."""
    settings = settings or NotificationsSettings()
    return create_app(
        ServiceSpec(
            name="notifications",
            settings=settings,
            migrations=Path(__file__).parent / "migrations",
        )
    )
