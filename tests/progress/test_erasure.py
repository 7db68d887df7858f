"""Erasing a learner in progress keeps every course figure exact: the learner's records move
to a pseudonym in one transaction (``store.pseudonymise_learner``), and the cohort histograms
(folded and pending), the last-activity rows and the report stay equal to a computation from
scratch and to what they were, over ranges that cut through the cohorts."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from bench import analytics_reference as reference
from services.progress import domain, store
from shared.events import CatalogLesson, CourseCatalogEntry, EnrollmentChanged
from tests.progress.conftest import Stack

COURSE = 91
LESSONS = [911, 912, 913]
GONE = "gone-learner"
USERS = [GONE, *(f"e{i}" for i in range(6))]
RANGES = [(None, None), ("2025-03-02", "2025-03-05"), ("2025-03-04", None), (None, "2025-03-03")]


async def report(stack: Stack) -> list[dict[str, Any]]:
    found = []
    for bounds in RANGES:
        params = {k: v for k, v in zip(("from", "to"), bounds, strict=True) if v}
        response = await stack.client.get(f"/api/admin/courses/{COURSE}/analytics", params=params,
                                          headers=stack.token("r", "admin"))
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        data.pop("generated_at")
        data["drop_off"].pop("inactive_since")
        found.append(data)
    return found


async def test_a_pseudonymised_learner_still_counts_exactly_as_before(stack: Stack) -> None:
    pool = stack.runtime.pool
    entry = CourseCatalogEntry(
        course_id=COURSE, revision=1, title="Figures", slug="figures", status="published",
        lessons=[CatalogLesson(id=lid, title=f"L{lid}", order=i + 1, duration_seconds=300)
                 for i, lid in enumerate(LESSONS)],
    )
    await store.save_course(pool, entry)
    stack.enrollment_api.own(entry)
    for n, user in enumerate(USERS):
        enrolled = EnrollmentChanged(
            user_id=user, course_id=COURSE, enrollment_id=9100 + n, status="active", revision=1,
            enrolled_at=datetime(2025, 3, 1 + n % 5, tzinfo=UTC), display_name=f"Name {user}",
            email=f"{user}@example.org",
        )
        await store.save_enrollment(pool, enrolled)
        stack.enrollment_api.own(enrolled)
    rng = random.Random(7)
    now = datetime.now(UTC) - timedelta(days=20)  # some learners count as dropped off
    async with pool.acquire() as conn, conn.transaction():
        rows = []
        for user in USERS:
            for lid in LESSONS:
                at = now + timedelta(minutes=rng.randrange(60 * 24 * 19))
                start = rng.uniform(0, 200)
                rows.append(store.FlushRow(
                    user, COURSE, lid, rng.uniform(0, 300), rng.uniform(0, 300), at, at,
                    (domain.credited_interval(rng.uniform(1, 90), at.timestamp()),), at,
                    domain.normalize([(start, start + rng.uniform(1, 90))]),
                ))
        await store.flush_heartbeats(conn, sorted(rows, key=lambda r: (r.user_id, r.lesson_id)))
    # The learner completes the course (a completion event with their name and address).
    for lid in LESSONS:
        done = await stack.client.post(f"/api/courses/{COURSE}/lessons/{lid}/complete",
                                       headers=stack.token(GONE, name="Name gone", email="gone@example.org"))
        assert done.status_code == 200, done.text
    before = await report(stack)
    assert before[0]["completion"] == {"enrolled": len(USERS), "completed": 1, "completion_rate": 14.29}
    async with pool.acquire() as conn:
        scratch = await reference.histograms_from_scratch(conn, COURSE)
        activity = await reference.activity_from_scratch(conn, COURSE)

    async with pool.acquire() as conn, conn.transaction():
        personal = await store.learner_personal_data(conn, GONE)
        erased = await store.pseudonymise_learner(conn, GONE, "erased-test")
    assert set(personal) >= {"Name gone", "gone@example.org"}
    assert erased["lesson_progress"] == len(LESSONS) and erased["course_completions"] == 1

    async with pool.acquire() as conn:
        assert await reference.histograms_from_scratch(conn, COURSE) == scratch
        assert await reference.histograms_maintained(conn, COURSE) == scratch
        assert await reference.activity_maintained(conn, COURSE) == await reference.activity_from_scratch(
            conn, COURSE)
        assert {user.replace(GONE, "erased-test"): v for user, v in activity.items()} == \
            await reference.activity_from_scratch(conn, COURSE)
        for table, column in store.LEARNER_TABLES:
            assert not await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {column} = $1", GONE), table
        assert await store.learner_personal_data(conn, "erased-test") == []
    assert await report(stack) == before
