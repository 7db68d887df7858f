"""The internal completion-event API: certificates and notifications confirm a course-completed
event with it before acting on it."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

from services.progress import store
from shared.events import CourseCompleted
from tests.progress.conftest import Stack


async def test_a_stored_completion_is_returned_by_its_event_id(stack: Stack) -> None:
    event = CourseCompleted(
        user_id="u1", course_id=10, completed_at=datetime.now(UTC), user_name="John Doe",
        user_email="john@example.com", course_title="Web Basics", certificate_enabled=True,
    )
    async with stack.runtime.pool.acquire() as conn, conn.transaction():
        assert await store.add_completion(conn, 1, event)
    internal = {"X-Internal-Token": stack.settings.internal_token}

    found = await stack.client.get(f"/internal/completions/{event.event_id}", headers=internal)
    assert found.status_code == 200
    assert CourseCompleted.model_validate(found.json()) == event

    unknown = await stack.client.get(f"/internal/completions/{uuid4()}", headers=internal)
    assert unknown.status_code == 404 and unknown.json()["code"] == "completion_not_found"
    assert (await stack.client.get(f"/internal/completions/{event.event_id}")).status_code == 403
    assert (await stack.client.get("/internal/completions/not-a-uuid", headers=internal)).status_code == 400
