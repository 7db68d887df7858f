"""SQL of the progress analytics (see docs/progress.md, "Analytics").

The population of a report is the course's enrollment replica rows with status active or
completed and, when a range is given, ``enrolled_at`` inside it. Lesson figures come from
the trigger-maintained watch-time histogram (migration 002) corrected by the learners
outside the population, or straight from the records of the learners inside it, whichever
set is smaller; per-learner figures come from the enrollment and completion rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.progress.store import Executor
from shared.db import Connection

# Shared predicates. $1 course, $2 enrolled_at lower bound (inclusive) or NULL, $3 upper
# bound (exclusive) or NULL. Kept as text so every query states the same population.
_IN_POPULATION = (
    "e.status IN ('active', 'completed') "
    "AND ($2::timestamptz IS NULL OR e.enrolled_at >= $2) AND ($3::timestamptz IS NULL OR e.enrolled_at < $3)"
)
_STARTED = "(p.completed OR p.video_progress > 0 OR p.last_position > 0)"


@contextlib.asynccontextmanager
async def session(pool: asyncpg.Pool) -> AsyncIterator[Connection]:
    """A read-only transaction tuned for these queries: JIT compilation costs more than it
    saves on them (about 70 ms of a 100 ms query), and a larger work_mem keeps the
    histogram sorts in memory. SET LOCAL ends with the transaction."""
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute("SET LOCAL jit = off; SET LOCAL work_mem = '32MB'")
        yield conn


@dataclass(frozen=True, slots=True)
class Population:
    enrollment_rows: int  # every enrollment replica row of the course, any status or date
    enrolled: int  # the rows in the population


POPULATION_SQL = f"""
SELECT count(*) AS enrollment_rows, count(*) FILTER (WHERE {_IN_POPULATION}) AS enrolled
FROM enrollments e WHERE e.course_id = $1
"""


async def population(conn: Executor, course_id: int, start: datetime | None, end: datetime | None) -> Population:
    """An index-only scan of the course's enrollments: decides how the lesson figures are summed."""
    r = await conn.fetchrow(POPULATION_SQL, course_id, start, end)
    assert r is not None
    return Population(r["enrollment_rows"], r["enrolled"])


@dataclass(frozen=True, slots=True)
class LearnerFigures:
    """Per-learner figures of the population."""

    enrolled: int
    completed: int
    median_completion_s: float | None
    p90_completion_s: float | None


@dataclass(frozen=True, slots=True)
class LessonFigures:
    lesson_id: int
    started: int
    completed: int
    watch_sum_s: int
    fraction_sum: float | None  # None when the lesson has no duration
    median_watch_s: float


LEARNER_FIGURES_SQL = f"""
SELECT count(*) AS enrolled,
       count(c.completed_at) AS completed,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM c.completed_at - e.enrolled_at)::float8)
           AS median_s,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM c.completed_at - e.enrolled_at)::float8)
           AS p90_s
FROM enrollments e
LEFT JOIN course_completions c
       ON c.course_id = e.course_id AND c.user_id = e.user_id AND c.enrollment_id = e.enrollment_id
WHERE e.course_id = $1 AND {_IN_POPULATION}
"""


async def learner_figures(
    conn: Executor, course_id: int, start: datetime | None, end: datetime | None
) -> LearnerFigures:
    # The completion of the learner's current enrollment only: an earlier enrollment's
    # completion does not make a re-enrolled learner complete.
    r = await conn.fetchrow(LEARNER_FIGURES_SQL, course_id, start, end)
    assert r is not None
    return LearnerFigures(r["enrolled"], r["completed"], r["median_s"], r["p90_s"])


DROP_OFF_SQL = f"""
SELECT a.last_lesson_id, count(*) AS learners
FROM enrollments e
LEFT JOIN analytics_learners a ON a.course_id = e.course_id AND a.user_id = e.user_id
WHERE e.course_id = $1 AND {_IN_POPULATION}
  AND coalesce(a.last_activity_at, e.enrolled_at) < $4
  AND NOT EXISTS (SELECT 1 FROM course_completions c WHERE c.course_id = e.course_id
                  AND c.user_id = e.user_id AND c.enrollment_id = e.enrollment_id)
GROUP BY a.last_lesson_id
"""


async def drop_off(
    conn: Executor, course_id: int, start: datetime | None, end: datetime | None, inactive_before: datetime
) -> dict[int | None, int]:
    """Learners of the population who have not completed the course and whose last
    activity (their latest record write, else their enrollment) is before
    ``inactive_before``, counted by the lesson of that last write (None: no record)."""
    rows = await conn.fetch(DROP_OFF_SQL, course_id, start, end, inactive_before)
    return {r["last_lesson_id"]: r["learners"] for r in rows}


# The watch-time histogram of the population, then every lesson figure from it. The
# median is percentile_cont(0.5) over whole seconds: the mean of the values at 0-based
# positions floor((n-1)/2) and n/2, each found as the smallest watch_s whose running
# count exceeds the position.
_LESSON_SUMMARY = """
, h AS (
    SELECT lesson_id, watch_s, sum(n)::bigint AS n, sum(c)::bigint AS c
    FROM histogram GROUP BY lesson_id, watch_s HAVING sum(n) > 0
), ranked AS (
    SELECT lesson_id, watch_s, n, c,
           sum(n) OVER (PARTITION BY lesson_id ORDER BY watch_s)::bigint AS upto,
           sum(n) OVER (PARTITION BY lesson_id)::bigint AS total
    FROM h
)
SELECT r.lesson_id, max(r.total)::bigint AS started, sum(r.c)::bigint AS completed,
       sum(r.watch_s * r.n)::bigint AS watch_sum,
       sum(least(1.0::float8, r.watch_s / d.duration) * r.n) FILTER (WHERE d.duration > 0) AS fraction_sum,
       (min(r.watch_s) FILTER (WHERE r.upto > (r.total - 1) / 2)
        + min(r.watch_s) FILTER (WHERE r.upto > r.total / 2)) / 2.0::float8 AS median_watch
FROM ranked r
JOIN unnest($4::bigint[], $5::float8[]) AS d(lesson_id, duration) ON d.lesson_id = r.lesson_id
GROUP BY r.lesson_id
"""

# Histogram straight from the records of the population's learners.
DIRECT_SQL = f"""
WITH histogram AS (
    SELECT p.lesson_id, round(p.time_spent_seconds)::integer AS watch_s, count(*) AS n,
           count(*) FILTER (WHERE p.completed) AS c
    FROM enrollments e
    JOIN lesson_progress p ON p.user_id = e.user_id AND p.course_id = e.course_id
    WHERE e.course_id = $1 AND {_IN_POPULATION} AND {_STARTED}
    GROUP BY 1, 2
)
{_LESSON_SUMMARY}
"""

# The maintained histogram of every record of the course, minus the records of the
# learners outside the population (unenrolled, or enrolled outside the range). Every
# record has an enrollment replica row: the service checks (and stores) the enrollment
# before it writes any record, and never deletes replica rows.
SUBTRACT_SQL = f"""
WITH histogram AS (
    SELECT lesson_id, watch_s, learners::bigint AS n, completed::bigint AS c
    FROM analytics_lesson_watch WHERE course_id = $1
    UNION ALL
    SELECT p.lesson_id, round(p.time_spent_seconds)::integer, -count(*), -count(*) FILTER (WHERE p.completed)
    FROM enrollments e
    JOIN lesson_progress p ON p.user_id = e.user_id AND p.course_id = e.course_id
    WHERE e.course_id = $1 AND NOT ({_IN_POPULATION}) AND {_STARTED}
    GROUP BY 1, 2
)
{_LESSON_SUMMARY}
"""


async def lesson_figures(
    conn: Executor,
    course_id: int,
    start: datetime | None,
    end: datetime | None,
    durations: Sequence[tuple[int, float | None]],
    *,
    subtract: bool,
) -> dict[int, LessonFigures]:
    """Figures of the catalog lessons in ``durations`` (lesson id, video seconds) that have
    at least one started record in the population."""
    rows = await conn.fetch(
        SUBTRACT_SQL if subtract else DIRECT_SQL,
        course_id, start, end,
        [lesson_id for lesson_id, _ in durations],
        [duration for _, duration in durations],
    )
    return {
        r["lesson_id"]: LessonFigures(
            r["lesson_id"], r["started"], r["completed"], r["watch_sum"], r["fraction_sum"], float(r["median_watch"])
        )
        for r in rows
    }


# ---------------------------------------------------------------- from scratch (checks)

async def histogram_from_scratch(conn: Executor, course_id: int) -> dict[tuple[int, int], tuple[int, int]]:
    rows = await conn.fetch(
        f"""
        SELECT p.lesson_id, round(p.time_spent_seconds)::integer AS watch_s, count(*) AS n,
               count(*) FILTER (WHERE p.completed) AS c
        FROM lesson_progress p WHERE p.course_id = $1 AND {_STARTED} GROUP BY 1, 2
        """,
        course_id,
    )
    return {(r["lesson_id"], r["watch_s"]): (r["n"], r["c"]) for r in rows}


async def histogram_maintained(conn: Executor, course_id: int) -> dict[tuple[int, int], tuple[int, int]]:
    rows = await conn.fetch(
        "SELECT lesson_id, watch_s, learners, completed FROM analytics_lesson_watch "
        "WHERE course_id = $1 AND (learners <> 0 OR completed <> 0)",
        course_id,
    )
    return {(r["lesson_id"], r["watch_s"]): (r["learners"], r["completed"]) for r in rows}


async def activity_from_scratch(conn: Executor, course_id: int) -> dict[str, tuple[datetime, int]]:
    rows = await conn.fetch(
        "SELECT DISTINCT ON (user_id) user_id, updated_at, lesson_id FROM lesson_progress WHERE course_id = $1 "
        "ORDER BY user_id, updated_at DESC, lesson_id DESC",
        course_id,
    )
    return {r["user_id"]: (r["updated_at"], r["lesson_id"]) for r in rows}


async def activity_maintained(conn: Executor, course_id: int) -> dict[str, tuple[datetime, int]]:
    rows = await conn.fetch(
        "SELECT user_id, last_activity_at, last_lesson_id FROM analytics_learners WHERE course_id = $1", course_id
    )
    return {r["user_id"]: (r["last_activity_at"], r["last_lesson_id"]) for r in rows}
