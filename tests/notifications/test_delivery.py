"""Delivery guarantees against a real SMTP server: once per (event, kind), retries through
an outage, permanent failures not retried, bounded tries ending in a dead letter, bursts."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import pytest
from asyncpg.exceptions import InternalClientError

from services.notifications import store
from services.notifications.domain import MailKind, message_id
from shared import dead_letters
from shared.events import DeadLetter, Topic
from tests.helpers import TestEnv, TopicReader, eventually, produce_raw
from tests.notifications.conftest import FROM_ADDRESS, Publisher, Service, ServiceFactory, wait_for
from tests.notifications.events import certificate, completed
from tests.notifications.smtp_server import MailServer


def ids(smtp: MailServer) -> Counter[str]:
    return Counter(r.message_id for r in smtp.received)


async def test_redelivered_event_sends_nothing_more(
    test_env: TestEnv, smtp: MailServer, notifications: ServiceFactory, publisher: Publisher
) -> None:
    event = completed("eve")
    async with notifications(smtp) as service:
        await publisher.publish(event)
        await wait_for(lambda: smtp.to("eve@learners.example"), what="first delivery")

        # The same message twice more, byte for byte, as a redelivery after a rebalance would.
        topic = test_env.topic_prefix + Topic.COURSE_COMPLETED.value
        for _ in range(2):
            await produce_raw(test_env.kafka_bootstrap, topic, event.model_dump_json().encode(), event.key().encode())
        # And the same event published again by its producer (an outbox row relayed twice).
        await publisher.publish(event)
        marker = completed("marker")
        await publisher.publish(marker)
        await wait_for(lambda: smtp.to("marker@learners.example"), what="the event after the duplicates")

        assert len(smtp.to("eve@learners.example")) == 1
        row = await eventually(lambda: service.sent(event.event_id), what="the mail recorded as sent")
        assert row["attempts"] == 1 and row["status"] == "sent"
        assert len(await service.attempts(row["id"])) == 1


async def test_smtp_down_for_a_while_then_each_email_arrives_exactly_once(
    smtp: MailServer, notifications: ServiceFactory, publisher: Publisher
) -> None:
    events = [completed(f"o{i}") for i in range(10)] + [certificate(f"o{i}") for i in range(10)]
    async with notifications(smtp) as service:
        await smtp.astop()
        await publisher.publish(*events)

        async def every_mail_failed_twice() -> bool:
            rows = await service.runtime.pool.fetch(
                "SELECT mail_id, count(*) AS n FROM mail_attempts WHERE outcome = 'temporary_failure' GROUP BY mail_id"
            )
            return len(rows) == 20 and all(r["n"] >= 2 for r in rows)

        await eventually(every_mail_failed_twice, what="retries while the SMTP server is down")
        assert smtp.received == []
        await smtp.astart()

        await wait_for(lambda: len(smtp.received) >= 20, timeout=60, what="20 mails after the outage")
        expected = {message_id(MailKind.COURSE_COMPLETED, e.event_id, FROM_ADDRESS) for e in events[:10]}
        expected |= {message_id(MailKind.CERTIFICATE_READY, e.event_id, FROM_ADDRESS) for e in events[10:]}

        async def all_recorded() -> bool:
            return all(r["status"] == "sent" for r in await service.mail())

        await eventually(all_recorded, what="outcomes recorded")
        counts = ids(smtp)
        assert set(counts) == expected and set(counts.values()) == {1}
        for row in await service.mail():
            outcomes = [a["outcome"] for a in await service.attempts(row["id"])]
            assert outcomes[-1] == "sent" and set(outcomes[:-1]) == {"temporary_failure"}
            assert len(outcomes) == row["attempts"] >= 3


async def test_permanent_failure_is_recorded_not_retried_and_dead_lettered(
    test_env: TestEnv, smtp: MailServer, notifications: ServiceFactory, publisher: Publisher
) -> None:
    smtp.handler.refuse_permanently.add("ghost@learners.example")
    event = completed("ghost")
    dlq = test_env.topic_prefix + Topic.DEAD_LETTER.value
    async with TopicReader(test_env.kafka_bootstrap, dlq) as dead, notifications(smtp) as service:
        await publisher.publish(event)

        async def failed() -> list[dict[str, Any]]:
            return [r for r in await service.mail(event_id=event.event_id) if r["status"] == "failed"]

        [row] = await eventually(failed, what="permanent failure recorded")
        [attempt] = await service.attempts(row["id"])
        assert attempt["outcome"] == "permanent_failure" and attempt["smtp_code"] == 550
        assert "No such user" in attempt["detail"]

        [letter_msg] = await wait_for(lambda: dead.messages, what="dead letter")
        letter = DeadLetter.model_validate_json(letter_msg.value)
        assert letter.source_topic == "course-completed" and letter.attempts == 1
        assert "550" in letter.error and str(event.event_id) in letter.value
        assert letter.message_key == event.key() and letter.partition >= 0 and letter.offset >= 0

        # Later mail still flows, and the refused one was never tried again.
        for i in range(3):
            await publisher.publish(completed(f"after{i}"))
        await wait_for(lambda: len(smtp.received) == 3, what="mail after the failure")
        assert smtp.handler.rcpt_attempts["ghost@learners.example"] == 1
        [row] = await service.mail(event_id=event.event_id)
        assert row["status"] == "failed" and row["attempts"] == 1
        assert len(dead.messages) == 1

        # Kept with the service's dead letters; a replay writes nothing (the event was applied).
        pool = service.runtime.pool
        [kept] = await pool.fetch("SELECT id, event_id, letter_id FROM dead_letters")
        assert (kept["event_id"], kept["letter_id"]) == (event.event_id, letter.event_id)
        outcome, _ = await dead_letters.replay(pool, kept["id"], by="test", retention_days=30)
        assert outcome is dead_letters.ReplayOutcome.ALREADY_APPLIED
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE event_type = 'replay'") == 0


async def test_temporary_failures_end_after_bounded_tries_in_the_dead_letter_topic(
    test_env: TestEnv, smtp: MailServer, notifications: ServiceFactory, publisher: Publisher
) -> None:
    smtp.handler.refuse_temporarily.add("full@learners.example")
    event = certificate("full")
    dlq = test_env.topic_prefix + Topic.DEAD_LETTER.value
    async with TopicReader(test_env.kafka_bootstrap, dlq) as dead, notifications(
        smtp, mail_max_attempts=3
    ) as service:
        await publisher.publish(event, completed("other"))
        [letter_msg] = await wait_for(lambda: dead.messages, what="dead letter after 3 tries")
        letter = DeadLetter.model_validate_json(letter_msg.value)
        assert letter.source_topic == "certificate-issued" and letter.attempts == 3
        assert "451" in letter.error and "expired" in letter.error

        [row] = await service.mail(event_id=event.event_id)
        assert row["status"] == "expired" and row["attempts"] == 3
        attempts = await service.attempts(row["id"])
        assert [(a["outcome"], a["smtp_code"]) for a in attempts] == [("temporary_failure", 451)] * 3
        # Backoff: the tries were spread out, not fired back to back.
        gaps = [(b["started_at"] - a["started_at"]).total_seconds() for a, b in itertools.pairwise(attempts)]
        assert all(g >= 0.07 for g in gaps), gaps
        assert smtp.handler.rcpt_attempts["full@learners.example"] == 3
        # The other learner's mail was not held up.
        assert len(smtp.to("other@learners.example")) == 1


async def test_burst_of_200_completions_is_delivered_without_loss_over_reused_connections(
    smtp: MailServer, notifications: ServiceFactory, publisher: Publisher
) -> None:
    events = [completed(f"b{i:03d}", course_id=100 + i % 7) for i in range(200)]
    async with notifications(smtp, smtp_connections=4) as service:
        for start in range(0, 200, 50):
            await publisher.publish(*events[start : start + 50])
        await wait_for(lambda: len(smtp.received) >= 200, timeout=120, what="200 mails")

        async def all_recorded() -> bool:
            sent = await service.runtime.pool.fetchval("SELECT count(*) FROM outgoing_mail WHERE status = 'sent'")
            return bool(sent == 200)

        await eventually(all_recorded, what="200 outcomes recorded")
        counts = ids(smtp)
        assert set(counts) == {message_id(MailKind.COURSE_COMPLETED, e.event_id, FROM_ADDRESS) for e in events}
        assert set(counts.values()) == {1}
        assert {r.rcpt_tos[0] for r in smtp.received} == {f"b{i:03d}@learners.example" for i in range(200)}
        # Connections are reused: 200 mails over at most one session per worker.
        sessions = {r.session for r in smtp.received}
        assert len(sessions) <= service.settings.smtp_connections, len(sessions)


async def test_mail_claimed_by_a_worker_that_died_is_sent_again_under_the_same_message_id(
    smtp: MailServer, notifications: ServiceFactory, publisher: Publisher
) -> None:
    event = completed("crash")
    await smtp.astop()  # the first attempt cannot finish: it is cut off below
    async with notifications(smtp, mail_lease_s=1.0) as service:
        await publisher.publish(event)

        async def claimed() -> list[dict[str, Any]]:
            return [r for r in await service.mail(event_id=event.event_id) if r["attempts"] >= 1]

        [row] = await eventually(claimed, what="mail claimed")

        async def crashed() -> bool:
            return await _leave_as_if_crashed_mid_send(service, row["id"])

        await eventually(crashed, what="mail between two tries")
        await smtp.astart()

        [received] = await wait_for(lambda: smtp.to("crash@learners.example"), what="takeover after the lease")
        assert received.message_id == message_id(MailKind.COURSE_COMPLETED, event.event_id, FROM_ADDRESS)

        async def sent() -> bool:
            return bool((await service.mail(event_id=event.event_id))[0]["status"] == "sent")

        await eventually(sent, what="outcome recorded")
        outcomes = [a["outcome"] for a in await service.attempts(row["id"])]
        assert "interrupted" in outcomes and outcomes[-1] == "sent"
        assert len(smtp.to("crash@learners.example")) == 1


async def _leave_as_if_crashed_mid_send(service: Service, mail_id: int) -> bool:
    """Rewrite a mail waiting for its next try into the state a process killed between
    claim and record leaves: ``sending`` under a lease, its last attempt logged in flight."""
    async with service.runtime.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE outgoing_mail SET status = 'sending', attempts = attempts + 1, "
            "lease_until = now() + interval '1 second' WHERE id = $1 AND status = 'pending' RETURNING attempts",
            mail_id,
        )
        if row is None:
            return False  # a worker is trying it right now
        await conn.execute(
            "INSERT INTO mail_attempts (mail_id, attempt, outcome) VALUES ($1, $2, 'sending')",
            mail_id, row["attempts"],
        )
        return True


async def test_a_sender_worker_goes_on_after_an_unexpected_error(
    smtp: MailServer, notifications: ServiceFactory, publisher: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An error no handler expects (the kind asyncpg raises as InternalClientError when a
    # connection breaks at an unlucky moment) must not end the workers: every worker meets
    # it on its first claims, then the database answers again.
    real_claim = store.claim_next
    failures = {"left": 2 * 4}

    async def claim_failing_at_first(*args: Any, **kwargs: Any) -> Any:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise InternalClientError("connection broke at an unlucky moment")
        return await real_claim(*args, **kwargs)

    monkeypatch.setattr(store, "claim_next", claim_failing_at_first)
    event = completed("unlucky")
    async with notifications(smtp, smtp_connections=2):
        await publisher.publish(event)
        [received] = await wait_for(lambda: smtp.to("unlucky@learners.example"), what="mail after the errors")
        assert received.message_id == message_id(MailKind.COURSE_COMPLETED, event.event_id, FROM_ADDRESS)
    assert failures["left"] == 0
