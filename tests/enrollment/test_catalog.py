"""The catalog admin API and the course-catalog topic, on real PostgreSQL and the broker."""

from __future__ import annotations

from typing import Any

from shared.events import CourseCatalogEntry, Topic
from tests.enrollment.conftest import Service
from tests.helpers import TopicReader, eventually


async def test_admin_builds_a_course_and_learners_see_it_once_published(service: Service) -> None:
    c = service.client
    created = await c.post(
        "/api/admin/courses",
        json={
            "title": "Introduction to Web Development", "description": "HTML, CSS and JS",
            "requires_sequential_progress": True, "certificate_enabled": False, "instructor_ids": ["t1", "t1", "t2"],
        },
        headers=service.admin,
    )
    assert created.status_code == 201
    body = created.json()
    assert body["message"] == "Course created"
    course = body["data"]
    assert course["slug"] == "introduction-to-web-development"
    assert course["status"] == "draft"
    assert course["instructor_ids"] == ["t1", "t2"]
    assert course["requires_sequential_progress"] is True and course["certificate_enabled"] is False
    assert course["revision"] == 1 and course["lessons"] == []
    cid = course["id"]

    learner = service.learner("u1")
    assert (await c.get(f"/api/courses/{cid}", headers=learner)).status_code == 404  # draft

    # Publishing needs a lesson.
    empty = await c.post(f"/api/admin/courses/{cid}/publish", headers=service.admin)
    assert empty.status_code == 400 and empty.json()["code"] == "course_has_no_lessons"

    ids = []
    for title, kind in (("HTML", "video"), ("CSS", "text"), ("JS", "video")):
        r = await c.post(
            f"/api/admin/courses/{cid}/lessons", json={"title": title, "kind": kind, "duration_seconds": 300},
            headers=service.admin,
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["data"]["lesson"]["id"])
    # Inserted at position 1: the others move down.
    intro = await c.post(
        f"/api/admin/courses/{cid}/lessons", json={"title": "Welcome", "order": 1, "is_required": False},
        headers=service.admin,
    )
    assert intro.json()["data"]["lesson"] == {
        "id": intro.json()["data"]["lesson"]["id"], "title": "Welcome", "order": 1, "is_required": False,
        "duration_seconds": None, "kind": "video", "video_completion_threshold": None,
    }
    intro_id = intro.json()["data"]["lesson"]["id"]

    published = await c.post(f"/api/admin/courses/{cid}/publish", headers=service.admin)
    assert published.status_code == 200 and published.json()["data"]["status"] == "published"

    seen = await c.get(f"/api/courses/{cid}", headers=learner)
    assert seen.status_code == 200
    data = seen.json()["data"]
    assert [(lesson["title"], lesson["order"]) for lesson in data["lessons"]] == [
        ("Welcome", 1), ("HTML", 2), ("CSS", 3), ("JS", 4),
    ]
    assert data["total_lessons"] == 4
    assert data["revision"] == 6  # create, 4 lessons, publish

    # Move JS to the front, then set the full order explicitly.
    moved = await c.patch(
        f"/api/admin/courses/{cid}/lessons/{ids[2]}", json={"order": 1, "title": "JavaScript"}, headers=service.admin
    )
    assert [lesson["title"] for lesson in moved.json()["data"]["course"]["lessons"]] == [
        "JavaScript", "Welcome", "HTML", "CSS",
    ]
    reordered = await c.put(
        f"/api/admin/courses/{cid}/lessons/order", json={"lesson_ids": [intro_id, *ids]}, headers=service.admin
    )
    assert reordered.status_code == 200
    titles = [lesson["title"] for lesson in reordered.json()["data"]["lessons"]]
    assert titles == ["Welcome", "HTML", "CSS", "JavaScript"]
    assert [lesson["order"] for lesson in reordered.json()["data"]["lessons"]] == [1, 2, 3, 4]

    archived = await c.post(f"/api/admin/courses/{cid}/archive", headers=service.admin)
    assert archived.json()["data"]["status"] == "archived"
    assert (await c.get(f"/api/courses/{cid}", headers=learner)).status_code == 404
    # An archived course can be published again; drafts are never gone back to.
    back = await c.patch(f"/api/admin/courses/{cid}", json={"status": "draft"}, headers=service.admin)
    assert back.status_code == 400 and back.json()["code"] == "invalid_status"
    again = await c.patch(f"/api/admin/courses/{cid}", json={"status": "published"}, headers=service.admin)
    assert again.json()["data"]["status"] == "published"


async def test_instructors_edit_only_their_own_courses(service: Service) -> None:
    c = service.client
    course = await service.create_course("Teaching", instructor_ids=["t1"], publish=False)
    cid = course["id"]
    mine, other, learner = service.instructor("t1"), service.instructor("t2"), service.learner("u1")

    ok = await c.patch(f"/api/admin/courses/{cid}", json={"description": "Updated by t1"}, headers=mine)
    assert ok.status_code == 200 and ok.json()["data"]["description"] == "Updated by t1"
    assert (await c.post(f"/api/admin/courses/{cid}/lessons", json={"title": "x"}, headers=mine)).status_code == 201
    assert (await c.post(f"/api/admin/courses/{cid}/publish", headers=mine)).status_code == 200
    assert (await c.get(f"/api/admin/courses/{cid}", headers=mine)).status_code == 200

    for headers in (other, learner):
        for response in (
            await c.patch(f"/api/admin/courses/{cid}", json={"title": "Mine now"}, headers=headers),
            await c.post(f"/api/admin/courses/{cid}/lessons", json={"title": "x"}, headers=headers),
            await c.post(f"/api/admin/courses/{cid}/archive", headers=headers),
            await c.get(f"/api/admin/courses/{cid}", headers=headers),
        ):
            assert response.status_code == 403, response.text
            assert response.json() == {
                "code": "forbidden",
                "message": "Only this course's instructors and administrators may do this",
                "data": {"status": 403},
            }
    # Instructors do not choose who teaches; only admins create courses.
    team = await c.patch(f"/api/admin/courses/{cid}", json={"instructor_ids": ["t1", "t2"]}, headers=mine)
    assert team.status_code == 403
    create = await c.post("/api/admin/courses", json={"title": "Own course"}, headers=mine)
    assert create.status_code == 403
    final = await c.get(f"/api/admin/courses/{cid}", headers=service.admin)
    assert final.json()["data"]["title"] == "Teaching"
    assert final.json()["data"]["instructor_ids"] == ["t1"]


async def test_bad_input_is_a_400_naming_the_field_and_changes_nothing(service: Service) -> None:
    c = service.client
    course = await service.create_course("Validation", lessons=2, publish=False)
    cid = course["id"]
    lesson_id = course["lessons"][0]["id"]

    cases: list[tuple[str, str, dict[str, Any], str]] = [
        ("post", "/api/admin/courses", {"title": "  "}, "title"),
        ("post", "/api/admin/courses", {}, "title"),
        ("post", "/api/admin/courses", {"title": "x", "slug": "Not A Slug"}, "slug"),
        ("post", "/api/admin/courses", {"title": "x", "colour": "red"}, "colour"),
        ("patch", f"/api/admin/courses/{cid}", {"title": None}, "title"),
        ("patch", f"/api/admin/courses/{cid}", {"status": "deleted"}, "status"),
        ("patch", f"/api/admin/courses/{cid}", {"certificate_enabled": "perhaps"}, "certificate_enabled"),
        ("post", f"/api/admin/courses/{cid}/lessons", {"title": "x", "kind": "hologram"}, "kind"),
        ("post", f"/api/admin/courses/{cid}/lessons", {"title": "x", "order": 0}, "order"),
        ("post", f"/api/admin/courses/{cid}/lessons", {"title": "x", "duration_seconds": -1}, "duration_seconds"),
        ("patch", f"/api/admin/courses/{cid}/lessons/{lesson_id}", {"is_required": None}, "is_required"),
        ("put", f"/api/admin/courses/{cid}/lessons/order", {"lesson_ids": []}, "lesson_ids"),
        ("put", f"/api/admin/courses/{cid}/lessons/order", {"lesson_ids": [lesson_id]}, "lesson_ids"),
        ("put", f"/api/admin/courses/{cid}/lessons/order", {"lesson_ids": [lesson_id, lesson_id]}, "lesson_ids"),
    ]
    for method, url, body, field in cases:
        response = await c.request(method, url, json=body, headers=service.admin)
        assert response.status_code == 400, (url, body, response.text)
        error = response.json()
        assert error["data"]["status"] == 400
        assert field in error["message"] or field in str(error["data"].get("params", {})), (body, error)

    # Non-numeric ids are 400 too; unknown ones 404.
    assert (await c.patch("/api/admin/courses/abc", json={}, headers=service.admin)).status_code == 400
    missing = await c.patch("/api/admin/courses/999999", json={"title": "x"}, headers=service.admin)
    assert missing.status_code == 404 and missing.json()["code"] == "course_not_found"
    no_lesson = await c.patch(f"/api/admin/courses/{cid}/lessons/999999", json={"title": "x"}, headers=service.admin)
    assert no_lesson.status_code == 404 and no_lesson.json()["code"] == "lesson_not_found"

    # A slug in use is a conflict.
    other = await service.create_course("Other", lessons=0, publish=False)
    taken = await c.patch(f"/api/admin/courses/{other['id']}", json={"slug": "validation"}, headers=service.admin)
    assert taken.status_code == 409 and taken.json()["code"] == "slug_taken"
    # A second course with the same title gets its own slug.
    twin = await c.post("/api/admin/courses", json={"title": "Validation"}, headers=service.admin)
    assert twin.json()["data"]["slug"] == "validation-2"

    after = await c.get(f"/api/admin/courses/{cid}", headers=service.admin)
    assert after.json()["data"] == course, "rejected requests changed nothing"

    # No token, bad token.
    assert (await c.get(f"/api/courses/{cid}")).status_code == 401
    bad = await c.get(f"/api/courses/{cid}", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["code"] == "unauthorized"


async def test_every_change_is_on_the_catalog_topic_and_a_replica_rebuilt_from_it_matches(service: Service) -> None:
    """Consume course-catalog from the beginning into a fresh dict; it equals the catalog."""
    c = service.client
    a = await service.create_course("Alpha", lessons=3, instructor_ids=["t1"])
    b = await service.create_course("Beta", lessons=2, publish=False)
    await c.patch(f"/api/admin/courses/{a['id']}", json={"title": "Alpha, revised"}, headers=service.admin)
    lesson_ids = [lesson["id"] for lesson in a["lessons"]]
    await c.put(
        f"/api/admin/courses/{a['id']}/lessons/order", json={"lesson_ids": lesson_ids[::-1]}, headers=service.admin
    )
    await c.patch(
        f"/api/admin/courses/{a['id']}/lessons/{lesson_ids[0]}", json={"is_required": False, "duration_seconds": None},
        headers=service.admin,
    )
    await c.post(f"/api/admin/courses/{b['id']}/archive", headers=service.admin)
    # A no-op change publishes nothing.
    await c.patch(f"/api/admin/courses/{a['id']}", json={"title": "Alpha, revised"}, headers=service.admin)
    g = await service.create_course("Gamma", lessons=1)

    expected_revisions = {a["id"]: 5 + 3, b["id"]: 3 + 1, g["id"]: 3}

    async with TopicReader(service.env.kafka_bootstrap, service.topic(Topic.COURSE_CATALOG)) as reader:

        async def everything_read() -> bool:
            return len(reader.messages) >= sum(expected_revisions.values())

        await eventually(everything_read, what="every catalog change on the topic")

    replica: dict[int, CourseCatalogEntry] = {}
    for message in reader.messages:
        entry = CourseCatalogEntry.model_validate_json(message.value)
        assert message.key == str(entry.course_id).encode()
        known = replica.get(entry.course_id)
        if known is None or entry.revision > known.revision:
            replica[entry.course_id] = entry

    assert len(reader.messages) == sum(expected_revisions.values())
    for course_id, revisions in expected_revisions.items():
        revs = [
            CourseCatalogEntry.model_validate_json(m.value).revision
            for m in reader.messages
            if CourseCatalogEntry.model_validate_json(m.value).course_id == course_id
        ]
        assert revs == list(range(1, revisions + 1)), "one message per change, in revision order"

    assert set(replica) == {a["id"], b["id"], g["id"]}
    for course_id, entry in replica.items():
        internal = await c.get(f"/internal/courses/{course_id}", headers=service.internal)
        assert internal.status_code == 200
        assert internal.json() == entry.model_dump(mode="json")
        admin_view = (await c.get(f"/api/admin/courses/{course_id}", headers=service.admin)).json()["data"]
        assert entry.title == admin_view["title"] and entry.status == admin_view["status"]
        assert [lesson.model_dump() for lesson in entry.lessons] == [
            {k: lesson[k] for k in (
                "id", "title", "order", "is_required", "duration_seconds", "kind", "video_completion_threshold"
            )}
            for lesson in admin_view["lessons"]
        ]
    alpha = replica[a["id"]]
    assert alpha.title == "Alpha, revised" and alpha.instructor_ids == ["t1"]
    assert [lesson.id for lesson in alpha.lessons] == lesson_ids[::-1]
    assert alpha.lessons[-1].is_required is False and alpha.lessons[-1].duration_seconds is None
    assert replica[b["id"]].status == "archived"


async def test_internal_course_api_needs_the_internal_token(service: Service) -> None:
    course = await service.create_course("Internal", lessons=1, publish=False)
    c = service.client
    assert (await c.get(f"/internal/courses/{course['id']}")).status_code == 403
    wrong = await c.get(f"/internal/courses/{course['id']}", headers={"X-Internal-Token": "guess"})
    assert wrong.status_code == 403
    draft = await c.get(f"/internal/courses/{course['id']}", headers=service.internal)
    assert draft.status_code == 200 and draft.json()["status"] == "draft" and draft.json()["revision"] == 2
    missing = await c.get("/internal/courses/424242", headers=service.internal)
    assert missing.status_code == 404 and missing.json()["code"] == "course_not_found"
