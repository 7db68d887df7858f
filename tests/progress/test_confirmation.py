"""Completion decisions are confirmed with the owner (the enrollment service, here its
stand-in): a stale catalog or enrollment replica never yields a wrong percentage or a
course-completed, and an unreachable owner defers course-completed to the re-check."""

from __future__ import annotations

import asyncio
from typing import Any

from services.progress import store
from services.progress.replicas import Replicas
from services.progress.usecases import Tracker
from shared.events import CourseCompleted, LessonCompleted, Topic
from tests.helpers import TopicReader, eventually
from tests.progress.conftest import Stack, course, enrollment


async def completions(stack: Stack, user_id: str) -> int:
    return int(await stack.runtime.pool.fetchval("SELECT count(*) FROM course_completions WHERE user_id = $1", user_id))


async def queued_course_completed(stack: Stack, user_id: str) -> int:
    return int(await stack.runtime.pool.fetchval(
        "SELECT count(*) FROM outbox WHERE event_type = 'course-completed' AND key LIKE $1", f"{user_id}:%"
    ))


async def pending(stack: Stack, user_id: str) -> dict[str, Any] | None:
    row = await stack.runtime.pool.fetchrow("SELECT * FROM pending_confirmations WHERE user_id = $1", user_id)
    return dict(row) if row is not None else None


async def complete(stack: Stack, headers: dict[str, str], course_id: int, lesson_id: int) -> Any:
    return await stack.client.post(f"/api/courses/{course_id}/lessons/{lesson_id}/complete", headers=headers)


async def test_a_lesson_the_replica_has_not_seen_counts_and_blocks_course_completed(stack: Stack) -> None:
    await stack.catalog(course(80, [(801, True), (802, True)]))
    await stack.enroll(enrollment("s1", 80))
    # The owner has moved on: a third required lesson, not replicated yet.
    stack.enrollment_api.courses[80] = course(80, [(801, True), (802, True), (803, True)], revision=2)
    me = stack.token("s1", name="Sam One", email="s1@example.com")
    async with TopicReader(stack.env.kafka_bootstrap, stack.settings.topic(Topic.COURSE_COMPLETED.value)) as topic:
        first = await complete(stack, me, 80, 801)
        assert first.status_code == 200, first.text
        assert (first.json()["data"]["progress_percentage"], first.json()["data"]["total_lessons"]) == (33, 3)
        second = (await complete(stack, me, 80, 802)).json()["data"]
        assert (second["progress_percentage"], second["completed_lessons"], second["total_lessons"]) == (66, 2, 3)
        assert second["next_lesson"] == {"id": 803, "title": "Lesson 803", "order": 3}
        assert await completions(stack, "s1") == 0 and await queued_course_completed(stack, "s1") == 0
        # The replica was brought up to the owner's revision.
        assert await stack.runtime.pool.fetchval("SELECT revision FROM courses WHERE course_id = 80") == 2
        assert "confirm:s1:80:1" in stack.enrollment_api.calls

        # The new lesson is found at once (the replica's earlier copy did not have it).
        last = (await complete(stack, me, 80, 803)).json()["data"]
        assert last["progress_percentage"] == 100
        assert await completions(stack, "s1") == 1

        async def published() -> bool:
            return len(topic.messages) >= 1

        await eventually(published, what="course-completed on the topic")
        assert len(topic.messages) == 1
        event = CourseCompleted.model_validate_json(topic.messages[0].value)
        assert (event.user_id, event.course_id, event.user_name) == ("s1", 80, "Sam One")


async def test_a_removed_lesson_is_404_and_an_unpublished_course_decides_nothing(stack: Stack) -> None:
    await stack.catalog(course(81, [(811, True), (812, True), (813, True)]))
    await stack.enroll(enrollment("s2", 81))
    me = stack.token("s2")
    stack.enrollment_api.courses[81] = course(81, [(811, True), (812, True)], revision=2)
    gone = await complete(stack, me, 81, 813)
    assert gone.status_code == 404 and gone.json()["code"] == "lesson_not_found"
    assert await store.get_progress(stack.runtime.pool, "s2", 813) is None

    archived = course(81, [(811, True), (812, True)], revision=3)
    stack.enrollment_api.courses[81] = archived.model_copy(update={"status": "archived"})
    refused = await complete(stack, me, 81, 811)
    assert refused.status_code == 404 and refused.json()["code"] == "course_not_found"
    assert await store.get_progress(stack.runtime.pool, "s2", 811) is None
    reopen = await stack.client.post("/api/courses/81/lessons/811/incomplete", headers=me)
    assert reopen.status_code == 404 and reopen.json()["code"] == "course_not_found"
    assert await completions(stack, "s2") == 0


async def test_an_unenrollment_not_replicated_yields_no_course_completed(stack: Stack) -> None:
    await stack.catalog(course(82, [(821, True), (822, True)]))
    joined = enrollment("s3", 82)
    await stack.enroll(joined)
    me = stack.token("s3")
    assert (await complete(stack, me, 82, 821)).status_code == 200
    # The learner unenrolled at the owner; the replica still says active.
    stack.enrollment_api.enrollments[("s3", 82)] = joined.model_copy(update={"status": "unenrolled", "revision": 2})
    last = await complete(stack, me, 82, 822)
    assert last.status_code == 403 and last.json()["code"] == "not_enrolled"
    assert await completions(stack, "s3") == 0 and await queued_course_completed(stack, "s3") == 0
    row = await store.get_progress(stack.runtime.pool, "s3", 822)
    assert row is None or not row.completed
    replica = await store.get_enrollment(stack.runtime.pool, "s3", 82)
    assert replica is not None and replica.status == "unenrolled"


async def test_owner_unreachable_defers_course_completed_until_it_confirms(stack: Stack) -> None:
    await stack.catalog(course(83, [(831, True), (832, True)], title="Deferred"))
    await stack.enroll(enrollment("s4", 83))
    me = stack.token("s4", name="Sue Four", email="s4@example.com")
    assert (await complete(stack, me, 83, 831)).status_code == 200
    async with TopicReader(stack.env.kafka_bootstrap, stack.settings.topic(Topic.COURSE_COMPLETED.value)) as topic:
        stack.enrollment_api.down = True
        try:
            last = await complete(stack, me, 83, 832)
            assert last.status_code == 200, last.text
            assert last.json()["message"] == "Lesson marked as complete"
            assert last.json()["data"]["confirmation_pending"] is True
            assert await completions(stack, "s4") == 0 and await queued_course_completed(stack, "s4") == 0
            assert await pending(stack, "s4") is not None
            # Reopening needs a confirmed percentage: 503, nothing changes.
            reopen = await stack.client.post("/api/courses/83/lessons/832/incomplete", headers=me)
            assert reopen.status_code == 503 and reopen.json()["code"] == "service_unavailable"
            row = await store.get_progress(stack.runtime.pool, "s4", 832)
            assert row is not None and row.completed

            async def tried_while_down() -> bool:
                found = await pending(stack, "s4")
                return found is not None and found["attempts"] >= 1 and found["last_error"] is not None

            await eventually(tried_while_down, what="a failed re-check while the owner is down")
            assert await completions(stack, "s4") == 0
        finally:
            stack.enrollment_api.down = False

        async def decided() -> bool:
            return await completions(stack, "s4") == 1 and await pending(stack, "s4") is None

        await eventually(decided, what="the deferred course-completed decided")

        async def published() -> bool:
            return len(topic.messages) >= 1

        await eventually(published, what="course-completed on the topic")
        # One more decision attempt changes nothing.
        tracker: Tracker = stack.runtime.state.tracker
        await tracker.recheck_pending()
        assert await completions(stack, "s4") == 1
        assert len(topic.messages) == 1
        event = CourseCompleted.model_validate_json(topic.messages[0].value)
        assert (event.user_id, event.course_title, event.user_name, event.user_email) == (
            "s4", "Deferred", "Sue Four", "s4@example.com")


async def test_concurrent_rechecks_decide_each_deferral_once_on_the_owners_data(stack: Stack) -> None:
    tracker: Tracker = stack.runtime.state.tracker
    await stack.runtime.state.rechecks.stop()  # this test drives the re-checks itself
    lessons_topic = stack.settings.topic(Topic.LESSON_COMPLETED.value)
    # s5: the replica's course has one lesson, the owner's has two: deferred, then refuted.
    await stack.catalog(course(84, [(841, True)]))
    stack.enrollment_api.courses[84] = course(84, [(841, True), (842, True)], revision=2)
    await stack.enroll(enrollment("s5", 84))
    # s6: replica and owner agree.
    await stack.catalog(course(85, [(851, True)]))
    await stack.enroll(enrollment("s6", 85))
    async with TopicReader(stack.env.kafka_bootstrap, lessons_topic) as lessons:
        stack.enrollment_api.down = True
        try:
            for user, course_id, lesson_id in (("s5", 84, 841), ("s6", 85, 851)):
                response = await complete(stack, stack.token(user), course_id, lesson_id)
                assert response.status_code == 200 and response.json()["data"]["confirmation_pending"] is True
        finally:
            stack.enrollment_api.down = False
        assert await pending(stack, "s5") is not None and await pending(stack, "s6") is not None
        # Their lesson-completed events (figures from the catalog) wait for the owner too.
        assert int(await stack.runtime.pool.fetchval(
            "SELECT count(*) FROM outbox WHERE event_type = 'lesson-completed'")) == 0

        # Three re-checkers at once (another process's tracker among them), on the same rows.
        pool = stack.runtime.pool
        other = Tracker(pool, Replicas(pool, stack.runtime.state.enrollment_client, 0), stack.buffer)
        settled = await asyncio.gather(tracker.recheck_pending(), tracker.recheck_pending(), other.recheck_pending())
        assert sum(settled) == 2
        assert await pending(stack, "s5") is None and await pending(stack, "s6") is None
        assert await completions(stack, "s5") == 0  # the owner's revision has a lesson still to do
        assert await completions(stack, "s6") == 1
        assert await stack.runtime.pool.fetchval("SELECT revision FROM courses WHERE course_id = 84") == 2
        last = (await complete(stack, stack.token("s5"), 84, 842)).json()["data"]
        assert last["progress_percentage"] == 100 and "confirmation_pending" not in last
        assert await completions(stack, "s5") == 1

        async def three() -> bool:
            return len(lessons.messages) >= 3

        await eventually(three, what="the lesson-completed events")
        figures = sorted((e.user_id, e.lesson_id, e.progress_percentage, e.total_lessons) for e in (
            LessonCompleted.model_validate_json(m.value) for m in lessons.messages))
        # s5's first completion is published with the owner's figures (1 of 2), not the replica's.
        assert figures == [("s5", 841, 50, 2), ("s5", 842, 100, 2), ("s6", 851, 100, 1)]


async def test_a_heartbeat_completes_a_lesson_only_the_owner_knows_and_a_stale_draft_is_503(stack: Stack) -> None:
    await stack.catalog(course(86, [(861, True)]))
    await stack.enroll(enrollment("s7", 86))
    stack.enrollment_api.courses[86] = course(86, [(861, True), (862, True)], revision=2)
    me = stack.token("s7")
    beat = await stack.client.post("/api/progress", headers=me, json={
        "course_id": 86, "lesson_id": 862, "video_progress": 12, "completed": True})
    assert beat.status_code == 200, beat.text
    assert beat.json()["completed"] is True
    shown = (await stack.client.get("/api/courses/86/progress", headers=me)).json()["data"]
    assert (shown["progress_percentage"], shown["total_lessons"]) == (50, 2)
    assert await completions(stack, "s7") == 0

    # The replica holds a draft (it is behind) and the owner cannot be asked: no decision.
    await stack.catalog(course(87, [(871, True)]).model_copy(update={"status": "draft"}))
    await stack.enroll(enrollment("s8", 87))
    stack.enrollment_api.down = True
    try:
        refused = await complete(stack, stack.token("s8"), 87, 871)
        assert refused.status_code == 503 and refused.json()["code"] == "service_unavailable"
    finally:
        stack.enrollment_api.down = False
    assert await store.get_progress(stack.runtime.pool, "s8", 871) is None and await pending(stack, "s8") is None
