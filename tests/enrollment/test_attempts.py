"""Attempts: staff reset a learner's course to a new attempt at 0 %; facts of the attempt
that was reset, arriving afterwards, change nothing."""

from __future__ import annotations

from datetime import timedelta

import httpx

from shared.events import EnrollmentChanged, Topic, utcnow
from tests.enrollment.conftest import Service
from tests.enrollment.test_progress_events import completed, course_done, my_course, reopened, wait_applied
from tests.helpers import TopicReader, eventually


async def test_reset_is_for_the_course_staff_and_needs_a_current_enrollment(service: Service) -> None:
    course = await service.create_course("Safety", instructor_ids=["t1"])
    cid = course["id"]
    await service.enroll(cid, "u1")
    await service.enroll(cid, "u2")
    await service.client.post(f"/api/courses/{cid}/unenroll", headers=service.learner("u2"))

    async def reset(course_id: int, user_id: str, headers: dict[str, str]) -> httpx.Response:
        return await service.client.post(f"/api/admin/courses/{course_id}/learners/{user_id}/reset", headers=headers)

    for who in (service.instructor("t2"), service.learner("u1"), service.learner("u3")):
        refused = await reset(cid, "u1", who)
        assert refused.status_code == 403
        assert refused.json() == {
            "code": "forbidden", "message": "Only this course's instructors and administrators may do this",
            "data": {"status": 403},
        }
    unknown = await reset(987654, "u1", service.admin)
    assert unknown.status_code == 404 and unknown.json()["code"] == "course_not_found"
    for user_id in ("nobody", "u2"):  # never enrolled; unenrolled
        missing = await reset(cid, user_id, service.admin)
        assert missing.status_code == 404
        assert missing.json() == {
            "code": "not_enrolled", "message": "No current enrollment of this learner in this course",
            "data": {"status": 404},
        }
    assert (await service.client.post(f"/api/admin/courses/{cid}/learners/u1/reset")).status_code == 401
    row = await service.enrollment_row("u1", cid)
    assert row["attempt"] == 1 and row["revision"] == 1, "nothing was written by a refusal"

    by_instructor = await reset(cid, "u1", service.instructor("t1"))
    assert by_instructor.status_code == 200, by_instructor.text
    assert by_instructor.json()["data"]["attempt"] == 2
    by_admin = await reset(cid, "u1", service.admin)
    assert by_admin.status_code == 200 and by_admin.json()["data"]["attempt"] == 3


async def test_a_reset_starts_a_new_attempt_and_the_old_one_changes_nothing(consuming: Service) -> None:
    service = consuming
    course = await service.create_course("Compliance", lessons=4, instructor_ids=["t1"])
    cid = course["id"]
    first = await service.enroll(cid, "u1")
    assert first["attempt"] == 1
    t0 = utcnow() - timedelta(hours=2)
    lessons = [completed("u1", course, i, 25 * (i + 1), t0 + timedelta(minutes=i)) for i in range(4)]
    done = course_done("u1", course, t0 + timedelta(minutes=4))
    await service.publish(lessons)  # first: a completion applied first would make them older
    await wait_applied(service, *lessons)
    await service.publish([done])
    await wait_applied(service, done)
    before = await my_course(service, "u1", cid)
    assert before is not None and before["status"] == "completed" and before["attempt"] == 1
    await service.runtime.pool.execute(
        "UPDATE enrollments SET certificate_url = 'https://example.com/c/1.pdf' WHERE user_id = 'u1'"
    )

    async with TopicReader(service.env.kafka_bootstrap, service.topic(Topic.ENROLLMENT_CHANGED)) as reader:
        reset = await service.client.post(f"/api/admin/courses/{cid}/learners/u1/reset", headers=service.admin)
        assert reset.status_code == 200, reset.text
        body = reset.json()
        assert body["message"] == "Learner's course reset"
        assert {k: body["data"][k] for k in ("enrollment_id", "status", "attempt", "progress_percentage")} == {
            "enrollment_id": first["enrollment_id"], "status": "active", "attempt": 2, "progress_percentage": 0,
        }
        assert body["data"]["completed_at"] is None

        async def attempt_two() -> list[EnrollmentChanged]:
            events = [EnrollmentChanged.model_validate_json(m.value) for m in reader.messages]
            return [e for e in events if e.attempt == 2]

        [event] = await eventually(attempt_two, what="enrollment-changed of attempt 2")
        assert event.status == "active" and event.user_id == "u1" and event.course_id == cid

    row = await my_course(service, "u1", cid)
    assert row is not None
    assert (row["attempt"], row["status"], row["progress_percentage"], row["completed_lessons"]) == (2, "active", 0, 0)
    assert row["total_lessons"] == 4 and row["completed_at"] is None
    assert row["certificate_url"] == "https://example.com/c/1.pdf", "the earlier certificate stays"
    students = await service.client.get(f"/api/courses/{cid}/students", headers=service.instructor("t1"))
    [student] = students.json()["data"]
    assert student["attempt"] == 2 and student["status"] == "active" and student["progress_percentage"] == 0
    internal = await service.client.get(f"/internal/courses/{cid}/enrollments/u1", headers=service.internal)
    assert internal.json()["attempt"] == 2 and internal.json()["event_id"] == str(event.event_id)
    confirmation = await service.client.get(
        f"/internal/courses/{cid}/confirmation", params={"user_id": "u1"}, headers=service.internal
    )
    assert confirmation.json()["enrollment"]["attempt"] == 2

    # The first attempt's facts, late or redelivered, even stamped after the reset: ignored.
    late = utcnow() + timedelta(minutes=1)
    stale = [
        reopened("u1", course, 0, 75, late),
        completed("u1", course, 0, 100, late),
        course_done("u1", course, late),
    ]
    await service.publish(stale)
    await wait_applied(service, *stale)
    row = await my_course(service, "u1", cid)
    assert row is not None
    assert (row["attempt"], row["status"], row["progress_percentage"], row["completed_at"]) == (2, "active", 0, None)

    # The new attempt's facts count.
    now = utcnow() + timedelta(minutes=2)
    fresh = completed("u1", course, 0, 25, now).model_copy(update={"attempt": 2})
    finished = course_done("u1", course, now + timedelta(minutes=1)).model_copy(update={"attempt": 2})
    await service.publish([fresh, finished])
    await wait_applied(service, fresh, finished)
    row = await my_course(service, "u1", cid)
    assert row is not None
    assert (row["attempt"], row["status"], row["progress_percentage"]) == (2, "completed", 100)
