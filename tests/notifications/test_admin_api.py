"""The admin read of the sent-notification log, and health, readiness and metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from shared.auth import issue_token
from tests.helpers import eventually
from tests.notifications.conftest import Publisher, ServiceFactory, wait_for
from tests.notifications.events import certificate, completed
from tests.notifications.smtp_server import MailServer


async def test_admin_lists_and_reads_mail_with_every_attempt(
    smtp: MailServer, notifications: ServiceFactory, publisher: Publisher
) -> None:
    smtp.handler.refuse_permanently.add("nobody@learners.example")
    sent, refused = completed("ann", course_id=3), certificate("nobody", course_id=3)
    async with notifications(smtp) as service:
        await publisher.publish(sent, refused, completed("ann", course_id=4))

        async def settled() -> Any:
            response = await service.client.get("/api/admin/notifications", params={"user_id": "ann"})
            body = response.json()
            done = body["meta"]["total"] == 2 and all(m["status"] == "sent" for m in body["data"])
            return body if done else None

        listing = await eventually(settled, what="two mails sent to ann")
        assert {m["course_id"] for m in listing["data"]} == {3, 4}
        assert listing["meta"] == {"total": 2, "page": 1, "per_page": 50}

        async def refused_row() -> Any:
            response = await service.client.get("/api/admin/notifications", params={"status": "failed"})
            return response.json()["data"]

        [failed] = await eventually(refused_row, what="refused mail")
        assert failed["recipient"] == "nobody@learners.example" and failed["kind"] == "certificate_ready"

        detail = (await service.client.get(f"/api/admin/notifications/{failed['id']}")).json()["data"]
        assert detail["message_id"].startswith(f"<{refused.event_id.hex}.certificate@")
        [attempt] = detail["attempt_log"]
        assert attempt["outcome"] == "permanent_failure" and attempt["smtp_code"] == 550

        by_event = await service.client.get("/api/admin/notifications", params={"event_id": str(sent.event_id)})
        [only] = by_event.json()["data"]
        assert only["kind"] == "course_completed" and only["sent_at"] is not None
        paged = await service.client.get("/api/admin/notifications", params={"per_page": 1, "page": 2})
        assert len(paged.json()["data"]) == 1 and paged.json()["meta"]["total"] == 3

        missing = await service.client.get("/api/admin/notifications/999999")
        assert missing.status_code == 404
        assert missing.json() == {
            "code": "notification_not_found", "message": "No such notification",
            "data": {"status": 404, "mail_id": 999999},
        }
        bad = await service.client.get("/api/admin/notifications", params={"status": "lost", "per_page": 0})
        assert bad.status_code == 400 and set(bad.json()["data"]["params"]) == {"status", "per_page"}

        learner = issue_token(service.settings, user_id="ann", roles=["learner"])
        forbidden = await service.client.get(
            "/api/admin/notifications", headers={"Authorization": f"Bearer {learner}"}
        )
        assert forbidden.status_code == 403
        anonymous = await service.client.get("/api/admin/notifications", headers={"Authorization": ""})
        assert anonymous.status_code == 401


async def test_old_events_and_missing_addresses_are_logged_as_skipped(
    smtp: MailServer, notifications: ServiceFactory, publisher: Publisher
) -> None:
    old = completed("old", occurred_at=datetime.now(UTC) - timedelta(days=30))
    no_address = completed("anon", user_email="")
    async with notifications(smtp, mail_max_event_age_hours=24) as service:
        await publisher.publish(old, no_address, completed("fresh"))
        await wait_for(lambda: smtp.to("fresh@learners.example"), what="fresh mail")

        async def both_skipped() -> bool:
            rows = await service.mail(status="skipped")
            return len(rows) == 2

        await eventually(both_skipped, what="two skipped")
        assert len(smtp.received) == 1
        notes = {r["user_id"]: r["last_error"] for r in await service.mail(status="skipped")}
        assert "older than" in notes["old"] and "no valid recipient" in notes["anon"]


async def test_health_ready_and_mail_metrics(
    smtp: MailServer, notifications: ServiceFactory, publisher: Publisher
) -> None:
    async with notifications(smtp) as service:
        await publisher.publish(completed("met"))
        await wait_for(lambda: smtp.to("met@learners.example"), what="mail")
        assert (await service.client.get("/health")).json() == {"status": "ok", "service": "notifications"}

        async def ready() -> bool:
            return (await service.client.get("/ready")).status_code == 200

        await eventually(ready, what="ready")
        metrics = (await service.client.get("/metrics")).text
        assert 'lessonstream_mail_attempts_total{kind="course_completed",outcome="sent"}' in metrics
        assert "lessonstream_mail_send_seconds_bucket" in metrics
        # The queues, read from the database at the scrape: a held webhook delivery (its
        # endpoint disabled) and a mail waiting for its next try.
        await service.runtime.pool.execute(
            "INSERT INTO deliveries (destination_kind, destination_id, message_id, event_id, event_type, body, status) "
            "VALUES ('webhook', 1, 'msg-held', gen_random_uuid(), 'course.completed', '{}', 'held')"
        )
        await service.runtime.pool.execute(
            "UPDATE outgoing_mail SET status = 'pending', next_attempt_at = now() + interval '1 hour'"
        )
        metrics = (await service.client.get("/metrics")).text
        assert 'lessonstream_delivery_queue{kind="webhook",status="held"} 1.0' in metrics
        assert 'lessonstream_delivery_queue{kind="webhook",status="pending"} 0.0' in metrics
        assert 'lessonstream_mail_queue{status="pending"} 1.0' in metrics
        assert 'lessonstream_mail_queue{status="sending"} 0.0' in metrics
