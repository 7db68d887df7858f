"""Recalculation after a course change: 100,000 enrollments in one course, one lesson made
required through the real API, and what it costs.

One run:
  1. Tansu, the enrollment service and one progress service (uvicorn processes) on fresh
     databases; a course of LESSONS lessons (the last one optional) is created and published
     through the enrollment API, and reaches progress's replica over course-catalog.
  2. --learners enrollments are written straight into both databases with SQL (enrollment's
     enrollments, progress's enrollment replica and COMPLETED lessons done by each learner):
     a bench, not a test of enrolling.
  3. A heartbeat load (POST /api/progress, --connections keep-alive clients, learners of the
     course) runs for --baseline seconds: latency before.
  4. Under the same load, the optional lesson is made required (PATCH through the API; its
     own latency is reported), and the clock runs until every enrollment row in the
     enrollment database shows the recalculated figures (total_lessons = LESSONS): the
     time to recalculate everyone, and the heartbeat latency meanwhile.

    python bench/recalculation.py [--learners 100000] [--connections 8] [--baseline 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.progress_ingest import (  # noqa: E402
    heartbeat_request,
    keep_alive_client,
    percentile,
    running,
    wait_ready,
)
from lessonstream import infra  # noqa: E402
from services.progress.settings import ProgressSettings  # noqa: E402
from shared.auth import issue_token  # noqa: E402
from shared.db import ensure_database, with_database  # noqa: E402
from shared.process import die_with_parent  # noqa: E402

LESSONS = 10  # the last one optional until the change
COMPLETED = 3  # lessons each learner has done (1..3): 30 % before, and after the change
LOADED_LEARNERS = 400  # learners sending heartbeats during the bench


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def fresh_database(url: str) -> None:
    admin = await asyncpg.connect(with_database(url, "postgres"))
    try:
        name = url.rsplit("/", 1)[1]
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    await ensure_database(url)


@contextlib.asynccontextmanager
async def service(app: str, port: int, env: dict[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shared.serve", "--factory", app, "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning", "--no-access-log",
        cwd=ROOT, env={**os.environ, **env}, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    try:
        await wait_ready(port, running(proc), path="/ready", what=app)
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def until(probe: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await probe():
            return
        await asyncio.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


async def seed(enrollment_url: str, progress_url: str, course_id: int, lesson_ids: list[int], learners: int) -> None:
    """The learners, written with SQL in both databases (as their events would have left them)."""
    done = lesson_ids[:COMPLETED]
    percentage = COMPLETED * 100 // (LESSONS - 1)
    enrollment = await asyncpg.connect(enrollment_url)
    try:
        await enrollment.execute(
            """
            INSERT INTO enrollments (user_id, course_id, status, enrolled_at, username, display_name, email,
                                     progress_percentage, completed_lessons, total_lessons, progress_at,
                                     progress_seq, last_event_id, last_event_at)
            SELECT 'b' || lpad(n::text, 6, '0'), $1, 'active', now(), 'b' || n, 'Learner ' || n,
                   'b' || n || '@example.com', $2, $3, $4, now() - interval '1 hour', now() - interval '1 hour',
                   gen_random_uuid(), now()
            FROM generate_series(1, $5) AS n
            """,
            course_id, percentage, COMPLETED, LESSONS - 1, learners,
        )
        ids = await enrollment.fetch("SELECT user_id, id, enrolled_at FROM enrollments WHERE course_id = $1",
                                     course_id)
    finally:
        await enrollment.close()
    progress = await asyncpg.connect(progress_url)
    try:
        await progress.execute(
            """
            INSERT INTO enrollments (user_id, course_id, enrollment_id, status, revision, enrolled_at, display_name,
                                     email)
            SELECT u, $1, e, 'active', 1, at, 'Learner', u || '@example.com'
            FROM unnest($2::text[], $3::bigint[], $4::timestamptz[]) AS x (u, e, at)
            """,
            course_id, [r["user_id"] for r in ids], [r["id"] for r in ids], [r["enrolled_at"] for r in ids],
        )
        await progress.execute(
            """
            INSERT INTO lesson_progress (user_id, course_id, lesson_id, completed, completed_at, video_progress,
                                         last_position, time_spent_seconds)
            SELECT u, $1, l, true, now() - interval '1 day', 600, 600, 600
            FROM unnest($2::text[]) AS u, unnest($3::bigint[]) AS l
            """,
            course_id, [r["user_id"] for r in ids], done,
        )
        await progress.execute("ANALYZE")
    finally:
        await progress.close()


def heartbeats(tokens: list[str], course_id: int, lesson_id: int) -> Callable[[int, int], bytes]:
    def request(n: int, i: int) -> bytes:
        return heartbeat_request(tokens[(n + i * 7) % len(tokens)], course_id, lesson_id, (i % 120) * 5)

    return request


class Load:
    """Keep-alive heartbeat clients on raw sockets until ``stop`` is set, each request's
    (start time, latency) kept, so a run can be cut into before and during."""

    def __init__(self, port: int, connections: int, request_for: Callable[[int, int], bytes]) -> None:
        self.samples: list[tuple[float, float]] = []
        self.errors = 0
        self.stop = asyncio.Event()
        self._task = asyncio.gather(*(
            keep_alive_client(port, n, request_for, lambda: not self.stop.is_set(), self._record)
            for n in range(connections)
        ))

    def _record(self, started: float, latency: float, ok: bool) -> None:
        self.samples.append((started, latency))
        self.errors += not ok

    async def finish(self) -> None:
        self.stop.set()
        await self._task

    def between(self, start: float, end: float) -> str:
        latencies = [lat for at, lat in self.samples if start <= at < end]
        return (f"{len(latencies) / (end - start):6.0f} heartbeats/s  "
                f"p50 {percentile(latencies, 0.5) * 1000:6.2f} ms  p95 {percentile(latencies, 0.95) * 1000:6.2f} ms  "
                f"p99 {percentile(latencies, 0.99) * 1000:6.2f} ms")


async def run(pg: str, kafka: str, args: argparse.Namespace) -> None:
    enrollment_db = with_database(pg, "bench_recalc_enrollment")
    progress_db = with_database(pg, "bench_recalc_progress")
    for url in (enrollment_db, progress_db):
        await fresh_database(url)
    enrollment_port, progress_port = infra.free_port(), infra.free_port()
    common = {"KAFKA_BOOTSTRAP_SERVERS": kafka, "LOG_LEVEL": "WARNING", "KAFKA_TOPIC_PREFIX": "bench-recalc."}
    settings = ProgressSettings()
    admin = {"Authorization": "Bearer " + issue_token(settings, user_id="admin-1", roles=["admin"])}
    async with (
        service("services.enrollment.app:build_app", enrollment_port, {**common, "DATABASE_URL": enrollment_db}),
        service("services.progress.app:build_app", progress_port, {
            **common, "DATABASE_URL": progress_db, "ENROLLMENT_INTERNAL_URL": f"http://127.0.0.1:{enrollment_port}",
            "DB_POOL_MAX": str(args.connections + 4),
        }),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{enrollment_port}", timeout=60) as api,
    ):
        created = await api.post("/api/admin/courses", json={"title": "Recalculation bench"}, headers=admin)
        course_id = created.json()["data"]["id"]
        lesson_ids = []
        for n in range(1, LESSONS + 1):
            added = await api.post(f"/api/admin/courses/{course_id}/lessons", headers=admin,
                                   json={"title": f"Lesson {n}", "is_required": n < LESSONS, "duration_seconds": 600})
            lesson_ids.append(added.json()["data"]["lesson"]["id"])
        await api.post(f"/api/admin/courses/{course_id}/publish", headers=admin)
        progress_conn = await asyncpg.connect(progress_db)
        enrollment_conn = await asyncpg.connect(enrollment_db)
        try:
            async def replicated() -> bool:
                jobs = await progress_conn.fetchval("SELECT count(*) FROM course_recalculations")
                entry = await progress_conn.fetchval("SELECT entry->>'status' FROM courses WHERE course_id = $1",
                                                     course_id)
                return bool(entry == "published" and jobs == 0)

            await until(replicated, 60, "the published course in progress's replica")
            started = time.perf_counter()
            await seed(enrollment_db, progress_db, course_id, lesson_ids, args.learners)
            out(f"seeded {args.learners} enrollments ({COMPLETED} lessons done each) in "
                f"{time.perf_counter() - started:.1f} s")

            tokens = [issue_token(settings, user_id=f"b{n:06d}") for n in range(1, LOADED_LEARNERS + 1)]
            load = Load(progress_port, args.connections, heartbeats(tokens, course_id, lesson_ids[COMPLETED]))
            try:
                await asyncio.sleep(2)  # warm-up, not measured
                measured_from = time.perf_counter()
                await asyncio.sleep(args.baseline)

                async def recalculated() -> bool:
                    left = await enrollment_conn.fetchval(
                        "SELECT count(*) FROM enrollments WHERE course_id = $1 AND total_lessons <> $2",
                        course_id, LESSONS)
                    return bool(left == 0)

                changed_at = time.perf_counter()
                patched = await api.patch(f"/api/admin/courses/{course_id}/lessons/{lesson_ids[-1]}",
                                          json={"is_required": True}, headers=admin)
                answered = time.perf_counter() - changed_at
                assert patched.status_code == 200, patched.text
                await until(recalculated, 1800, "every enrollment recalculated")
                done_at = time.perf_counter()
            finally:
                await load.finish()
            took = done_at - changed_at
            out(f"admin PATCH answered in:         {answered * 1000:8.1f} ms")
            out(f"all {args.learners} enrollments recalculated in {took:6.1f} s "
                f"({args.learners / took:,.0f} learners/s)")
            out(f"heartbeats before the change:     {load.between(measured_from, changed_at)}")
            out(f"heartbeats while recalculating:   {load.between(changed_at, done_at)}")
            out(f"heartbeat errors:                 {load.errors}")
            events = await progress_conn.fetchval(
                "SELECT count(*) FROM outbox WHERE event_type = 'progress-recalculated'")
            out(f"progress-recalculated events:     {events}")
        finally:
            await progress_conn.close()
            await enrollment_conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learners", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--baseline", type=float, default=10.0, help="seconds of heartbeat load before the change")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pg = infra.choose_postgres(os.environ.get("DATABASE_URL"), Path(tmp) / "pg", probe_local=True, keep=False)
        port = infra.free_port()
        tansu = infra.start_tansu(port, Path(tmp) / "tansu.log")
        try:
            asyncio.run(run(pg.url, f"127.0.0.1:{port}", args))
        finally:
            tansu.stop()
            pg.stop()


if __name__ == "__main__":
    main()
