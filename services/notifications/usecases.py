"""What the notifications service does: queue the mail and the webhooks an event asks for,
manage webhook endpoints, read the sent-notification and delivery logs, replay a delivery;
and the state the service runs on (``NotificationsState``).

Only the queueing happens for an event, in the inbox transaction, so a redelivered event
is a no-op and the partition never waits on an SMTP server: sending is the sender loop's
job. An email cannot be taken back, so every event is first confirmed with the service
that owns it (progress for course-completed, certificates for certificate-issued and
certificate-revoked, enrollment for recertification-scheduled) and the mail is made from
the owner's copy; a forged or altered event is rejected (dead-lettered). A revocation or
reinstatement the certificate has changed again since is acknowledged without a mail: the
newer change has its own. Webhooks are queued in the same transaction from the same
confirmed copy: one delivery per enabled endpoint subscribed to the event's type. With an
LRS configured, xAPI statements are queued the same way (a destination kind of their own):
the course completed for a course-completed, the Video Profile session statements for a
video-session-ended, which is confirmed with progress first like everything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import orjson
from prometheus_client import Gauge

from services.notifications import domain, store, webhooks, xapi
from services.notifications.deliveries import DeliveryLoop
from services.notifications.sender import MailSender
from services.notifications.settings import NotificationsSettings
from shared import erasure
from shared.auth import User
from shared.db import Connection, Executor
from shared.events import (
    CertificateIssued,
    CourseCompleted,
    EnrollmentChanged,
    LearnerErased,
    RecertificationScheduled,
    VideoSessionEnded,
    utcnow,
)
from shared.inbox import EventContext
from shared.internal import (
    confirm_certificate,
    confirm_completion,
    confirm_enrollment_change,
    confirm_recertification,
    confirm_revocation,
    confirm_video_session,
)
from shared.listener import Listener


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
    deliveries: DeliveryLoop
    production: bool  # webhook targets must be public https addresses
    # Where statements' actors and activities live (the public base URL); None: no LRS is
    # configured and no statement is made.
    xapi_base_url: str | None = None
    # Wakes the sender and the delivery loop when any process queues work (``mail_due``,
    # ``delivery_due``: migration 004).
    listener: Listener | None = None

    async def close(self) -> None:
        if self.listener is not None:
            await self.listener.stop()
        await self.deliveries.stop()
        await self.sender.stop()
        await self.owners.close()


# Read at scrape from the database (``record_queue_figures``): every notifications process
# reports the same figures (take ``max by``).
MAIL_QUEUE = Gauge("lessonstream_mail_queue", "Mail still to be sent, by status (read at scrape)", ["status"])
DELIVERY_QUEUE = Gauge(
    "lessonstream_delivery_queue",
    "Deliveries still to be made (webhooks, xAPI statements), by destination kind and status (read at scrape)",
    ["kind", "status"],
)


async def record_queue_figures(state: NotificationsState, pool: asyncpg.Pool) -> None:
    """The mail and delivery queues by state, for ``/metrics``."""
    for status, n in (await store.queue_depth(pool)).items():
        MAIL_QUEUE.labels(status).set(n)
    for (kind, status), n in (await store.delivery_queue_depth(pool, state.deliveries.kinds)).items():
        DELIVERY_QUEUE.labels(kind, status).set(n)


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
        queued = 0 if isinstance(confirmed, RecertificationScheduled) else await _queue_webhooks(conn, confirmed)
        if isinstance(confirmed, CourseCompleted) and state.xapi_base_url is not None:
            queued += await _queue_statements(
                conn, confirmed, [xapi.course_completed(confirmed, state.xapi_base_url)]
            )
    if planned.status is domain.MailStatus.PENDING:
        state.sender.wake()
    if queued:
        state.deliveries.wake()


async def queue_enrollment_webhooks(state: NotificationsState, event: EnrollmentChanged, ctx: EventContext) -> None:
    """An enrollment change is mailed to nobody; it becomes webhooks if an endpoint wants it.
    Asking enrollment is skipped when none does (most changes, and a new consumer group
    reading the topic's history)."""
    if await ctx.already_applied():
        async with ctx.transaction():
            return
    if not await store.endpoints_want(ctx.pool, domain.event_type_of(event), event.occurred_at):
        async with ctx.transaction():
            return  # nobody to tell
    confirmed = await confirm_enrollment_change(state.owners.enrollment, event)
    async with ctx.transaction() as conn:
        queued = await _queue_webhooks(conn, confirmed)
    if queued:
        state.deliveries.wake()


async def queue_video_statements(state: NotificationsState, event: VideoSessionEnded, ctx: EventContext) -> None:
    """A viewing session's xAPI statements, from progress's own copy of the event (forged or
    altered: rejected, dead-lettered, nothing queued), queued in the inbox transaction."""
    if state.xapi_base_url is None:
        return  # unreachable: video-sessions is consumed only with an LRS (handlers.subscriptions)
    if await ctx.already_applied():
        async with ctx.transaction():
            return
    confirmed = await confirm_video_session(state.owners.progress, event)
    statements = xapi.video_session(confirmed, state.xapi_base_url)
    async with ctx.transaction() as conn:
        queued = await _queue_statements(conn, confirmed, statements)
    if queued:
        state.deliveries.wake()


async def _queue_statements(
    conn: Connection, event: CourseCompleted | VideoSessionEnded, statements: list[xapi.Statement]
) -> int:
    return await store.queue_statements(
        conn, event_id=event.event_id, event_type=event.type,
        statements=[(str(s["id"]), orjson.dumps(s).decode()) for s in statements],
    )


async def _queue_webhooks(conn: Connection, event: domain.WebhookEvent) -> int:
    return await store.queue_webhooks(
        conn,
        event_type=domain.event_type_of(event),
        message_id=domain.webhook_message_id(event.event_id),
        event_id=event.event_id,
        body=orjson.dumps(domain.webhook_body(event)).decode(),
        occurred_at=event.occurred_at,
    )


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


# --- Webhook endpoints (admin API) -----------------------------------------------------


@dataclass(frozen=True)
class EndpointChanges:
    """What a PATCH changes (None: unchanged)."""

    url: str | None = None
    event_types: list[str] | None = None
    description: str | None = None
    owner_email: str | None = None
    enabled: bool | None = None


async def _check_url(url: str, *, production: bool) -> None:
    try:
        await webhooks.check_target(url, production=production)
    except webhooks.TargetRefused as exc:
        raise domain.WebhookUrlNotAllowed(str(exc)) from exc


async def create_endpoint(
    pool: asyncpg.Pool, admin: User, *, url: str, event_types: list[str], description: str,
    owner_email: str | None, production: bool,
) -> tuple[dict[str, Any], str]:
    """Register an endpoint owned by ``owner_email`` (default: the admin's address); the
    endpoint and its secret, which is shown this once."""
    owner = (owner_email or admin.email).strip()
    if not owner:
        raise domain.OwnerEmailRequired()
    await _check_url(url, production=production)
    secret = domain.new_secret()
    endpoint = await store.create_endpoint(
        pool, url=url, event_types=list(dict.fromkeys(event_types)), description=description, owner_email=owner,
        created_by=admin.id, secret=secret,
    )
    return endpoint, secret


async def list_endpoints(db: Executor, *, page: int, per_page: int) -> tuple[list[dict[str, Any]], int]:
    return await store.list_endpoints(db, limit=per_page, offset=(page - 1) * per_page)


async def get_endpoint(db: Executor, endpoint_id: int) -> dict[str, Any]:
    endpoint = await store.get_endpoint(db, endpoint_id)
    if endpoint is None:
        raise domain.WebhookNotFound(endpoint_id)
    return endpoint


async def update_endpoint(
    state: NotificationsState, pool: asyncpg.Pool, endpoint_id: int, changes: EndpointChanges
) -> dict[str, Any]:
    """Change an endpoint. Enabling a disabled one forgets its failure streak and releases
    its held deliveries (due at once, with a fresh schedule); disabling holds its pending ones."""
    if changes.url is not None:
        await _check_url(changes.url, production=state.production)
    released = 0
    async with pool.acquire() as conn, conn.transaction():
        current = await store.get_endpoint(conn, endpoint_id, lock=True)
        if current is None:
            raise domain.WebhookNotFound(endpoint_id)
        await store.update_endpoint(
            conn, endpoint_id, url=changes.url,
            event_types=list(dict.fromkeys(changes.event_types)) if changes.event_types is not None else None,
            description=changes.description,
            owner_email=changes.owner_email.strip() if changes.owner_email is not None else None,
        )
        if changes.enabled is True and not current["enabled"]:
            await store.set_endpoint_enabled(conn, endpoint_id, True, None)
            released = await store.release_deliveries(conn, domain.WEBHOOK_KIND, endpoint_id)
        elif changes.enabled is False and current["enabled"]:
            await store.set_endpoint_enabled(conn, endpoint_id, False, "disabled by an admin")
            await store.hold_deliveries(conn, domain.WEBHOOK_KIND, endpoint_id)
        updated = await store.get_endpoint(conn, endpoint_id)
    if released:
        state.deliveries.wake()
    assert updated is not None  # locked above
    return updated


async def delete_endpoint(pool: asyncpg.Pool, endpoint_id: int) -> None:
    """The endpoint goes, and its deliveries with it (a delivery in flight finishes, unrecorded)."""
    async with pool.acquire() as conn, conn.transaction():
        if not await store.delete_endpoint(conn, endpoint_id):
            raise domain.WebhookNotFound(endpoint_id)


async def rotate_secret(pool: asyncpg.Pool, endpoint_id: int) -> tuple[dict[str, Any], str]:
    """A new secret, shown this once; the previous one keeps signing beside it for
    ``domain.ROTATION_OVERLAP`` so that receivers can switch over."""
    secret = domain.new_secret()
    async with pool.acquire() as conn, conn.transaction():
        if not await store.rotate_secret(conn, endpoint_id, secret, domain.ROTATION_OVERLAP.total_seconds()):
            raise domain.WebhookNotFound(endpoint_id)
        endpoint = await store.get_endpoint(conn, endpoint_id)
    assert endpoint is not None
    return endpoint, secret


# --- The delivery log and replay (admin API) --------------------------------------------


async def list_deliveries(
    db: Executor, endpoint_id: int, where: domain.DeliveryFilter, *, page: int, per_page: int
) -> tuple[list[dict[str, Any]], int]:
    await get_endpoint(db, endpoint_id)
    rows, total = await store.list_deliveries(
        db, domain.WEBHOOK_KIND, endpoint_id, where, limit=per_page, offset=(page - 1) * per_page
    )
    return [_of_endpoint(r) for r in rows], total


def _of_endpoint(delivery: dict[str, Any]) -> dict[str, Any]:
    """A webhook delivery's destination is its endpoint."""
    return {**delivery, "endpoint_id": delivery["destination_id"]}


async def get_delivery(db: Executor, endpoint_id: int, delivery_id: int) -> dict[str, Any]:
    await get_endpoint(db, endpoint_id)
    delivery = await store.get_delivery(db, domain.WEBHOOK_KIND, endpoint_id, delivery_id)
    if delivery is None:
        raise domain.DeliveryNotFound(delivery_id)
    return _of_endpoint(delivery)


async def replay_delivery(
    state: NotificationsState, pool: asyncpg.Pool, endpoint_id: int, delivery_id: int
) -> dict[str, Any]:
    """Queue a delivery again (same webhook-id and body, a fresh schedule). For a disabled
    endpoint it is held until the endpoint is enabled; one in flight is left as it is."""
    async with pool.acquire() as conn, conn.transaction():
        endpoint = await store.get_endpoint(conn, endpoint_id, lock=True)
        if endpoint is None:
            raise domain.WebhookNotFound(endpoint_id)
        if await store.get_delivery(conn, domain.WEBHOOK_KIND, endpoint_id, delivery_id) is None:
            raise domain.DeliveryNotFound(delivery_id)
        await store.replay_delivery(conn, domain.WEBHOOK_KIND, endpoint_id, delivery_id, held=not endpoint["enabled"])
    if endpoint["enabled"]:
        state.deliveries.wake()
    return await get_delivery(pool, endpoint_id, delivery_id)


# --- xAPI statement deliveries (admin API) ----------------------------------------------
# The one LRS is destination 0 of the xAPI kind: its deliveries are listed and replayed as a
# webhook endpoint's are, without an endpoint to look up.


async def list_statement_deliveries(
    db: Executor, where: domain.DeliveryFilter, *, page: int, per_page: int
) -> tuple[list[dict[str, Any]], int]:
    return await store.list_deliveries(db, domain.XAPI_KIND, 0, where, limit=per_page, offset=(page - 1) * per_page)


async def get_statement_delivery(db: Executor, delivery_id: int) -> dict[str, Any]:
    delivery = await store.get_delivery(db, domain.XAPI_KIND, 0, delivery_id)
    if delivery is None:
        raise domain.DeliveryNotFound(delivery_id)
    return delivery


async def replay_statement_delivery(state: NotificationsState, pool: asyncpg.Pool, delivery_id: int) -> dict[str, Any]:
    """Send a statement again (same id and body, a fresh schedule; the LRS keeps one copy).
    Without an LRS configured it waits in the queue; one in flight is left as it is."""
    async with pool.acquire() as conn, conn.transaction():
        if await store.get_delivery(conn, domain.XAPI_KIND, 0, delivery_id) is None:
            raise domain.DeliveryNotFound(delivery_id)
        await store.replay_delivery(conn, domain.XAPI_KIND, 0, delivery_id, held=False)
    state.deliveries.wake()
    return await get_statement_delivery(pool, delivery_id)


# --- erasure and export (GDPR) -------------------------------------------------------------


def _addresses(personal: list[str]) -> list[str]:
    return [value for value in personal if "@" in value]


async def _erase(conn: Connection, user_id: str, pseudonym: str) -> tuple[dict[str, int], list[str]]:
    personal = await store.learner_personal_data(conn, user_id)
    needles = erasure.needles([user_id, *personal])
    return await store.erase_learner(conn, user_id, needles, _addresses(personal)), personal


async def erase_learner(state: NotificationsState, event: LearnerErased, ctx: EventContext) -> None:
    """Once enrollment confirms the request: the learner's mails, their attempts and every
    webhook or xAPI delivery naming them deleted, the outbox purged of them."""
    await erasure.apply(ctx, state.owners.enrollment, event, _erase)


async def export_learner(pool: asyncpg.Pool, user_id: str) -> dict[str, Any]:
    """The learner's mails and the deliveries naming them."""
    async with pool.acquire() as conn:
        found = await erasure.export_rows(conn, store.LEARNER_TABLES, user_id)
        personal = await store.learner_personal_data(conn, user_id)
        found["deliveries"] = await store.learner_deliveries(
            conn, erasure.needles([user_id, *personal]), _addresses(personal))
    return found
