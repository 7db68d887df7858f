"""Composition root of the notifications service: settings, routes, subscriptions, lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from services.notifications.api import router
from services.notifications.handlers import Handlers, Owners
from services.notifications.sender import MailSender
from services.notifications.settings import NotificationsSettings
from shared.internal import internal_client
from shared.service import Runtime, ServiceSpec, create_app

__all__ = ["NotificationsSettings", "build_app"]


@dataclass
class NotificationsState:
    sender: MailSender
    owners: Owners

    async def close(self) -> None:
        await self.sender.stop()
        await self.owners.close()


def build_app(settings: NotificationsSettings | None = None) -> FastAPI:
    """Factory for uvicorn (`uvicorn --factory services.notifications.app:build_app`) and tests."""
    settings = settings or NotificationsSettings()
    sender = MailSender(settings)
    opened: list[NotificationsState] = []  # the running state, for the handlers

    def owners() -> Owners:
        return opened[-1].owners

    handlers = Handlers(settings, sender, owners)

    async def open_state(runtime: Runtime[NotificationsState]) -> NotificationsState:
        state = NotificationsState(sender, Owners(
            progress=internal_client(settings, settings.progress_internal_url),
            certificates=internal_client(settings, settings.certificates_internal_url),
        ))
        await sender.start(runtime.pool)
        opened.append(state)
        return state

    async def close_state(state: NotificationsState) -> None:
        opened.remove(state)
        await state.close()

    return create_app(
        ServiceSpec(
            name="notifications",
            settings=settings,
            migrations=Path(__file__).parent / "migrations",
            routers=[router],
            subscriptions=handlers.subscriptions(),
            open_state=open_state,
            close_state=close_state,
        )
    )
