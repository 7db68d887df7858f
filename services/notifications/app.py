"""Composition root of the notifications service: settings, routes, errors, subscriptions,
and the state (the mail sender, the delivery loop with its destination kinds, the owners'
clients) opened on the runtime's pool."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.notifications import api, handlers
from services.notifications.deliveries import DeliveryLoop, DestinationKind
from services.notifications.lrs import XapiDestination
from services.notifications.sender import MailSender
from services.notifications.settings import NotificationsSettings
from services.notifications.usecases import NotificationsState, Owners, max_event_age, record_queue_figures
from services.notifications.webhooks import WebhookDestination
from shared.internal import internal_client
from shared.listener import Listener
from shared.service import Runtime, ServiceSpec, create_app


def build_app(settings: NotificationsSettings | None = None) -> FastAPI:
    """Factory for uvicorn (`uvicorn --factory services.notifications.app:build_app`) and tests."""
    settings = settings or NotificationsSettings()

    async def open_state(runtime: Runtime[NotificationsState]) -> NotificationsState:
        sender = MailSender(settings)
        # Destination kinds: one module each (docs/notifications.md, "Deliveries").
        kinds: list[DestinationKind] = [WebhookDestination(settings, mail_queued=sender.wake)]
        if settings.xapi_enabled:
            kinds.append(XapiDestination(settings))
        deliveries = DeliveryLoop(settings, kinds)
        listener = Listener(settings.database_url)
        listener.on("mail_due", sender.wake)
        listener.on("delivery_due", deliveries.wake)
        state = NotificationsState(
            sender=sender,
            owners=Owners(
                progress=internal_client(settings, settings.progress_internal_url),
                certificates=internal_client(settings, settings.certificates_internal_url),
                enrollment=internal_client(settings, settings.enrollment_internal_url),
            ),
            from_address=settings.mail_from_address,
            max_event_age=max_event_age(settings),
            deliveries=deliveries,
            production=settings.env == "production",
            xapi_base_url=settings.public_base_url.rstrip("/") if settings.xapi_enabled else None,
            listener=listener,
        )
        await sender.start(runtime.pool)
        await deliveries.start(runtime.pool)
        # Started last: its first connect wakes both, which look for work queued meanwhile.
        listener.start()
        return state

    return create_app(
        ServiceSpec(
            name="notifications",
            settings=settings,
            migrations=Path(__file__).parent / "migrations",
            routers=api.ROUTERS,
            errors=api.ERRORS,
            subscriptions=handlers.subscriptions(settings),
            open_state=open_state,
            read_figures=lambda runtime: record_queue_figures(runtime.state, runtime.pool),
        )
    )
