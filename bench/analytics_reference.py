"""The progress analytics computed from scratch, straight from the records and the
enrollment replica: the reference the cohort histograms and their figures are checked
against (tests/progress/test_analytics*.py, bench/analytics.py). Not used by the service.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from services.progress.analytics.domain import BUCKET_S, LessonFigures
from services.progress.analytics.store import IN_POPULATION
from shared.db import Executor

# A record the histograms count: the learner has started the lesson.
_STARTED = "(p.completed OR p.video_progress > 0 OR p.last_position > 0)"

# Each lesson's figures straight from the records of the population's learners, in SQL:
# the reference the histograms are checked against (tests, bench). The median is
# percentile_cont(0.5) over whole seconds, found by a running count over the seconds.
_LESSON_SUMMARY = """
, h AS (
    SELECT lesson_id, watch_s, sum(n)::bigint AS n, sum(c)::bigint AS c, sum(v)::bigint AS v
    FROM histogram GROUP BY lesson_id, watch_s HAVING sum(n) > 0
), ranked AS (
    SELECT lesson_id, watch_s, n, c, v,
           sum(n) OVER (PARTITION BY lesson_id ORDER BY watch_s)::bigint AS upto,
           sum(n) OVER (PARTITION BY lesson_id)::bigint AS total
    FROM h
)
SELECT r.lesson_id, max(r.total)::bigint AS started, sum(r.c)::bigint AS completed,
       sum(r.watch_s * r.n)::bigint AS watch_sum, sum(r.v)::bigint AS watched_sum,
       sum(least(1.0::float8, r.watch_s / d.duration) * r.n) FILTER (WHERE d.duration > 0) AS fraction_sum,
       (min(r.watch_s) FILTER (WHERE r.upto > (r.total - 1) / 2)
        + min(r.watch_s) FILTER (WHERE r.upto > r.total / 2)) / 2.0::float8 AS median_watch
FROM ranked r
JOIN unnest($4::bigint[], $5::float8[]) AS d(lesson_id, duration) ON d.lesson_id = r.lesson_id
GROUP BY r.lesson_id
"""

# Straight from the records of the population's learners.
LESSONS_FROM_SCRATCH_SQL = f"""
WITH histogram AS (
    SELECT p.lesson_id, round(p.time_spent_seconds)::integer AS watch_s, count(*) AS n,
           count(*) FILTER (WHERE p.completed) AS c, sum(round(p.watched_seconds)::bigint) AS v
    FROM enrollments e
    JOIN lesson_progress p ON p.user_id = e.user_id AND p.course_id = e.course_id
    WHERE e.course_id = $1 AND {IN_POPULATION} AND {_STARTED}
    GROUP BY 1, 2
)
{_LESSON_SUMMARY}
"""


async def lesson_figures_from_scratch(
    conn: Executor, course_id: int, start: datetime | None, end: datetime | None,
    durations: Sequence[tuple[int, float | None]],
) -> dict[int, LessonFigures]:
    rows = await conn.fetch(
        LESSONS_FROM_SCRATCH_SQL, course_id, start, end,
        [lesson_id for lesson_id, _ in durations], [duration for _, duration in durations],
    )
    return {
        r["lesson_id"]: LessonFigures(
            r["lesson_id"], r["started"], r["completed"], r["watch_sum"], r["fraction_sum"], float(r["median_watch"]),
            r["watched_sum"],
        )
        for r in rows
    }


Fine = dict[tuple[int, int, int, int], int]  # (level, block, lesson, watch_s) -> learners
# (level, block, lesson, bucket) -> learners, completed, watch-time sum, watched-seconds sum
Coarse = dict[tuple[int, int, int, int], tuple[int, int, int, int]]


def _rolled_up(seconds: dict[tuple[int, int, int, int], tuple[int, int, int]]) -> tuple[Fine, Coarse]:
    fine: Fine = {}
    coarse: dict[tuple[int, int, int, int], list[int]] = {}
    for (level, block, lesson, watch_s), (n, c, watched) in seconds.items():
        if n:
            fine[(level, block, lesson, watch_s)] = fine.get((level, block, lesson, watch_s), 0) + n
        totals = coarse.setdefault((level, block, lesson, watch_s // BUCKET_S), [0, 0, 0, 0])
        totals[0] += n
        totals[1] += c
        totals[2] += n * watch_s
        totals[3] += watched
    return ({k: v for k, v in fine.items() if v},
            {k: (v[0], v[1], v[2], v[3]) for k, v in coarse.items() if any(v)})


async def histograms_from_scratch(conn: Executor, course_id: int) -> tuple[Fine, Coarse]:
    """Both histograms at every level, from the records and the enrollment replica alone."""
    rows = await conn.fetch(
        f"""
        WITH days AS (
            SELECT analytics_cohort(e.status, e.enrolled_at) AS day, p.lesson_id,
                   round(p.time_spent_seconds)::integer AS watch_s, count(*) AS n,
                   count(*) FILTER (WHERE p.completed) AS c, sum(round(p.watched_seconds)::bigint) AS v
            FROM lesson_progress p JOIN enrollments e ON e.user_id = p.user_id AND e.course_id = p.course_id
            WHERE p.course_id = $1 AND {_STARTED} AND analytics_cohort(e.status, e.enrolled_at) IS NOT NULL
            GROUP BY 1, 2, 3
        )
        SELECT b.level, b.block, d.lesson_id, d.watch_s, sum(d.n)::bigint AS n, sum(d.c)::bigint AS c,
               sum(d.v)::bigint AS v
        FROM days d CROSS JOIN LATERAL analytics_blocks(d.day) b GROUP BY 1, 2, 3, 4
        """,
        course_id,
    )
    return _rolled_up({(r["level"], r["block"], r["lesson_id"], r["watch_s"]): (r["n"], r["c"], r["v"])
                       for r in rows})


async def histograms_maintained(conn: Executor, course_id: int) -> tuple[Fine, Coarse]:
    """Both histograms as a report sees them: the folded rows plus the pending deltas."""
    pending = await conn.fetch(
        """
        SELECT b.level, b.block, d.lesson_id, d.watch_s, sum(d.n)::bigint AS n, sum(d.c)::bigint AS c,
               sum(d.watched)::bigint AS v
        FROM analytics_deltas d CROSS JOIN LATERAL analytics_blocks(d.cohort_day) b
        WHERE d.course_id = $1 GROUP BY 1, 2, 3, 4
        """,
        course_id,
    )
    fine, coarse = _rolled_up({(r["level"], r["block"], r["lesson_id"], r["watch_s"]): (r["n"], r["c"], r["v"])
                               for r in pending})
    for r in await conn.fetch(
        "SELECT level, block, lesson_id, watch_s, learners FROM analytics_watch_fine WHERE course_id = $1", course_id
    ):
        key = (r["level"], r["block"], r["lesson_id"], r["watch_s"])
        fine[key] = fine.get(key, 0) + r["learners"]
    for r in await conn.fetch(
        "SELECT level, block, lesson_id, bucket, learners, completed, watch_sum, watched_sum "
        "FROM analytics_watch_coarse WHERE course_id = $1", course_id,
    ):
        key = (r["level"], r["block"], r["lesson_id"], r["bucket"])
        n, c, w, v = coarse.get(key, (0, 0, 0, 0))
        coarse[key] = (n + r["learners"], c + r["completed"], w + r["watch_sum"], v + r["watched_sum"])
    return ({k: v for k, v in fine.items() if v}, {k: v for k, v in coarse.items() if any(v)})


async def activity_from_scratch(conn: Executor, course_id: int) -> dict[str, tuple[datetime, int]]:
    rows = await conn.fetch(
        "SELECT DISTINCT ON (user_id) user_id, updated_at, lesson_id FROM lesson_progress WHERE course_id = $1 "
        "ORDER BY user_id, updated_at DESC, lesson_id DESC",
        course_id,
    )
    return {r["user_id"]: (r["updated_at"], r["lesson_id"]) for r in rows}


async def activity_maintained(conn: Executor, course_id: int) -> dict[str, tuple[datetime, int]]:
    rows = await conn.fetch(
        "SELECT user_id, last_activity_at, last_lesson_id FROM analytics_learners "
        "WHERE course_id = $1 AND last_activity_at IS NOT NULL", course_id
    )
    return {r["user_id"]: (r["last_activity_at"], r["last_lesson_id"]) for r in rows}
