"""The trigger-maintained analytics aggregates stay equal to a computation from scratch
under concurrent progress writes: heartbeats through the service (coalesced flushes),
completions and reopenings, direct multi-row flushes from other connections (as other
replicas would), and writes that roll back."""

from __future__ import annotations

import asyncio
import contextlib
import random
from datetime import UTC, datetime, timedelta

from services.progress import analytics_store, store
from shared import db
from shared.events import CatalogLesson, CourseCatalogEntry, EnrollmentChanged
from tests.progress.conftest import Stack

COURSE = 80
LESSONS = [801, 802, 803, 804]
USERS = [f"w{i}" for i in range(8)]


class Rollback(Exception):
    pass


async def test_aggregates_equal_a_computation_from_scratch_under_concurrent_writes(stack: Stack) -> None:
    pool = stack.runtime.pool
    await store.save_course(pool, CourseCatalogEntry(
        course_id=COURSE, revision=1, title="Busy", slug="busy", status="published",
        lessons=[CatalogLesson(id=lid, title=f"L{lid}", order=i + 1, duration_seconds=120)
                 for i, lid in enumerate(LESSONS)],
    ))
    for n, user in enumerate(USERS):
        await store.save_enrollment(pool, EnrollmentChanged(
            user_id=user, course_id=COURSE, enrollment_id=900 + n, status="active", revision=1,
            enrolled_at=datetime(2025, 5, 1, tzinfo=UTC),
        ))

    async def http_learner(user: str, seed: int) -> None:
        rng = random.Random(seed)
        headers = stack.token(user)
        for step in range(40):
            lesson = rng.choice(LESSONS)
            roll = rng.random()
            if roll < 0.15:
                response = await stack.client.post(f"/api/courses/{COURSE}/lessons/{lesson}/complete", headers=headers)
            elif roll < 0.25:
                response = await stack.client.post(f"/api/courses/{COURSE}/lessons/{lesson}/incomplete",
                                                   headers=headers)
            else:
                response = await stack.client.post("/api/progress", headers=headers, json={
                    "course_id": COURSE, "lesson_id": lesson, "video_progress": step * 3 + rng.random(),
                    "completed": roll > 0.95,
                })
            assert response.status_code == 200, response.text
            if step % 10 == 0:
                await stack.buffer.flush()

    async def other_replica(seed: int) -> None:
        """Multi-row flushes of overlapping keys from another connection, some rolled back."""
        rng = random.Random(seed)
        for _ in range(30):
            keys = sorted({(rng.choice(USERS), rng.choice(LESSONS)) for _ in range(6)})
            now = datetime.now(UTC) + timedelta(milliseconds=rng.randrange(1000))
            rows = [store.FlushRow(u, COURSE, lid, rng.uniform(0, 100), rng.uniform(0, 100), now,
                                   rng.choice([0.0, 0.4, 0.6, 7.5]), now) for u, lid in keys]
            roll_back = rng.random() < 0.2

            async def flush(rows: list[store.FlushRow] = rows, roll_back: bool = roll_back) -> None:
                async with pool.acquire() as conn, conn.transaction():
                    await store.flush_heartbeats(conn, rows)
                    if roll_back:
                        raise Rollback

            with contextlib.suppress(Rollback):
                # As the service's own flush does: a deadlock victim runs again.
                await db.retrying(flush)

    await asyncio.gather(
        *(http_learner(user, n) for n, user in enumerate(USERS)),
        *(other_replica(100 + n) for n in range(3)),
    )
    await stack.buffer.flush()

    async with pool.acquire() as conn:
        scratch = await analytics_store.histogram_from_scratch(conn, COURSE)
        maintained = await analytics_store.histogram_maintained(conn, COURSE)
        assert maintained == scratch
        assert sum(n for n, _ in scratch.values()) > 10 and sum(c for _, c in scratch.values()) > 0
        assert await analytics_store.activity_maintained(conn, COURSE) == \
            await analytics_store.activity_from_scratch(conn, COURSE)

    # And the report itself: the maintained path (subtraction, nobody outside the
    # population) equals the direct sum over the records.
    response = await stack.client.get(f"/api/admin/courses/{COURSE}/analytics", headers=stack.token("r", "admin"))
    assert response.status_code == 200
    direct = await analytics_store.lesson_figures(pool, COURSE, None, None, [(lid, 120.0) for lid in LESSONS],
                                                  subtract=False)
    for row in response.json()["data"]["lesson_difficulty"]:
        figures = direct.get(row["lesson_id"])
        assert (row["started"], row["completed"]) == ((figures.started, figures.completed) if figures else (0, 0))
