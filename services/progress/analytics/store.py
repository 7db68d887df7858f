"""SQL of the progress analytics (see docs/progress.md, "Analytics").

The population of a report is the course's enrollment replica rows with status active or
completed and, when a range is given, ``enrolled_at`` inside it. Per-learner figures come
from the enrollment, completion and learner rows; lesson figures from the cohort
histograms of migration 003 plus the deltas not folded into them yet, read in one
snapshot (see analytics.domain for the arithmetic).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Collection, Sequence
from datetime import date, datetime
from typing import Literal

import asyncpg

from services.progress.analytics.domain import BUCKET_S, Block, Bucket, LearnerFigures
from shared.db import Connection, Executor

# The population's predicate. $1 course, $2 enrolled_at lower bound (inclusive) or NULL, $3
# upper bound (exclusive) or NULL. Kept as text so every query (and the reference queries
# of bench/analytics_reference.py) states the same population.
IN_POPULATION = (
    "e.status IN ('active', 'completed') "
    "AND ($2::timestamptz IS NULL OR e.enrolled_at >= $2) AND ($3::timestamptz IS NULL OR e.enrolled_at < $3)"
)


@contextlib.asynccontextmanager
async def session(pool: asyncpg.Pool, *, one_snapshot: bool = False) -> AsyncIterator[Connection]:
    """A read-only transaction tuned for these queries: JIT compilation costs more than it
    saves on them (about 70 ms of a 100 ms query), and a larger work_mem keeps the sorts in
    memory. ``one_snapshot``: every statement sees the same snapshot (REPEATABLE READ), for
    reads that must agree with each other. SET LOCAL ends with the transaction."""
    isolation: Literal["repeatable_read", "read_committed"] = "repeatable_read" if one_snapshot else "read_committed"
    async with pool.acquire() as conn, conn.transaction(readonly=True, isolation=isolation):
        await conn.execute("SET LOCAL jit = off; SET LOCAL work_mem = '32MB'")
        yield conn


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
      AND c.attempt = e.attempt
WHERE e.course_id = $1 AND {IN_POPULATION}
"""


async def learner_figures(
    conn: Executor, course_id: int, start: datetime | None, end: datetime | None
) -> LearnerFigures:
    # The completion of the learner's current enrollment and attempt only: an earlier
    # enrollment's or attempt's completion does not make the learner complete.
    r = await conn.fetchrow(LEARNER_FIGURES_SQL, course_id, start, end)
    assert r is not None
    return LearnerFigures(r["enrolled"], r["completed"], r["median_s"], r["p90_s"])


DROP_OFF_SQL = f"""
SELECT a.last_lesson_id, count(*) AS learners
FROM enrollments e
LEFT JOIN analytics_learners a ON a.course_id = e.course_id AND a.user_id = e.user_id
WHERE e.course_id = $1 AND {IN_POPULATION}
  AND coalesce(a.last_activity_at, e.enrolled_at) < $4
  AND NOT EXISTS (SELECT 1 FROM course_completions c WHERE c.course_id = e.course_id
                  AND c.user_id = e.user_id AND c.enrollment_id = e.enrollment_id AND c.attempt = e.attempt)
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


# ---------------------------------------------------------------- lesson figures

async def cohort_span(conn: Executor, course_id: int) -> tuple[date, date] | None:
    """The first and last cohort day of the course's learners (two index probes)."""
    r = await conn.fetchrow(
        "SELECT min(cohort_day) AS first, max(cohort_day) AS last FROM analytics_learners WHERE course_id = $1",
        course_id,
    )
    return (r["first"], r["last"]) if r is not None and r["first"] is not None else None


# The blocks come as three arrays (level, block, sign); pending deltas are taken by their
# own cohort day, $5..$6 (NULL: unbounded), as they have not been split into blocks yet.
_BLOCKS = "unnest($2::smallint[], $3::integer[], $4::integer[]) AS b (level, block, sign)"
_PENDING_IN_RANGE = (
    "d.course_id = $1 AND ($5::date IS NULL OR d.cohort_day >= $5) AND ($6::date IS NULL OR d.cohort_day <= $6)"
)

BUCKETS_SQL = f"""
WITH rows AS (
    SELECT k.lesson_id, k.bucket, k.learners * b.sign AS n, k.completed * b.sign AS c,
           k.watch_sum * b.sign AS w, k.watched_sum * b.sign AS v
    FROM {_BLOCKS}
    JOIN analytics_watch_coarse k ON k.course_id = $1 AND k.level = b.level AND k.block = b.block
    UNION ALL
    SELECT d.lesson_id, analytics_bucket(d.watch_s), d.n, d.c, d.n::bigint * d.watch_s, d.watched
    FROM analytics_deltas d WHERE {_PENDING_IN_RANGE}
)
SELECT lesson_id, bucket, sum(n)::bigint AS learners, sum(c)::bigint AS completed, sum(w)::bigint AS watch_sum,
       sum(v)::bigint AS watched_sum
FROM rows GROUP BY lesson_id, bucket HAVING sum(n) <> 0 OR sum(c) <> 0 OR sum(v) <> 0
"""

# The whole seconds of the wanted (lesson, bucket) pairs, $7 lessons and $8 buckets: one
# index range per pair and block.
SECONDS_SQL = f"""
WITH wanted AS (
    SELECT * FROM unnest($7::bigint[], $8::integer[]) AS w (lesson_id, bucket)
), rows AS (
    SELECT w.lesson_id, w.bucket, f.watch_s, f.learners * b.sign AS n
    FROM wanted w CROSS JOIN {_BLOCKS}
    JOIN analytics_watch_fine f
      ON f.course_id = $1 AND f.level = b.level AND f.block = b.block AND f.lesson_id = w.lesson_id
     AND f.watch_s >= w.bucket * {BUCKET_S} AND f.watch_s < (w.bucket + 1) * {BUCKET_S}
    UNION ALL
    SELECT w.lesson_id, w.bucket, d.watch_s, d.n
    FROM analytics_deltas d
    JOIN wanted w ON w.lesson_id = d.lesson_id AND w.bucket = analytics_bucket(d.watch_s)
    WHERE {_PENDING_IN_RANGE}
)
SELECT lesson_id, bucket, watch_s, sum(n)::bigint AS learners
FROM rows GROUP BY lesson_id, bucket, watch_s HAVING sum(n) <> 0
ORDER BY lesson_id, bucket, watch_s
"""


def _block_args(blocks: Sequence[Block]) -> tuple[list[int], list[int], list[int]]:
    return [b[0] for b in blocks], [b[1] for b in blocks], [b[2] for b in blocks]


async def buckets(
    conn: Executor, course_id: int, blocks: Sequence[Block], first: date | None, last: date | None
) -> list[Bucket]:
    """The course's 32-second buckets summed over ``blocks`` and the pending deltas of the
    cohort days first..last."""
    rows = await conn.fetch(BUCKETS_SQL, course_id, *_block_args(blocks), first, last)
    return [
        Bucket(r["lesson_id"], r["bucket"], r["learners"], r["completed"], r["watch_sum"], r["watched_sum"])
        for r in rows
    ]


async def seconds(
    conn: Executor, course_id: int, blocks: Sequence[Block], first: date | None, last: date | None,
    wanted: Collection[tuple[int, int]],
) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """(watch_s, learners) in watch-time order for each wanted (lesson, bucket)."""
    pairs = sorted(wanted)
    rows = await conn.fetch(
        SECONDS_SQL, course_id, *_block_args(blocks), first, last, [p[0] for p in pairs], [p[1] for p in pairs]
    )
    opened: dict[tuple[int, int], list[tuple[int, int]]] = {pair: [] for pair in pairs}
    for r in rows:
        opened[(r["lesson_id"], r["bucket"])].append((r["watch_s"], r["learners"]))
    return opened


# ---------------------------------------------------------------- folding

# Moves up to $1 deltas into both histograms at every level, in one statement. Keys are
# upserted in sorted order. Returns how many deltas it moved and the keys it brought to
# zero, which fold() then deletes: cells a record passed through do not pile up.
FOLD_SQL = """
WITH batch AS (
    DELETE FROM analytics_deltas WHERE id IN (SELECT id FROM analytics_deltas ORDER BY id LIMIT $1)
    RETURNING course_id, lesson_id, cohort_day, watch_s, n, c, watched
), leveled AS (
    SELECT d.course_id, b.level, b.block, d.lesson_id, d.watch_s, sum(d.n)::integer AS n, sum(d.c)::integer AS c,
           sum(d.watched)::bigint AS v
    FROM batch d CROSS JOIN LATERAL analytics_blocks(d.cohort_day) b
    GROUP BY 1, 2, 3, 4, 5
), fine AS (
    INSERT INTO analytics_watch_fine AS f (course_id, level, block, lesson_id, watch_s, learners)
    SELECT course_id, level, block, lesson_id, watch_s, n FROM leveled WHERE n <> 0
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (course_id, level, block, lesson_id, watch_s) DO UPDATE SET learners = f.learners + excluded.learners
    RETURNING f.course_id, f.level, f.block, f.lesson_id, f.watch_s, f.learners
), coarse AS (
    INSERT INTO analytics_watch_coarse AS k
        (course_id, level, block, lesson_id, bucket, learners, completed, watch_sum, watched_sum)
    SELECT course_id, level, block, lesson_id, analytics_bucket(watch_s), sum(n), sum(c), sum(n::bigint * watch_s),
           sum(v)
    FROM leveled GROUP BY 1, 2, 3, 4, 5
    HAVING sum(n) <> 0 OR sum(c) <> 0 OR sum(n::bigint * watch_s) <> 0 OR sum(v) <> 0
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (course_id, level, block, lesson_id, bucket) DO UPDATE SET learners = k.learners + excluded.learners,
        completed = k.completed + excluded.completed, watch_sum = k.watch_sum + excluded.watch_sum,
        watched_sum = k.watched_sum + excluded.watched_sum
    RETURNING k.course_id, k.level, k.block, k.lesson_id, k.bucket, k.learners, k.completed, k.watch_sum,
        k.watched_sum
)
SELECT (SELECT count(*) FROM batch) AS folded,
       (SELECT array_agg(ARRAY[course_id, level, block, lesson_id, watch_s]) FROM fine
        WHERE learners = 0) AS fine_zeros,
       (SELECT array_agg(ARRAY[course_id, level, block, lesson_id, bucket]) FROM coarse
        WHERE learners = 0 AND completed = 0 AND watch_sum = 0 AND watched_sum = 0) AS coarse_zeros
"""

_DELETE_ZEROS = """
DELETE FROM {table} t USING unnest($1::bigint[], $2::smallint[], $3::integer[], $4::bigint[], $5::integer[])
    AS z (course_id, level, block, lesson_id, key)
WHERE t.course_id = z.course_id AND t.level = z.level AND t.block = z.block AND t.lesson_id = z.lesson_id
  AND t.{key} = z.key AND {zero}
"""
DELETE_FINE_ZEROS_SQL = _DELETE_ZEROS.format(table="analytics_watch_fine", key="watch_s", zero="t.learners = 0")
DELETE_COARSE_ZEROS_SQL = _DELETE_ZEROS.format(
    table="analytics_watch_coarse", key="bucket",
    zero="t.learners = 0 AND t.completed = 0 AND t.watch_sum = 0 AND t.watched_sum = 0",
)

# One folder at a time across replicas: folds of the same keys would only queue on each other.
FOLD_LOCK = 0x616E616C79746963  # "analytic"


async def fold(conn: Connection, limit: int) -> int | None:
    """Fold up to ``limit`` pending deltas, in one transaction; None when another
    connection is folding."""
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", FOLD_LOCK):
            return None
        r = await conn.fetchrow(FOLD_SQL, limit)
        assert r is not None
        for sql, zeros in ((DELETE_FINE_ZEROS_SQL, r["fine_zeros"]), (DELETE_COARSE_ZEROS_SQL, r["coarse_zeros"])):
            if zeros:
                await conn.execute(sql, *(list(column) for column in zip(*zeros, strict=True)))
        folded: int = r["folded"]
        return folded


async def pending_deltas(conn: Executor) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM analytics_deltas")
    return count
