"""Heartbeat ingest: raw PostgreSQL upsert rate (pgbench) against the service over HTTP,
directly and through the gateway.

One run:
  (a) pgbench runs the single-row form of the heartbeat upsert (same table, same ON CONFLICT
      rules as the service's flush) for DURATION seconds on CONNECTIONS connections;
  (b) the progress service runs as a real uvicorn process on the same database, and
      CONNECTIONS keep-alive HTTP clients send POST /api/progress heartbeats for DURATION
      seconds; it reports heartbeats/s and p50/p99 latency.
It prints both rates and their ratio. Nothing else needs to run: the catalog and the
enrollments are written straight into the service's replica tables.

With --gateway, then for each count in --replicas (default 1,2):
  (c) that many progress replicas (separate uvicorn processes, each on its own port, all on
      the same database) behind Caddy running the project's gateway/Caddyfile, which
      balances them by a hash of the Authorization header; the same clients first load the
      gateway's cheapest route, GET /health/progress, then send the heartbeats through it,
      DURATION seconds each. It reports both rates, their p50/p99 latency, the ratio
      heartbeats / health requests (what the progress route costs over the gateway's own
      proxying, on the same processes), and the CPU of the gateway and of each replica.
Every client connection sends for its own share of the learners in turn (distinct tokens),
so each connection's requests spread over the replicas.

    python bench/progress_ingest.py --connections 8 --duration 8
    python bench/progress_ingest.py --connections 8 --duration 8 --gateway --replicas 1,2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lessonstream.infra import free_port, start_caddy  # noqa: E402
from lessonstream.stack import StackConfig  # noqa: E402
from services.progress import store  # noqa: E402
from services.progress.settings import ProgressSettings  # noqa: E402
from shared.auth import issue_token  # noqa: E402
from shared.db import migrate_service, with_database  # noqa: E402
from shared.events import CatalogLesson, CourseCatalogEntry, EnrollmentChanged  # noqa: E402
from shared.process import die_with_parent  # noqa: E402

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
     time_spent_seconds, credited, updated_at, watched, watched_seconds)
VALUES ('pg' || :u, 1, :l, :pos, :pos, now(), now(), 5,
        ARRAY[extract(epoch FROM now()) - 5, extract(epoch FROM now())]::float8[], now(),
        ARRAY[:pos, :pos + 5]::float8[], 5)""" + \
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


WARMUP_S = 1.0  # before each measurement: load rows, JIT and connection caches

# (connection number, request number on it) -> the bytes of one HTTP/1.1 request
RequestFor = Callable[[int, int], bytes]


@dataclass
class Load:
    """What a load run got back, and the CPU seconds each named process (group) spent on it."""

    count: int
    latencies: list[float]
    errors: int
    duration: float
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.count / self.duration

    def cpu_share(self, name: str) -> float:
        """CPU of ``name`` during the run, in percent of one core."""
        return self.cpu[name] / self.duration * 100

    def line(self, label: str, unit: str) -> str:
        return (
            f"{label:<36}{self.rate:10.0f} {unit}  p50 {percentile(self.latencies, 0.5) * 1000:.2f} ms  "
            f"p99 {percentile(self.latencies, 0.99) * 1000:.2f} ms  errors {self.errors}"
        )


def learner_tokens(users: int) -> list[str]:
    settings = ProgressSettings()
    return [issue_token(settings, user_id=f"u{u}") for u in range(users)]


def learner_turn(n: int, i: int, users: int, connections: int) -> tuple[int, int]:
    """Connection ``n``'s learners take turns: (learner, round) of its ``i``-th request."""
    mine = range(n, users, connections)
    return mine[i % len(mine)], i // len(mine)


def heartbeat_request(token: str, course_id: int, lesson_id: int, position: float) -> bytes:
    """One keep-alive ``POST /api/progress`` at ``position``, as raw HTTP/1.1 bytes."""
    body = orjson.dumps({"course_id": course_id, "lesson_id": lesson_id, "completed": False,
                         "video_progress": position, "last_position": position})
    return (
        f"POST /api/progress HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def heartbeat_requests(tokens: list[str], connections: int) -> RequestFor:
    """POST /api/progress: each learner sends HEARTBEATS_PER_LESSON heartbeats (5 s of playback
    apart) per lesson, then goes on to the next lesson."""

    def request(n: int, i: int) -> bytes:
        u, rounds = learner_turn(n, i, len(tokens), connections)
        lesson = 1 + (rounds // HEARTBEATS_PER_LESSON) % LESSONS
        return heartbeat_request(tokens[u], COURSE_ID, lesson, (rounds % HEARTBEATS_PER_LESSON) * 5)

    return request


def health_requests(tokens: list[str], connections: int, path: str) -> RequestFor:
    """GET ``path`` with the same learners' tokens in the same turns as the heartbeats."""

    def request(n: int, i: int) -> bytes:
        u, _ = learner_turn(n, i, len(tokens), connections)
        return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {tokens[u]}\r\n\r\n".encode()

    return request


async def read_body(reader: asyncio.StreamReader, head: bytes) -> None:
    """Read (and drop) the body of a response whose head is ``head``."""
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    if length:
        await reader.readexactly(int(length.group(1)))
    elif re.search(rb"(?i)\r\ntransfer-encoding: *chunked", head):
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)  # the chunk and its CRLF (no trailers here)
            if size == 0:
                return
    elif not head.startswith((b"HTTP/1.1 204", b"HTTP/1.1 304")):
        raise RuntimeError(f"response without a length: {head!r}")


async def keep_alive_client(
    port: int, n: int, request_for: RequestFor, going: Callable[[], bool],
    record: Callable[[float, float, bool], None],
) -> None:
    """Client ``n``: one keep-alive HTTP/1.1 connection on a raw socket (the client must cost
    less CPU than the server), sending ``request_for(n, i)`` while ``going()``; each
    exchange is recorded as (start, latency, answered 200)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    try:
        while going():
            payload = request_for(n, i)
            i += 1
            started = time.perf_counter()
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            await read_body(reader, head)
            record(started, time.perf_counter() - started, head.startswith(b"HTTP/1.1 200"))
    finally:
        writer.close()


async def http_load(port: int, connections: int, duration: float, request_for: RequestFor) -> Load:
    """Keep-alive clients for ``duration`` seconds."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    def record(_started: float, latency: float, ok: bool) -> None:
        nonlocal errors
        latencies.append(latency)
        errors += not ok

    await asyncio.gather(*(
        keep_alive_client(port, n, request_for, lambda: time.perf_counter() < deadline, record)
        for n in range(connections)
    ))
    return Load(len(latencies), latencies, errors, duration)


async def measure(port: int, connections: int, duration: float, request_for: RequestFor,
                  processes: dict[str, int]) -> Load:
    """A load run; ``cpu`` holds each named process's CPU seconds during it, and the load
    client's as ``client``."""
    before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    client_before = time.process_time()
    load = await http_load(port, connections, duration, request_for)
    load.cpu = {name: cpu_seconds(pid) - before[name] for name, pid in processes.items()}
    load.cpu["client"] = time.process_time() - client_before
    return load


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (uvicorn workers), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return total + sum(cpu_seconds(int(child)) for child in children)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
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


def running(proc: asyncio.subprocess.Process) -> Callable[[], bool]:
    return lambda: proc.returncode is None


async def wait_ready(port: int, alive: Callable[[], bool], path: str = "/health", what: str = "the service") -> None:
    for _ in range(300):
        if not alive():
            raise SystemExit(f"{what} exited while starting")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                if (await reader.readline()).startswith(b"HTTP/1.1 200"):
                    return
            finally:
                writer.close()
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit(f"{what} did not start")


@contextlib.asynccontextmanager
async def progress_services(url: str, ports: list[int], args: argparse.Namespace
                            ) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """One progress service (uvicorn, ``--workers`` processes) on each port, all on ``url``;
    ready when entered, stopped on exit whatever happened."""
    env = {**os.environ, "DATABASE_URL": url, "LOG_LEVEL": "WARNING", "DB_POOL_MAX": str(args.connections),
           "HEARTBEAT_FLUSH_INTERVAL_S": str(args.flush_interval), "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
           "ENROLLMENT_INTERNAL_URL": "http://127.0.0.1:1",
           # Several workers behind one port: the services refuse it (their metrics would be one
           # worker's) unless told that throughput is all that is measured here.
           "LESSONSTREAM_ALLOW_UVICORN_WORKERS": "true"}
    procs: list[asyncio.subprocess.Process] = []
    try:
        for port in ports:
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "shared.serve", "--factory", "services.progress.app:build_app",
                "--host", "127.0.0.1",
                "--port", str(port), "--log-level", "warning", "--no-access-log", "--workers", str(args.workers),
                cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            ))
        for port, proc in zip(ports, procs, strict=True):
            await wait_ready(port, running(proc))
        yield procs
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def direct_run(url: str, args: argparse.Namespace, tokens: list[str]) -> tuple[Load, int]:
    """(b): heartbeats straight to one service; the load and the database transactions it caused."""
    port = free_port()
    heartbeats = heartbeat_requests(tokens, args.connections)
    async with progress_services(url, [port], args) as (proc,):
        await http_load(port, args.connections, WARMUP_S, heartbeats)
        commits = await transactions(url)
        load = await measure(port, args.connections, args.duration, heartbeats, {"service": proc.pid})
    return load, await transactions(url) - commits


async def gateway_run(url: str, args: argparse.Namespace, tokens: list[str], replicas: int) -> list[str]:
    """(c): ``replicas`` progress services behind the gateway; health route, then heartbeats."""
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        # The stack's own gateway environment; the upstreams other than progress are unused ports.
        config = StackConfig(var_dir=Path(tmp), postgres_url=with_database(url, "postgres"),
                             kafka_bootstrap="127.0.0.1:1", smtp_port=1, gateway_port=free_port(),
                             progress_replicas=replicas)
        names = config.instances_of("progress")
        async with progress_services(url, [config.port(name) for name in names], args) as procs:
            caddy = start_caddy(config.gateway_env(), Path(tmp) / "gateway.log")
            try:
                try:
                    await wait_ready(config.gateway_port, lambda: caddy.alive, "/health/progress", "the gateway")
                except SystemExit as exc:
                    raise SystemExit(f"{exc}:\n{caddy.log_tail()}") from None
                pids = {"gateway": caddy.popen.pid} | {name: proc.pid for name, proc in zip(names, procs, strict=True)}
                health_checks = health_requests(tokens, args.connections, "/health/progress")
                heartbeats = heartbeat_requests(tokens, args.connections)
                for warm_up in (heartbeats, health_checks):
                    await http_load(config.gateway_port, args.connections, WARMUP_S, warm_up)
                health = await measure(config.gateway_port, args.connections, args.duration, health_checks, pids)
                beats = await measure(config.gateway_port, args.connections, args.duration, heartbeats, pids)
            finally:
                await asyncio.to_thread(caddy.stop)

    def cpu(load: Load) -> str:
        shares = " + ".join(f"{load.cpu_share(name):.0f}" for name in names)
        return (f"    CPU, % of a core: gateway {load.cpu_share('gateway'):.0f}, replicas {shares}, "
                f"load client {load.cpu_share('client'):.0f}")

    return [
        f"(c) gateway, {replicas} progress replica{'s' if replicas > 1 else ''}:",
        health.line("    GET /health/progress:", "requests/s  "),
        cpu(health),
        beats.line("    POST /api/progress:", "heartbeats/s"),
        cpu(beats),
        f"    ratio heartbeats / health:      {beats.rate / health.rate if health.count else float('nan'):10.2f}",
    ]


def replica_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of replica counts: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"replica counts must be 1 or more: {text!r}")
    return counts


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--duration", type=int, default=8, help="seconds for each measurement")
    parser.add_argument("--users", type=int, default=400, help="learners sending heartbeats")
    parser.add_argument("--flush-interval", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=1,
                        help="uvicorn worker processes of the service, and of each replica (default one)")
    parser.add_argument("--gateway", action="store_true", help="also run (c): replicas behind the gateway")
    parser.add_argument("--replicas", type=replica_counts, default=[1, 2],
                        help="progress replica counts for --gateway, comma-separated (default 1,2)")
    parser.add_argument("--database-url", default=f"postgresql://postgres@127.0.0.1:5432/bench_progress_{os.getpid()}")
    args = parser.parse_args()
    if args.users < args.connections:
        parser.error("--users must be at least --connections (each connection sends for its own learners)")

    url = args.database_url
    tokens = learner_tokens(args.users)
    gateway_lines: list[str] = []
    try:
        await prepare_database(url, args.users)
        raw_tps = await run_pgbench(url, args.connections, args.duration, args.users)
        load, commits = await direct_run(url, args, tokens)
        conn = await asyncpg.connect(url)
        rows = await conn.fetchval("SELECT count(*) FROM lesson_progress WHERE user_id LIKE 'u%'")
        await conn.close()
        if args.gateway:
            for replicas in args.replicas:
                gateway_lines += await gateway_run(url, args, tokens, replicas)
    finally:
        admin = await asyncpg.connect(with_database(url, "postgres"))
        await admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
        await admin.close()

    lines = [
        f"connections: {args.connections}, duration: {args.duration}s each, learners: {args.users}, "
        f"service workers: {args.workers}, "
        f"lessons: {LESSONS}, flush interval: {args.flush_interval}s",
        f"(a) pgbench, single-row upsert:      {raw_tps:10.0f} upserts/s",
        load.line("(b) service, POST /api/progress:", "heartbeats/s"),
        f"ratio service / raw upsert:          {load.rate / raw_tps:10.2f}",
        f"service CPU: {load.cpu_share('service'):.0f}% of a core, "
        f"{load.cpu['service'] / max(load.count, 1) * 1e6:.0f} us per heartbeat; load client CPU: "
        f"{load.cpu_share('client'):.0f}% of a core",
        f"database transactions during (b): {commits} ({commits / max(load.count, 1) * 1000:.1f} per 1000 heartbeats; "
        f"the service's writes are the periodic flushes); learner-lesson rows stored: {rows}",
        *gateway_lines,
    ]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
