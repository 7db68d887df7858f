"""Event entry points: each consumed event becomes one row in the outgoing-mail queue.

Only the queueing happens here, in the inbox transaction, so a redelivered event is a
no-op and the partition never waits on an SMTP server: sending is the sender loop's job.
An email cannot be taken back, so every event is first confirmed with the service that
owns it (progress for course-completed, certificates for certificate-issued) and the mail
is made from the owner's copy; a forged or altered event is rejected (dead-lettered).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx

from services.notifications import domain, store
from services.notifications.sender import MailSender
from services.notifications.settings import NotificationsSettings
from shared.events import CertificateIssued, CourseCompleted, Topic, utcnow
from shared.inbox import EventContext, Subscription
from shared.internal import confirm_certificate, confirm_completion

# One consumer group per topic: a rebalance on one topic does not pause the other.
COMPLETED_CONSUMER = "notifications-course-completed"
CERTIFICATE_CONSUMER = "notifications-certificate-issued"


@dataclass
class Owners:
    """Clients of the internal APIs of the services whose events are mailed."""

    progress: httpx.AsyncClient
    certificates: httpx.AsyncClient

    async def close(self) -> None:
        await self.progress.aclose()
        await self.certificates.aclose()


class Handlers:
    def __init__(
        self, settings: NotificationsSettings, sender: MailSender, owners: Callable[[], Owners]
    ) -> None:
        self._settings = settings
        self._sender = sender
        self._owners = owners  # open while the service runs
        hours = settings.mail_max_event_age_hours
        self._max_age = timedelta(hours=hours) if hours > 0 else None

    async def _queue(self, event: CourseCompleted | CertificateIssued, ctx: EventContext) -> None:
        planned = domain.plan(
            event, from_address=self._settings.mail_from_address, now=utcnow(), max_age=self._max_age
        )
        source = store.Source(
            topic=event.topic.value, partition=ctx.partition, offset=ctx.offset,
            consumer_group=ctx.consumer, key=event.key(),
        )
        payload: dict[str, Any] = event.model_dump(mode="json")
        async with ctx.transaction() as conn:
            await store.enqueue(conn, planned, payload, source)
        if planned.status is domain.MailStatus.PENDING:
            self._sender.wake()

    async def on_course_completed(self, event: CourseCompleted, ctx: EventContext) -> None:
        if await ctx.already_applied():
            async with ctx.transaction():
                return  # a redelivery: the owner need not be asked again
        await self._queue(await confirm_completion(self._owners().progress, event), ctx)

    async def on_certificate_issued(self, event: CertificateIssued, ctx: EventContext) -> None:
        if await ctx.already_applied():
            async with ctx.transaction():
                return
        await self._queue(await confirm_certificate(self._owners().certificates, event), ctx)

    def subscriptions(self) -> list[Subscription[Any]]:
        return [
            Subscription(Topic.COURSE_COMPLETED, CourseCompleted, self.on_course_completed, COMPLETED_CONSUMER),
            Subscription(
                Topic.CERTIFICATE_ISSUED, CertificateIssued, self.on_certificate_issued, CERTIFICATE_CONSUMER
            ),
        ]
