"""POST/GET /api/progress: the upsert, the heartbeat rules, validation and auth errors."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.progress import store as progress_store
from services.progress.app import build_app
from services.progress.heartbeats import HeartbeatBuffer
from tests.helpers import app_client, eventually
from tests.progress.conftest import Stack, course, enrollment


async def setup_course(stack: Stack, user: str = "u1") -> None:
    await stack.catalog(course(42, [(101, True), (102, True), (103, False)]))
    await stack.enroll(enrollment(user, 42))


async def db_row(stack: Stack, user: str, lesson: int) -> Any:
    return await stack.runtime.pool.fetchrow(
        "SELECT * FROM lesson_progress WHERE user_id = $1 AND lesson_id = $2", user, lesson
    )


async def test_upsert_creates_then_updates_one_record_and_resumes(stack: Stack) -> None:
    await setup_course(stack)
    me = stack.token("u1")
    first = await stack.client.post("/api/progress", headers=me, json={
        "course_id": 42, "lesson_id": 101, "completed": False, "video_progress": 30, "last_position": 30,
    })
    assert first.status_code == 200, first.text
    created = first.json()
    assert created["user_id"] == "u1" and created["course_id"] == 42 and created["lesson_id"] == 101
    assert created["completed"] is False and created["completed_at"] is None
    assert created["video_progress"] == 30 and created["last_position"] == 30
    assert created["state"] == "in_progress"
    for key in ("id", "time_spent_seconds", "created_at", "updated_at"):
        assert key in created

    second = await stack.client.post("/api/progress", headers=me, json={
        "course_id": 42, "lesson_id": 101, "video_progress": 180, "last_position": 180,
    })
    assert second.status_code == 200
    assert second.json()["id"] == created["id"]
    assert second.json()["last_position"] == 180

    # The resume flow of the seed: the client fetches progress and resumes at last_position.
    for query in ("courseId=42", "course_id=42"):
        listed = await stack.client.get(f"/api/progress?{query}", headers=me)
        assert listed.status_code == 200
        records = listed.json()
        assert [r["lesson_id"] for r in records] == [101]
        assert records[0]["last_position"] == 180 and records[0]["id"] == created["id"]

    # Within the flush interval it is in PostgreSQL too, as one row.
    async def flushed() -> bool:
        row = await db_row(stack, "u1", 101)
        return row is not None and row["last_position"] == 180

    await eventually(flushed, timeout=5, what="heartbeat flushed")
    assert await stack.runtime.pool.fetchval("SELECT count(*) FROM lesson_progress") == 1

    # Someone else's records are not in my list.
    other = await stack.client.get("/api/progress", headers=stack.token("u2"))
    assert other.status_code == 200 and other.json() == []


async def test_late_heartbeat_never_moves_the_position_back(stack: Stack) -> None:
    await setup_course(stack)
    me = stack.token("u1")
    now = datetime.now(UTC)
    newer = {"course_id": 42, "lesson_id": 101, "video_progress": 300, "last_position": 300,
             "client_timestamp": now.isoformat()}
    older = {"course_id": 42, "lesson_id": 101, "video_progress": 200, "last_position": 200,
             "client_timestamp": (now - timedelta(seconds=100)).isoformat()}
    assert (await stack.client.post("/api/progress", headers=me, json=newer)).json()["last_position"] == 300
    late = await stack.client.post("/api/progress", headers=me, json=older)
    assert late.status_code == 200 and late.json()["last_position"] == 300

    # The same holds for what is stored, also when the late one reaches the database alone.
    await stack.buffer.flush()
    stack.buffer.entries.clear()  # as after a restart: the next heartbeat loads the row
    late_again = await stack.client.post("/api/progress", headers=me, json=older)
    assert late_again.json()["last_position"] == 300
    await stack.buffer.flush()
    row = await db_row(stack, "u1", 101)
    assert row["last_position"] == 300 and row["video_progress"] == 300

    # Without a timestamp, arrival order decides: the learner may seek back.
    back = await stack.client.post("/api/progress", headers=me,
                                   json={"course_id": 42, "lesson_id": 101, "video_progress": 10})
    assert back.json()["video_progress"] == 10


async def test_heartbeat_does_not_undo_a_completion(stack: Stack) -> None:
    await setup_course(stack)
    me = stack.token("u1")
    done = await stack.client.post("/api/progress", headers=me, json={
        "course_id": 42, "lesson_id": 101, "completed": True, "video_progress": 590, "last_position": 590,
    })
    assert done.status_code == 200
    assert done.json()["completed"] is True and done.json()["state"] == "completed"
    completed_at = done.json()["completed_at"]
    assert completed_at is not None
    # Written at once, not at the next flush.
    row = await db_row(stack, "u1", 101)
    assert row["completed"] and row["last_position"] == 590

    later = await stack.client.post("/api/progress", headers=me, json={
        "course_id": 42, "lesson_id": 101, "completed": False, "video_progress": 20, "last_position": 20,
    })
    assert later.json()["completed"] is True and later.json()["completed_at"] == completed_at
    await stack.buffer.flush()
    row = await db_row(stack, "u1", 101)
    assert row["completed"] and row["last_position"] == 20


async def test_time_spent_is_capped_by_the_wall_clock(stack: Stack) -> None:
    await setup_course(stack)
    me = stack.token("u1")
    body = {"course_id": 42, "lesson_id": 102}
    started = asyncio.get_running_loop().time()
    await stack.client.post("/api/progress", headers=me, json={**body, "video_progress": 0})
    await asyncio.sleep(0.3)
    # Jumping 10 minutes ahead after a fraction of a second adds at most that fraction.
    jumped = await stack.client.post("/api/progress", headers=me, json={**body, "video_progress": 600})
    elapsed = asyncio.get_running_loop().time() - started
    await stack.buffer.flush()
    stored = await db_row(stack, "u1", 102)
    assert 0 < stored["time_spent_seconds"] <= elapsed
    assert jumped.json()["time_spent_seconds"] <= round(elapsed)
    # Seeking back adds nothing.
    await stack.client.post("/api/progress", headers=me, json={**body, "video_progress": 100})
    await stack.buffer.flush()
    assert (await db_row(stack, "u1", 102))["time_spent_seconds"] == stored["time_spent_seconds"]


async def test_invalid_input_gets_400_naming_the_field(stack: Stack) -> None:
    await setup_course(stack)
    me = stack.token("u1")
    cases: list[tuple[Any, str]] = [
        ({"lesson_id": 101}, "course_id"),
        ({"course_id": 42}, "lesson_id"),
        ({"course_id": 42, "lesson_id": 101, "video_progress": -1}, "video_progress"),
        ({"course_id": 42, "lesson_id": 101, "last_position": 1e300}, "last_position"),
        ({"course_id": 42, "lesson_id": 101, "video_progress": "NaN"}, "video_progress"),
        ({"course_id": "forty-two", "lesson_id": 101}, "course_id"),
        ({"course_id": 42, "lesson_id": 101, "completed": "maybe"}, "completed"),
        ({"course_id": 42, "lesson_id": 999}, "lesson_id"),  # not a lesson of course 42
    ]
    for body, field in cases:
        response = await stack.client.post("/api/progress", headers=me, json=body)
        assert response.status_code == 400, (body, response.text)
        payload = response.json()
        assert payload["code"] == "invalid_request" and payload["data"]["status"] == 400
        assert field in payload["data"]["params"], (body, payload)
    # A literal NaN in the JSON body.
    raw = await stack.client.post("/api/progress", headers={**me, "content-type": "application/json"},
                                  content=b'{"course_id": 42, "lesson_id": 101, "video_progress": NaN}')
    assert raw.status_code == 400 and "video_progress" in raw.json()["data"]["params"]
    bad_query = await stack.client.get("/api/progress?courseId=abc", headers=me)
    assert bad_query.status_code == 400 and "courseId" in bad_query.json()["data"]["params"]
    assert await stack.runtime.pool.fetchval("SELECT count(*) FROM lesson_progress") == 0


async def test_auth_course_and_enrollment_errors(stack: Stack) -> None:
    await setup_course(stack)
    body = {"course_id": 42, "lesson_id": 101, "video_progress": 5}
    anonymous = await stack.client.post("/api/progress", json=body)
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "unauthorized"
    assert (await stack.client.get("/api/progress")).status_code == 401
    forged = await stack.client.get("/api/progress", headers={"Authorization": "Bearer not.a.token"})
    assert forged.status_code == 401

    missing = await stack.client.post("/api/progress", headers=stack.token("u1"),
                                      json={**body, "course_id": 77})
    assert missing.status_code == 404
    assert missing.json() == {"code": "course_not_found", "message": "Course not found",
                              "data": {"status": 404, "course_id": 77}}
    assert (await stack.client.get("/api/progress?courseId=77", headers=stack.token("u1"))).status_code == 404

    stranger = await stack.client.post("/api/progress", headers=stack.token("u9"), json=body)
    assert stranger.status_code == 403
    assert stranger.json() == {"code": "not_enrolled", "message": "You must be enrolled in this course",
                               "data": {"status": 403}}
    # Unenrolling closes the door again.
    await stack.enroll(enrollment("u1", 42, status="unenrolled", revision=2,
                                  enrollment_id=(await _enrollment_id(stack, "u1", 42))))
    gone = await stack.client.post("/api/progress", headers=stack.token("u1"), json=body)
    assert gone.status_code == 403 and gone.json()["code"] == "not_enrolled"


async def _enrollment_id(stack: Stack, user: str, course_id: int) -> int:
    value: int = await stack.runtime.pool.fetchval(
        "SELECT enrollment_id FROM enrollments WHERE user_id = $1 AND course_id = $2", user, course_id
    )
    return value


async def test_concurrent_writers_on_two_replicas_never_duplicate_a_row(stack: Stack) -> None:
    await setup_course(stack)
    # A second process of the service on the same database.
    other_app = build_app(stack.settings.model_copy())
    async with app_client(other_app) as other:
        me = stack.token("u1")
        clients = [stack.client, other]

        async def post(i: int) -> int:
            response = await clients[i % 2].post("/api/progress", headers=me, json={
                "course_id": 42, "lesson_id": 103, "video_progress": i, "last_position": i,
            })
            return response.status_code

        statuses = await asyncio.gather(*(post(i) for i in range(60)))
        assert set(statuses) == {200}
        completing = await asyncio.gather(*(
            clients[i % 2].post("/api/progress", headers=me, json={"course_id": 42, "lesson_id": 101,
                                                                   "completed": True})
            for i in range(20)
        ))
        assert {r.status_code for r in completing} == {200}
    await stack.buffer.flush()
    counts = await stack.runtime.pool.fetch(
        "SELECT lesson_id, count(*) AS n FROM lesson_progress WHERE user_id = 'u1' GROUP BY lesson_id"
    )
    assert {r["lesson_id"]: r["n"] for r in counts} == {101: 1, 103: 1}
    ids = {r.json()["id"] for r in completing}
    assert len(ids) == 1
    # One lesson-completed in the outbox (or already relayed): count what the relay has not sent plus sent
    # is checked through the topic in the completion tests.


async def test_a_failed_flush_keeps_its_changes_for_the_next(stack: Stack, monkeypatch: Any) -> None:
    await setup_course(stack)
    await stack.buffer.flushing.stop()  # only explicit flushes in this test
    me = stack.token("u1")
    body = {"course_id": 42, "lesson_id": 101}
    await stack.client.post("/api/progress", headers=me, json={**body, "video_progress": 0})
    await asyncio.sleep(0.3)  # a real wall-clock gap for time spent to grow into
    answered = await stack.client.post("/api/progress", headers=me, json={**body, "video_progress": 50})
    assert answered.status_code == 200
    real = progress_store.flush_heartbeats

    async def broken(*args: Any) -> None:
        raise ConnectionResetError("database went away")

    monkeypatch.setattr(progress_store, "flush_heartbeats", broken)
    with pytest.raises(ConnectionResetError):
        await stack.buffer.flush()
    monkeypatch.setattr(progress_store, "flush_heartbeats", real)
    assert await stack.buffer.flush() == 1
    row = await db_row(stack, "u1", 101)
    assert row["video_progress"] == 50 and row["time_spent_seconds"] > 0


async def test_graceful_shutdown_flushes_what_is_pending(stack: Stack) -> None:
    await setup_course(stack)
    slow = build_app(stack.settings.model_copy(update={"heartbeat_flush_interval_s": 10.0}))
    async with app_client(slow) as other:
        response = await other.post("/api/progress", headers=stack.token("u1"),
                                    json={"course_id": 42, "lesson_id": 102, "last_position": 77})
        assert response.status_code == 200
        row = await db_row(stack, "u1", 102)
        assert row["last_position"] == 0  # created at once, position still in memory
    row = await db_row(stack, "u1", 102)
    assert row["last_position"] == 77


async def test_heartbeats_are_counted_but_not_access_logged_unless_they_fail(stack: Stack) -> None:
    import logging

    from prometheus_client import REGISTRY

    await setup_course(stack)
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Collect()
    access = logging.getLogger("progress.access")
    access.addHandler(handler)
    labels = {"service": "progress", "method": "POST", "route": "/api/progress", "status": "200"}
    before = REGISTRY.get_sample_value("lessonstream_http_request_duration_seconds_count", labels) or 0
    try:
        body = {"course_id": 42, "lesson_id": 101, "video_progress": 30, "last_position": 30}
        ok = await stack.client.post("/api/progress", headers=stack.token("u1"), json=body)
        assert ok.status_code == 200
        bad = await stack.client.post("/api/progress", headers=stack.token("u1"), json={**body, "video_progress": -1})
        assert bad.status_code == 400
        listed = await stack.client.get("/api/progress", headers=stack.token("u1"))
        assert listed.status_code == 200
    finally:
        access.removeHandler(handler)
    assert lines == ["POST /api/progress 400", "GET /api/progress 200"]
    after = REGISTRY.get_sample_value("lessonstream_http_request_duration_seconds_count", labels)
    assert after == before + 1


async def test_an_idle_buffer_writes_its_flushed_through_mark_only_now_and_then(stack: Stack) -> None:
    """With nothing buffered a flush writes the mark at most once per ``mark_interval_s`` (an
    idle process wrote it twice a second); a flush that writes heartbeats always moves it."""
    await setup_course(stack)
    buffer = HeartbeatBuffer(stack.runtime.pool, 60.0, mark_interval_s=60.0)  # flushed by hand here
    pool = stack.runtime.pool

    async def mark() -> Any:
        return await pool.fetchval("SELECT flushed_through FROM heartbeat_flushers WHERE process_id = $1",
                                   buffer.process_id)

    await buffer.flush()
    first = await mark()
    assert first is not None
    for _ in range(3):
        await buffer.flush()
    assert await mark() == first, "an idle flush within the interval writes nothing"

    await buffer.heartbeat("u1", 42, 101, None, 12.0, None)
    assert await buffer.flush() == 1
    assert await mark() > first, "a flush with heartbeats records how far it has flushed"
    await progress_store.forget_flusher(pool, buffer.process_id)


async def test_an_idle_flush_loop_backs_off_and_the_next_heartbeat_wakes_it(stack: Stack) -> None:
    """With nothing buffered the flush loop waits up to the mark interval (10 s here), not
    every flush interval; the first heartbeat after that is flushed at once, not at the end
    of the wait."""
    await setup_course(stack)
    buffer = stack.runtime.state.heartbeats
    flushing = buffer.flushing
    assert buffer.mark_interval_s >= 8 > flushing.interval_s

    async def backed_off() -> bool:
        return bool(flushing.wait_s >= 8)

    await eventually(backed_off, timeout=30, what="the idle flush loop backing off")
    sent = asyncio.get_running_loop().time()
    answer = await stack.client.post("/api/progress", headers=stack.token("u1"), json={
        "course_id": 42, "lesson_id": 101, "video_progress": 12, "last_position": 12,
    })
    assert answer.status_code == 200

    async def flushed() -> bool:
        row = await db_row(stack, "u1", 101)
        return row is not None and row["last_position"] == 12

    await eventually(flushed, timeout=10, what="the heartbeat flushed")
    assert asyncio.get_running_loop().time() - sent < 3, "flushed at the end of the back-off, not at once"
    assert flushing.wait_s == flushing.interval_s


async def test_a_beacon_carries_its_token_in_the_body(stack: Stack) -> None:
    """navigator.sendBeacon cannot set headers: the token comes in the body instead, read
    only when the Authorization header is absent."""
    await setup_course(stack)
    token = stack.token("u1")["Authorization"].removeprefix("Bearer ")
    beat = {"course_id": 42, "lesson_id": 101, "video_progress": 75, "last_position": 75}

    sent = await stack.client.post("/api/progress", json={**beat, "access_token": token},
                                   headers={"Content-Type": "text/plain;charset=UTF-8"})  # as a Blob may be typed
    assert sent.status_code == 200, sent.text
    assert sent.json()["user_id"] == "u1" and sent.json()["last_position"] == 75
    listed = await stack.client.get("/api/progress?course_id=42", headers=stack.token("u1"))
    assert [(r["lesson_id"], r["last_position"]) for r in listed.json()] == [(101, 75)]

    # The header wins: a body token never changes whose record it is.
    other = await stack.client.post("/api/progress", headers=stack.token("u2"),
                                    json={**beat, "access_token": token, "last_position": 90})
    assert other.status_code == 403 and other.json()["code"] == "not_enrolled"

    # Without the header, anything but a valid token in a readable body is a 401.
    for body in ({**beat}, {**beat, "access_token": ""}, {**beat, "access_token": token + "x"},
                 {**beat, "access_token": token, "last_position": -1}):
        refused = await stack.client.post("/api/progress", json=body)
        assert refused.status_code == 401, (body, refused.text)
        assert refused.json()["code"] == "unauthorized"
    garbled = await stack.client.post("/api/progress", content=b"{not json")
    assert garbled.status_code == 401
    listed = await stack.client.get("/api/progress?course_id=42", headers=stack.token("u1"))
    assert [r["last_position"] for r in listed.json()] == [75]
