"""Courses that change after learners started, as the enrollment service sees it: archiving
a lesson (who may, what it answers, what the catalog then says) and progress-recalculated
events applied to the learners' enrollments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from shared.events import CourseCatalogEntry, LearnerProgress, LessonCompleted, ProgressRecalculated, Topic
from tests.enrollment.conftest import Service
from tests.enrollment.test_progress_events import my_course, wait_applied
from tests.helpers import TopicReader, eventually

T0 = datetime(2025, 11, 3, 9, 0, tzinfo=UTC)


async def archive(service: Service, course_id: int, lesson_id: int, headers: dict[str, str]) -> Any:
    return await service.client.delete(f"/api/admin/courses/{course_id}/lessons/{lesson_id}", headers=headers)


async def test_archiving_a_lesson_takes_it_out_of_the_course_and_its_catalog_entry(service: Service) -> None:
    course = await service.create_course("Changing Course", lessons=3)
    first, second, third = (lesson["id"] for lesson in course["lessons"])
    async with TopicReader(service.env.kafka_bootstrap, service.topic(Topic.COURSE_CATALOG)) as topic:
        archived = await archive(service, course["id"], second, service.admin)
        assert archived.status_code == 200, archived.text
        body = archived.json()
        assert body["message"] == "Lesson archived"
        assert [(lesson["id"], lesson["order"]) for lesson in body["data"]["lessons"]] == [(first, 1), (third, 2)]
        assert body["data"]["revision"] == course["revision"] + 1

        async def latest() -> CourseCatalogEntry | None:
            entries = [CourseCatalogEntry.model_validate_json(m.value) for m in topic.messages]
            ours = [e for e in entries if e.course_id == course["id"] and e.revision == body["data"]["revision"]]
            return ours[0] if ours else None

        entry = await eventually(latest, what="the new revision on course-catalog")
        assert [(lesson.id, lesson.order) for lesson in entry.lessons] == [(first, 1), (third, 2)]

    # The course as learners and the internal API see it: the live lessons only.
    public = await service.client.get(f"/api/courses/{course['id']}", headers=service.learner("u1"))
    assert [lesson["id"] for lesson in public.json()["data"]["lessons"]] == [first, third]
    internal = await service.client.get(f"/internal/courses/{course['id']}", headers=service.internal)
    assert [lesson["id"] for lesson in internal.json()["lessons"]] == [first, third]

    # Archived once: the lesson is not in the course any more.
    again = await archive(service, course["id"], second, service.admin)
    assert again.status_code == 404 and again.json()["code"] == "lesson_not_found"
    edited = await service.client.patch(f"/api/admin/courses/{course['id']}/lessons/{second}",
                                        json={"title": "Back?"}, headers=service.admin)
    assert edited.status_code == 404 and edited.json()["code"] == "lesson_not_found"

    # A lesson added afterwards takes the next position; reordering lists the live lessons.
    added = await service.client.post(f"/api/admin/courses/{course['id']}/lessons", json={"title": "New"},
                                      headers=service.admin)
    assert added.status_code == 201, added.text
    assert [lesson["order"] for lesson in added.json()["data"]["course"]["lessons"]] == [1, 2, 3]
    new = added.json()["data"]["lesson"]["id"]
    reordered = await service.client.put(f"/api/admin/courses/{course['id']}/lessons/order",
                                         json={"lesson_ids": [new, third, first]}, headers=service.admin)
    assert reordered.status_code == 200, reordered.text


async def test_who_may_archive_a_lesson_and_what_is_refused(service: Service) -> None:
    course = await service.create_course("Guarded Course", lessons=2, instructor_ids=["teacher-1"])
    other = await service.create_course("Other Course", lessons=1)
    first, second = (lesson["id"] for lesson in course["lessons"])

    for headers in (service.learner("u1"), service.instructor("teacher-2")):
        refused = await archive(service, course["id"], first, headers)
        assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    unknown_course = await archive(service, 999_999, first, service.admin)
    assert unknown_course.status_code == 404 and unknown_course.json()["code"] == "course_not_found"
    unknown_lesson = await archive(service, course["id"], 999_999, service.admin)
    assert unknown_lesson.status_code == 404 and unknown_lesson.json()["code"] == "lesson_not_found"
    elsewhere = await archive(service, course["id"], other["lessons"][0]["id"], service.admin)
    assert elsewhere.status_code == 404 and elsewhere.json()["code"] == "lesson_not_found"

    # The course's own instructor may; the last lesson of a published course may not go.
    by_teacher = await archive(service, course["id"], first, service.instructor("teacher-1"))
    assert by_teacher.status_code == 200, by_teacher.text
    last = await archive(service, course["id"], second, service.admin)
    assert last.status_code == 400, last.text
    assert last.json()["code"] == "course_needs_a_lesson"
    assert last.json()["data"]["status"] == 400
    shown = await service.client.get(f"/api/admin/courses/{course['id']}", headers=service.admin)
    assert [lesson["id"] for lesson in shown.json()["data"]["lessons"]] == [second]
    assert shown.json()["data"]["revision"] == by_teacher.json()["data"]["revision"], "nothing half written"

    # A draft may lose its last lesson (it cannot be published without one).
    draft = await service.create_course("Draft Course", lessons=1, publish=False)
    emptied = await archive(service, draft["id"], draft["lessons"][0]["id"], service.admin)
    assert emptied.status_code == 200 and emptied.json()["data"]["lessons"] == []
    publish = await service.client.post(f"/api/admin/courses/{draft['id']}/publish", headers=service.admin)
    assert publish.status_code == 400 and publish.json()["code"] == "course_has_no_lessons"


def recalculated(course_id: int, at: datetime, *learners: tuple[str, int, int, int]) -> ProgressRecalculated:
    return ProgressRecalculated(
        course_id=course_id, revision=5, recalculated_at=at,
        learners=[LearnerProgress(user_id=u, progress_percentage=p, completed_lessons=c, total_lessons=t)
                  for u, p, c, t in learners],
    )


async def test_recalculated_progress_replaces_older_figures_only(consuming: Service) -> None:
    service = consuming
    course = await service.create_course("Recalculated Course", lessons=4)
    course_id = course["id"]
    for user in ("ra", "rb", "rc"):
        await service.enroll(course_id, user)
    # rb has a progress fact newer than the recalculation: it is kept.
    newer = LessonCompleted(
        user_id="rb", course_id=course_id, lesson_id=course["lessons"][0]["id"], completed_at=T0 + timedelta(hours=1),
        progress_percentage=75, completed_lessons=3, total_lessons=4,
    )
    await service.publish([newer])
    await wait_applied(service, newer)

    batch = recalculated(course_id, T0, ("ra", 40, 2, 5), ("rb", 20, 1, 5), ("rc", 0, 0, 5))
    await service.publish([batch, batch])  # a redelivery changes nothing
    await wait_applied(service, batch)

    ra = await my_course(service, "ra", course_id)
    assert ra is not None and (ra["progress_percentage"], ra["completed_lessons"], ra["total_lessons"]) == (40, 2, 5)
    assert ra["status"] == "active"
    rb = await my_course(service, "rb", course_id)
    assert rb is not None and rb["progress_percentage"] == 75
    students = await service.client.get(f"/api/courses/{course_id}/students?orderby=progress_percentage",
                                        headers=service.admin)
    assert [(s["user_id"], s["progress_percentage"]) for s in students.json()["data"]] == [
        ("rb", 75), ("ra", 40), ("rc", 0)
    ]
