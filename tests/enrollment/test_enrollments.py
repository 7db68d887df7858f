"""Enrollments over HTTP: enroll, unenroll, my courses, students, the internal API, and
the enrollment-changed events, on real PostgreSQL and the broker."""

from __future__ import annotations

import random
import string
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.events import EnrollmentChanged, LessonCompleted, Topic
from tests.enrollment.conftest import Service
from tests.helpers import TopicReader, eventually

ADA = {"name": "Ada Lovelace", "email": "ada@example.com", "preferred_username": "ada",
       "picture": "https://example.com/ada.png"}


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


async def test_enroll_keeps_the_profile_and_answers_in_the_fluent_shape(service: Service) -> None:
    course = await service.create_course("Web", instructor_ids=["t1"])
    cid = course["id"]
    before = datetime.now(UTC)
    response = await service.client.post(f"/api/courses/{cid}/enroll", headers=service.learner("u1", **ADA))
    assert response.status_code == 200
    body = response.json()
    assert body["message"] == "Successfully enrolled in course"
    data = body["data"]
    assert {k: data[k] for k in ("course_id", "user_id", "status", "progress_percentage", "resumed")} == {
        "course_id": cid, "user_id": "u1", "status": "active", "progress_percentage": 0, "resumed": False,
    }
    assert isinstance(data["enrollment_id"], int)
    assert before - timedelta(seconds=1) <= parse(data["enrolled_at"]) <= datetime.now(UTC)

    students = await service.client.get(f"/api/courses/{cid}/students", headers=service.instructor("t1"))
    assert students.status_code == 200
    assert students.json()["data"] == [{
        "enrollment_id": data["enrollment_id"], "user_id": "u1", "username": "ada", "display_name": "Ada Lovelace",
        "email": "ada@example.com", "avatar": "https://example.com/ada.png", "status": "active",
        "attempt": 1, "progress_percentage": 0, "enrolled_at": data["enrolled_at"], "last_accessed": None,
        "completed_at": None,
        "certificate_url": None, "certificate_revoked_at": None, "certificate_revocation_reason": None,
    }]
    assert students.json()["meta"] == {"total": 1, "per_page": 20, "current_page": 1}

    again = await service.client.post(f"/api/courses/{cid}/enroll", headers=service.learner("u1", **ADA))
    assert again.status_code == 400
    assert again.json() == {
        "code": "already_enrolled", "message": "You are already enrolled in this course", "data": {"status": 400},
    }


async def test_enrolling_needs_a_published_course(service: Service) -> None:
    draft = await service.create_course("Draft", publish=False)
    archived = await service.create_course("Old")
    await service.client.post(f"/api/admin/courses/{archived['id']}/archive", headers=service.admin)
    learner = service.learner("u1")
    for cid in (draft["id"], archived["id"], 987654):
        response = await service.client.post(f"/api/courses/{cid}/enroll", headers=learner)
        assert response.status_code == 404
        assert response.json() == {"code": "course_not_found", "message": "Course not found", "data": {"status": 404}}
    bad = await service.client.post("/api/courses/web/enroll", headers=learner)
    assert bad.status_code == 400 and "course_id" in bad.json()["message"]
    assert (await service.client.post(f"/api/courses/{draft['id']}/enroll")).status_code == 401
    count = await service.runtime.pool.fetchval("SELECT count(*) FROM enrollments")
    assert count == 0


async def test_unenroll_then_enroll_again_resumes_the_same_enrollment(service: Service) -> None:
    course = await service.create_course("Resume")
    cid = course["id"]
    learner = service.learner("u1", name="Grace Hopper")
    never = await service.client.post(f"/api/courses/{cid}/unenroll", headers=learner)
    assert never.status_code == 403
    assert never.json() == {
        "code": "not_enrolled", "message": "You must be enrolled in this course", "data": {"status": 403},
    }
    first = await service.enroll(cid, "u1", name="Grace Hopper")

    left = await service.client.post(f"/api/courses/{cid}/unenroll", headers=learner)
    assert left.status_code == 200
    assert left.json()["message"] == "Successfully unenrolled from course"
    assert left.json()["data"]["status"] == "unenrolled"
    twice = await service.client.post(f"/api/courses/{cid}/unenroll", headers=learner)
    assert twice.status_code == 403 and twice.json()["code"] == "not_enrolled"
    unknown = await service.client.post("/api/courses/999999/unenroll", headers=learner)
    assert unknown.status_code == 404

    mine = await service.client.get("/api/courses/my-courses", headers=learner)
    assert mine.json()["data"] == [] and mine.json()["meta"]["total"] == 0
    students = await service.client.get(f"/api/courses/{cid}/students", headers=service.admin)
    assert students.json()["data"] == []

    back = await service.client.post(f"/api/courses/{cid}/enroll", headers=service.learner("u1", name="G. Hopper"))
    assert back.status_code == 200
    data = back.json()["data"]
    assert data["enrollment_id"] == first["enrollment_id"]
    assert data["enrolled_at"] == first["enrolled_at"]
    assert data["resumed"] is True and data["status"] == "active"
    students = await service.client.get(f"/api/courses/{cid}/students", headers=service.admin)
    assert [s["display_name"] for s in students.json()["data"]] == ["G. Hopper"], "profile refreshed from the token"


async def test_each_enrollment_change_is_published_with_a_growing_revision(service: Service) -> None:
    course = await service.create_course("Events")
    cid = course["id"]
    await service.enroll(cid, "u1", **ADA)
    await service.client.post(f"/api/courses/{cid}/unenroll", headers=service.learner("u1"))
    await service.enroll(cid, "u1", **ADA)
    await service.enroll(cid, "u2")

    async with TopicReader(service.env.kafka_bootstrap, service.topic(Topic.ENROLLMENT_CHANGED)) as reader:
        await eventually(lambda: _at_least(reader, 4), what="four enrollment-changed events")
    events = [EnrollmentChanged.model_validate_json(m.value) for m in reader.messages]
    assert len(events) == 4
    ada = [e for e in events if e.user_id == "u1"]
    assert [(e.status, e.revision) for e in ada] == [("active", 1), ("unenrolled", 2), ("active", 3)]
    assert {e.enrollment_id for e in ada} == {ada[0].enrollment_id}
    assert ada[0].username == "ada" and ada[0].email == "ada@example.com" and ada[0].display_name == "Ada Lovelace"
    assert ada[0].avatar == "https://example.com/ada.png"
    assert all(m.key == f"{e.user_id}:{cid}".encode() for m, e in zip(reader.messages, events, strict=True))

    # The internal API answers with the very event last published for the enrollment.
    internal = await service.client.get(f"/internal/courses/{cid}/enrollments/u1", headers=service.internal)
    assert internal.status_code == 200
    assert internal.json() == ada[-1].model_dump(mode="json")
    assert (await service.client.get(f"/internal/courses/{cid}/enrollments/u1")).status_code == 403
    await service.client.post(f"/api/courses/{cid}/unenroll", headers=service.learner("u1"))
    gone = await service.client.get(f"/internal/courses/{cid}/enrollments/u1", headers=service.internal)
    assert gone.status_code == 404 and gone.json()["code"] == "not_enrolled"
    never = await service.client.get(f"/internal/courses/{cid}/enrollments/nobody", headers=service.internal)
    assert never.status_code == 404


async def _at_least(reader: TopicReader, n: int) -> bool:
    return len(reader.messages) >= n


async def test_my_courses_filters_by_status_and_rejects_unknown_filters(service: Service) -> None:
    a = await service.create_course("Alpha")
    b = await service.create_course("Beta")
    c = await service.create_course("Gamma")
    for course in (a, b, c):
        await service.enroll(course["id"], "u1")
    await service.enroll(a["id"], "someone-else")
    await service.client.post(f"/api/courses/{c['id']}/unenroll", headers=service.learner("u1"))

    learner = service.learner("u1")
    every = await service.client.get("/api/courses/my-courses", headers=learner)
    assert every.status_code == 200
    rows = every.json()["data"]
    assert sorted(r["course_title"] for r in rows) == ["Alpha", "Beta"]
    assert {r["status"] for r in rows} == {"active"} and {r["progress_percentage"] for r in rows} == {0}
    assert rows[0].keys() >= {
        "enrollment_id", "course_id", "course_title", "course_slug", "status", "progress_percentage",
        "completed_lessons", "total_lessons", "enrolled_at", "last_accessed", "completed_at", "certificate_url",
    }
    assert every.json()["meta"] == {"total": 2, "per_page": 20, "current_page": 1}
    active = await service.client.get("/api/courses/my-courses?status=active", headers=learner)
    assert len(active.json()["data"]) == 2
    completed = await service.client.get("/api/courses/my-courses?status=completed", headers=learner)
    assert completed.json()["data"] == []
    paged = await service.client.get("/api/courses/my-courses?per_page=1&page=2", headers=learner)
    assert len(paged.json()["data"]) == 1 and paged.json()["meta"] == {"total": 2, "per_page": 1, "current_page": 2}

    bad = await service.client.get("/api/courses/my-courses?status=finished", headers=learner)
    assert bad.status_code == 400
    assert bad.json()["code"] == "invalid_request" and "status" in bad.json()["data"]["params"]
    assert (await service.client.get("/api/courses/my-courses")).status_code == 401


async def test_students_list_is_for_the_course_instructors_and_admins(service: Service) -> None:
    course = await service.create_course("Private", instructor_ids=["t1"])
    cid = course["id"]
    await service.enroll(cid, "u1")
    url = f"/api/courses/{cid}/students"
    assert (await service.client.get(url, headers=service.instructor("t1"))).status_code == 200
    assert (await service.client.get(url, headers=service.admin)).status_code == 200
    for headers in (service.instructor("t2"), service.learner("u1")):
        denied = await service.client.get(url, headers=headers)
        assert denied.status_code == 403 and denied.json()["code"] == "forbidden"
    missing = await service.client.get("/api/courses/999999/students", headers=service.admin)
    assert missing.status_code == 404 and missing.json()["code"] == "course_not_found"

    for query, name in (
        ("page=0", "page"), ("page=x", "page"), ("per_page=0", "per_page"), ("per_page=-3", "per_page"),
        ("orderby=name", "orderby"), ("order=up", "order"), ("orderby=progress&order=sideways", "orderby"),
    ):
        bad = await service.client.get(f"{url}?{query}", headers=service.admin)
        assert bad.status_code == 400, query
        assert name in bad.json()["data"]["params"], (query, bad.json())
        assert name in bad.json()["message"]


async def test_students_page_and_sort_over_hundreds_of_learners(consuming: Service) -> None:
    service = consuming
    rng = random.Random(4)
    course = await service.create_course("Crowded", lessons=4, instructor_ids=["t1"])
    cid = course["id"]
    n = 300
    names = ["".join(rng.choice(string.ascii_letters) for _ in range(7)) for _ in range(n - 20)]
    names += ["Twin"] * 10 + ["twin"] * 10  # ties on display_name, case-insensitive
    rng.shuffle(names)
    students: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        data = await service.enroll(cid, f"s{i:03d}", name=name)
        students.append({"id": data["enrollment_id"], "user_id": f"s{i:03d}", "display_name": name,
                         "enrolled_at": parse(data["enrolled_at"]), "progress_percentage": 0, "last_accessed": None})
    # Some leave: they are not listed.
    for s in students[::25]:
        await service.client.post(f"/api/courses/{cid}/unenroll", headers=service.learner(s["user_id"]))
    listed = [s for i, s in enumerate(students) if i % 25]

    # Progress arrives as the progress service publishes it; every fifth learner never started.
    base = datetime(2025, 10, 1, tzinfo=UTC)
    events = []
    for s in listed:
        if s["id"] % 5 == 0:
            continue
        pct = rng.choice([0, 25, 50, 75, 100])
        at = base + timedelta(minutes=rng.randrange(0, 50_000))
        s["progress_percentage"], s["last_accessed"] = pct, at
        events.append(LessonCompleted(
            user_id=s["user_id"], course_id=cid, lesson_id=course["lessons"][0]["id"], completed_at=at,
            progress_percentage=pct, completed_lessons=pct // 25, total_lessons=4,
        ))
    await service.publish(events)

    async def applied() -> bool:
        count = await service.runtime.pool.fetchval(
            "SELECT count(*) FROM enrollments WHERE course_id = $1 AND progress_at IS NOT NULL", cid
        )
        return bool(count == len(events))

    await eventually(applied, timeout=60, what=f"{len(events)} progress events applied")

    def expected(orderby: str, order: str) -> list[str]:
        def key(s: dict[str, Any]) -> Any:
            return s[orderby].lower() if orderby == "display_name" else s[orderby]

        present = [s for s in listed if s[orderby] is not None]
        absent = [s for s in listed if s[orderby] is None]
        desc = order == "desc"
        ordered = sorted(present, key=lambda s: (key(s), s["id"]), reverse=desc)
        return [s["user_id"] for s in ordered + sorted(absent, key=lambda s: s["id"], reverse=desc)]

    headers = service.instructor("t1")
    url = f"/api/courses/{cid}/students"
    for orderby in ("enrolled_at", "last_accessed", "progress_percentage", "display_name"):
        for order in ("asc", "desc"):
            seen: list[str] = []
            page = 1
            while True:
                r = await service.client.get(
                    url, params={"orderby": orderby, "order": order, "per_page": 37, "page": page}, headers=headers
                )
                assert r.status_code == 200
                body = r.json()
                assert body["meta"] == {"total": len(listed), "per_page": 37, "current_page": page}
                if not body["data"]:
                    break
                seen += [row["user_id"] for row in body["data"]]
                page += 1
            assert seen == expected(orderby, order), (orderby, order)
            assert page == -(-len(listed) // 37) + 1

    default = await service.client.get(url, headers=headers)
    assert [row["user_id"] for row in default.json()["data"]] == expected("enrolled_at", "desc")[:20]
    capped = await service.client.get(url, params={"per_page": 500}, headers=headers)
    assert capped.json()["meta"]["per_page"] == 100 and len(capped.json()["data"]) == 100
    by_progress = await service.client.get(url, params={"orderby": "progress_percentage"}, headers=headers)
    top = by_progress.json()["data"][0]
    assert top["progress_percentage"] == 100 and top["last_accessed"] is not None
