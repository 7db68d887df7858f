"""Lesson and course completion: Fluent responses, events on the real topics, locking,
course progress, admin reads, replica misses and the internal completion API."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson

from shared.events import CertificateIssued, CourseCompleted, LessonCompleted, LessonReopened, Topic
from tests.helpers import TopicReader, eventually
from tests.progress.conftest import Stack, course, enrollment


def messages_of(reader: TopicReader) -> list[dict[str, Any]]:
    """The distinct events on the topic, in order. The outbox publishes at least once: a
    send retried after a broker error may land twice, and consumers drop the copy by its
    event id; what must hold is the number of events, not of copies."""
    seen: set[str] = set()
    events = []
    for m in reader.messages:
        event = orjson.loads(m.value)
        if event["event_id"] not in seen:
            seen.add(event["event_id"])
            events.append(event)
    return events


async def test_complete_incomplete_and_exactly_one_course_completed(stack: Stack) -> None:
    await stack.catalog(course(10, [(101, True), (102, True), (103, False)], title="Web Basics"))
    await stack.enroll(enrollment("u1", 10, enrollment_id=456, name="Replica Name", email="replica@example.com"))
    me = stack.token("u1", name="John Doe", email="john@example.com")
    topic = stack.settings.topic
    async with (
        TopicReader(stack.env.kafka_bootstrap, topic(Topic.COURSE_COMPLETED.value)) as completed_topic,
        TopicReader(stack.env.kafka_bootstrap, topic(Topic.LESSON_COMPLETED.value)) as lessons_topic,
        TopicReader(stack.env.kafka_bootstrap, topic(Topic.LESSON_REOPENED.value)) as reopened_topic,
    ):
        first = await stack.client.post("/api/courses/10/lessons/101/complete", headers=me)
        assert first.status_code == 200
        body = first.json()
        assert body["message"] == "Lesson marked as complete"
        assert body["data"]["lesson_id"] == 101 and body["data"]["progress_percentage"] == 50
        assert body["data"]["next_lesson"] == {"id": 102, "title": "Lesson 102", "order": 2}
        completed_at = body["data"]["completed_at"]

        again = await stack.client.post("/api/courses/10/lessons/101/complete", headers=me)
        assert again.status_code == 200
        assert again.json()["message"] == "Lesson already marked as complete"
        assert again.json()["data"]["completed_at"] == completed_at

        # The optional lesson does not move the percentage.
        optional = await stack.client.post("/api/courses/10/lessons/103/complete", headers=me)
        assert optional.json()["data"]["progress_percentage"] == 50
        last = await stack.client.post("/api/courses/10/lessons/102/complete", headers=me)
        assert last.json()["data"]["progress_percentage"] == 100 and last.json()["data"]["next_lesson"] is None

        # Toggling afterwards never completes the course a second time.
        reopened = await stack.client.post("/api/courses/10/lessons/102/incomplete", headers=me)
        assert reopened.status_code == 200
        assert reopened.json()["message"] == "Lesson marked as incomplete"
        assert reopened.json()["data"]["progress_percentage"] == 50
        assert (await stack.client.post("/api/courses/10/lessons/102/complete", headers=me)).status_code == 200

        async def relayed() -> bool:
            return len(messages_of(lessons_topic)) >= 4 and len(messages_of(reopened_topic)) >= 1 and \
                len(messages_of(completed_topic)) >= 1

        await eventually(relayed, what="events relayed")
        # Another event after everything: once it is seen, a second course-completed would be too.
        await stack.client.post("/api/courses/10/lessons/102/incomplete", headers=me)
        await eventually(lambda: _at_least(reopened_topic, 2), what="second reopen")
        finished = [CourseCompleted.model_validate(m) for m in messages_of(completed_topic)]
        assert len(finished) == 1
        event = finished[0]
        assert (event.user_id, event.course_id, event.course_title) == ("u1", 10, "Web Basics")
        assert (event.user_name, event.user_email) == ("John Doe", "john@example.com")  # the caller's claims
        assert event.certificate_enabled is True
        assert completed_topic.messages[0].key == b"u1:10"

        lessons = [LessonCompleted.model_validate(m) for m in messages_of(lessons_topic)]
        assert [(e.lesson_id, e.progress_percentage) for e in lessons] == [(101, 50), (103, 50), (102, 100),
                                                                            (102, 100)]
        reopen = LessonReopened.model_validate(messages_of(reopened_topic)[0])
        assert (reopen.lesson_id, reopen.progress_percentage) == (102, 50)

        # The internal completion API returns that very event.
        internal = await stack.client.get(
            "/internal/courses/10/learners/u1/completion", headers={"X-Internal-Token": stack.settings.internal_token}
        )
        assert internal.status_code == 200
        status = internal.json()
        assert status["completed"] is True and status["progress_percentage"] == 50
        assert status["course_completed"]["event_id"] == str(event.event_id)
        denied = await stack.client.get("/internal/courses/10/learners/u1/completion")
        assert denied.status_code == 403
        nobody = await stack.client.get(
            "/internal/courses/10/learners/u7/completion", headers={"X-Internal-Token": stack.settings.internal_token}
        )
        assert nobody.json() == {"completed": False, "progress_percentage": 0, "course_completed": None}


async def _at_least(reader: TopicReader, n: int) -> bool:
    return len(messages_of(reader)) >= n


async def test_course_completed_falls_back_to_the_replica_profile(stack: Stack) -> None:
    await stack.catalog(course(11, [(111, True)], certificate_enabled=False))
    await stack.enroll(enrollment("u2", 11, name="Ada Lovelace", email="ada@example.com"))
    async with TopicReader(stack.env.kafka_bootstrap, stack.settings.topic("course-completed")) as reader:
        done = await stack.client.post("/api/courses/11/lessons/111/complete", headers=stack.token("u2"))
        assert done.status_code == 200
        await eventually(lambda: _at_least(reader, 1), what="course-completed")
        event = CourseCompleted.model_validate_json(reader.messages[0].value)
        assert (event.user_name, event.user_email, event.certificate_enabled) == (
            "Ada Lovelace", "ada@example.com", False)


async def test_last_two_lessons_completed_together_complete_the_course_once(stack: Stack) -> None:
    await stack.catalog(course(12, [(121, True), (122, True), (123, True)]))
    await stack.enroll(enrollment("u3", 12))
    me = stack.token("u3")
    await stack.client.post("/api/courses/12/lessons/121/complete", headers=me)
    results = await asyncio.gather(
        *(stack.client.post(f"/api/courses/12/lessons/{lid}/complete", headers=me) for lid in (122, 123, 122, 123))
    )
    assert {r.status_code for r in results} == {200}
    rows = await stack.runtime.pool.fetch("SELECT event FROM course_completions WHERE user_id = 'u3'")
    assert len(rows) == 1
    # A marker: another learner completes afterwards; once their event is read, any
    # second event of u3 (published before it) would have been read too.
    await stack.enroll(enrollment("marker", 12))
    for lid in (121, 122, 123):
        await stack.client.post(f"/api/courses/12/lessons/{lid}/complete", headers=stack.token("marker"))
    async with TopicReader(stack.env.kafka_bootstrap, stack.settings.topic("course-completed")) as reader:

        async def marker_seen() -> bool:
            keys = [m.key for m in reader.messages]
            return b"marker:12" in keys and b"u3:12" in keys

        await eventually(marker_seen, what="marker course-completed")
        assert [(e["user_id"], e["course_id"]) for e in messages_of(reader)].count(("u3", 12)) == 1


async def test_complete_errors(stack: Stack) -> None:
    await stack.catalog(course(13, [(131, True)]))
    await stack.enroll(enrollment("u4", 13))
    me = stack.token("u4")
    assert (await stack.client.post("/api/courses/13/lessons/131/complete")).status_code == 401
    unknown_lesson = await stack.client.post("/api/courses/13/lessons/999/complete", headers=me)
    assert unknown_lesson.status_code == 404 and unknown_lesson.json()["code"] == "lesson_not_found"
    unknown_course = await stack.client.post("/api/courses/99/lessons/131/complete", headers=me)
    assert unknown_course.status_code == 404 and unknown_course.json()["code"] == "course_not_found"
    stranger = await stack.client.post("/api/courses/13/lessons/131/incomplete", headers=stack.token("u5"))
    assert stranger.status_code == 403 and stranger.json()["code"] == "not_enrolled"
    bad_id = await stack.client.post("/api/courses/abc/lessons/131/complete", headers=me)
    assert bad_id.status_code == 400
    never_done = await stack.client.post("/api/courses/13/lessons/131/incomplete", headers=me)
    assert never_done.status_code == 200 and never_done.json()["message"] == "Lesson is not marked as complete"


async def test_sequential_course_locks_lessons_until_earlier_required_ones_are_done(stack: Stack) -> None:
    # 201 required, 202 optional, 203 required, 204 required.
    await stack.catalog(course(20, [(201, True), (202, False), (203, True), (204, True)], sequential=True))
    await stack.enroll(enrollment("u6", 20))
    me = stack.token("u6")
    locked = await stack.client.post("/api/progress", headers=me,
                                     json={"course_id": 20, "lesson_id": 203, "video_progress": 5})
    assert locked.status_code == 403
    assert locked.json()["code"] == "lesson_locked"
    assert locked.json()["data"] == {"status": 403, "next_lesson": {"id": 201, "title": "Lesson 201", "order": 1}}
    skip = await stack.client.post("/api/courses/20/lessons/204/complete", headers=me)
    assert skip.status_code == 403 and skip.json()["data"]["next_lesson"]["id"] == 201

    progress = (await stack.client.get("/api/courses/20/progress", headers=me)).json()["data"]
    assert [lesson["id"] for lesson in progress["locked_lessons"]] == [202, 203, 204]
    assert progress["next_lesson"]["id"] == 201

    assert (await stack.client.post("/api/courses/20/lessons/201/complete", headers=me)).status_code == 200
    # The optional lesson does not block what follows it.
    opened = await stack.client.post("/api/progress", headers=me,
                                     json={"course_id": 20, "lesson_id": 203, "video_progress": 5})
    assert opened.status_code == 200
    still = await stack.client.post("/api/courses/20/lessons/204/complete", headers=me)
    assert still.status_code == 403 and still.json()["data"]["next_lesson"]["id"] == 203
    progress = (await stack.client.get("/api/courses/20/progress", headers=me)).json()["data"]
    assert [lesson["id"] for lesson in progress["locked_lessons"]] == [204]

    # Reopening 201 locks 203 again, also for heartbeats of an entry already in memory.
    await stack.client.post("/api/courses/20/lessons/201/incomplete", headers=me)
    relocked = await stack.client.post("/api/progress", headers=me,
                                       json={"course_id": 20, "lesson_id": 203, "video_progress": 9})
    assert relocked.status_code == 403


async def test_course_progress_object_and_who_may_read_it(stack: Stack) -> None:
    await stack.catalog(course(30, [(301, True), (302, True), (303, True), (304, False)],
                               instructors=["teacher"], title="JS"))
    await stack.enroll(enrollment("u7", 30))
    me = stack.token("u7")
    await stack.client.post("/api/courses/30/lessons/301/complete", headers=me)
    await stack.client.post("/api/courses/30/lessons/304/complete", headers=me)
    await stack.client.post("/api/progress", headers=me, json={"course_id": 30, "lesson_id": 302,
                                                               "video_progress": 40})
    # 3 hours 25 minutes of earlier watching, as stored by earlier flushes.
    await stack.buffer.flush()
    await stack.runtime.pool.execute(
        "UPDATE lesson_progress SET time_spent_seconds = 12300 WHERE user_id = 'u7' AND lesson_id = 301")
    stack.buffer.entries.clear()

    response = await stack.client.get("/api/courses/30/progress", headers=me)
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["course_id"] == 30 and data["user_id"] == "u7"
    assert data["progress_percentage"] == 33  # 1 of 3 required lessons; the optional one does not count
    assert (data["completed_lessons"], data["total_lessons"]) == (1, 3)
    assert data["time_spent"] == "3 hours 25 minutes" and data["time_spent_seconds"] == 12300
    assert data["started_at"].startswith("2025-10-15T10:00:00")
    assert data["last_accessed"] is not None and data["completed_at"] is None and data["certificate_url"] is None
    assert data["next_lesson"] == {"id": 302, "title": "Lesson 302", "order": 2}
    assert [lesson["id"] for lesson in data["missing_required_lessons"]] == [302, 303]
    assert data["locked_lessons"] == []

    # Instructors of the course and admins may read it; other learners may not.
    as_teacher = await stack.client.get("/api/courses/30/progress?user_id=u7", headers=stack.token("teacher",
                                                                                                    "instructor"))
    assert as_teacher.status_code == 200 and as_teacher.json()["data"]["progress_percentage"] == 33
    as_admin = await stack.client.get("/api/courses/30/progress?user_id=u7", headers=stack.token("boss", "admin"))
    assert as_admin.status_code == 200
    other_teacher = await stack.client.get("/api/courses/30/progress?user_id=u7",
                                           headers=stack.token("t2", "instructor"))
    assert other_teacher.status_code == 403
    peer = await stack.client.get("/api/courses/30/progress?user_id=u7", headers=stack.token("u8"))
    assert peer.status_code == 403 and peer.json()["data"]["status"] == 403
    not_enrolled = await stack.client.get("/api/courses/30/progress", headers=stack.token("u8"))
    assert not_enrolled.status_code == 403 and not_enrolled.json()["code"] == "not_enrolled"
    assert (await stack.client.get("/api/courses/31/progress", headers=me)).status_code == 404
    assert (await stack.client.get("/api/courses/30/progress")).status_code == 401


async def test_certificate_issued_sets_the_certificate_url(stack: Stack) -> None:
    await stack.catalog(course(40, [(401, True)]))
    await stack.enroll(enrollment("u9", 40))
    me = stack.token("u9")
    await stack.client.post("/api/courses/40/lessons/401/complete", headers=me)
    await stack.publish(CertificateIssued(
        user_id="u9", course_id=40, certificate_id="CERT-2025-001", verification_code="abc",
        certificate_url="http://127.0.0.1:8080/certificates/abc123.pdf",
        verification_url="http://127.0.0.1:8080/certificates/verify/abc", issued_at=datetime.now(UTC),
        course_title="x", student_name="y", student_email="z@example.com",
    ))

    async def url() -> Any:
        data = (await stack.client.get("/api/courses/40/progress", headers=me)).json()["data"]
        return data if data["certificate_url"] else None

    data = await eventually(url, what="certificate url")
    assert data["certificate_url"] == "http://127.0.0.1:8080/certificates/abc123.pdf"
    assert data["completed_at"] is not None and data["progress_percentage"] == 100


async def test_admin_and_instructors_read_a_learners_records(stack: Stack) -> None:
    await stack.catalog(course(50, [(501, True)], instructors=["teacher"]))
    await stack.catalog(course(51, [(511, True)]))
    for cid in (50, 51):
        await stack.enroll(enrollment("learner", cid))
    me = stack.token("learner")
    await stack.client.post("/api/progress", headers=me, json={"course_id": 50, "lesson_id": 501,
                                                               "video_progress": 3})
    await stack.client.post("/api/progress", headers=me, json={"course_id": 51, "lesson_id": 511,
                                                               "video_progress": 4})
    admin = stack.token("boss", "admin")
    everything = await stack.client.get("/api/admin/learners/learner/progress", headers=admin)
    assert everything.status_code == 200
    assert sorted(r["lesson_id"] for r in everything.json()) == [501, 511]
    one = await stack.client.get("/api/admin/learners/learner/progress?courseId=51", headers=admin)
    assert [r["video_progress"] for r in one.json()] == [4]

    teacher = stack.token("teacher", "instructor")
    taught = await stack.client.get("/api/admin/learners/learner/progress", headers=teacher)
    assert [r["lesson_id"] for r in taught.json()] == [501]
    foreign = await stack.client.get("/api/admin/learners/learner/progress?courseId=51", headers=teacher)
    assert foreign.status_code == 403
    learner = await stack.client.get("/api/admin/learners/learner/progress", headers=me)
    assert learner.status_code == 403
    assert (await stack.client.get("/api/admin/learners/learner/progress")).status_code == 401


async def test_replica_miss_asks_the_enrollment_service_and_trusts_it(stack: Stack) -> None:
    # Nothing published: the course and the enrollment exist only in the enrollment service.
    entry = course(60, [(601, True), (602, True)])
    stack.enrollment_api.courses[60] = entry
    me = stack.token("fresh")
    refused = await stack.client.post("/api/progress", headers=me, json={"course_id": 60, "lesson_id": 601,
                                                                         "video_progress": 1})
    assert refused.status_code == 403 and refused.json()["code"] == "not_enrolled"
    stack.enrollment_api.enrollments[("fresh", 60)] = enrollment("fresh", 60)
    accepted = await stack.client.post("/api/progress", headers=me, json={"course_id": 60, "lesson_id": 601,
                                                                          "video_progress": 2})
    assert accepted.status_code == 200, accepted.text
    assert "course:60" in stack.enrollment_api.calls and "enrollment:fresh:60" in stack.enrollment_api.calls
    # The answers are stored in the replicas.
    assert await stack.runtime.pool.fetchval("SELECT revision FROM courses WHERE course_id = 60") == 1
    assert await stack.runtime.pool.fetchval("SELECT status FROM enrollments WHERE user_id = 'fresh'") == "active"
    # An older catalog revision arriving later is ignored.
    await stack.catalog(course(60, [(601, True), (602, True), (603, True)], revision=2))
    stale = course(60, [(601, True)], revision=1)
    await stack.publish(stale)

    async def stale_consumed() -> bool:
        return bool(await stack.runtime.pool.fetchval("SELECT true FROM inbox WHERE event_id = $1", stale.event_id))

    await eventually(stale_consumed, what="stale catalog entry consumed")
    progress = (await stack.client.get("/api/courses/60/progress", headers=me)).json()["data"]
    assert progress["total_lessons"] == 3


async def test_enrollment_service_down_is_503_not_403(stack: Stack) -> None:
    stack.runtime.state.replicas._api = _unreachable_client()
    try:
        response = await stack.client.post("/api/progress", headers=stack.token("x"),
                                           json={"course_id": 70, "lesson_id": 1})
        assert response.status_code == 503 and response.json()["code"] == "service_unavailable"
    finally:
        await stack.runtime.state.replicas._api.aclose()


def _unreachable_client() -> Any:
    import httpx

    return httpx.AsyncClient(base_url="http://127.0.0.1:1", timeout=1.0)
