"""What the notifications service does: queue the mail an event asks for, and read the
sent-notification log; and the state the service runs on (``NotificationsState``).

Only the queueing happens for an event, in the inbox transaction, so a redelivered event
is a no-op and the partition never waits on an SMTP server: sending is the sender loop's
job. An email cannot be taken back, so every event is first confirmed with the service
that owns it (progress for course-completed, certificates for certificate-issued and
certificate-revoked, enrollment for recertification-scheduled) and the mail is made from
the owner's copy; a forged or altered event is rejected (dead-lettered). A revocation or
reinstatement the certificate has changed again since is acknowledged without a mail: the
newer change has its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx

from services.notifications import domain, store
from services.notifications.sender import MailSender
from services.notifications.settings import NotificationsSettings
from shared.db import Executor
from shared.events import CertificateIssued, CourseCompleted, RecertificationScheduled, utcnow
from shared.inbox import EventContext
from shared.internal import confirm_certificate, confirm_completion, confirm_recertification, confirm_revocation


@dataclass
class Owners:
    """Clients of the internal APIs of the services whose events are mailed."""

    progress: httpx.AsyncClient
    certificates: httpx.AsyncClient
    enrollment: httpx.AsyncClient

    async def close(self) -> None:
        await self.progress.aclose()
        await self.certificates.aclose()
        await self.enrollment.aclose()


@dataclass
class NotificationsState:
    """What the service runs on while it is up: the running sender, the owners' clients,
    and the settings the queueing reads."""

    sender: MailSender
    owners: Owners
    from_address: str
    max_event_age: timedelta | None  # None: events of any age are mailed

    async def close(self) -> None:
        await self.sender.stop()
        await self.owners.close()


def max_event_age(settings: NotificationsSettings) -> timedelta | None:
    hours = settings.mail_max_event_age_hours
    return timedelta(hours=hours) if hours > 0 else None


# --- Queueing (event handlers) ---------------------------------------------------------


async def queue_mail(state: NotificationsState, event: domain.MailedEvent, ctx: EventContext) -> None:
    """Confirm ``event`` with its owner, then queue its mail (or log it as skipped) in the
    inbox transaction and wake the sender."""
    if await ctx.already_applied():
        async with ctx.transaction():
            return  # a redelivery: the owner need not be asked again
    confirmed = await _confirm(state.owners, event)
    if confirmed is None:
        async with ctx.transaction():
            return  # superseded by a newer change of the certificate: nothing to tell
    planned = domain.plan(
        confirmed, from_address=state.from_address, now=utcnow(), max_age=state.max_event_age
    )
    source = store.Source(
        topic=confirmed.topic.value, partition=ctx.partition, offset=ctx.offset,
        consumer_group=ctx.consumer, key=confirmed.key(),
    )
    payload: dict[str, Any] = confirmed.model_dump(mode="json")
    async with ctx.transaction() as conn:
        await store.enqueue(conn, planned, payload, source)
    if planned.status is domain.MailStatus.PENDING:
        state.sender.wake()


async def _confirm(owners: Owners, event: domain.MailedEvent) -> domain.MailedEvent | None:
    """The owner's copy to mail from; None for a superseded certificate status change."""
    if isinstance(event, CourseCompleted):
        return await confirm_completion(owners.progress, event)
    if isinstance(event, CertificateIssued):
        return await confirm_certificate(owners.certificates, event)
    if isinstance(event, RecertificationScheduled):
        return await confirm_recertification(owners.enrollment, event)
    return await confirm_revocation(owners.certificates, event)


# --- The sent-notification log (admin API) ---------------------------------------------


async def list_mail(
    db: Executor, where: domain.MailFilter, *, page: int, per_page: int
) -> tuple[list[dict[str, Any]], int]:
    """One page of the log, newest first, and how many mails match in all."""
    return await store.list_mail(db, where, limit=per_page, offset=(page - 1) * per_page)


async def get_mail(db: Executor, mail_id: int) -> dict[str, Any]:
    """One mail with its attempt log; ``NotificationNotFound`` if there is no such mail."""
    row = await store.get_mail(db, mail_id)
    if row is None:
        raise domain.NotificationNotFound(mail_id)
    return row
