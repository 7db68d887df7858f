"""No email for an event its owner does not confirm: forged or altered course-completed and
certificate-issued events are dead-lettered with the reason and send nothing; genuine ones
are mailed from the owner's copy; an owner that cannot answer only delays the mail."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from uuid import uuid4

from shared.events import DeadLetter, Event, Topic
from tests.helpers import TestEnv, TopicReader, eventually, produce_raw
from tests.notifications.conftest import Owners, Publisher, ServiceFactory, wait_for
from tests.notifications.events import certificate, completed
from tests.notifications.smtp_server import MailServer


async def produce_forged(env: TestEnv, event: Event) -> None:
    """Straight onto the topic, as anyone able to write to it could."""
    await produce_raw(env.kafka_bootstrap, env.topic_prefix + event.topic.value,
                      event.model_dump_json().encode(), event.key().encode())

async def dead_letters_by_case(env: TestEnv, dead: TopicReader, forged: Mapping[str, Event]) -> dict[str, DeadLetter]:
    """Put each forged event straight onto its topic and wait for the dead letter of every
    one: the dead letters by case."""
    for event in forged.values():
        await produce_forged(env, event)

    async def rejected() -> list[DeadLetter] | None:
        found = [DeadLetter.model_validate_json(m.value) for m in dead.messages]
        return found if len(found) >= len(forged) else None

    letters = await eventually(rejected, timeout=60, what=f"{len(forged)} dead letters")
    return {case: next(d for d in letters if str(e.event_id) in d.value) for case, e in forged.items()}


async def test_forged_and_altered_events_are_dead_lettered_and_mail_nobody(
    test_env: TestEnv, smtp: MailServer, notifications: ServiceFactory, publisher: Publisher, owners: Owners
) -> None:
    dlq = test_env.topic_prefix + Topic.DEAD_LETTER.value
    async with TopicReader(test_env.kafka_bootstrap, dlq) as dead, notifications(smtp) as service:
        # Genuine events the owners stored; the forger altered copies before they arrived.
        real_completion, real_certificate = completed("rita", 999), certificate("sam")
        owners.register(real_completion)
        owners.register(real_certificate)
        issued = certificate("tom")
        await publisher.publish(issued)  # published and mailed
        await wait_for(lambda: smtp.to("tom@learners.example"), what="the genuine certificate mail")
        forged: dict[str, Event] = {
            "unknown completion": completed("mallory", 999999),
            "another address": real_completion.model_copy(update={"user_email": "mallory@evil.example"}),
            "unknown certificate": certificate("mallory"),
            "another address on a certificate": real_certificate.model_copy(
                update={"student_email": "mallory@evil.example"}
            ),
            "copy under a new id": issued.model_copy(update={"event_id": uuid4()}),
        }
        by_case = await dead_letters_by_case(test_env, dead, forged)
        assert all(d.attempts == 1 and d.error.startswith("rejected: ") for d in by_case.values())
        assert "progress published no course-completed" in by_case["unknown completion"].error
        assert by_case["another address"].error.endswith("in user_email")
        assert by_case["another address"].consumer_group == "notifications-course-completed"
        assert "certificates issued no certificate 'cert-mallory-7'" in by_case["unknown certificate"].error
        assert by_case["another address on a certificate"].error.endswith("in student_email")
        assert by_case["copy under a new id"].error.endswith("in event_id")

        # A real event with only its link changed is mailed as the owner has it: links are
        # the owner's to give, so the forged one never reaches the learner.
        genuine = certificate("uma")
        owners.register(genuine)
        await produce_forged(test_env, genuine.model_copy(update={"certificate_url": "https://evil.example/x.pdf"}))
        [mail] = await wait_for(lambda: smtp.to("uma@learners.example"), what="the mail with the owner's link")
        text = mail.message.get_body(("plain",))
        assert text is not None
        assert "evil.example" not in text.get_content() and genuine.certificate_url in text.get_content()

        # Genuine mail still flows; nothing was queued or sent for the forgeries. The genuine
        # event whose id a forged copy reused arrives after it, and is still mailed.
        await publisher.publish(completed("ok"))
        await wait_for(lambda: smtp.to("ok@learners.example"), what="a genuine completion mail")
        await publisher.publish(real_completion)
        await wait_for(lambda: smtp.to("rita@learners.example"), what="the genuine event after its forged copy")
        assert {r.rcpt_tos[0] for r in smtp.received} == {
            "tom@learners.example", "uma@learners.example", "ok@learners.example", "rita@learners.example"}
        assert len(await service.mail()) == 4
        assert len(dead.messages) == len(forged)


async def test_owner_unreachable_delays_the_mail_and_dead_letters_nothing(
    test_env: TestEnv, smtp: MailServer, notifications: ServiceFactory, publisher: Publisher, owners: Owners
) -> None:
    dlq = test_env.topic_prefix + Topic.DEAD_LETTER.value
    async with TopicReader(test_env.kafka_bootstrap, dlq) as dead, notifications(smtp) as service:
        owners.down = True
        await publisher.publish(completed("patient"), certificate("patient"))
        await asyncio.sleep(3)  # several deliveries, each answered 503
        assert await service.mail() == [] and smtp.received == []
        owners.down = False
        await wait_for(lambda: len(smtp.to("patient@learners.example")) == 2, timeout=60, what="both mails")
        assert dead.messages == []
