"""certificate-revoked as the learner receives it: one mail per revocation or reinstatement,
confirmed with the certificates service; a redelivery sends nothing more, a claim the owner
contradicts is dead-lettered and sends nothing, and a change the certificate has seen
superseded is acknowledged without a mail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.events import CertificateRevoked, Topic
from tests.helpers import TestEnv, TopicReader, eventually
from tests.notifications.conftest import Owners, Publisher, ServiceFactory, wait_for
from tests.notifications.events import certificate, completed, status_change
from tests.notifications.smtp_server import MailServer
from tests.notifications.test_confirmation import dead_letters_by_case, produce_forged
from tests.notifications.test_emails import parts

T0 = datetime(2026, 4, 2, 10, 30, tzinfo=UTC)


async def test_revoked_then_reinstated_mail_the_learner_once_each(
    test_env: TestEnv, smtp: MailServer, notifications: ServiceFactory, publisher: Publisher, owners: Owners
) -> None:
    issued = certificate("ada", course_title="Kafka <b>Deep</b> Dive")
    owners.register(issued)  # issued earlier; its own mail is not part of this test
    revoked = status_change(issued, "revoked", T0, 'Plagiarism <script>alert("x")</script>')
    dlq = test_env.topic_prefix + Topic.DEAD_LETTER.value
    async with TopicReader(test_env.kafka_bootstrap, dlq) as dead, notifications(smtp) as service:
        await publisher.publish(revoked)
        [mail] = await wait_for(lambda: smtp.to("ada@learners.example"), what="the revocation mail")
        message = mail.message
        assert message["Subject"] == "Your certificate for Kafka <b>Deep</b> Dive has been revoked"
        assert message["Message-ID"] == f"<{revoked.event_id.hex}.revoked@academy.example>"
        assert message["X-Lessonstream-Kind"] == "certificate_revoked"
        text, html = parts(message)
        assert "was revoked on 2 April 2026, 10:30 UTC" in text
        assert 'Reason: Plagiarism <script>alert("x")</script>' in text
        assert issued.verification_url in text and issued.verification_code in text
        assert "<script>" not in html and "Plagiarism &lt;script&gt;" in html
        assert f'href="{issued.verification_url}"' in html
        row = await eventually(lambda: service.sent(revoked.event_id), what="the revocation recorded as sent")
        assert row["kind"] == "certificate_revoked" and row["recipient"] == "ada@learners.example"

        reinstated = status_change(issued, "reinstated", T0 + timedelta(days=3), "Appeal upheld")
        await publisher.publish(reinstated)
        await wait_for(lambda: len(smtp.to("ada@learners.example")) == 2, what="the reinstatement mail")
        second = smtp.to("ada@learners.example")[1].message
        assert second["Subject"] == "Your certificate for Kafka <b>Deep</b> Dive has been reinstated"
        assert second["Message-ID"] == f"<{reinstated.event_id.hex}.reinstated@academy.example>"
        text, _ = parts(second)
        assert "was reinstated on 5 April 2026, 14:30 UTC" not in text  # T0 + 3 days is 10:30
        assert "was reinstated on 5 April 2026, 10:30 UTC" in text and "valid again" in text
        assert issued.verification_url in text
        await eventually(lambda: service.sent(reinstated.event_id), what="the reinstatement recorded as sent")

        # Both delivered again (a relay publishing its retained rows once more): nothing new.
        await publisher.publish(revoked, reinstated)
        marker = completed("marker")
        await publisher.publish(marker)
        await wait_for(lambda: smtp.to("marker@learners.example"), what="a later mail")
        assert len(smtp.to("ada@learners.example")) == 2
        assert len(await service.mail(user_id="ada")) == 2
        assert dead.messages == []


async def test_a_revocation_the_owner_contradicts_is_dead_lettered_and_mails_nobody(
    test_env: TestEnv, smtp: MailServer, notifications: ServiceFactory, publisher: Publisher, owners: Owners
) -> None:
    valid, revoked_one = certificate("val"), certificate("rev")
    for issued in (valid, revoked_one):
        owners.register(issued)
    owners.register(status_change(revoked_one, "revoked", T0, "Exam retracted"))
    dlq = test_env.topic_prefix + Topic.DEAD_LETTER.value
    async with TopicReader(test_env.kafka_bootstrap, dlq) as dead, notifications(smtp) as service:
        forged: dict[str, CertificateRevoked] = {
            "revoked, but the owner says valid": status_change(valid, "revoked", T0, "Because I say so"),
            "reinstated, but the owner says revoked": status_change(revoked_one, "reinstated", T0 + timedelta(1)),
            "unknown certificate": status_change(certificate("mallory"), "revoked", T0),
            "another address": status_change(revoked_one, "revoked", T0, student_email="mallory@evil.example"),
            "a change the owner never made": status_change(revoked_one, "revoked", T0 + timedelta(hours=1)),
        }
        by_case = await dead_letters_by_case(test_env, dead, forged)
        assert all(d.attempts == 1 and d.error.startswith("rejected: ") for d in by_case.values())
        assert all(d.consumer_group == "notifications-certificate-revoked" for d in by_case.values())
        assert by_case["revoked, but the owner says valid"].error.endswith(
            "says revoked but the certificates service says valid")
        assert by_case["reinstated, but the owner says revoked"].error.endswith(
            "says reinstated but the certificates service says revoked")
        assert "certificates issued no certificate 'cert-mallory-7'" in by_case["unknown certificate"].error
        assert by_case["another address"].error.endswith("in student_email")
        assert "claims a change at" in by_case["a change the owner never made"].error

        # A real revocation made before the owner's latest change (revoked, reinstated, then
        # arriving late): acknowledged, neither mailed nor dead-lettered.
        owners.register(status_change(valid, "revoked", T0 - timedelta(days=2), "Mistake"))
        owners.register(status_change(valid, "reinstated", T0 - timedelta(days=1), "Corrected"))
        late = status_change(valid, "revoked", T0 - timedelta(days=2), "Mistake")
        await produce_forged(test_env, late)
        # The genuine revocation is mailed, with the owner's reason.
        genuine = status_change(revoked_one, "revoked", T0, "Exam retracted")
        await publisher.publish(genuine)
        [mail] = await wait_for(lambda: smtp.to("rev@learners.example"), what="the genuine revocation")
        assert "Reason: Exam retracted" in parts(mail.message)[0]

        async def late_acknowledged() -> bool:
            count = await service.runtime.pool.fetchval(
                "SELECT count(*) FROM inbox WHERE event_id = $1", late.event_id)
            return bool(count == 1)

        await eventually(late_acknowledged, what="the superseded revocation acknowledged")
        assert {r.rcpt_tos[0] for r in smtp.received} == {"rev@learners.example"}
        assert len(await service.mail()) == 1
        assert len(dead.messages) == len(forged)
