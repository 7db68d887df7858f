"""One certificate per (learner, course, attempt): a learner whose course was reset and who
completed it again holds two certificates, both valid; redeliveries issue nothing more, and
a completion whose attempt was altered is refused."""

from __future__ import annotations

from typing import Any

from shared.events import CertificateIssued, Topic
from tests.certificates.support import Stack, certificate_stack, completion
from tests.helpers import TestEnv, TopicReader, eventually


async def _issued_for(stack: Stack, user: str, attempt: int) -> bool:
    found = await stack.db.fetchval(
        "SELECT count(*) FROM certificates WHERE user_id = $1 AND course_id = 10 AND attempt = $2", user, attempt
    )
    return int(found) == 1


async def _verdict(stack: Stack, code: str) -> dict[str, Any]:
    r = await stack.api.get(f"/certificates/verify/{code}", headers={"Accept": "application/json"})
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


async def test_each_attempt_gets_its_own_certificate_once(test_env: TestEnv) -> None:
    async with certificate_stack(test_env) as stack, TopicReader(
        test_env.kafka_bootstrap, stack.settings.topic(Topic.CERTIFICATE_ISSUED.value)
    ) as reader:
        first = completion("u-again")
        second = completion("u-again").model_copy(update={"attempt": 2})
        third = completion("u-again").model_copy(update={"attempt": 3})
        stack.progress.published[first.event_id] = first
        stack.progress.published[second.event_id] = second
        stack.progress.published[third.event_id] = third
        altered = completion("u-again").model_copy(update={"attempt": 4})
        stack.progress.published[altered.event_id] = altered
        # One key, one partition, in this order: redeliveries of both, a completion whose
        # attempt was altered on the way (progress's copy says 4: refused), then a third.
        for event in (first, second, first, second):
            await stack.publish_forged(event)
        await stack.publish_forged(altered.model_copy(update={"attempt": 9}))
        await stack.publish_forged(third)
        await eventually(lambda: _issued_for(stack, "u-again", 3), timeout=60, what="the third attempt's certificate")

        rows = await stack.db.fetch(
            "SELECT attempt, certificate_id, verification_code, source_event_id FROM certificates "
            "WHERE user_id = 'u-again' ORDER BY attempt"
        )
        assert [r["attempt"] for r in rows] == [1, 2, 3]
        assert [r["source_event_id"] for r in rows] == [first.event_id, second.event_id, third.event_id]
        assert len({r["certificate_id"] for r in rows}) == 3 and len({r["verification_code"] for r in rows}) == 3
        refused = await stack.db.fetchval(
            "SELECT count(*) FROM outbox WHERE topic = 'dead-letter' AND convert_from(payload, 'UTF8') LIKE $1",
            f"%{altered.event_id}%differs%attempt%")
        assert refused == 1
        identities = await stack.db.fetchval("SELECT count(*) FROM certificate_identities WHERE user_id = 'u-again'")
        assert identities == 3

        # Every attempt's certificate stays valid; the learner's API answers the latest.
        for r in rows:
            verdict = await _verdict(stack, r["verification_code"])
            assert verdict["valid"] is True and verdict["status"] == "valid"
        latest = await stack.api.get("/api/courses/10/certificate", headers=stack.token("u-again"))
        assert latest.status_code == 200
        assert latest.json()["data"]["certificate_id"] == rows[2]["certificate_id"]
        assert latest.json()["data"]["attempt"] == 3

        async def announced() -> bool:
            return len({CertificateIssued.model_validate_json(m.value).event_id for m in reader.messages}) >= 3

        await eventually(announced, what="certificate-issued events")
        events = {e.event_id: e for e in (CertificateIssued.model_validate_json(m.value) for m in reader.messages)}
        assert sorted(e.attempt for e in events.values()) == [1, 2, 3]

        # A regeneration re-renders every attempt's certificate, each as its own new version.
        admin = stack.token("admin-1", ["admin"])
        queued = await stack.api.post("/api/admin/courses/10/certificates/regenerate", headers=admin)
        assert queued.status_code == 202 and queued.json()["data"]["certificates"] == 3

        async def rerendered() -> bool:
            versions = await stack.db.fetch(
                "SELECT current_version FROM certificates WHERE user_id = 'u-again' ORDER BY attempt")
            return [v["current_version"] for v in versions] == [2, 2, 2]

        await eventually(rerendered, timeout=60, what="every attempt re-rendered")
