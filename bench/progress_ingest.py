"""Heartbeat ingest: raw PostgreSQL upsert rate (pgbench) against the service over HTTP.

One run:
  (a) pgbench runs the single-row form of the heartbeat upsert (same table, same ON CONFLICT
      rules as the service's flush) for DURATION seconds on CONNECTIONS connections;
  (b) the progress service runs as a real uvicorn process on the same database, and
      CONNECTIONS keep-alive HTTP clients send POST /api/progress heartbeats for DURATION
      seconds; it reports heartbeats/s and p50/p99 latency.
It prints both rates and their ratio. Nothing else needs to run: the catalog and the
enrollments are written straight into the service's replica tables.

    python bench/progress_ingest.py --connections 8 --duration 8
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lessonstream.infra import free_port  # noqa: E402
from services.progress import store  # noqa: E402
from services.progress.app import ProgressSettings  # noqa: E402
from shared.auth import issue_token  # noqa: E402
from shared.db import migrate_service, with_database  # noqa: E402
from shared.events import CatalogLesson, CourseCatalogEntry, EnrollmentChanged  # noqa: E402

COURSE_ID = 1
LESSONS = 20
# A 10-minute video with a heartbeat every 5 s gives 120; fewer makes the bench harsher.
HEARTBEATS_PER_LESSON = 50

# The single-row form of services/progress/store.py FLUSH_SQL (same merge clause): what
# one request would run if every heartbeat were written on its own.
PGBENCH_SCRIPT = r"""
\set u random(1, :users)
\set l random(1, 20)
\set pos random(0, 3600)
INSERT INTO lesson_progress AS p
    (user_id, course_id, lesson_id, video_progress, last_position, position_at, position_seen_at,
     time_spent_seconds, credited, updated_at)
VALUES ('pg' || :u, 1, :l, :pos, :pos, now(), now(), 5,
        ARRAY[extract(epoch FROM now()) - 5, extract(epoch FROM now())]::float8[], now())""" + \
    store.FLUSH_ON_CONFLICT.rstrip() + ";\n"


def pgbench_binary() -> str:
    for candidate in ("/usr/lib/postgresql/15/bin/pgbench", shutil.which("pgbench")):
        if candidate and Path(candidate).exists():
            return candidate
    raise SystemExit("pgbench not found")


async def prepare_database(url: str, users: int) -> None:
    await migrate_service(url, "progress", ROOT / "services" / "progress" / "migrations")
    conn = await asyncpg.connect(url)
    try:
        await conn.set_type_codec("jsonb", encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads,
                                  schema="pg_catalog", format="text")
        await conn.execute("TRUNCATE lesson_progress, enrollments, courses")
        await store.save_course(conn, CourseCatalogEntry(
            course_id=COURSE_ID, revision=1, title="Bench", slug="bench", status="published",
            lessons=[CatalogLesson(id=i, title=f"L{i}", order=i) for i in range(1, LESSONS + 1)],
        ))
        for u in range(users):
            await store.save_enrollment(conn, EnrollmentChanged(
                user_id=f"u{u}", course_id=COURSE_ID, enrollment_id=u + 1, status="active", revision=1,
                enrolled_at=time.time(),
            ))
    finally:
        await conn.close()


async def run_pgbench(url: str, connections: int, duration: int, users: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(PGBENCH_SCRIPT)
    db = url.rsplit("/", 1)[1]
    cmd = [pgbench_binary(), "-n", "-M", "prepared", "-h", "127.0.0.1", "-p", "5432", "-U", "postgres",
           "-c", str(connections), "-j", str(min(connections, 2)), "-T", str(duration),
           "-D", f"users={users}", "-f", script.name, db]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await proc.communicate()
    os.unlink(script.name)
    out = stdout.decode()
    if proc.returncode != 0:
        raise SystemExit(f"pgbench failed:\n{stderr.decode()}")
    match = re.search(r"tps = ([\d.]+)", out)
    if not match:
        raise SystemExit(f"could not read pgbench output:\n{out}")
    return float(match.group(1))


async def http_load(port: int, connections: int, duration: float, users: int) -> tuple[int, list[float], int]:
    """Keep-alive HTTP/1.1 clients on raw sockets: the client must cost less CPU than the server."""
    settings = ProgressSettings()
    tokens = [issue_token(settings, user_id=f"u{u}") for u in range(users)]
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    def request(u: int, lesson: int, position: int) -> bytes:
        body = orjson.dumps({"course_id": COURSE_ID, "lesson_id": lesson, "completed": False,
                             "video_progress": position, "last_position": position})
        return (
            f"POST /api/progress HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {tokens[u]}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    async def client(n: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        mine = list(range(n, users, connections))  # this connection's learners, in turn
        i = 0
        try:
            while time.perf_counter() < deadline:
                u = mine[i % len(mine)]
                rounds = i // len(mine)
                # Each learner sends HEARTBEATS_PER_LESSON heartbeats (5 s of playback apart) per lesson.
                lesson = 1 + (rounds // HEARTBEATS_PER_LESSON) % LESSONS
                payload = request(u, lesson, (rounds % HEARTBEATS_PER_LESSON) * 5)
                i += 1
                started = time.perf_counter()
                writer.write(payload)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if not head.startswith(b"HTTP/1.1 200"):
                    errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(client(n) for n in range(connections)))
    return len(latencies), latencies, errors


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (uvicorn workers), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return total + sum(cpu_seconds(int(child)) for child in children)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def transactions(url: str) -> int:
    """Committed transactions of the bench database so far (PostgreSQL's statistics)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SELECT pg_stat_force_next_flush()")
        value: int = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        return value
    finally:
        await conn.close()


async def wait_ready(port: int, proc: asyncio.subprocess.Process) -> None:
    for _ in range(300):
        if proc.returncode is not None:
            raise SystemExit("the service exited while starting")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            if (await reader.readline()).startswith(b"HTTP/1.1 200"):
                writer.close()
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("the service did not start")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--duration", type=int, default=8, help="seconds for each of the two measurements")
    parser.add_argument("--users", type=int, default=400, help="learners sending heartbeats")
    parser.add_argument("--flush-interval", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default one)")
    parser.add_argument("--database-url", default=f"postgresql://postgres@127.0.0.1:5432/bench_progress_{os.getpid()}")
    args = parser.parse_args()

    url = args.database_url
    await prepare_database(url, args.users)
    try:
        raw_tps = await run_pgbench(url, args.connections, args.duration, args.users)

        port = free_port()
        env = {**os.environ, "DATABASE_URL": url, "LOG_LEVEL": "WARNING", "DB_POOL_MAX": str(args.connections),
               "HEARTBEAT_FLUSH_INTERVAL_S": str(args.flush_interval), "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
               "ENROLLMENT_INTERNAL_URL": "http://127.0.0.1:1"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "uvicorn", "--factory", "services.progress.app:build_app", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning", "--no-access-log", "--workers", str(args.workers),
            cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await wait_ready(port, proc)
            await http_load(port, args.connections, 1.0, args.users)  # warm-up: load rows, JIT caches
            server_cpu, client_cpu = cpu_seconds(proc.pid), time.process_time()
            commits = await transactions(url)
            count, latencies, errors = await http_load(port, args.connections, args.duration, args.users)
            server_cpu, client_cpu = cpu_seconds(proc.pid) - server_cpu, time.process_time() - client_cpu
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 15)
        commits = await transactions(url) - commits
        rate = count / args.duration
        conn = await asyncpg.connect(url)
        rows = await conn.fetchval("SELECT count(*) FROM lesson_progress WHERE user_id LIKE 'u%'")
        await conn.close()
    finally:
        admin = await asyncpg.connect(with_database(url, "postgres"))
        await admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
        await admin.close()

    lines = [
        f"connections: {args.connections}, duration: {args.duration}s each, learners: {args.users}, "
        f"service workers: {args.workers}, "
        f"lessons: {LESSONS}, flush interval: {args.flush_interval}s",
        f"(a) pgbench, single-row upsert:      {raw_tps:10.0f} upserts/s",
        f"(b) service, POST /api/progress:     {rate:10.0f} heartbeats/s  "
        f"p50 {percentile(latencies, 0.5) * 1000:.2f} ms  p99 {percentile(latencies, 0.99) * 1000:.2f} ms  "
        f"errors {errors}",
        f"ratio service / raw upsert:          {rate / raw_tps:10.2f}",
        f"service CPU: {server_cpu / args.duration * 100:.0f}% of a core, "
        f"{server_cpu / max(count, 1) * 1e6:.0f} us per heartbeat; load client CPU: "
        f"{client_cpu / args.duration * 100:.0f}% of a core",
        f"database transactions during (b): {commits} ({commits / max(count, 1) * 1000:.1f} per 1000 heartbeats; "
        f"the service's writes are the periodic flushes); learner-lesson rows stored: {rows}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
