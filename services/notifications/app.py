"""Composition root of the notifications service: settings, routes, subscriptions, lifespan."""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi import FastAPI

from services.notifications.api import router
from services.notifications.handlers import Handlers
from services.notifications.sender import MailSender
from services.notifications.settings import NotificationsSettings
from shared.internal import internal_client
from shared.service import Runtime, ServiceSpec, create_app

__all__ = ["NotificationsSettings", "build_app"]


def build_app(settings: NotificationsSettings | None = None) -> FastAPI:
    """Factory for uvicorn (`uvicorn --factory services.notifications.app:build_app`) and tests."""
    settings = settings or NotificationsSettings()
    sender = MailSender(settings)
    clients: dict[str, httpx.AsyncClient] = {}  # the owners' internal APIs, open while running
    handlers = Handlers(settings, sender, clients.__getitem__)

    async def start_sender(runtime: Runtime) -> None:
        clients["progress"] = internal_client(settings, settings.progress_internal_url)
        clients["certificates"] = internal_client(settings, settings.certificates_internal_url)
        await sender.start(runtime.pool)
        runtime.extras["mail_sender"] = sender

    async def stop_sender(runtime: Runtime) -> None:
        await sender.stop()
        for client in clients.values():
            await client.aclose()
        clients.clear()

    return create_app(
        ServiceSpec(
            name="notifications",
            settings=settings,
            migrations=Path(__file__).parent / "migrations",
            routers=[router],
            subscriptions=handlers.subscriptions(),
            on_startup=[start_sender],
            on_shutdown=[stop_sender],
        )
    )
