"""The course's certificate validity travels from the catalog to course-completed: taken from
the revision the owner confirmed when the completion was decided, and kept in the stored
event that the internal completion API answers with."""

from __future__ import annotations

from services.progress import store
from shared.events import CourseCompleted
from tests.helpers import TopicReader, eventually
from tests.progress.conftest import Stack, course, enrollment
from tests.progress.test_completion import _at_least


async def test_course_completed_carries_the_confirmed_courses_validity(stack: Stack) -> None:
    replica = course(21, [(211, True)]).model_copy(update={"certificate_validity_days": 365})
    await stack.catalog(replica)
    stored = await store.get_course(stack.runtime.pool, 21)
    assert stored is not None and stored.certificate_validity_days == 365
    # The owner has moved on (a newer revision not yet on the topic): the decision uses it.
    stack.enrollment_api.own(replica.model_copy(update={"revision": 2, "certificate_validity_days": 30}))
    await stack.enroll(enrollment("u1", 21, name="Ada Lovelace", email="ada@example.com"))
    async with TopicReader(stack.env.kafka_bootstrap, stack.settings.topic("course-completed")) as reader:
        done = await stack.client.post("/api/courses/21/lessons/211/complete", headers=stack.token("u1"))
        assert done.status_code == 200
        await eventually(lambda: _at_least(reader, 1), what="course-completed")
        event = CourseCompleted.model_validate_json(reader.messages[0].value)
    assert event.certificate_validity_days == 30

    internal = {"X-Internal-Token": stack.settings.internal_token}
    copy = await stack.client.get(f"/internal/completions/{event.event_id}", headers=internal)
    assert copy.status_code == 200 and copy.json()["certificate_validity_days"] == 30
    assert CourseCompleted.model_validate(copy.json()) == event


async def test_a_course_without_validity_completes_with_none(stack: Stack) -> None:
    await stack.catalog(course(22, [(221, True)]))
    await stack.enroll(enrollment("u2", 22))
    async with TopicReader(stack.env.kafka_bootstrap, stack.settings.topic("course-completed")) as reader:
        done = await stack.client.post("/api/courses/22/lessons/221/complete", headers=stack.token("u2"))
        assert done.status_code == 200
        await eventually(lambda: _at_least(reader, 1), what="course-completed")
        event = CourseCompleted.model_validate_json(reader.messages[0].value)
    assert event.certificate_validity_days is None
    # An event published before the field existed parses the same way.
    old = event.model_dump(mode="json")
    del old["certificate_validity_days"]
    assert CourseCompleted.model_validate(old).certificate_validity_days is None
