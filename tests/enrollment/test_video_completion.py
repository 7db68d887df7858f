"""A course's and a lesson's video completion threshold: API, storage, course-catalog."""

from __future__ import annotations

from shared.events import CourseCatalogEntry, Topic
from tests.enrollment.conftest import Service
from tests.helpers import TopicReader, eventually


async def test_thresholds_are_created_changed_cleared_and_echoed(service: Service) -> None:
    c = service.client
    a = service.admin
    created = await c.post("/api/admin/courses", json={"title": "Watched", "video_completion_threshold": 0.9},
                           headers=a)
    assert created.status_code == 201, created.text
    course = created.json()["data"]
    cid = course["id"]
    assert course["video_completion_threshold"] == 0.9
    plain = await c.post("/api/admin/courses", json={"title": "Manual"}, headers=a)
    assert plain.json()["data"]["video_completion_threshold"] is None

    added = await c.post(f"/api/admin/courses/{cid}/lessons",
                         json={"title": "Clip", "duration_seconds": 600, "video_completion_threshold": 0.5}, headers=a)
    assert added.status_code == 201, added.text
    lesson = added.json()["data"]["lesson"]
    assert lesson["video_completion_threshold"] == 0.5
    other = await c.post(f"/api/admin/courses/{cid}/lessons", json={"title": "Other"}, headers=a)
    assert other.json()["data"]["lesson"]["video_completion_threshold"] is None
    lid = lesson["id"]

    changed = await c.patch(f"/api/admin/courses/{cid}", json={"video_completion_threshold": 1}, headers=a)
    assert changed.status_code == 200 and changed.json()["data"]["video_completion_threshold"] == 1
    kept = await c.patch(f"/api/admin/courses/{cid}", json={"title": "Watched well"}, headers=a)
    assert kept.json()["data"]["video_completion_threshold"] == 1
    moved = await c.patch(f"/api/admin/courses/{cid}/lessons/{lid}", json={"video_completion_threshold": 0.75},
                          headers=a)
    assert moved.status_code == 200 and moved.json()["data"]["lesson"]["video_completion_threshold"] == 0.75
    untouched = await c.patch(f"/api/admin/courses/{cid}/lessons/{lid}", json={"title": "Clip 2"}, headers=a)
    assert untouched.json()["data"]["lesson"]["video_completion_threshold"] == 0.75

    for path in (f"/api/admin/courses/{cid}/lessons/{lid}", f"/api/admin/courses/{cid}"):
        cleared = await c.patch(path, json={"video_completion_threshold": None}, headers=a)
        assert cleared.status_code == 200, cleared.text
    got = (await c.get(f"/api/admin/courses/{cid}", headers=a)).json()["data"]
    assert got["video_completion_threshold"] is None
    assert [les["video_completion_threshold"] for les in got["lessons"]] == [None, None]
    pool = service.runtime.pool
    assert await pool.fetchval("SELECT video_completion_threshold FROM courses WHERE id = $1", cid) is None
    assert await pool.fetchval("SELECT video_completion_threshold FROM lessons WHERE id = $1", lid) is None


async def test_a_bad_threshold_is_a_400_naming_the_field_and_changes_nothing(service: Service) -> None:
    c = service.client
    course = await service.create_course("Thresholds", lessons=1, publish=False, video_completion_threshold=0.8)
    cid = course["id"]
    lid = course["lessons"][0]["id"]
    for bad in (0, -0.1, 1.01, 2, "0.9", True, [0.9], {"v": 1}):
        for method, url, body in (
            ("post", "/api/admin/courses", {"title": "x", "video_completion_threshold": bad}),
            ("patch", f"/api/admin/courses/{cid}", {"video_completion_threshold": bad}),
            ("post", f"/api/admin/courses/{cid}/lessons", {"title": "x", "video_completion_threshold": bad}),
            ("patch", f"/api/admin/courses/{cid}/lessons/{lid}", {"video_completion_threshold": bad}),
        ):
            response = await c.request(method, url, json=body, headers=service.admin)
            assert response.status_code == 400, (method, url, bad, response.text)
            error = response.json()
            assert error["code"] == "invalid_request" and error["data"]["status"] == 400
            assert "video_completion_threshold" in str(error["data"]["params"])
    after = await c.get(f"/api/admin/courses/{cid}", headers=service.admin)
    assert after.json()["data"] == course
    assert await service.runtime.pool.fetchval("SELECT count(*) FROM courses") == 1


async def test_the_catalog_carries_both_thresholds(service: Service) -> None:
    c = service.client
    course = await service.create_course("Carried", lessons=2, video_completion_threshold=0.9)
    cid = course["id"]
    first = course["lessons"][0]["id"]
    await c.patch(f"/api/admin/courses/{cid}/lessons/{first}", json={"video_completion_threshold": 0.6},
                  headers=service.admin)
    revision = course["revision"] + 1
    async with TopicReader(service.env.kafka_bootstrap, service.topic(Topic.COURSE_CATALOG)) as reader:

        async def latest() -> CourseCatalogEntry | None:
            entries = [CourseCatalogEntry.model_validate_json(m.value) for m in reader.messages]
            return next((e for e in entries if e.revision == revision), None)

        entry = await eventually(latest, what="the lesson's change on course-catalog")
    assert entry.video_completion_threshold == 0.9
    assert [les.video_completion_threshold for les in entry.lessons] == [0.6, None]
    internal = await c.get(f"/internal/courses/{cid}", headers=service.internal)
    assert internal.json() == entry.model_dump(mode="json")


def test_catalog_events_from_before_the_thresholds_still_parse() -> None:
    old = {"type": "course-catalog", "course_id": 1, "revision": 3, "title": "t", "slug": "t", "status": "published",
           "lessons": [{"id": 1, "title": "l", "order": 1}]}
    entry = CourseCatalogEntry.model_validate(old)
    assert entry.video_completion_threshold is None and entry.lessons[0].video_completion_threshold is None
