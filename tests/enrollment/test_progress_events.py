"""Completion as the enrollment sees it: progress and certificate events published to the
real topics (as the progress and certificates services publish them) and consumed by the
running service."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from shared.events import (
    CertificateIssued,
    CourseCompleted,
    DeadLetter,
    EnrollmentChanged,
    LessonCompleted,
    LessonReopened,
    Topic,
)
from tests.enrollment.conftest import Service
from tests.helpers import TopicReader, eventually

T0 = datetime(2025, 10, 27, 12, 0, tzinfo=UTC)


def completed(user: str, course: dict[str, Any], lesson: int, pct: int, at: datetime) -> LessonCompleted:
    return LessonCompleted(
        user_id=user, course_id=course["id"], lesson_id=course["lessons"][lesson]["id"], completed_at=at,
        progress_percentage=pct, completed_lessons=pct * 4 // 100, total_lessons=4,
    )


def reopened(user: str, course: dict[str, Any], lesson: int, pct: int, at: datetime) -> LessonReopened:
    return LessonReopened(
        user_id=user, course_id=course["id"], lesson_id=course["lessons"][lesson]["id"], reopened_at=at,
        progress_percentage=pct, completed_lessons=pct * 4 // 100, total_lessons=4,
    )


def course_done(user: str, course: dict[str, Any], at: datetime) -> CourseCompleted:
    return CourseCompleted(
        user_id=user, course_id=course["id"], completed_at=at, user_name="Ada Lovelace", user_email="ada@example.com",
        course_title=course["title"], certificate_enabled=True,
    )


def certificate(user: str, course: dict[str, Any], at: datetime, code: str) -> CertificateIssued:
    return CertificateIssued(
        user_id=user, course_id=course["id"], certificate_id=f"CERT-{code}", verification_code=code,
        certificate_url=f"https://example.com/certificates/{code}.pdf",
        verification_url=f"https://example.com/certificates/verify/{code}", issued_at=at,
        course_title=course["title"], student_name="Ada Lovelace", student_email="ada@example.com",
    )


async def my_course(service: Service, user: str, course_id: int, status: str = "all") -> dict[str, Any] | None:
    r = await service.client.get(f"/api/courses/my-courses?status={status}", headers=service.learner(user))
    assert r.status_code == 200
    rows = [row for row in r.json()["data"] if row["course_id"] == course_id]
    return rows[0] if rows else None


async def applied(service: Service, event_ids: list[Any]) -> bool:
    count = await service.runtime.pool.fetchval(
        "SELECT count(*) FROM inbox WHERE event_id = ANY($1::uuid[])", event_ids
    )
    return bool(count == len(event_ids))


async def wait_applied(service: Service, *events: Any) -> None:
    ids = [e.event_id for e in events]
    await eventually(lambda: applied(service, ids), what=f"{len(ids)} events applied")


def ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


async def test_progress_events_update_progress_and_never_go_back_in_time(consuming: Service) -> None:
    service = consuming
    course = await service.create_course("Progress", lessons=4)
    cid = course["id"]
    await service.enroll(cid, "u1")

    first = completed("u1", course, 0, 25, T0)
    second = completed("u1", course, 1, 50, T0 + timedelta(minutes=10))
    await service.publish([first, second])
    await wait_applied(service, first, second)
    row = await my_course(service, "u1", cid)
    assert row is not None
    assert row["progress_percentage"] == 50 and row["completed_lessons"] == 2 and row["total_lessons"] == 4
    assert ts(row["last_accessed"]) == T0 + timedelta(minutes=10)

    # A late, older event (and a redelivery of the newest one) change nothing.
    stale = completed("u1", course, 2, 75, T0 + timedelta(minutes=5))
    await service.publish([stale, second])
    reopen = reopened("u1", course, 1, 25, T0 + timedelta(minutes=20))
    await service.publish([reopen])
    await wait_applied(service, stale, reopen)
    row = await my_course(service, "u1", cid)
    assert row is not None
    assert row["progress_percentage"] == 25 and row["completed_lessons"] == 1
    assert ts(row["last_accessed"]) == T0 + timedelta(minutes=20)
    assert row["status"] == "active" and row["completed_at"] is None
    inbox = await service.runtime.pool.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1", second.event_id)
    assert inbox == 1


async def test_course_completion_and_certificate_reach_the_enrollment(consuming: Service) -> None:
    service = consuming
    course = await service.create_course("Completion", lessons=4, instructor_ids=["t1"])
    cid = course["id"]
    await service.enroll(cid, "u1")
    done_at = T0 + timedelta(hours=1)

    async with TopicReader(service.env.kafka_bootstrap, service.topic(Topic.ENROLLMENT_CHANGED)) as reader:
        # Topics are independent: course-completed may well arrive before the last lesson.
        done = course_done("u1", course, done_at)
        await service.publish([done])
        await wait_applied(service, done)
        last = completed("u1", course, 3, 100, done_at)
        earlier = completed("u1", course, 2, 75, done_at - timedelta(minutes=3))
        await service.publish([last, earlier, done])  # `done` again: a redelivery
        await wait_applied(service, last, earlier)

        row = await my_course(service, "u1", cid, "completed")
        assert row is not None, "the enrollment is completed"
        assert row["status"] == "completed" and ts(row["completed_at"]) == done_at
        assert row["progress_percentage"] == 100
        assert await my_course(service, "u1", cid, "active") is None

        async def completed_event() -> list[EnrollmentChanged]:
            events = [EnrollmentChanged.model_validate_json(m.value) for m in reader.messages]
            return [e for e in events if e.status == "completed"]

        [event] = await eventually(completed_event, what="enrollment-changed with status completed")
        assert event.user_id == "u1" and event.course_id == cid and event.revision == 2

    internal = await service.client.get(f"/internal/courses/{cid}/enrollments/u1", headers=service.internal)
    assert internal.json()["status"] == "completed" and internal.json()["event_id"] == str(event.event_id)

    # The certificate URL is kept; an older certificate event does not replace a newer one.
    newer = certificate("u1", course, done_at + timedelta(minutes=1), "abc123")
    older = certificate("u1", course, done_at, "old999")
    await service.publish([newer, older])
    await wait_applied(service, newer, older)
    row = await my_course(service, "u1", cid)
    assert row is not None and row["certificate_url"] == "https://example.com/certificates/abc123.pdf"
    students = await service.client.get(f"/api/courses/{cid}/students", headers=service.instructor("t1"))
    [student] = students.json()["data"]
    assert student["status"] == "completed" and student["certificate_url"].endswith("abc123.pdf")

    # Completion is kept when a lesson is reopened later; the percentage follows progress.
    reopen = reopened("u1", course, 0, 75, done_at + timedelta(days=1))
    await service.publish([reopen])
    await wait_applied(service, reopen)
    row = await my_course(service, "u1", cid)
    assert row is not None
    assert row["status"] == "completed" and ts(row["completed_at"]) == done_at and row["progress_percentage"] == 75


async def test_progress_is_kept_across_unenroll_and_enroll_again(consuming: Service) -> None:
    service = consuming
    course = await service.create_course("Keep", lessons=4)
    cid = course["id"]
    await service.enroll(cid, "u1")
    half = completed("u1", course, 1, 50, T0)
    await service.publish([half])
    await wait_applied(service, half)
    await service.client.post(f"/api/courses/{cid}/unenroll", headers=service.learner("u1"))

    # Completion while unenrolled is kept; the learner stays unenrolled until they come back.
    done = course_done("u1", course, T0 + timedelta(hours=2))
    await service.publish([done])
    await wait_applied(service, done)
    assert await my_course(service, "u1", cid) is None

    back = await service.enroll(cid, "u1")
    assert back["resumed"] is True and back["status"] == "completed" and back["progress_percentage"] == 100
    row = await my_course(service, "u1", cid, "completed")
    assert row is not None and ts(row["completed_at"]) == T0 + timedelta(hours=2)


async def test_events_for_unknown_enrollments_are_dead_lettered_and_consumption_goes_on(consuming: Service) -> None:
    service = consuming
    course = await service.create_course("Strays", lessons=4)
    cid = course["id"]
    await service.enroll(cid, "u1")
    async with TopicReader(service.env.kafka_bootstrap, service.topic(Topic.DEAD_LETTER)) as dead:
        stray = completed("nobody", course, 0, 25, T0)
        good = completed("u1", course, 0, 25, T0)
        await service.publish([stray, good])
        await wait_applied(service, good)

        async def one_letter() -> bool:
            return len(dead.messages) >= 1

        await eventually(one_letter, what="a dead letter")
    letter = DeadLetter.model_validate_json(dead.messages[0].value)
    assert letter.source_topic == "lesson-completed" and "no enrollment" in letter.error
    assert str(stray.event_id) in letter.value
    row = await my_course(service, "u1", cid)
    assert row is not None and row["progress_percentage"] == 25
