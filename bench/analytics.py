"""Progress analytics at scale: one course, 100,000 enrolled learners, 40 lessons.

It creates a throw-away database on 127.0.0.1:5432 with the progress migrations, fills it
with COPY (asyncpg's copy_records_to_table, in chunks, through the analytics triggers),
folds the deltas the triggers wrote into the cohort histograms, then prints:
  (1) each part of the report, timed a few times, for: all enrolments; the last 30 days
      of enrolments; the first half of the enrolment year; and the lesson figures
      checked equal to a computation from the records (timed too, for comparison);
  (2) the whole endpoint, GET /api/admin/courses/1/analytics (JSON and CSV) on the real
      service run by uvicorn, for the same ranges;
  (3) the heartbeat write path: the flush upsert of 1,000 rows with the analytics
      triggers enabled and disabled, the fold of what they wrote, and the lesson figures
      while 20 such flushes wait unfolded.
With --explain it also prints EXPLAIN (ANALYZE, BUFFERS) of each query.

    python bench/analytics.py [--learners 100000] [--repeat 5] [--keep] [--explain]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import analytics_reference  # noqa: E402
from lessonstream.infra import free_port  # noqa: E402
from services.progress import store  # noqa: E402
from services.progress.analytics import domain as analytics  # noqa: E402
from services.progress.analytics import store as analytics_store  # noqa: E402
from services.progress.analytics import usecases  # noqa: E402
from services.progress.analytics.folder import AnalyticsFolder  # noqa: E402
from services.progress.settings import ProgressSettings  # noqa: E402
from shared.auth import issue_token  # noqa: E402
from shared.db import migrate_service, with_database  # noqa: E402
from shared.events import CatalogLesson, CourseCatalogEntry  # noqa: E402

COURSE_ID = 1
LESSONS = 40
CHUNK_LEARNERS = 10_000  # one COPY statement per chunk: ~250k records


def say(*parts: str) -> None:
    sys.stdout.write(" ".join(parts) + "\n")
    sys.stdout.flush()


def lesson_id(j: int) -> int:
    return 1001 + j


def duration(j: int) -> int:
    return 300 + (j * 37) % 900


def catalog() -> CourseCatalogEntry:
    return CourseCatalogEntry(
        course_id=COURSE_ID, revision=1, title="Bench Course", slug="bench", status="published",
        instructor_ids=["teacher"],
        lessons=[CatalogLesson(id=lesson_id(j), title=f"Lesson {j + 1}", order=j + 1, duration_seconds=duration(j))
                 for j in range(LESSONS)],
    )


Rows = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]


def learners(first: int, count: int, now: datetime, rng: random.Random) -> Rows:
    """Enrollments, progress records and course completions of learners first..first+count.

    30% of those enrolled long enough complete every lesson (in 2 to ~60 days); the others
    stop after a random number of completed lessons, with the next lesson half watched
    60% of the time; their activity spreads from enrolment to now, so some are recent and
    some have dropped off. 3% are unenrolled."""
    enrollments: list[tuple[Any, ...]] = []
    records: list[tuple[Any, ...]] = []
    completions: list[tuple[Any, ...]] = []
    for n in range(first, first + count):
        user = f"u{n:06d}"
        age = rng.uniform(0, 365) * 86400
        enrolled_at = now - timedelta(seconds=age)
        finish = (2 + rng.expovariate(1 / 15)) * 86400
        completer = rng.random() < 0.3 and finish < age
        status = "unenrolled" if rng.random() < 0.03 else ("completed" if completer else "active")
        enrollments.append((user, COURSE_ID, n + 1, status, 1, enrolled_at, f"Learner {n}", f"{user}@example.com"))
        if completer:
            done, partial, span = LESSONS, False, finish
        else:
            done, partial, span = rng.randrange(0, LESSONS), rng.random() < 0.6, rng.uniform(0, age)
        touched = done + (1 if partial and done < LESSONS else 0)
        for j in range(touched):
            at = enrolled_at + timedelta(seconds=span * (j + 1) / max(touched, 1))
            d = duration(j)
            if j < done:
                watch = round(d * rng.uniform(0.5, 1.3), 1)
                records.append((user, COURSE_ID, lesson_id(j), True, at, float(d), float(d), at, watch, at, at))
            else:
                watch = round(d * rng.uniform(0.02, 0.9), 1)
                pos = min(float(d), watch)
                records.append((user, COURSE_ID, lesson_id(j), False, None, pos, pos, at, watch, at, at))
        if completer:
            completions.append((user, COURSE_ID, n + 1, enrolled_at + timedelta(seconds=finish), {}))
    return enrollments, records, completions


async def connect(url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(url)
    # Binary jsonb (a version byte, then the text): COPY's binary format needs it.
    await conn.set_type_codec("jsonb", encoder=lambda v: b"\x01" + orjson.dumps(v),
                              decoder=lambda b: orjson.loads(b[1:]), schema="pg_catalog", format="binary")
    return conn


async def fill(url: str, total: int) -> None:
    await migrate_service(url, "progress", ROOT / "services" / "progress" / "migrations")
    conn = await connect(url)
    try:
        if await conn.fetchval("SELECT count(*) FROM enrollments") == total:
            say(f"reusing the filled database ({total} learners)")
            return
        await conn.execute("TRUNCATE lesson_progress, enrollments, courses, course_completions, "
                           "analytics_deltas, analytics_watch_coarse, analytics_watch_fine, analytics_learners")
        await store.save_course(conn, catalog())
        rng = random.Random(7)
        now = datetime.now(UTC)
        started = time.perf_counter()
        records = 0
        for first in range(0, total, CHUNK_LEARNERS):
            enrollments, progress, completions = learners(first, min(CHUNK_LEARNERS, total - first), now, rng)
            await conn.copy_records_to_table(
                "enrollments", records=enrollments,
                columns=["user_id", "course_id", "enrollment_id", "status", "revision", "enrolled_at",
                         "display_name", "email"])
            await conn.copy_records_to_table(
                "lesson_progress", records=progress,
                columns=["user_id", "course_id", "lesson_id", "completed", "completed_at", "video_progress",
                         "last_position", "position_at", "time_spent_seconds", "created_at", "updated_at"])
            await conn.copy_records_to_table(
                "course_completions", records=completions,
                columns=["user_id", "course_id", "enrollment_id", "completed_at", "event"])
            records += len(progress)
        filled = time.perf_counter() - started
        started = time.perf_counter()
        folded = await AnalyticsFolder(conn_pool := await asyncpg.create_pool(url, min_size=1, max_size=1),
                                       interval_s=1, batch=200_000).fold()
        await conn_pool.close()
        folding = time.perf_counter() - started
        await conn.execute("VACUUM ANALYZE")
        say(f"filled {total} learners, {records} progress records in {filled:.1f} s (COPY through the analytics "
            f"triggers); folded their {folded} deltas in {folding:.1f} s; then VACUUM ANALYZE")
        sizes = await conn.fetch(
            "SELECT relname, n_live_tup FROM pg_stat_user_tables WHERE relname LIKE 'analytics%' ORDER BY relname")
        say("  rows: " + ", ".join(f"{r['relname']} {r['n_live_tup']}" for r in sizes))
    finally:
        await conn.close()


async def timed(fn: Callable[[], Awaitable[Any]], repeat: int) -> tuple[list[float], Any]:
    result: Any = await fn()  # warm-up: plans, caches
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = await fn()
        times.append((time.perf_counter() - t) * 1000)
    return times, result


def figures(times: list[float]) -> str:
    return f"min {min(times):7.1f}  median {statistics.median(times):7.1f}  max {max(times):7.1f} ms"


def ranges(now: datetime) -> Iterator[tuple[str, analytics.ReportQuery]]:
    today = now.date()
    yield "all enrolments", analytics.ReportQuery(COURSE_ID, None, None, 14, now)
    yield "last 30 days", analytics.ReportQuery(COURSE_ID, today - timedelta(days=29), today, 14, now)
    yield "first half-year", analytics.ReportQuery(
        COURSE_ID, today - timedelta(days=365), today - timedelta(days=183), 14, now)


async def bench_queries(url: str, repeat: int, explain: bool) -> None:
    pool = await asyncpg.create_pool(url, min_size=2, max_size=2)
    assert pool is not None
    course = catalog()
    durations = analytics.durations(course)
    now = datetime.now(UTC)
    say("\n(1) each part of the report, timed directly (asyncpg, prepared)")
    for name, q in ranges(now):
        await bench_range(pool, name, q, durations, repeat, explain)
    await pool.close()


async def in_session(pool: asyncpg.Pool, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    """One query as the endpoint runs it: in analytics_store.session (JIT off, work_mem)."""
    async with analytics_store.session(pool) as conn:
        return await fn(conn, *args, **kwargs)


async def bench_range(
    pool: asyncpg.Pool, name: str, q: analytics.ReportQuery, durations: Any, repeat: int, explain: bool
) -> None:
    start, end = q.start, q.end
    store_ = analytics_store
    say(f"  {name}:")
    lt, learner_figures = await timed(partial(in_session, pool, store_.learner_figures, COURSE_ID, start, end), repeat)
    say(f"    learner figures (completion, time to completion)  {figures(lt)}  ({learner_figures.enrolled} enrolled)")
    dt, _ = await timed(partial(in_session, pool, store_.drop_off, COURSE_ID, start, end, q.inactive_before), repeat)
    say(f"    drop-off funnel                                   {figures(dt)}")

    async def lessons() -> Any:
        async with analytics_store.session(pool, one_snapshot=True) as conn:
            return await usecases.lesson_figures(conn, catalog(), q)

    st, maintained = await timed(lessons, repeat)
    say(f"    lesson figures (cohort histograms)                {figures(st)}")
    rt, scratch = await timed(partial(in_session, pool, analytics_reference.lesson_figures_from_scratch, COURSE_ID,
                                      start, end, durations), 1)
    same = same_figures(maintained, scratch)
    say(f"    lesson figures from the records, for comparison   {figures(rt)}  (equal: {same})")
    if not same:
        raise SystemExit("the cohort histograms disagree with the records")
    if explain:
        await print_explains(pool, q)


def same_figures(a: dict[int, Any], b: dict[int, Any]) -> bool:
    """Equal figures; the watched fractions are float sums in another order, so to 1e-6."""
    return a.keys() == b.keys() and all(
        (x.started, x.completed, x.watch_sum_s, x.median_watch_s) == (y.started, y.completed, y.watch_sum_s,
                                                                      y.median_watch_s)
        and (x.fraction_sum is None) == (y.fraction_sum is None)
        and abs((x.fraction_sum or 0.0) - (y.fraction_sum or 0.0)) < 1e-6
        for x, y in ((a[k], b[k]) for k in a)
    )


async def print_explains(pool: asyncpg.Pool, q: analytics.ReportQuery) -> None:
    async with analytics_store.session(pool, one_snapshot=True) as conn:
        first, last = q.enrolled_from, q.enrolled_to
        blocks = analytics.plan_dates(await analytics_store.cohort_span(conn, COURSE_ID), first, last)
        say(f"    blocks summed: {len(blocks)} {blocks}")
        block_args = ([b[0] for b in blocks], [b[1] for b in blocks], [b[2] for b in blocks])
        lessons = analytics.by_lesson(await analytics_store.buckets(conn, COURSE_ID, blocks, first, last))
        wanted = sorted(analytics.buckets_to_open(lessons, dict(analytics.durations(catalog()))))
        for name, sql, params in [
            ("learner figures", analytics_store.LEARNER_FIGURES_SQL, (COURSE_ID, q.start, q.end)),
            ("drop-off", analytics_store.DROP_OFF_SQL, (COURSE_ID, q.start, q.end, q.inactive_before)),
            ("buckets", analytics_store.BUCKETS_SQL, (COURSE_ID, *block_args, first, last)),
            ("seconds", analytics_store.SECONDS_SQL,
             (COURSE_ID, *block_args, first, last, [w[0] for w in wanted], [w[1] for w in wanted])),
        ]:
            plan = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *params)
            say(f"    -- EXPLAIN {name}")
            for row in plan:
                say("    " + row[0])


async def fetch(client: httpx.AsyncClient, params: dict[str, Any]) -> httpx.Response:
    response = await client.get(f"/api/admin/courses/{COURSE_ID}/analytics", params=params)
    response.raise_for_status()
    return response


async def bench_endpoint(url: str, repeat: int) -> None:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "LOG_LEVEL": "WARNING", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
           "ENROLLMENT_INTERNAL_URL": "http://127.0.0.1:1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shared.serve", "--factory", "services.progress.app:build_app", "--host", "127.0.0.1",
        "--port", str(port), "--log-level", "warning", "--no-access-log",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    token = issue_token(ProgressSettings(), user_id="admin", roles=["admin"])
    headers = {"Authorization": f"Bearer {token}"}
    say("\n(2) GET /api/admin/courses/1/analytics on the real service (uvicorn, one process)")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as client:
            for _ in range(200):
                try:
                    if (await client.get("/health")).status_code < 500:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
            now = datetime.now(UTC)
            for name, q in ranges(now):
                params: dict[str, Any] = {}
                if q.enrolled_from:
                    params = {"from": q.enrolled_from.isoformat(), "to": str(q.enrolled_to)}
                for fmt in ("json", "csv"):
                    get = partial(fetch, client, {**params, "format": fmt})
                    times, response = await timed(get, repeat)
                    say(f"  {name:16} {fmt:4}  {figures(times)}  ({len(response.content)} bytes)")
                    if fmt == "json" and name == "all enrolments":
                        data = response.json()["data"]
                        say(f"    completion {data['completion']}, time to completion {data['time_to_completion']},"
                            f" dropped off {data['drop_off']['learners']}")
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)


async def bench_write_path(url: str, repeat: int) -> None:
    """The heartbeat flush (store.FLUSH_SQL) of 1,000 existing learner-lessons, with the
    analytics triggers and without, alternating, on the filled table; the fold of what each
    flush with triggers wrote; then the lesson figures with 20 flushes waiting unfolded."""
    conn = await connect(url)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    assert pool is not None
    folder = AnalyticsFolder(pool, interval_s=1)
    rng = random.Random(11)
    keys = await conn.fetch(
        "SELECT user_id, lesson_id FROM lesson_progress TABLESAMPLE SYSTEM (1) LIMIT 20000")

    async def flush(keep: bool = True) -> float:
        """One flush; ``keep=False`` rolls it back (written with the triggers off, it would
        leave the histograms behind the records)."""
        batch = sorted(rng.sample(list(keys), 1000), key=lambda r: (r["user_id"], r["lesson_id"]))
        now = datetime.now(UTC)
        watched = ((now.timestamp() - 5.0, now.timestamp()),)  # the last 5 s
        rows = [store.FlushRow(r["user_id"], COURSE_ID, r["lesson_id"], 100.0, 100.0, now, now, watched, now)
                for r in batch]
        tx = conn.transaction()
        await tx.start()
        t = time.perf_counter()
        await store.flush_heartbeats(conn, rows)
        elapsed = (time.perf_counter() - t) * 1000
        await (tx.commit() if keep else tx.rollback())
        return elapsed

    results: dict[bool, list[float]] = {True: [], False: []}
    folds: list[float] = []
    say("\n(3) heartbeat flush of 1,000 rows (store.FLUSH_SQL), analytics triggers on / off")
    try:
        for i in range(repeat * 4):
            enabled = i % 2 == 0
            await conn.execute(f"ALTER TABLE lesson_progress {'ENABLE' if enabled else 'DISABLE'} TRIGGER USER")
            results[enabled].append(await flush(keep=enabled))
            if enabled:
                t = time.perf_counter()
                await folder.fold()
                folds.append((time.perf_counter() - t) * 1000)
        await conn.execute("ALTER TABLE lesson_progress ENABLE TRIGGER USER")
        say(f"  triggers on   {figures(results[True])}")
        say(f"  triggers off  {figures(results[False])}")
        say(f"  fold of one flush's deltas  {figures(folds)}")

        for _ in range(20):
            await flush()
        pending = await analytics_store.pending_deltas(conn)
        say(f"  lesson figures with {pending} deltas pending (20 flushes unfolded):")
        for name, q in ranges(datetime.now(UTC)):
            async def lessons(q: analytics.ReportQuery = q) -> Any:
                async with analytics_store.session(pool, one_snapshot=True) as c:
                    return await usecases.lesson_figures(c, catalog(), q)
            times, _ = await timed(lessons, repeat)
            say(f"    {name:16} {figures(times)}")
        t = time.perf_counter()
        await folder.fold()
        say(f"  folding them: {(time.perf_counter() - t) * 1000:.0f} ms")
    finally:
        await conn.execute("ALTER TABLE lesson_progress ENABLE TRIGGER USER")
        await conn.close()
        await pool.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learners", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/bench_analytics")
    parser.add_argument("--keep", action="store_true", help="keep the database (a later run reuses it)")
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN (ANALYZE, BUFFERS) of each query")
    args = parser.parse_args()
    url = args.database_url
    try:
        await fill(url, args.learners)
        await bench_queries(url, args.repeat, args.explain)
        await bench_endpoint(url, args.repeat)
        await bench_write_path(url, args.repeat)
    finally:
        if not args.keep:
            admin = await asyncpg.connect(with_database(url, "postgres"))
            await admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
            await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
