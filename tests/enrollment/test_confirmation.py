"""The internal confirmation API: what progress asks before deciding a completion."""

from __future__ import annotations

from shared.internal import CourseConfirmation
from tests.enrollment.conftest import Service


async def test_confirmation_sends_the_course_only_when_newer_and_the_enrollment_in_any_status(
    service: Service,
) -> None:
    course = await service.create_course("Confirmed", lessons=2)
    cid, revision = course["id"], course["revision"]
    c = service.client
    url = f"/internal/courses/{cid}/confirmation"

    behind = await c.get(url, params={"user_id": "u1", "revision": revision - 1}, headers=service.internal)
    assert behind.status_code == 200
    answer = CourseConfirmation.model_validate(behind.json())
    assert (answer.course_id, answer.revision, answer.status) == (cid, revision, "published")
    assert answer.course is not None and [lesson.id for lesson in answer.course.lessons] == [
        lesson["id"] for lesson in course["lessons"]]
    current = await c.get(f"/internal/courses/{cid}", headers=service.internal)
    assert answer.course.model_dump(mode="json") == current.json()  # the very entry last published
    assert answer.enrollment is None  # never enrolled

    await service.enroll(cid, "u1")
    same = CourseConfirmation.model_validate(
        (await c.get(url, params={"user_id": "u1", "revision": revision}, headers=service.internal)).json())
    assert same.course is None and same.revision == revision
    assert same.enrollment is not None and same.enrollment.status == "active"

    left = await c.post(f"/api/courses/{cid}/unenroll", headers=service.learner("u1"))
    assert left.status_code == 200
    gone = CourseConfirmation.model_validate(
        (await c.get(url, params={"user_id": "u1", "revision": revision}, headers=service.internal)).json())
    assert gone.enrollment is not None and gone.enrollment.status == "unenrolled"
    assert gone.enrollment.revision == same.enrollment.revision + 1

    archived = await c.post(f"/api/admin/courses/{cid}/archive", headers=service.admin)
    assert archived.status_code == 200
    after = CourseConfirmation.model_validate(
        (await c.get(url, params={"user_id": "u1", "revision": revision}, headers=service.internal)).json())
    assert (after.revision, after.status) == (revision + 1, "archived")
    assert after.course is not None and after.course.status == "archived"

    assert (await c.get(url, params={"user_id": "u1"})).status_code == 403
    assert (await c.get(url, params={"user_id": "u1"}, headers={"X-Internal-Token": "guess"})).status_code == 403
    missing = await c.get("/internal/courses/424242/confirmation", params={"user_id": "u1"},
                          headers=service.internal)
    assert missing.status_code == 404 and missing.json()["code"] == "course_not_found"
    no_user = await c.get(url, headers=service.internal)
    assert no_user.status_code == 400 and "user_id" in no_user.json()["data"]["params"]
