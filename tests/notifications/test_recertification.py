"""recertification-scheduled as the learner receives it: one mail before the reset, with the
course and the reset date, confirmed with the enrollment service; a redelivery sends
nothing more, and a forged or altered notice is dead-lettered and mails nobody."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx

from services.enrollment.app import build_app as build_enrollment
from services.enrollment.settings import EnrollmentSettings
from services.enrollment.usecases import RecertificationRun, recertify
from shared.auth import issue_token
from shared.bus import ensure_topics
from shared.events import CourseCompleted, RecertificationScheduled, Topic, utcnow
from shared.service import Runtime
from tests.helpers import TestEnv, TopicReader, eventually, produce_raw, served
from tests.notifications.conftest import Owners, Publisher, ServiceFactory, wait_for
from tests.notifications.events import completed, recertification
from tests.notifications.smtp_server import MailServer
from tests.notifications.test_confirmation import dead_letters_by_case
from tests.notifications.test_emails import parts

RESET_AT = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


def one_line(text: str) -> str:
    return " ".join(text.split())


async def test_the_learner_is_told_of_the_reset_once(
    test_env: TestEnv, smtp: MailServer, notifications: ServiceFactory, publisher: Publisher
) -> None:
    notice = recertification("ada", course_title="Fire <b>Safety</b>", reset_at=RESET_AT)
    dlq = test_env.topic_prefix + Topic.DEAD_LETTER.value
    async with TopicReader(test_env.kafka_bootstrap, dlq) as dead, notifications(smtp) as service:
        await publisher.publish(notice)
        [mail] = await wait_for(lambda: smtp.to("ada@learners.example"), what="the recertification mail")
        message = mail.message
        assert message["Subject"] == "Time to renew Fire <b>Safety</b>: your course restarts soon"
        assert message["Message-ID"] == f"<{notice.event_id.hex}.recertification@academy.example>"
        assert message["X-Lessonstream-Kind"] == "recertification_scheduled"
        text, html = parts(message)
        assert "Hello Learner ada," in text
        assert 'You completed "Fire <b>Safety</b>" on 5 March 2025, 14:03 UTC.' in one_line(text)
        assert "on 1 June 2026, 08:00 UTC it starts again for you at 0 %" in one_line(text)
        assert "https://learn.example/courses/7" in text
        assert "<b>Safety</b>" not in html and "Fire &lt;b&gt;Safety&lt;/b&gt;" in html
        assert "1 June 2026, 08:00 UTC" in html
        row = await eventually(lambda: service.sent(notice.event_id), what="the mail recorded as sent")
        assert row["kind"] == "recertification_scheduled" and row["recipient"] == "ada@learners.example"

        # Delivered again (a relay publishing its retained rows once more): nothing new.
        await publisher.publish(notice)
        await publisher.publish(completed("marker"))
        await wait_for(lambda: smtp.to("marker@learners.example"), what="a later mail")
        assert len(smtp.to("ada@learners.example")) == 1
        assert len(await service.mail(user_id="ada")) == 1
        assert dead.messages == []


async def test_a_notice_enrollment_did_not_publish_is_dead_lettered_and_mails_nobody(
    test_env: TestEnv, smtp: MailServer, notifications: ServiceFactory, publisher: Publisher, owners: Owners
) -> None:
    real, other = recertification("rita", reset_at=RESET_AT), recertification("sam", reset_at=RESET_AT)
    owners.register(real)
    owners.register(other)
    dlq = test_env.topic_prefix + Topic.DEAD_LETTER.value
    async with TopicReader(test_env.kafka_bootstrap, dlq) as dead, notifications(smtp) as service:
        forged: dict[str, RecertificationScheduled] = {
            "unknown notice": recertification("mallory"),
            "another address": real.model_copy(update={"user_email": "mallory@evil.example"}),
            "another date": other.model_copy(update={"reset_at": datetime(2026, 1, 1, tzinfo=UTC)}),
        }
        by_case = await dead_letters_by_case(test_env, dead, forged)
        assert all(d.attempts == 1 and d.error.startswith("rejected: ") for d in by_case.values())
        assert all(d.consumer_group == "notifications-recertification-scheduled" for d in by_case.values())
        assert "enrollment published no recertification-scheduled" in by_case["unknown notice"].error
        assert by_case["another address"].error.endswith("in user_email")
        assert by_case["another date"].error.endswith("in reset_at")

        # The genuine notice, arriving after its altered copies, is still mailed.
        await publisher.publish(real)
        await wait_for(lambda: smtp.to("rita@learners.example"), what="the genuine notice")
        assert {r.rcpt_tos[0] for r in smtp.received} == {"rita@learners.example"}
        assert len(await service.mail()) == 1
        assert len(dead.messages) == len(forged)


async def test_the_enrollment_job_notice_reaches_the_learner_confirmed_by_enrollment(
    test_env: TestEnv, smtp: MailServer, notifications: ServiceFactory
) -> None:
    """The real enrollment service (its job, its outbox, its internal API) and notifications."""
    settings = test_env.settings(EnrollmentSettings, database="enrollment", internal_token="e2e-token")
    await ensure_topics(settings)
    app = build_enrollment(settings)
    runtime: Runtime[Any] = app.state.runtime
    admin = {"Authorization": "Bearer " + issue_token(settings, user_id="admin-1", name="Admin", roles=["admin"])}
    learner = {"Authorization": "Bearer " + issue_token(
        settings, user_id="ada", name="Ada Lovelace", email="ada@learners.example", roles=["learner"]
    )}
    async with served(app) as url, httpx.AsyncClient(base_url=url) as enrollment:
        created = await enrollment.post(
            "/api/admin/courses", json={"title": "Fire safety", "recertify_after_days": 30}, headers=admin
        )
        cid = created.json()["data"]["id"]
        await enrollment.post(f"/api/admin/courses/{cid}/lessons", json={"title": "Exits"}, headers=admin)
        await enrollment.post(f"/api/admin/courses/{cid}/publish", headers=admin)
        assert (await enrollment.post(f"/api/courses/{cid}/enroll", headers=learner)).status_code == 200
        # Completed 20 days ago, as progress reports it: the notice is due (30 - 14 = 16 days).
        done = CourseCompleted(
            user_id="ada", course_id=cid, completed_at=utcnow() - timedelta(days=20), user_name="Ada Lovelace",
            user_email="ada@learners.example", course_title="Fire safety", certificate_enabled=True,
        )
        await produce_raw(test_env.kafka_bootstrap, settings.topic(Topic.COURSE_COMPLETED.value),
                          done.model_dump_json().encode(), done.key().encode())

        async def completed_there() -> bool:
            status = await runtime.pool.fetchval("SELECT status FROM enrollments WHERE course_id = $1", cid)
            return bool(status == "completed")

        await eventually(completed_there, timeout=60, what="the completion applied by enrollment")
        async with notifications(smtp, enrollment_internal_url=url, internal_token="e2e-token") as service:
            run = await recertify(runtime.pool, utcnow(), notice_days=14)
            assert (run.noticed, run.reset) == (1, 0)
            [mail] = await wait_for(lambda: smtp.to("ada@learners.example"), timeout=60, what="the notice mail")
            assert mail.message["X-Lessonstream-Kind"] == "recertification_scheduled"
            text, _ = parts(mail.message)
            reset_at = await runtime.pool.fetchval("SELECT reset_at FROM recertification_notices")
            assert f"on {reset_at.astimezone(UTC).strftime('%-d %B %Y, %H:%M UTC')} it starts again" in one_line(text)
            assert "Fire safety" in text and "Hello Ada Lovelace," in text
            # Run again: nothing more to tell, nothing mailed twice.
            assert await recertify(runtime.pool, utcnow(), notice_days=14) == RecertificationRun(0, 0)
            event_id = UUID(str(mail.message["X-Lessonstream-Event-Id"]))
            await eventually(lambda: service.sent(event_id), what="the notice recorded as sent")
            assert len(smtp.to("ada@learners.example")) == 1
