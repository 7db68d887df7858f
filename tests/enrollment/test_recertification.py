"""Recertification: a course's completions older than ``recertify_after_days`` are reset for a
new attempt by the enrollment's job, the learner told beforehand (recertification-scheduled),
each notice and each reset done once whoever runs the job and however often. The job is
driven with an explicit ``now`` rather than waiting days."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from services.enrollment.usecases import RecertificationRun, recertify
from shared.events import EnrollmentChanged, RecertificationScheduled, Topic
from tests.enrollment.conftest import Service
from tests.enrollment.test_progress_events import course_done, my_course, wait_applied
from tests.helpers import TopicReader, eventually

DONE = datetime(2025, 1, 10, 9, 0, tzinfo=UTC)
NOTICE_DAYS = 14


async def run(service: Service, now: datetime, times: int = 1) -> RecertificationRun:
    """The job run ``times`` times at once (as processes would); what they did in all."""
    runs = await asyncio.gather(
        *(recertify(service.runtime.pool, now, notice_days=NOTICE_DAYS) for _ in range(times))
    )
    return RecertificationRun(sum(r.noticed for r in runs), sum(r.reset for r in runs))


async def test_recertify_after_days_is_a_course_field_on_the_catalog(service: Service) -> None:
    course = await service.create_course("Yearly", recertify_after_days=365)
    assert course["recertify_after_days"] == 365
    cid = course["id"]
    entry = await service.client.get(f"/internal/courses/{cid}", headers=service.internal)
    assert entry.json()["recertify_after_days"] == 365
    for bad in (0, -1, 36501, "30", 1.5):
        refused = await service.client.patch(
            f"/api/admin/courses/{cid}", json={"recertify_after_days": bad}, headers=service.admin
        )
        assert refused.status_code == 400 and "recertify_after_days" in refused.json()["data"]["params"], bad
    cleared = await service.client.patch(
        f"/api/admin/courses/{cid}", json={"recertify_after_days": None}, headers=service.admin
    )
    assert cleared.status_code == 200 and cleared.json()["data"]["recertify_after_days"] is None
    entry = await service.client.get(f"/internal/courses/{cid}", headers=service.internal)
    assert entry.json()["recertify_after_days"] is None
    plain = await service.create_course("Once")
    assert plain["recertify_after_days"] is None


async def test_the_job_tells_the_learner_then_resets_once_per_attempt(consuming: Service) -> None:
    service = consuming
    course = await service.create_course("Fire safety", recertify_after_days=30)
    other = await service.create_course("Never again")  # no recertification
    cid = course["id"]
    learners = ["u1", "u2", "u3"]
    for user in learners:
        await service.enroll(cid, user, name=f"Learner {user}", email=f"{user}@example.com")
    await service.enroll(cid, "active-one")
    await service.enroll(other["id"], "u1")
    done = [course_done(user, course, DONE) for user in learners] + [course_done("u1", other, DONE)]
    await service.publish(done)
    await wait_applied(service, *done)

    topics = (Topic.RECERTIFICATION_SCHEDULED, Topic.ENROLLMENT_CHANGED)
    async with (
        TopicReader(service.env.kafka_bootstrap, service.topic(topics[0])) as notices,
        TopicReader(service.env.kafka_bootstrap, service.topic(topics[1])) as changes,
    ):
        # Nothing before the period: the notice is due 30 - 14 = 16 days after completion.
        assert await run(service, DONE + timedelta(days=15, hours=23)) == RecertificationRun(0, 0)

        # Due: one notice per learner, however many runs at once and however often.
        noticed_at = DONE + timedelta(days=16, hours=1)
        assert await run(service, noticed_at, times=2) == RecertificationRun(3, 0)
        assert await run(service, noticed_at + timedelta(hours=1), times=2) == RecertificationRun(0, 0)
        reset_at = DONE + timedelta(days=30, hours=1)  # noticed_at + 14 days, later than completion + 30
        rows = await service.runtime.pool.fetch(
            "SELECT n.attempt, n.reset_at, e.user_id FROM recertification_notices n "
            "JOIN enrollments e ON e.id = n.enrollment_id ORDER BY e.user_id"
        )
        assert [(r["user_id"], r["attempt"], r["reset_at"]) for r in rows] == [(u, 1, reset_at) for u in learners]

        async def three_notices() -> list[RecertificationScheduled] | None:
            found = [RecertificationScheduled.model_validate_json(m.value) for m in notices.messages]
            return found if len(found) >= 3 else None

        published = await eventually(three_notices, what="three recertification notices")
        notice = next(n for n in published if n.user_id == "u2")
        assert (notice.course_id, notice.attempt, notice.completed_at, notice.reset_at) == (cid, 1, DONE, reset_at)
        assert (notice.course_title, notice.user_name, notice.user_email) == (
            "Fire safety", "Learner u2", "u2@example.com"
        )
        internal = await service.client.get(f"/internal/recertifications/{notice.event_id}", headers=service.internal)
        assert internal.status_code == 200 and internal.json() == notice.model_dump(mode="json")
        unknown = await service.client.get(f"/internal/recertifications/{uuid4()}", headers=service.internal)
        assert unknown.status_code == 404 and unknown.json()["code"] == "recertification_not_found"
        unguarded = await service.client.get(f"/internal/recertifications/{notice.event_id}")
        assert unguarded.status_code == 403

        # The learner is still completed until the reset time.
        assert await run(service, reset_at - timedelta(minutes=1), times=2) == RecertificationRun(0, 0)
        row = await my_course(service, "u2", cid)
        assert row is not None and (row["status"], row["attempt"]) == ("completed", 1)

        # Then each is reset once, to attempt 2, whatever runs.
        assert await run(service, reset_at + timedelta(minutes=1), times=2) == RecertificationRun(0, 3)
        assert await run(service, reset_at + timedelta(days=1), times=2) == RecertificationRun(0, 0)
        for user in learners:
            row = await my_course(service, user, cid)
            assert row is not None
            assert (row["status"], row["attempt"], row["progress_percentage"]) == ("active", 2, 0)
        untouched = await my_course(service, "u1", other["id"])
        assert untouched is not None and (untouched["status"], untouched["attempt"]) == ("completed", 1)
        active = await my_course(service, "active-one", cid)
        assert active is not None and active["attempt"] == 1

        async def resets() -> list[EnrollmentChanged] | None:
            found = [EnrollmentChanged.model_validate_json(m.value) for m in changes.messages]
            second = [e for e in found if e.attempt == 2]
            return second if len(second) >= 3 else None

        second_attempts = await eventually(resets, what="three enrollment-changed of attempt 2")
        assert sorted(e.user_id for e in second_attempts) == learners

    # Each learner's notice was queued before their reset (the outbox publishes in id order).
    queued = await service.runtime.pool.fetch(
        "SELECT topic, key FROM outbox WHERE topic IN ($1, $2) ORDER BY id",
        Topic.RECERTIFICATION_SCHEDULED.value, Topic.ENROLLMENT_CHANGED.value,
    )
    for user in learners:
        mine = [r["topic"] for r in queued if r["key"] == f"{user}:{cid}"]
        notice_index = mine.index(Topic.RECERTIFICATION_SCHEDULED.value)
        assert mine.count(Topic.RECERTIFICATION_SCHEDULED.value) == 1
        assert notice_index < len(mine) - 1, "the reset's enrollment-changed comes after the notice"

    # The second attempt completed in turn is noticed again, once, a period later.
    again = course_done("u1", course, reset_at + timedelta(days=2)).model_copy(update={"attempt": 2})
    await service.publish([again])
    await wait_applied(service, again)
    later = reset_at + timedelta(days=2 + 16, hours=1)
    assert await run(service, later, times=2) == RecertificationRun(1, 0)
    attempts = await service.runtime.pool.fetch(
        "SELECT n.attempt FROM recertification_notices n JOIN enrollments e ON e.id = n.enrollment_id "
        "WHERE e.user_id = 'u1' ORDER BY n.attempt"
    )
    assert [r["attempt"] for r in attempts] == [1, 2]


async def test_a_reset_by_hand_or_a_learner_who_left_is_not_reset_again(consuming: Service) -> None:
    service = consuming
    course = await service.create_course("Hygiene", recertify_after_days=20)
    cid = course["id"]
    for user in ("by-hand", "leaver"):
        await service.enroll(cid, user)
    done = [course_done(user, course, DONE) for user in ("by-hand", "leaver")]
    await service.publish(done)
    await wait_applied(service, *done)
    assert await run(service, DONE + timedelta(days=7)) == RecertificationRun(2, 0)

    reset = await service.client.post(f"/api/admin/courses/{cid}/learners/by-hand/reset", headers=service.admin)
    assert reset.status_code == 200 and reset.json()["data"]["attempt"] == 2
    await service.client.post(f"/api/courses/{cid}/unenroll", headers=service.learner("leaver"))

    due = DONE + timedelta(days=30)
    assert await run(service, due) == RecertificationRun(0, 0)
    hand = await service.enrollment_row("by-hand", cid)
    leaver = await service.enrollment_row("leaver", cid)
    assert (hand["attempt"], leaver["attempt"], leaver["status"]) == (2, 1, "unenrolled")
    # The learner who comes back completed is reset then, the notice having been given.
    await service.enroll(cid, "leaver")
    assert await run(service, due + timedelta(days=1)) == RecertificationRun(0, 1)
    leaver = await service.enrollment_row("leaver", cid)
    assert (leaver["attempt"], leaver["status"]) == (2, "active")
