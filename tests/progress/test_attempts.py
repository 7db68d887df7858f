"""Attempts: a learner's course reset (enrollment-changed with a higher attempt) keeps the
ended attempt's records as history for staff, starts the learner again at 0 %, and lets
the course be completed once more, once per attempt. Playback buffered before the reset,
in any process, never reaches the new attempt."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

import orjson

from services.progress import store
from services.progress.app import build_app
from services.progress.heartbeats import HeartbeatBuffer
from services.progress.replicas import store_enrollment
from shared.events import EnrollmentChanged, Topic
from tests.helpers import app_client, eventually
from tests.progress.conftest import Stack, course, enrollment

COURSE = 70
LESSONS = (701, 702)


async def events(stack: Stack, topic: Topic, user_id: str) -> list[dict[str, Any]]:
    """What the service wrote to the outbox for ``topic`` about the learner, in order."""
    rows = await stack.runtime.pool.fetch(
        "SELECT payload FROM outbox WHERE topic = $1 AND key = $2 ORDER BY id",
        topic.value, f"{user_id}:{COURSE}",
    )
    return [orjson.loads(r["payload"]) for r in rows]


async def reset(stack: Stack, e: EnrollmentChanged) -> EnrollmentChanged:
    """The owner's reset as progress receives it: the same enrollment, a later revision and attempt."""
    later = e.model_copy(update={"event_id": uuid4(), "revision": e.revision + 1, "attempt": e.attempt + 1,
                                 "status": "active"})
    await stack.publish(later)

    async def stored() -> bool:
        row = await store.get_enrollment(stack.runtime.pool, e.user_id, e.course_id)
        return row is not None and row.attempt == later.attempt

    await eventually(stored, what=f"attempt {later.attempt} in the replica")
    return later


async def progress_of(stack: Stack, user_id: str) -> dict[str, Any]:
    response = await stack.client.get(f"/api/courses/{COURSE}/progress", headers=stack.token(user_id))
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def test_a_reset_keeps_the_history_and_completes_again_once(stack: Stack) -> None:
    await stack.catalog(course(COURSE, [(LESSONS[0], True), (LESSONS[1], True)], instructors=["t1"]))
    first = enrollment("u1", COURSE, name="Ada", email="ada@example.com")
    await stack.enroll(first)
    me = stack.token("u1")
    watched = await stack.client.post("/api/progress", headers=me, json={
        "course_id": COURSE, "lesson_id": LESSONS[0], "video_progress": 42.0, "last_position": 42.0})
    assert watched.status_code == 200
    for lesson in LESSONS:
        done = await stack.client.post(f"/api/courses/{COURSE}/lessons/{lesson}/complete", headers=me)
        assert done.status_code == 200, done.text
    before = await progress_of(stack, "u1")
    assert (before["attempt"], before["progress_percentage"]) == (1, 100) and before["completed_at"] is not None

    second = await reset(stack, first)

    # The learner starts again at 0 %, attempt 2, nothing completed in it.
    now = await progress_of(stack, "u1")
    assert (now["attempt"], now["progress_percentage"], now["completed_lessons"]) == (2, 0, 0)
    assert now["completed_at"] is None and now["time_spent_seconds"] == 0
    assert now["next_lesson"]["id"] == LESSONS[0]
    mine = await stack.client.get(f"/api/progress?courseId={COURSE}", headers=me)
    assert mine.json() == []

    # Staff read the ended attempt's records; the learner may not, and the current attempt is empty.
    for staff in (stack.token("a1", "admin"), stack.token("t1", "instructor")):
        old = await stack.client.get(f"/api/admin/learners/u1/progress?course_id={COURSE}&attempt=1", headers=staff)
        assert old.status_code == 200, old.text
        records = old.json()
        assert [(r["lesson_id"], r["completed"]) for r in records] == [(LESSONS[0], True), (LESSONS[1], True)]
        assert records[0]["last_position"] == 42.0
        current = await stack.client.get(f"/api/admin/learners/u1/progress?course_id={COURSE}", headers=staff)
        assert current.json() == []
    denied = await stack.client.get(f"/api/admin/learners/u1/progress?course_id={COURSE}&attempt=1", headers=me)
    assert denied.status_code == 403 and denied.json()["code"] == "forbidden"
    other = stack.token("t2", "instructor")
    assert (await stack.client.get(f"/api/admin/learners/u1/progress?course_id={COURSE}&attempt=1",
                                   headers=other)).status_code == 403

    # Completing attempt 2: lesson events of attempt 2, a second course-completed, once.
    for lesson in LESSONS:
        done = await stack.client.post(f"/api/courses/{COURSE}/lessons/{lesson}/complete", headers=me)
        assert done.json()["message"] == "Lesson marked as complete"
    assert (await stack.client.post(f"/api/courses/{COURSE}/lessons/{LESSONS[1]}/complete",
                                    headers=me)).json()["message"] == "Lesson already marked as complete"
    # The reset redelivered (a copy under a new id) and then a later change of the same
    # enrollment, on the same partition: once that is stored, the copy was handled too.
    await stack.publish(second.model_copy(update={"event_id": uuid4()}))
    await stack.enroll(second.model_copy(update={"event_id": uuid4(), "revision": second.revision + 1,
                                                 "status": "completed"}))
    done_again = await progress_of(stack, "u1")
    assert (done_again["attempt"], done_again["progress_percentage"]) == (2, 100)

    completions = await events(stack, Topic.COURSE_COMPLETED, "u1")
    assert [c["attempt"] for c in completions] == [1, 2]
    assert completions[0]["event_id"] != completions[1]["event_id"]
    lessons = await events(stack, Topic.LESSON_COMPLETED, "u1")
    assert [(e["lesson_id"], e["attempt"]) for e in lessons] == [
        (LESSONS[0], 1), (LESSONS[1], 1), (LESSONS[0], 2), (LESSONS[1], 2)]

    # Certificates ask for the current attempt's completion; both events stay confirmable.
    internal = {"X-Internal-Token": stack.settings.internal_token}
    status = (await stack.client.get(f"/internal/courses/{COURSE}/learners/u1/completion", headers=internal)).json()
    assert status["completed"] is True and status["course_completed"]["event_id"] == completions[1]["event_id"]
    for c in completions:
        confirmed = await stack.client.get(f"/internal/completions/{c['event_id']}", headers=internal)
        assert confirmed.json()["attempt"] == c["attempt"]


async def test_the_current_attempt_is_not_complete_after_a_reset(stack: Stack) -> None:
    await stack.catalog(course(COURSE, [(LESSONS[0], True)]))
    first = enrollment("u2", COURSE)
    await stack.enroll(first)
    me = stack.token("u2")
    assert (await stack.client.post(f"/api/courses/{COURSE}/lessons/{LESSONS[0]}/complete", headers=me)).is_success
    await reset(stack, first)
    internal = {"X-Internal-Token": stack.settings.internal_token}
    status = (await stack.client.get(f"/internal/courses/{COURSE}/learners/u2/completion", headers=internal)).json()
    assert status == {"completed": False, "progress_percentage": 0, "course_completed": None}


async def test_a_pending_confirmation_of_the_ended_attempt_is_dropped(stack: Stack) -> None:
    await stack.catalog(course(COURSE, [(LESSONS[0], True), (LESSONS[1], True)]))
    first = enrollment("u3", COURSE)
    await stack.enroll(first)
    me = stack.token("u3")
    stack.enrollment_api.down = True
    for lesson in LESSONS:
        done = await stack.client.post(f"/api/courses/{COURSE}/lessons/{lesson}/complete", headers=me)
        assert done.json()["data"]["confirmation_pending"] is True
    pool = stack.runtime.pool
    assert await pool.fetchval("SELECT lesson_ids FROM pending_confirmations WHERE user_id = 'u3'") == list(LESSONS)

    await reset(stack, first)
    assert await pool.fetchval("SELECT count(*) FROM pending_confirmations WHERE user_id = 'u3'") == 0
    stack.enrollment_api.down = False
    # Whatever the re-check loop does from now on, the ended attempt's completions are not
    # decided: a completion of the new attempt goes through, and it is the only one.
    done = await stack.client.post(f"/api/courses/{COURSE}/lessons/{LESSONS[0]}/complete", headers=me)
    assert done.json()["data"]["progress_percentage"] == 50 and "confirmation_pending" not in done.json()["data"]
    lessons = await events(stack, Topic.LESSON_COMPLETED, "u3")
    assert [(e["lesson_id"], e["attempt"]) for e in lessons] == [(LESSONS[0], 2)]
    assert await events(stack, Topic.COURSE_COMPLETED, "u3") == []


async def test_playback_buffered_in_another_process_never_reaches_the_new_attempt(stack: Stack) -> None:
    """Process B buffers heartbeats of attempt 1 and flushes them while the reset (in
    progress's own transaction, as every path stores it) is committing: the flush waits
    for it and writes nothing; B's next heartbeat starts attempt 2's record."""
    await stack.catalog(course(COURSE, [(LESSONS[0], True), (LESSONS[1], True)]))
    first = enrollment("u4", COURSE)
    await stack.enroll(first)
    me = stack.token("u4")
    settings = stack.settings.model_copy(update={"heartbeat_flush_interval_s": 3600.0})
    b_app = build_app(settings)
    async with app_client(b_app) as b_client:
        buffer_b: HeartbeatBuffer = b_app.state.runtime.state.heartbeats
        for position in (10.0, 20.0, 30.0):
            sent = await b_client.post("/api/progress", headers=me, json={
                "course_id": COURSE, "lesson_id": LESSONS[0], "video_progress": position, "last_position": position})
            assert sent.status_code == 200
        buffered = buffer_b.peek("u4", LESSONS[0])
        assert buffered is not None and buffered.dirty and buffered.attempt == 1

        later = first.model_copy(update={"event_id": uuid4(), "revision": 2, "attempt": 2})
        stack.enrollment_api.own(later)
        pool = stack.runtime.pool
        async with pool.acquire() as conn:
            resetting = conn.transaction()
            await resetting.start()
            try:
                assert await store_enrollment(conn, later)
                flushing = asyncio.create_task(buffer_b.flush())

                async def flush_waits() -> bool:
                    return bool(await pool.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE '%INSERT INTO lesson_progress%'"))

                await eventually(flush_waits, what="the flush waiting for the reset")
            finally:
                await resetting.commit()
            await flushing

        assert await pool.fetchval("SELECT count(*) FROM lesson_progress WHERE user_id = 'u4'") == 0
        history = await pool.fetchrow(
            "SELECT attempt, last_position FROM lesson_progress_history WHERE user_id = 'u4' AND lesson_id = $1",
            LESSONS[0])
        assert history is not None and history["attempt"] == 1
        assert buffer_b.peek("u4", LESSONS[0]) is None  # the ended attempt's entry is gone

        # Both processes show attempt 2 at 0 %; B's next heartbeat starts attempt 2's record.
        for client in (stack.client, b_client):
            data = (await client.get(f"/api/courses/{COURSE}/progress", headers=me)).json()["data"]
            assert (data["attempt"], data["progress_percentage"], data["time_spent_seconds"]) == (2, 0, 0)
        fresh = await b_client.post("/api/progress", headers=me, json={
            "course_id": COURSE, "lesson_id": LESSONS[0], "video_progress": 5.0, "last_position": 5.0})
        assert fresh.json()["last_position"] == 5.0
        await buffer_b.flush()
        row = await pool.fetchrow("SELECT attempt, last_position FROM lesson_progress WHERE user_id = 'u4'")
        assert row is not None and (row["attempt"], row["last_position"]) == (2, 5.0)


async def test_a_stale_entry_is_dropped_by_the_next_heartbeat(stack: Stack) -> None:
    """The process that buffered the playback learns of the reset before flushing it: the
    heartbeat drops the entry (Tracker.record), and nothing of attempt 1 is written."""
    await stack.catalog(course(COURSE, [(LESSONS[0], True)]))
    first = enrollment("u5", COURSE)
    await stack.enroll(first)
    me = stack.token("u5")
    settings = stack.settings.model_copy(update={"heartbeat_flush_interval_s": 3600.0})
    b_app = build_app(settings)
    async with app_client(b_app) as b_client:
        buffer_b: HeartbeatBuffer = b_app.state.runtime.state.heartbeats
        await b_client.post("/api/progress", headers=me, json={
            "course_id": COURSE, "lesson_id": LESSONS[0], "video_progress": 300.0, "last_position": 300.0})
        await reset(stack, first)
        after = await b_client.post("/api/progress", headers=me, json={
            "course_id": COURSE, "lesson_id": LESSONS[0], "video_progress": 3.0, "last_position": 3.0})
        assert after.json()["last_position"] == 3.0
        await buffer_b.flush()
        rows = await stack.runtime.pool.fetch(
            "SELECT attempt, last_position FROM lesson_progress WHERE user_id = 'u5'")
        assert [(r["attempt"], r["last_position"]) for r in rows] == [(2, 3.0)]


async def test_the_owner_confirmation_and_a_replica_miss_begin_the_attempt_too(stack: Stack) -> None:
    """The reset reaches progress first through the owner's answer, before its event: the
    records move all the same (every path that stores an enrollment)."""
    await stack.catalog(course(COURSE, [(LESSONS[0], True), (LESSONS[1], True)]))
    pool = stack.runtime.pool
    # Confirmation: the owner answers attempt 2 when the learner completes a lesson.
    first = enrollment("u6", COURSE)
    await stack.enroll(first)
    me = stack.token("u6")
    assert (await stack.client.post(f"/api/courses/{COURSE}/lessons/{LESSONS[0]}/complete", headers=me)).is_success
    stack.enrollment_api.own(first.model_copy(update={"event_id": uuid4(), "revision": 2, "attempt": 2}))
    done = await stack.client.post(f"/api/courses/{COURSE}/lessons/{LESSONS[1]}/complete", headers=me)
    assert done.json()["data"]["progress_percentage"] == 50  # lesson 2 alone, in attempt 2
    rows = await pool.fetch("SELECT lesson_id, attempt FROM lesson_progress WHERE user_id = 'u6'")
    assert [(r["lesson_id"], r["attempt"]) for r in rows] == [(LESSONS[1], 2)]
    kept = await pool.fetch("SELECT lesson_id, attempt FROM lesson_progress_history WHERE user_id = 'u6'")
    assert [(r["lesson_id"], r["attempt"]) for r in kept] == [(LESSONS[0], 1)]

    # Replica miss: progress holds the learner unenrolled at attempt 1; the owner has them
    # enrolled again at attempt 2, and a heartbeat asks it.
    gone = enrollment("u7", COURSE)
    await stack.enroll(gone)
    learner = stack.token("u7")
    assert (await stack.client.post(f"/api/courses/{COURSE}/lessons/{LESSONS[0]}/complete",
                                    headers=learner)).is_success
    await stack.enroll(gone.model_copy(update={"event_id": uuid4(), "revision": 2, "status": "unenrolled"}))
    stack.enrollment_api.own(gone.model_copy(update={"event_id": uuid4(), "revision": 3, "attempt": 2}))
    sent = await stack.client.post("/api/progress", headers=learner, json={
        "course_id": COURSE, "lesson_id": LESSONS[1], "video_progress": 9.0, "last_position": 9.0})
    assert sent.status_code == 200, sent.text
    data = (await stack.client.get(f"/api/courses/{COURSE}/progress", headers=learner)).json()["data"]
    assert (data["attempt"], data["progress_percentage"]) == (2, 0)
    kept = await pool.fetch("SELECT lesson_id, completed FROM lesson_progress_history WHERE user_id = 'u7'")
    assert [(r["lesson_id"], r["completed"]) for r in kept] == [(LESSONS[0], True)]
