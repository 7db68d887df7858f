"""Signed webhooks as a receiver sees them: Standard Webhooks signatures checked with the
reference library, one delivery per (event, endpoint) whatever Kafka redelivers, retries
with the same webhook-id, the attempt log, replay, an endpoint disabled after sustained
failure (its owner mailed, its deliveries held until it is enabled again), targets refused
in production, and two delivery loops on one database delivering each message once."""

from __future__ import annotations

import json
from typing import Any
from uuid import uuid4

import httpx
from standardwebhooks import Webhook

from services.enrollment.app import build_app as build_enrollment
from services.enrollment.settings import EnrollmentSettings
from services.notifications import domain, store
from services.notifications.app import build_app
from services.notifications.deliveries import DeliveryLoop
from services.notifications.settings import NotificationsSettings
from services.notifications.webhooks import WebhookDestination
from shared.auth import issue_token
from shared.bus import ensure_topics
from shared.events import DeadLetter, EnrollmentChanged, Topic
from tests.helpers import TestEnv, TopicReader, app_client, eventually, served
from tests.notifications.conftest import Publisher, Service, ServiceFactory, wait_for
from tests.notifications.events import certificate, completed, status_change
from tests.notifications.receiver import receiving
from tests.notifications.smtp_server import MailServer
from tests.notifications.test_confirmation import produce_forged

OWNER = "ops@partner.example"
FAST = {"delivery_retry_schedule_s": [0, 0.2, 0.2], "delivery_poll_interval_s": 0.1}


async def register(service: Service, url: str, *types: str, **fields: Any) -> dict[str, Any]:
    body = {"url": url, "event_types": list(types), "owner_email": OWNER, "description": "CRM sync", **fields}
    response = await service.client.post("/api/admin/webhooks", json=body)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def delivery_of(service: Service, endpoint_id: int, message_id: str) -> dict[str, Any]:
    """The endpoint's delivery of ``message_id`` with its attempts, through the admin API ({}: none yet)."""
    listing = (await service.client.get(f"/api/admin/webhooks/{endpoint_id}/deliveries")).json()["data"]
    rows = [d for d in listing if d["message_id"] == message_id]
    if not rows:
        return {}
    [row] = rows
    detail: dict[str, Any] = (
        await service.client.get(f"/api/admin/webhooks/{endpoint_id}/deliveries/{row['id']}")
    ).json()["data"]
    return detail


async def test_signed_once_per_event_verified_by_the_reference_library(
    test_env: TestEnv, smtp: MailServer, notifications: ServiceFactory, publisher: Publisher
) -> None:
    dlq = test_env.topic_prefix + Topic.DEAD_LETTER.value
    async with (
        receiving() as receiver,
        TopicReader(test_env.kafka_bootstrap, dlq) as dead,
        notifications(smtp, **FAST) as service,
    ):
        endpoint = await register(service, receiver.url, "course.completed", "certificate.revoked")
        secret = endpoint["secret"]
        assert secret.startswith("whsec_")
        listed = (await service.client.get("/api/admin/webhooks")).json()
        assert listed["meta"]["total"] == 1 and "secret" not in listed["data"][0]
        assert listed["data"][0]["owner_email"] == OWNER and listed["data"][0]["created_by"] == "admin-1"

        event = completed("ann", course_title="Practical <Kafka>")
        await publisher.publish(event)
        message_id = f"msg_{event.event_id.hex}"
        [hit] = await wait_for(lambda: receiver.of(message_id), what="the signed webhook")
        payload = Webhook(secret).verify(hit.body, hit.headers)
        assert payload == {
            "type": "course.completed",
            "timestamp": event.occurred_at.isoformat().replace("+00:00", "Z"),
            "data": {
                "user_id": "ann", "user_name": "Learner ann", "user_email": "ann@learners.example", "course_id": 7,
                "course_title": "Practical <Kafka>", "attempt": 1, "completed_at": "2025-03-05T14:03:00Z",
                "certificate_enabled": True,
            },
        }
        assert hit.headers["content-type"] == "application/json"
        assert abs(int(hit.headers["webhook-timestamp"]) - event.occurred_at.timestamp()) < 120
        # A signature made with another secret is refused by the same library.
        assert_refused(domain.new_secret(), hit)

        # Redelivered byte for byte, and published again by its producer: still one webhook.
        # A certificate-issued is not subscribed to; a forged completion is dead-lettered.
        for _ in range(2):
            await produce_forged(test_env, event)
        await publisher.publish(event, certificate("ann"))
        forged = completed("mallory")
        await produce_forged(test_env, forged)
        issued = certificate("bob")
        publisher.owners.register(issued)
        marker = status_change(issued, "revoked", event.occurred_at, reason="Plagiarism")
        await publisher.publish(marker)
        [revoked] = await wait_for(lambda: receiver.of(f"msg_{marker.event_id.hex}"), what="the later webhook")
        assert Webhook(secret).verify(revoked.body, revoked.headers)["data"]["status"] == "revoked"
        await wait_for(lambda: len(dead.messages) == 1, what="the forged completion dead-lettered")
        assert str(forged.event_id) in DeadLetter.model_validate_json(dead.messages[0].value).value
        assert len(receiver.hits) == 2 and len(receiver.of(message_id)) == 1

        # Rotation: the new secret is shown once; while the old one overlaps, both sign.
        rotated = (await service.client.post(f"/api/admin/webhooks/{endpoint['id']}/rotate-secret")).json()["data"]
        assert rotated["secret"] != secret
        delivery = await delivery_of(service, endpoint["id"], message_id)
        replayed = await service.client.post(
            f"/api/admin/webhooks/{endpoint['id']}/deliveries/{delivery['id']}/replay"
        )
        assert replayed.status_code == 200 and replayed.json()["data"]["message_id"] == message_id
        await wait_for(lambda: len(receiver.of(message_id)) == 2, what="the replay")
        again = receiver.of(message_id)[1]
        assert again.body == hit.body
        for key in (rotated["secret"], secret):
            assert Webhook(key).verify(again.body, again.headers)["type"] == "course.completed"

        # PATCH and DELETE; an unknown endpoint is a 404 in the error shape.
        patched = await service.client.patch(
            f"/api/admin/webhooks/{endpoint['id']}", json={"event_types": ["enrollment.changed"]}
        )
        assert patched.json()["data"]["event_types"] == ["enrollment.changed"]
        assert (await service.client.delete(f"/api/admin/webhooks/{endpoint['id']}")).status_code == 204
        missing = await service.client.get(f"/api/admin/webhooks/{endpoint['id']}")
        assert missing.status_code == 404 and missing.json()["code"] == "webhook_not_found"
        assert await service.runtime.pool.fetchval("SELECT count(*) FROM deliveries") == 0


def assert_refused(secret: str, hit: Any) -> None:
    try:
        Webhook(secret).verify(hit.body, hit.headers)
    except Exception as exc:
        assert "signature" in str(exc).lower()
    else:
        raise AssertionError("a signature with another secret was accepted")


async def test_a_failed_attempt_is_retried_once_with_the_same_id_and_logged(
    smtp: MailServer, notifications: ServiceFactory, publisher: Publisher
) -> None:
    async with receiving(answers=[500]) as receiver, notifications(smtp, **FAST) as service:
        endpoint = await register(service, receiver.url, "certificate.issued")
        event = certificate("cy")
        await publisher.publish(event)
        message_id = f"msg_{event.event_id.hex}"

        async def delivered() -> dict[str, Any] | None:
            found = await delivery_of(service, endpoint["id"], message_id)
            return found if found.get("status") == "delivered" else None

        found = await eventually(delivered, what="the delivery after one failure")
        first, second = receiver.of(message_id)
        assert first.headers["webhook-id"] == second.headers["webhook-id"] == message_id
        assert first.body == second.body
        assert [(a["attempt"], a["outcome"], a["status_code"]) for a in found["attempt_log"]] == [
            (1, "failed", 500), (2, "delivered", 200),
        ]
        failed, ok = found["attempt_log"]
        assert failed["error"] == "answered 500" and failed["response_excerpt"] == "answer 500"
        assert ok["duration_ms"] >= 0 and ok["finished_at"] is not None and ok["error"] is None
        assert found["last_status_code"] == 200 and found["delivered_at"] is not None
        assert json.loads(found["body"])["data"]["certificate_id"] == "cert-cy-7"

        # It stops there: a later webhook arrives and nothing more came for this one.
        later = certificate("dee")
        await publisher.publish(later)
        await wait_for(lambda: receiver.of(f"msg_{later.event_id.hex}"), what="a later webhook")
        assert len(receiver.of(message_id)) == 2
        only_failed = await service.client.get(
            f"/api/admin/webhooks/{endpoint['id']}/deliveries", params={"status": "failed"}
        )
        assert only_failed.json()["meta"]["total"] == 0


async def test_sustained_failure_disables_the_endpoint_mails_its_owner_and_holds_deliveries(
    smtp: MailServer, notifications: ServiceFactory, publisher: Publisher
) -> None:
    async with receiving(default=503) as receiver, notifications(smtp, **FAST) as service:
        endpoint = await register(service, receiver.url, "course.completed")
        event = completed("eli")
        await publisher.publish(event)
        message_id = f"msg_{event.event_id.hex}"
        [mail] = await wait_for(lambda: smtp.to(OWNER), what="the owner told")
        assert mail.message["Subject"] == f"Your webhook endpoint {receiver.url} has been disabled"
        text = mail.message.get_body(("plain",))
        assert text is not None and "every attempt of a delivery failed" in text.get_content()
        assert f"/api/admin/webhooks/{endpoint['id']}" in text.get_content()

        found = await delivery_of(service, endpoint["id"], message_id)
        assert found["status"] == "failed" and len(receiver.of(message_id)) == 3
        assert [a["outcome"] for a in found["attempt_log"]] == ["failed"] * 3
        state = (await service.client.get(f"/api/admin/webhooks/{endpoint['id']}")).json()["data"]
        assert state["enabled"] is False and state["disabled_reason"] == "every attempt of a delivery failed"

        # While disabled, a replay waits (held) and nothing is sent.
        replay = await service.client.post(f"/api/admin/webhooks/{endpoint['id']}/deliveries/{found['id']}/replay")
        assert replay.json()["data"]["status"] == "held"
        # The receiver is fixed and the endpoint enabled again: the held delivery goes, same id.
        receiver.default = 200
        enabled = await service.client.patch(f"/api/admin/webhooks/{endpoint['id']}", json={"enabled": True})
        assert enabled.json()["data"]["enabled"] is True and enabled.json()["data"]["failing_since"] is None
        await wait_for(lambda: len(receiver.of(message_id)) == 4, what="the held delivery sent")
        assert Webhook(endpoint["secret"]).verify(receiver.of(message_id)[-1].body, receiver.of(message_id)[-1].headers)

        async def delivered() -> bool:
            return bool((await delivery_of(service, endpoint["id"], message_id))["status"] == "delivered")

        await eventually(delivered, what="the delivery recorded")
        rows = await service.mail(kind="webhook_disabled")
        assert [(r["recipient"], r["course_id"], r["user_id"]) for r in rows] == [(OWNER, None, "admin-1")]


async def test_private_targets_are_refused_in_production_and_allowed_in_development(
    test_env: TestEnv, smtp: MailServer
) -> None:
    """Registration and delivery against the service's own apps, without waiting for Kafka."""
    production = test_env.settings(
        NotificationsSettings, database="production", env="production", jwt_secret="p" * 40,
        internal_token="production-internal-token", public_base_url="https://learn.example", smtp_port=smtp.port,
        app_password_token_secret="a" * 40,
    )
    token = issue_token(production, user_id="admin-1", name="Admin", email=OWNER, roles=["admin"])
    async with app_client(build_app(production), token) as client:
        for url in ("https://127.0.0.1/hook", "https://10.1.2.3/hook", "https://169.254.169.254/latest",
                    "https://[::1]/hook", "https://[::ffff:192.168.0.1]/hook", "https://localhost/hook",
                    "https://224.0.0.1/hook", "https://0.0.0.0/hook", "http://partner.example/hook",
                    "ftp://partner.example/hook", "file:///etc/passwd"):
            refused = await client.post("/api/admin/webhooks", json={"url": url, "event_types": ["course.completed"]})
            assert refused.status_code == 400, url
            assert refused.json()["code"] == "webhook_url_not_allowed", url
            assert refused.json()["data"]["status"] == 400
        assert (await client.get("/api/admin/webhooks")).json()["meta"]["total"] == 0

        # Other bad registrations: a clear 4xx in the error shape, nothing written.
        anonymous = issue_token(production, user_id="admin-2", name="Admin", roles=["admin"])
        no_owner = await client.post(
            "/api/admin/webhooks", json={"url": "https://partner.example/x", "event_types": ["course.completed"]},
            headers={"Authorization": f"Bearer {anonymous}"},
        )
        assert no_owner.status_code == 400 and no_owner.json()["code"] == "owner_email_required"
        unknown_type = await client.post(
            "/api/admin/webhooks", json={"url": "https://partner.example/x", "event_types": ["course.deleted"]}
        )
        assert unknown_type.status_code == 400 and unknown_type.json()["code"] == "invalid_request"
        learner = issue_token(production, user_id="l-1", name="L", roles=["learner"])
        forbidden = await client.get("/api/admin/webhooks", headers={"Authorization": f"Bearer {learner}"})
        assert forbidden.status_code == 403
        unknown = await client.get("/api/admin/webhooks/1/deliveries/1")
        assert unknown.status_code == 404 and unknown.json()["code"] == "webhook_not_found"

    development = test_env.settings(NotificationsSettings, database="development", smtp_port=smtp.port)
    token = issue_token(development, user_id="admin-1", name="Admin", email=OWNER, roles=["admin"])
    app = build_app(development)
    async with receiving() as receiver, app_client(app, token) as client:
        local = receiver.url.replace("127.0.0.1", "localhost")
        registered = await client.post("/api/admin/webhooks", json={"url": local, "event_types": ["course.completed"]})
        assert registered.status_code == 201  # development: any address
        endpoint = registered.json()["data"]
        assert endpoint["owner_email"] == OWNER  # the admin's address from the token

        # At each attempt the name is resolved again and checked (it may point elsewhere by then).
        pool = app.state.runtime.pool
        claimed = store.ClaimedDelivery(
            id=0, kind="webhook", destination_id=endpoint["id"], message_id="msg_manual", event_id=uuid4(),
            event_type="course.completed", body='{"type":"course.completed"}', attempt=1, tries=1,
        )
        await pool.execute("UPDATE webhook_endpoints SET url = $1", local.replace("http:", "https:"))
        strict = WebhookDestination(production, mail_queued=lambda: None)
        try:
            outcome = await strict.send(pool, claimed)
        finally:
            await strict.close()
        assert not outcome.delivered and outcome.error is not None
        assert "localhost resolves to" in outcome.error and "not a public address" in outcome.error
        assert receiver.hits == []
        await pool.execute("UPDATE webhook_endpoints SET url = $1", local)
        relaxed = WebhookDestination(development, mail_queued=lambda: None)
        try:
            outcome = await relaxed.send(pool, claimed)
        finally:
            await relaxed.close()
        assert outcome.delivered and outcome.status_code == 200 and len(receiver.hits) == 1


async def test_two_delivery_loops_on_one_database_deliver_each_message_once(
    smtp: MailServer, notifications: ServiceFactory, publisher: Publisher
) -> None:
    async with receiving(latency_s=0.02) as receiver, notifications(smtp, **FAST) as service:
        endpoint = await register(service, receiver.url, "course.completed")
        # A delivery a dead process left mid-request: its lease ran out, another worker takes it.
        orphan = f"msg_{uuid4().hex}"
        async with service.runtime.pool.acquire() as conn, conn.transaction():
            delivery_id = await conn.fetchval(
                "INSERT INTO deliveries (destination_kind, destination_id, message_id, event_id, event_type, body, "
                "status, attempts, tries, lease_until) VALUES ('webhook', $1, $2, $3, 'course.completed', '{}', "
                "'sending', 1, 1, now() - interval '1 second') RETURNING id",
                endpoint["id"], orphan, uuid4(),
            )
            await conn.execute(
                "INSERT INTO delivery_attempts (delivery_id, attempt, outcome) VALUES ($1, 1, 'sending')", delivery_id
            )
        second = DeliveryLoop(service.settings, [WebhookDestination(service.settings, mail_queued=lambda: None)])
        await second.start(service.runtime.pool)
        try:
            events = [completed(f"p{i}") for i in range(24)]
            await publisher.publish(*events)
            expected = {f"msg_{e.event_id.hex}" for e in events} | {orphan}
            await wait_for(lambda: {h.message_id for h in receiver.hits} >= expected, timeout=60, what="all webhooks")

            async def all_recorded() -> bool:
                rows = await service.runtime.pool.fetch("SELECT status FROM deliveries")
                return len(rows) == 25 and {r["status"] for r in rows} == {"delivered"}

            await eventually(all_recorded, what="every delivery recorded")
        finally:
            await second.stop()
        assert len(receiver.hits) == 25 and len({h.message_id for h in receiver.hits}) == 25
        log = await delivery_of(service, endpoint["id"], orphan)
        assert [a["outcome"] for a in log["attempt_log"]] == ["interrupted", "delivered"]


async def test_enrollment_changes_are_confirmed_by_the_enrollment_service(
    test_env: TestEnv, smtp: MailServer, notifications: ServiceFactory
) -> None:
    """The real enrollment service (its outbox, its internal API) and notifications."""
    settings = test_env.settings(EnrollmentSettings, database="enrollment", internal_token="e2e-token")
    await ensure_topics(settings)
    admin = {"Authorization": "Bearer " + issue_token(settings, user_id="admin-1", name="Admin", roles=["admin"])}
    learner = {"Authorization": "Bearer " + issue_token(
        settings, user_id="ada", name="Ada Lovelace", email="ada@learners.example", roles=["learner"]
    )}
    dlq = test_env.topic_prefix + Topic.DEAD_LETTER.value
    async with (
        served(build_enrollment(settings)) as url,
        httpx.AsyncClient(base_url=url) as enrollment,
        receiving() as receiver,
        TopicReader(test_env.kafka_bootstrap, dlq) as dead,
        notifications(smtp, enrollment_internal_url=url, internal_token="e2e-token", **FAST) as service,
    ):
        endpoint = await register(service, receiver.url, "enrollment.changed")
        created = await enrollment.post("/api/admin/courses", json={"title": "Fire safety"}, headers=admin)
        cid = created.json()["data"]["id"]
        await enrollment.post(f"/api/admin/courses/{cid}/lessons", json={"title": "Exits"}, headers=admin)
        await enrollment.post(f"/api/admin/courses/{cid}/publish", headers=admin)
        assert (await enrollment.post(f"/api/courses/{cid}/enroll", headers=learner)).status_code == 200
        [hit] = await wait_for(lambda: receiver.hits, timeout=60, what="the enrollment webhook")
        payload = Webhook(endpoint["secret"]).verify(hit.body, hit.headers)
        assert payload["type"] == "enrollment.changed"
        data = payload["data"]
        assert (data["user_id"], data["course_id"], data["status"], data["attempt"]) == ("ada", cid, "active", 1)
        assert data["email"] == "ada@learners.example" and "enrollment_id" not in data

        # A change enrollment never made (another status, under a new id): dead-lettered, not sent.
        forged = EnrollmentChanged(
            user_id="ada", course_id=cid, enrollment_id=1, status="completed", revision=data["revision"] + 1,
            enrolled_at=data["enrolled_at"], email="ada@learners.example",
        )
        await produce_forged(test_env, forged)
        letters = await wait_for(lambda: dead.messages, what="the forged change dead-lettered")
        letter = DeadLetter.model_validate_json(letters[0].value)
        assert "enrollment published no enrollment-changed" in letter.error
        assert letter.consumer_group == "notifications-enrollment-changed"

        # The learner leaves: a second, later webhook; the forged one never went out.
        assert (await enrollment.post(f"/api/courses/{cid}/unenroll", headers=learner)).status_code == 200
        await wait_for(lambda: len(receiver.hits) == 2, what="the unenrollment webhook")
        assert Webhook(endpoint["secret"]).verify(receiver.hits[1].body, receiver.hits[1].headers)["data"][
            "status"] == "unenrolled"
        assert {json.loads(h.body)["data"]["status"] for h in receiver.hits} == {"active", "unenrolled"}
