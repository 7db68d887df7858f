"""Concurrent requests on one course or one enrollment take turns and lose nothing."""

from __future__ import annotations

import asyncio

from shared.events import CourseCatalogEntry, EnrollmentChanged, Topic
from tests.enrollment.conftest import Service
from tests.helpers import TopicReader, eventually


async def test_concurrent_enrolls_of_one_learner_make_one_enrollment(service: Service) -> None:
    course = await service.create_course("Rush")
    cid = course["id"]
    headers = service.learner("u1")
    responses = await asyncio.gather(
        *[service.client.post(f"/api/courses/{cid}/enroll", headers=headers) for _ in range(8)]
    )
    assert sorted(r.status_code for r in responses) == [200] + [400] * 7
    assert {r.json()["code"] for r in responses if r.status_code == 400} == {"already_enrolled"}
    # A later change of the same enrollment lands on the same partition after anything
    # the racing requests published: once it is read, everything before it has been.
    await service.client.post(f"/api/courses/{cid}/unenroll", headers=headers)
    async with TopicReader(service.env.kafka_bootstrap, service.topic(Topic.ENROLLMENT_CHANGED)) as reader:

        async def marker_read() -> bool:
            return any(EnrollmentChanged.model_validate_json(m.value).status == "unenrolled" for m in reader.messages)

        await eventually(marker_read, what="the unenroll event")
    events = [EnrollmentChanged.model_validate_json(m.value) for m in reader.messages]
    assert [(e.user_id, e.status, e.revision) for e in events] == [("u1", "active", 1), ("u1", "unenrolled", 2)]
    assert await service.runtime.pool.fetchval("SELECT count(*) FROM enrollments") == 1


async def test_concurrent_lesson_additions_keep_order_and_revisions_consistent(service: Service) -> None:
    course = await service.create_course("Busy", lessons=0, publish=False)
    cid = course["id"]
    responses = await asyncio.gather(*[
        service.client.post(f"/api/admin/courses/{cid}/lessons", json={"title": f"L{i}"}, headers=service.admin)
        for i in range(10)
    ])
    assert all(r.status_code == 201 for r in responses)
    final = (await service.client.get(f"/api/admin/courses/{cid}", headers=service.admin)).json()["data"]
    assert [lesson["order"] for lesson in final["lessons"]] == list(range(1, 11))
    assert sorted(lesson["title"] for lesson in final["lessons"]) == sorted(f"L{i}" for i in range(10))
    assert final["revision"] == 11

    async with TopicReader(service.env.kafka_bootstrap, service.topic(Topic.COURSE_CATALOG)) as reader:

        async def all_there() -> bool:
            return len(reader.messages) >= 11

        await eventually(all_there, what="11 catalog entries")
    entries = [CourseCatalogEntry.model_validate_json(m.value) for m in reader.messages]
    # Published in revision order, each with one more lesson than the one before.
    assert [e.revision for e in entries] == list(range(1, 12))
    assert [len(e.lessons) for e in entries] == list(range(0, 11))
