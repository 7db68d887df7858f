"""Only completions progress confirms become certificates: forged or altered course-completed
events are dead-lettered with the reason; progress being unreachable only delays the work."""

from __future__ import annotations

import asyncio
from typing import Any

from shared.events import CertificateIssued, DeadLetter, Topic
from shared.internal import IssuedCertificate
from tests.certificates.support import certificate_stack, completion
from tests.certificates.test_service import wait_for_certificate
from tests.helpers import TestEnv, TopicReader, eventually


def letters(reader: TopicReader) -> list[DeadLetter]:
    return [DeadLetter.model_validate_json(m.value) for m in reader.messages]


async def test_forged_and_altered_completions_are_rejected_and_genuine_ones_issued(test_env: TestEnv) -> None:
    async with certificate_stack(test_env) as stack, TopicReader(
        test_env.kafka_bootstrap, stack.settings.topic(Topic.DEAD_LETTER.value)
    ) as dead:
        # Progress published these two; the forger altered copies of them before they arrived.
        alice, bob = completion("alice"), completion("bob")
        stack.progress.published.update({alice.event_id: alice, bob.event_id: bob})
        forged = {
            "unknown course": completion("mallory", 999999, title="No such course"),
            "no completion": completion("nobody", 10),
            "another learner": alice.model_copy(update={"user_id": "mallory"}),
            "another address": bob.model_copy(update={"user_email": "mallory@evil.example"}),
        }
        for event in forged.values():
            await stack.publish_forged(event)

        async def all_rejected() -> list[DeadLetter] | None:
            found = [d for d in letters(dead) if d.consumer_group == "certificates-worker"]
            return found if len(found) >= len(forged) else None

        found = await eventually(all_rejected, timeout=60, what="four dead letters")
        by_case = {case: next(d for d in found if str(e.event_id) in d.value) for case, e in forged.items()}
        assert all(d.attempts == 1 and d.source_topic == Topic.COURSE_COMPLETED.value for d in by_case.values())
        assert "progress published no course-completed" in by_case["unknown course"].error
        assert "progress published no course-completed" in by_case["no completion"].error
        assert by_case["another learner"].error.endswith("differs from progress's copy in user_id")
        assert by_case["another address"].error.endswith("differs from progress's copy in user_email")

        # A genuine completion is issued; nothing was made or reserved for the forgeries.
        carol = completion("carol")
        await stack.publish_completion(carol)
        await wait_for_certificate(stack, "carol")
        assert await stack.certificate_count() == 1
        assert await stack.db.fetchval("SELECT count(*) FROM certificate_identities") == 1
        assert await stack.db.fetchval("SELECT last_number FROM certificate_numbers") == 1
        assert len(letters(dead)) == len(forged)


async def test_the_internal_api_confirms_an_issued_certificate_and_its_event(test_env: TestEnv) -> None:
    async with certificate_stack(test_env) as stack, TopicReader(
        test_env.kafka_bootstrap, stack.settings.topic(Topic.CERTIFICATE_ISSUED.value)
    ) as reader:
        await stack.publish_completion(completion("erin", name="Erin Example"))
        data = await wait_for_certificate(stack, "erin")
        [message] = await eventually(lambda: _messages(reader), what="certificate-issued")
        event = CertificateIssued.model_validate_json(message.value)
        internal = {"X-Internal-Token": stack.progress.token}

        r = await stack.api.get(f"/internal/certificates/{data['certificate_id']}", headers=internal)
        assert r.status_code == 200
        record = IssuedCertificate.model_validate(r.json())
        assert record.issued_event_id == event.event_id
        assert event.model_copy(update=record.model_dump(exclude={"issued_event_id"})) == event
        missing = await stack.api.get("/internal/certificates/CERT-1999-001", headers=internal)
        assert missing.status_code == 404 and missing.json()["code"] == "certificate_not_found"
        assert (await stack.api.get(f"/internal/certificates/{data['certificate_id']}")).status_code == 403


async def _messages(reader: TopicReader) -> list[Any]:
    return list(reader.messages)


async def test_progress_unreachable_delays_the_certificate_and_dead_letters_nothing(test_env: TestEnv) -> None:
    async with certificate_stack(test_env) as stack, TopicReader(
        test_env.kafka_bootstrap, stack.settings.topic(Topic.DEAD_LETTER.value)
    ) as dead:
        stack.progress.down = True
        await stack.publish_completion(completion("dave"))

        async def asked_twice() -> bool:
            return stack.progress.confirmations >= 2  # asked, redelivered, asked again

        await eventually(asked_twice, timeout=30, what="the completion redelivered")
        assert await stack.certificate_count() == 0
        stack.progress.down = False
        await wait_for_certificate(stack, "dave")
        await asyncio.sleep(0.5)
        assert letters(dead) == []
