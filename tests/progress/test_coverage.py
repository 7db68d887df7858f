"""Watched coverage end to end: played segments and inferred watching stored per record,
shown in every answer, and the threshold rule (no completion by seeking to the end,
automatic completion once, on one process or two, under redelivery)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from services.progress import domain
from services.progress import store as progress_store
from services.progress.app import build_app
from shared.events import CourseCatalogEntry, CourseCompleted, LessonCompleted, Topic
from tests.helpers import TopicReader, app_client, eventually
from tests.progress.conftest import Stack, course, enrollment

COURSE = 140
L1, L2 = 1401, 1402  # both required, 600 s videos


def watched_course(threshold: float | None = 0.9, revision: int = 1, **lesson_thresholds: float) -> CourseCatalogEntry:
    entry = course(COURSE, [(L1, True), (L2, True)], revision=revision)
    lessons = [
        lesson.model_copy(update={"video_completion_threshold": lesson_thresholds.get(f"l{lesson.id}")})
        for lesson in entry.lessons
    ]
    return entry.model_copy(update={"video_completion_threshold": threshold, "lessons": lessons})


async def beat(client: httpx.AsyncClient, me: dict[str, str], lesson: int = L1, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/progress", headers=me, json={"course_id": COURSE, "lesson_id": lesson, **body})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def events(stack: Stack, topic: Topic, user: str, until: int) -> list[Any]:
    """The topic's events of ``user``, read from the broker, once at least ``until`` are there."""
    kind: type[LessonCompleted | CourseCompleted] = (
        LessonCompleted if topic == Topic.LESSON_COMPLETED else CourseCompleted)
    async with TopicReader(stack.env.kafka_bootstrap, stack.settings.topic(topic.value)) as reader:

        async def read() -> list[Any] | None:
            found = [kind.model_validate_json(m.value) for m in reader.messages]
            mine = [e for e in found if e.user_id == user and e.course_id == COURSE]
            return mine if len(mine) >= until else None

        return await eventually(read, what=f"{until} {topic.value} of {user}")


async def published(stack: Stack, topic: Topic, user: str) -> int:
    """How many events of the topic for ``user`` the outbox holds (all of them, published or not)."""
    count: int = await stack.runtime.pool.fetchval(
        "SELECT count(*) FROM outbox WHERE topic = $1 AND key = $2", topic.value, f"{user}:{COURSE}")
    return count


async def test_seeking_to_the_end_completes_nothing_and_watching_does(stack: Stack) -> None:
    await stack.catalog(watched_course(0.9))
    await stack.enroll(enrollment("u1", COURSE))
    me = stack.token("u1")
    c = stack.client

    # Open, then seek to the end at once and claim completion: recorded, not completed.
    await beat(c, me, video_progress=0, last_position=0)
    seeked = await beat(c, me, video_progress=600, last_position=600, completed=True)
    assert seeked["completed"] is False and seeked["state"] == "in_progress"
    assert seeked["last_position"] == 600 and seeked["watched_seconds"] == 0 and seeked["watched_ratio"] == 0
    refused = await c.post(f"/api/courses/{COURSE}/lessons/{L1}/complete", headers=me)
    assert refused.status_code == 403, refused.text
    error = refused.json()
    assert error["code"] == "lesson_not_watched" and error["data"]["status"] == 403
    assert error["data"]["watched_ratio"] == 0

    # The player's played ranges count, merged; an overlap counts once.
    half = await beat(c, me, video_progress=300, last_position=300, played_segments=[[0, 200], [150, 300]])
    assert half["watched_seconds"] == 300 and half["watched_ratio"] == 0.5 and half["completed"] is False
    refused = await c.post(f"/api/courses/{COURSE}/lessons/{L1}/complete", headers=me)
    assert refused.status_code == 403 and refused.json()["data"]["watched_ratio"] == 0.5
    short = await beat(c, me, video_progress=530, last_position=530, played_segments=[[300, 530]], completed=True)
    assert short["completed"] is False and short["watched_ratio"] == pytest.approx(530 / 600, abs=1e-4)

    # Ranges beyond the duration are clipped: 600 s of a 600 s video at most.
    done = await beat(c, me, video_progress=600, last_position=600, played_segments=[[500, 700]])
    assert done["completed"] is True and done["watched_seconds"] == 600 and done["watched_ratio"] == 1
    accepted = await c.post(f"/api/courses/{COURSE}/lessons/{L1}/complete", headers=me)
    assert accepted.status_code == 200 and accepted.json()["message"] == "Lesson already marked as complete"

    # Every answer shows the coverage: the list, the admin list.
    listed = (await c.get(f"/api/progress?courseId={COURSE}", headers=me)).json()
    assert [(r["lesson_id"], r["watched_seconds"], r["watched_ratio"]) for r in listed] == [(L1, 600, 1)]
    admin = await c.get(f"/api/admin/learners/u1/progress?courseId={COURSE}", headers=stack.token("a", "admin"))
    assert [(r["watched_seconds"], r["watched_ratio"]) for r in admin.json()] == [(600, 1)]
    row = await stack.runtime.pool.fetchrow(
        "SELECT watched, watched_seconds FROM lesson_progress WHERE user_id = 'u1' AND lesson_id = $1", L1)
    assert row is not None and list(row["watched"]) == [0, 600] and row["watched_seconds"] == 600
    lesson_events = await events(stack, Topic.LESSON_COMPLETED, "u1", 1)
    assert [e.lesson_id for e in lesson_events] == [L1]


async def test_inferred_watching_counts_playback_and_not_seeks(stack: Stack) -> None:
    await stack.catalog(watched_course(0.9))
    await stack.enroll(enrollment("u2", COURSE))
    me = stack.token("u2")
    # Real playback paced by the clock: a heartbeat every 0.25 s, the position moving with it.
    started = time.time()
    position = 0.0
    for i in range(9):
        await asyncio.sleep(max(0.0, started + i * 0.25 - time.time()))
        position = 100 + (time.time() - started)
        answer = await beat(stack.client, me, video_progress=position, last_position=position)
    assert answer["watched_seconds"] == pytest.approx(position - 100, abs=0.01)
    # A jump forward is a seek: no coverage, and the playback after it counts again.
    jumped = await beat(stack.client, me, video_progress=590, last_position=590, completed=True)
    assert jumped["watched_seconds"] == pytest.approx(position - 100, abs=0.01) and jumped["completed"] is False

    async def stored() -> Any:
        row = await stack.runtime.pool.fetchrow(
            "SELECT watched_seconds FROM lesson_progress WHERE user_id = 'u2' AND lesson_id = $1", L1)
        return row if row is not None and row["watched_seconds"] == pytest.approx(position - 100, abs=0.01) else None

    await eventually(stored, what="the flushed coverage")


async def test_without_a_threshold_completion_is_as_before(stack: Stack) -> None:
    await stack.catalog(watched_course(None, l1402=0.5))
    await stack.enroll(enrollment("u3", COURSE))
    me = stack.token("u3")
    # No rule for lesson 1: the learner completes it, watched or not, and coverage does not.
    covered = await beat(stack.client, me, video_progress=600, last_position=600, played_segments=[[0, 600]])
    assert covered["completed"] is False and covered["watched_ratio"] == 1
    claimed = await beat(stack.client, me, lesson=L1, video_progress=600, completed=True)
    assert claimed["completed"] is True
    # Lesson 2 has a rule of its own.
    refused = await stack.client.post(f"/api/courses/{COURSE}/lessons/{L2}/complete", headers=me)
    assert refused.status_code == 403 and refused.json()["code"] == "lesson_not_watched"
    half = await beat(stack.client, me, lesson=L2, video_progress=300, played_segments=[[0, 300]])
    assert half["completed"] is True


async def test_bad_played_segments_are_a_400_naming_the_field(stack: Stack) -> None:
    await stack.catalog(watched_course(0.9))
    await stack.enroll(enrollment("u4", COURSE))
    me = stack.token("u4")
    for bad in ([[5, 1]], [[-1, 3]], [[0, domain.MAX_POSITION_SECONDS + 1]], [[0]], [[0, 1, 2]], [["a", 1]],
                [[0, 1]] * (domain.MAX_PLAYED_SEGMENTS + 1), "0-10", [[0, "Infinity"]]):
        response = await stack.client.post("/api/progress", headers=me, json={
            "course_id": COURSE, "lesson_id": L1, "video_progress": 1, "played_segments": bad})
        assert response.status_code == 400, (bad, response.text)
        error = response.json()
        assert error["code"] == "invalid_request" and "played_segments" in str(error["data"]["params"]), bad
    assert await stack.runtime.pool.fetchval("SELECT count(*) FROM lesson_progress WHERE user_id = 'u4'") == 0
    fine = await beat(stack.client, me, video_progress=1, played_segments=[[0, 1]] * domain.MAX_PLAYED_SEGMENTS)
    assert fine["watched_seconds"] == 1


async def test_automatic_completion_publishes_once_under_redelivery(stack: Stack) -> None:
    await stack.catalog(watched_course(0.9))
    e = enrollment("u5", COURSE, name="Una Five", email="u5@example.com")
    await stack.enroll(e)
    me = stack.token("u5")
    first = await beat(stack.client, me, lesson=L1, video_progress=560, played_segments=[[0, 560]])
    assert first["completed"] is True
    second = await beat(stack.client, me, lesson=L2, video_progress=545, played_segments=[[0, 545]])
    assert second["completed"] is True
    # Redelivered catalog and enrollment events, more playback, explicit completions: nothing new.
    await stack.publish(watched_course(0.9))
    await stack.publish(e)
    for lesson in (L1, L2):
        again = await beat(stack.client, me, lesson=lesson, video_progress=600, played_segments=[[0, 600]],
                           completed=True)
        assert again["completed"] is True
        done = await stack.client.post(f"/api/courses/{COURSE}/lessons/{lesson}/complete", headers=me)
        assert done.json()["message"] == "Lesson already marked as complete"
    await stack.buffer.flush()
    lessons = await events(stack, Topic.LESSON_COMPLETED, "u5", 2)
    courses = await events(stack, Topic.COURSE_COMPLETED, "u5", 1)
    assert sorted(e.lesson_id for e in lessons) == [L1, L2]
    assert len(courses) == 1 and courses[0].user_name == "Una Five"
    assert await published(stack, Topic.LESSON_COMPLETED, "u5") == 2
    assert await published(stack, Topic.COURSE_COMPLETED, "u5") == 1


@pytest.fixture
async def two(stack: Stack) -> AsyncIterator[tuple[Stack, list[httpx.AsyncClient]]]:
    """Two more processes of the service on the stack's database."""
    await stack.catalog(watched_course(0.9))
    settings = stack.settings.model_copy(update={"replica_cache_ttl_s": 5.0})
    async with app_client(build_app(settings)) as a, app_client(build_app(settings)) as b:
        yield stack, [a, b]


async def test_coverage_reached_across_two_replicas_completes_once(two: tuple[Stack, list[httpx.AsyncClient]]) -> None:
    stack, (a, b) = two
    await stack.enroll(enrollment("u6", COURSE))
    me = stack.token("u6")
    # Alternating heartbeats, each process seeing half of the ranges: neither entry alone
    # reaches 90 %; the database's union does after both have flushed.
    rng = random.Random(6)
    chunks = [(i * 30.0, i * 30.0 + 30.0) for i in range(20)]
    rng.shuffle(chunks)
    for i, (start, end) in enumerate(chunks[:19]):  # 570 of 600 s: 95 %
        answer = await beat((a, b)[i % 2], me, lesson=L1, video_progress=end, played_segments=[[start, end]])
        assert answer["watched_ratio"] < 0.9 or answer["completed"], answer
    lessons = await events(stack, Topic.LESSON_COMPLETED, "u6", 1)
    assert [e.lesson_id for e in lessons] == [L1]

    # Lesson 2: both processes reach the threshold at the same moment.
    answers = await asyncio.gather(*(
        beat(client, me, lesson=L2, video_progress=600, played_segments=[[0, 600]]) for client in (a, b, a, b)
    ))
    assert all(answer["completed"] for answer in answers)
    lessons = await events(stack, Topic.LESSON_COMPLETED, "u6", 2)
    courses = await events(stack, Topic.COURSE_COMPLETED, "u6", 1)
    for client in (a, b):
        await beat(client, me, lesson=L2, video_progress=600, played_segments=[[0, 600]])
    assert sorted(e.lesson_id for e in lessons) == [L1, L2] and len(courses) == 1
    assert await published(stack, Topic.LESSON_COMPLETED, "u6") == 2
    assert await published(stack, Topic.COURSE_COMPLETED, "u6") == 1
    stored = await stack.runtime.pool.fetch(
        "SELECT lesson_id, completed, watched_seconds FROM lesson_progress WHERE user_id = 'u6' ORDER BY lesson_id")
    assert [(r["lesson_id"], r["completed"], r["watched_seconds"]) for r in stored] == [
        (L1, True, 570), (L2, True, 600)]


async def test_the_watch_merge_in_sql_is_the_domain_one(stack: Stack) -> None:
    """progress_watch (migration 007) against domain.watched_union on random records and flushes."""
    rng = random.Random(7)

    def ranges(n: int) -> domain.Intervals:
        starts = (rng.uniform(0, 3600) for _ in range(n))
        return domain.normalize((s, s + rng.choice([0.0, 0.25, 1.0, rng.uniform(0, 120)])) for s in starts)

    async with stack.runtime.pool.acquire() as conn:
        for case in range(500):
            most = rng.choice([50, 3, 1])
            current = domain.watched_union((), ranges(rng.randrange(0, 70)), most)
            fresh = ranges(rng.randrange(0, 8))
            expected = domain.watched_union(current, fresh, most)
            got = await conn.fetchrow("SELECT * FROM progress_watch($1, $2, $3)",
                                      domain.flat(current), domain.flat(fresh), most)
            assert got is not None
            assert domain.pairs(got["watched"]) == expected, (case, current, fresh, most)
            assert got["watched_seconds"] == domain.length(expected), case
            # With the stored length given, the short cuts of the usual flushes agree too.
            if case % 2 and current:  # playback going on: one range from the start of the last one on
                start = rng.uniform(current[-1][0], current[-1][1] + 30)
                fresh = ((start, start + rng.choice([0.0, 0.5, rng.uniform(0, 30)])),)
            expected = domain.watched_union(current, fresh, most)
            got = await conn.fetchrow("SELECT * FROM progress_watch($1, $2, $3, $4)",
                                      domain.flat(current), domain.flat(fresh), most, domain.length(current))
            assert got is not None
            assert domain.pairs(got["watched"]) == expected, (case, current, fresh, most)
            assert abs(got["watched_seconds"] - domain.length(expected)) < 1e-6, case


async def test_coverage_reached_only_by_another_replicas_flush_completes(stack: Stack) -> None:
    """Coverage that reaches the threshold only in the database (another replica flushed
    the rest) is found in the rows this process's flush returns."""
    await stack.catalog(watched_course(0.9))
    await stack.enroll(enrollment("u7", COURSE))
    me = stack.token("u7")
    # A process that flushes and checks only when told (its loops wait an hour).
    settings = stack.settings.model_copy(update={"heartbeat_flush_interval_s": 3600.0})
    app = build_app(settings)
    async with app_client(app) as client:
        state = app.state.runtime.state
        mine = await beat(client, me, video_progress=560, played_segments=[[300, 560]])
        assert mine["completed"] is False and mine["watched_seconds"] == 260
        # Another replica flushes the first half.
        now = datetime.now(UTC)
        await progress_store.flush_heartbeats(stack.runtime.pool, [progress_store.FlushRow(
            "u7", COURSE, L1, 300.0, 300.0, None, now, (), now, ((0.0, 300.0),))])
        assert await state.tracker.complete_watched() == 0  # nothing flushed here yet
        assert await state.heartbeats.flush() == 1
        assert await state.tracker.complete_watched() == 1
        assert await state.tracker.complete_watched() == 0
        lessons = await events(stack, Topic.LESSON_COMPLETED, "u7", 1)
        assert [e.lesson_id for e in lessons] == [L1]
        answer = await beat(client, me, video_progress=561)
        assert answer["completed"] is True and answer["watched_seconds"] == 560
    assert await published(stack, Topic.LESSON_COMPLETED, "u7") == 1


async def test_inferred_playback_alternating_between_replicas_completes_once(
    two: tuple[Stack, list[httpx.AsyncClient]],
) -> None:
    """Real playback paced by the clock, heartbeats alternating between two processes (each
    sees every other one): the inferred coverage adds up in the database and a 4-second
    video completes itself once at 90 %."""
    stack, clients = two
    short = watched_course(0.9, revision=2)
    lessons = [lesson.model_copy(update={"duration_seconds": 4}) if lesson.id == L2 else lesson
               for lesson in short.lessons]
    await stack.catalog(short.model_copy(update={"lessons": lessons}))
    await stack.enroll(enrollment("u8", COURSE))
    me = stack.token("u8")
    started = time.time()
    answers = []
    for i in range(24):  # 6 s at a heartbeat every 0.25 s
        await asyncio.sleep(max(0.0, started + i * 0.25 - time.time()))
        position = min(4.0, time.time() - started)
        answers.append(await beat(clients[i % 2], me, lesson=L2, video_progress=position))
    assert answers[0]["completed"] is False and answers[-1]["completed"] is True
    assert answers[-1]["watched_ratio"] >= 0.9
    lessons_done = await events(stack, Topic.LESSON_COMPLETED, "u8", 1)
    assert [e.lesson_id for e in lessons_done] == [L2]

    async def flushed() -> Any:
        row = await stack.runtime.pool.fetchrow(
            "SELECT completed, watched_seconds FROM lesson_progress WHERE user_id = 'u8' AND lesson_id = $1", L2)
        return row if row is not None and row["watched_seconds"] >= 3.6 else None

    row = await eventually(flushed, what="the coverage of both processes in the database")
    assert row["completed"] and row["watched_seconds"] <= 4.0
    assert await published(stack, Topic.LESSON_COMPLETED, "u8") == 1
