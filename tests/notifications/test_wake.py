"""The sender sleeps until it is told: mail queued by any process wakes it at commit
(``mail_due``, migration 003) and it polls only rarely, so these tests configure a safety
poll far longer than they wait. After the database drops the listening connection (as a
restart does), the listener connects again and looks for what was queued meanwhile."""

from __future__ import annotations

from uuid import uuid4

import asyncpg

from services.notifications import store
from services.notifications.usecases import NotificationsState
from shared.listener import Listener
from tests.helpers import eventually
from tests.notifications.conftest import Publisher, Service, ServiceFactory, wait_for
from tests.notifications.events import completed
from tests.notifications.smtp_server import MailServer

# Far beyond every wait below: a mail that arrives was woken, not polled.
# (An open SMTP connection's idle close also wakes a worker: kept beyond the waits too.)
NEVER = {"mail_poll_interval_s": 600.0, "delivery_poll_interval_s": 600.0, "smtp_idle_close_s": 600.0}
PROMPTLY_S = 5.0


async def queue_copy(service: Service, mail_id: int, recipient: str) -> str:
    """Queue a mail as another process would: a row committed on a connection of its own,
    which this process hears of only through the notification."""
    message_id = f"<{uuid4()}@copy.example>"
    conn = await asyncpg.connect(service.settings.database_url)
    try:
        await conn.execute(
            """
            INSERT INTO outgoing_mail (event_id, kind, user_id, course_id, recipient, message_id, event,
                                       source_topic, source_partition, source_offset, consumer_group,
                                       message_key, status)
            SELECT $2, kind, user_id, course_id, $3, $4, event, source_topic, source_partition,
                   source_offset, consumer_group, message_key, 'pending'
            FROM outgoing_mail WHERE id = $1
            """,
            mail_id, uuid4(), recipient, message_id,
        )
    finally:
        await conn.close()
    return message_id


def listener_of(service: Service) -> Listener:
    state = service.runtime.state
    assert isinstance(state, NotificationsState) and state.listener is not None
    return state.listener


async def test_mail_queued_by_another_process_is_sent_without_waiting_for_the_poll(
    smtp: MailServer, notifications: ServiceFactory, publisher: Publisher
) -> None:
    async with notifications(smtp, **NEVER) as service:
        # A completion's mail: queued by this process's consumer, sent at once.
        event = completed("ana")
        await publisher.publish(event)
        await wait_for(lambda: smtp.to("ana@learners.example"), timeout=PROMPTLY_S, what="the completion's mail")
        mail = (await service.mail(event_id=event.event_id))[0]
        # Workers are idle again, sleeping for the (long) safety poll.
        await eventually(lambda: service.sent(event.event_id), what="the mail recorded as sent")

        message_id = await queue_copy(service, mail["id"], "copy@learners.example")
        received = await wait_for(lambda: smtp.to("copy@learners.example"), timeout=PROMPTLY_S,
                                  what="the mail another process queued")
        assert received[0].message_id == message_id


async def test_listener_comes_back_after_the_database_drops_it(
    smtp: MailServer, notifications: ServiceFactory, publisher: Publisher
) -> None:
    async with notifications(smtp, **NEVER) as service:
        listener = listener_of(service)
        await eventually(lambda: _true(listener.connections >= 1), what="the listener connected")
        event = completed("bo")
        await publisher.publish(event)
        await wait_for(lambda: smtp.to("bo@learners.example"), timeout=PROMPTLY_S, what="the first mail")
        mail = (await service.mail(event_id=event.event_id))[0]
        await eventually(lambda: service.sent(event.event_id), what="the mail recorded as sent")

        # What a restart does to every connection: the server ends the listener's.
        before = listener.connections
        ended = await service.runtime.pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'lessonstream-listener' AND datname = current_database()"
        )
        assert ended == 1
        # Queued at once: it may commit while nobody listens; the reconnect looks for it.
        await queue_copy(service, mail["id"], "first-after@learners.example")
        await wait_for(lambda: smtp.to("first-after@learners.example"), timeout=PROMPTLY_S,
                       what="the mail queued while the listener was away")
        await eventually(lambda: _true(listener.connections > before), what="the listener reconnected")

        # And it listens again: a mail queued now wakes the sender too.
        await queue_copy(service, mail["id"], "later@learners.example")
        await wait_for(lambda: smtp.to("later@learners.example"), timeout=PROMPTLY_S,
                       what="a mail queued after the reconnect")


async def _true(value: bool) -> bool:
    return value


async def test_an_empty_queue_is_not_due(smtp: MailServer, notifications: ServiceFactory) -> None:
    """Idle workers sleep until the next due time: an empty queue has none (it once read as
    "due now", and every idle worker polled a hundred times a second)."""
    async with notifications(smtp, **NEVER) as service:
        pool = service.runtime.pool
        assert await store.next_due_in(pool) is None
        assert await store.deliveries_due_in(pool, ["webhook"]) is None
