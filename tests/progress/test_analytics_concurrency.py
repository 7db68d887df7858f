"""The cohort histograms (folded rows plus pending deltas) stay equal to a computation
from scratch under concurrent progress writes: heartbeats through the service (coalesced
flushes), completions and reopenings, direct multi-row flushes from other connections (as
other replicas would), writes that roll back, enrolment changes that move learners between
cohorts or out of the reports, and folds running all the while."""

from __future__ import annotations

import asyncio
import contextlib
import random
from datetime import UTC, datetime, timedelta

from bench import analytics_reference as reference
from services.progress import domain, store
from services.progress.analytics import store as analytics_store
from services.progress.analytics.domain import ALL
from shared import db
from shared.events import CatalogLesson, CourseCatalogEntry, EnrollmentChanged
from tests.progress.conftest import Stack

COURSE = 80
LESSONS = [801, 802, 803, 804]
USERS = [f"w{i}" for i in range(8)]
CHURN = [f"x{i}" for i in range(4)]  # their enrolments change under the writes


def credited(now: datetime, seconds: float) -> domain.Intervals:
    """``seconds`` of watching just before ``now``, as a flush brings them."""
    return (domain.credited_interval(seconds, now.timestamp()),) if seconds else ()


def watched(rng: random.Random) -> domain.Intervals:
    """Media ranges a flush brings (none, or one or two of up to a minute)."""
    starts = sorted(rng.uniform(0, 600) for _ in range(rng.choice([0, 1, 2])))
    return domain.normalize((s, s + rng.uniform(0, 60)) for s in starts)


class Rollback(Exception):
    pass


async def test_aggregates_equal_a_computation_from_scratch_under_concurrent_writes(stack: Stack) -> None:
    pool = stack.runtime.pool
    entry = CourseCatalogEntry(
        course_id=COURSE, revision=1, title="Busy", slug="busy", status="published",
        lessons=[CatalogLesson(id=lid, title=f"L{lid}", order=i + 1, duration_seconds=120)
                 for i, lid in enumerate(LESSONS)],
    )
    await store.save_course(pool, entry)
    stack.enrollment_api.own(entry)  # what completions confirm with the owner
    for n, user in enumerate(USERS + CHURN):
        enrolled = EnrollmentChanged(
            user_id=user, course_id=COURSE, enrollment_id=900 + n, status="active", revision=1,
            enrolled_at=datetime(2025, 5, 1 + n, tzinfo=UTC),
        )
        await store.save_enrollment(pool, enrolled)
        stack.enrollment_api.own(enrolled)

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
            keys = sorted({(rng.choice(USERS + CHURN), rng.choice(LESSONS)) for _ in range(6)})
            now = datetime.now(UTC) + timedelta(milliseconds=rng.randrange(1000))
            rows = [store.FlushRow(u, COURSE, lid, rng.uniform(0, 100), rng.uniform(0, 100), now, now,
                                   credited(now, rng.choice([0.0, 0.4, 0.6, 7.5])), now, watched(rng))
                    for u, lid in keys]
            roll_back = rng.random() < 0.2

            async def flush(rows: list[store.FlushRow] = rows, roll_back: bool = roll_back) -> None:
                async with pool.acquire() as conn, conn.transaction():
                    await store.flush_heartbeats(conn, rows)
                    if roll_back:
                        raise Rollback

            with contextlib.suppress(Rollback):
                # As the service's own flush does: a deadlock victim runs again.
                await db.retrying(flush)

    async def enrollment_churn(seed: int) -> None:
        """Unenrolments, enrolments again on other days, completions of the course: each
        moves the learner's records between cohorts, or out of the reports and back."""
        rng = random.Random(seed)
        for revision in range(2, 40):
            n = rng.randrange(len(CHURN))
            change = EnrollmentChanged(
                user_id=CHURN[n], course_id=COURSE, enrollment_id=900 + len(USERS) + n,
                status=rng.choice(["active", "unenrolled", "completed"]), revision=revision,
                enrolled_at=datetime(2025, 5, 1, tzinfo=UTC) + timedelta(days=rng.randrange(70)),
            )

            async def save(change: EnrollmentChanged = change) -> bool:
                return await store.save_enrollment(pool, change)

            await db.retrying(save)
            await asyncio.sleep(0)

    folder = stack.runtime.state.analytics_folder
    running = True

    async def folding() -> None:
        folds = 0
        while running or folds == 0:
            await folder.fold()
            folds += 1
            await asyncio.sleep(0.01)

    fold_task = asyncio.create_task(folding())
    await asyncio.gather(
        *(http_learner(user, n) for n, user in enumerate(USERS)),
        *(other_replica(100 + n) for n in range(3)),
        enrollment_churn(7),
    )
    running = False
    await fold_task
    await stack.buffer.flush()
    # Hold the service's own folder off, and change a completion once more: deltas are
    # pending for the check below however the background loops were timed.
    holder = await pool.acquire()
    await holder.execute("SELECT pg_advisory_lock($1)", analytics_store.FOLD_LOCK)
    headers = stack.token(USERS[0])
    for action in ("incomplete", "complete"):
        response = await stack.client.post(f"/api/courses/{COURSE}/lessons/{LESSONS[0]}/{action}", headers=headers)
        assert response.status_code == 200, response.text
    await stack.buffer.flush()

    async with pool.acquire() as conn:
        scratch = await reference.histograms_from_scratch(conn, COURSE)
        fine, coarse = scratch
        assert sum(n for (level, *_), n in fine.items() if level == ALL) > 10
        assert sum(c for (level, *_), (_, c, _, _) in coarse.items() if level == ALL) > 0
        assert sum(v for (level, *_), (_, _, _, v) in coarse.items() if level == ALL) > 0  # watched seconds
        assert await analytics_store.pending_deltas(conn) > 0  # the last flush is not folded yet
        assert await reference.histograms_maintained(conn, COURSE) == scratch
        await holder.execute("SELECT pg_advisory_unlock($1)", analytics_store.FOLD_LOCK)
        await pool.release(holder)
        await folder.fold()
        assert await analytics_store.pending_deltas(conn) == 0
        assert await reference.histograms_maintained(conn, COURSE) == scratch
        assert await reference.activity_maintained(conn, COURSE) == \
            await reference.activity_from_scratch(conn, COURSE)
        # Nothing that folded to zero is kept.
        assert not await conn.fetchval("SELECT count(*) FROM analytics_watch_fine WHERE learners = 0")

    # And the report itself, over ranges that cut through the churned cohorts.
    durations = [(lid, 120.0) for lid in LESSONS]
    for bounds in [(None, None), ("2025-05-03", "2025-05-20"), ("2025-05-10", None), (None, "2025-06-15")]:
        params = {k: v for k, v in zip(("from", "to"), bounds, strict=True) if v}
        response = await stack.client.get(f"/api/admin/courses/{COURSE}/analytics", params=params,
                                          headers=stack.token("r", "admin"))
        assert response.status_code == 200
        start, end = (datetime.fromisoformat(b).replace(tzinfo=UTC) if b else None for b in bounds)
        direct = await reference.lesson_figures_from_scratch(
            pool, COURSE, start, end + timedelta(days=1) if end else None, durations)
        data = response.json()["data"]
        for row, engagement in zip(sorted(data["lesson_difficulty"], key=lambda r: r["lesson_id"]),
                                   sorted(data["engagement"], key=lambda r: r["lesson_id"]), strict=True):
            figures = direct.get(row["lesson_id"])
            assert (row["started"], row["completed"]) == ((figures.started, figures.completed) if figures else (0, 0))
            assert engagement["median_watch_seconds"] == (figures.median_watch_s if figures else None)
