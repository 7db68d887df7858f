"""Certificate throughput: raw render + sign rate vs end-to-end workers.

    python bench/certificates.py [--n 120]

0. signing alone: the Open Badges credential built and signed (eddsa-rdfc-2022) in a loop,
   beside rendering alone, per certificate (goal: signing under a quarter of a render);
1. raw: the default template rendered and its credential signed in a plain loop in this
   process (fonts warm), as a render process does;
2. end to end: N course-completed events through Tansu into 1, then 2, worker processes
   (uvicorn, one render process each and the default consumers, one more than render processes),
   timed from the first event sent to the last certificate stored (with its outbox row) in PostgreSQL;
   the workers confirm each completion with a stand-in of progress's internal API served here.
Prints each rate and the ratios (goal: 1 worker >= 0.8 x raw; 2 workers >= 1.8 x 1 worker
where the machine has the cores for it).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import uvicorn
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Response

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lessonstream import infra  # noqa: E402
from services.certificates import credentials  # noqa: E402
from services.certificates.rendering import RenderJob, render_and_sign, render_certificate  # noqa: E402
from shared.db import with_database  # noqa: E402
from shared.events import CourseCompleted, Topic  # noqa: E402


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


KEY = credentials.generate_key("bench")
DID = credentials.did_web("http://127.0.0.1:8080")


def job(i: int) -> RenderJob:
    code = f"{i:024d}"
    now = datetime.now(UTC)
    return RenderJob(
        certificate_id=f"CERT-2025-{i:03d}", verification_code=code,
        verification_url=f"http://127.0.0.1:8080/certificates/verify/{code}",
        student_name=f"Learner {i}", course_title="Benchmark Course",
        issued_at=now, completed_at=now,
        signatory_name="Lessonstream", signatory_title="On behalf of the platform", platform_name="Lessonstream",
        credential_url=f"http://127.0.0.1:8080/certificates/{code}/credential",
        credential=credentials.build_credential(
            credential_id=f"urn:uuid:{uuid.uuid4()}", issuer_id=DID, issuer_name="Lessonstream",
            issuer_url="http://127.0.0.1:8080", valid_from=now, valid_until=None,
            recipient_email=f"learner-{i}@example.com", salt=uuid.uuid4().hex,
            achievement_id="http://127.0.0.1:8080/achievements/course-1", achievement_name="Benchmark Course",
            achievement_description="Awarded for completing Benchmark Course.",
            criteria_narrative="Completed every required lesson.",
            status=credentials.status_entry("http://127.0.0.1:8080/certificates/status/1", i),
        ),
        signing_key=KEY.to_setting(), verification_method=credentials.verification_method_id(DID, KEY),
    )


def per_item_ms(work: object, n: int) -> float:
    assert callable(work)
    for i in range(5):
        work(job(i))  # fonts, templates, subsetter, JSON-LD contexts warm
    jobs = [job(i) for i in range(n)]
    started = time.perf_counter()
    for item in jobs:
        work(item)
    return (time.perf_counter() - started) / n * 1000


def sign_only(item: RenderJob) -> None:
    assert item.credential is not None
    credentials.sign(item.credential, KEY, item.verification_method, datetime.now(UTC))


def raw_rate(n: int) -> float:
    """Render and sign, as one render process does, in a plain loop."""
    return 1000 / per_item_ms(render_and_sign, n)


def start_worker(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "shared.serve", "--factory", "services.certificates.worker:build_app",
         "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def progress_stand_in(events: dict[str, bytes]) -> FastAPI:
    """Progress's confirmation API for the benchmark's completions: workers confirm each one."""
    app = FastAPI()

    @app.get("/internal/completions/{event_id}")
    async def completion(event_id: str) -> Response:
        body = events.get(event_id)
        return Response(body, media_type="application/json") if body else Response(status_code=404)

    return app


async def end_to_end(bootstrap: str, pg_url: str, workers: int, n: int) -> float:
    tag = uuid.uuid4().hex[:6]
    prefix = f"bench{tag}."
    database_url = with_database(pg_url, f"bench_certs_{tag}")
    completions = [
        CourseCompleted(
            user_id=f"learner-{i}", course_id=1, completed_at=datetime.now(UTC), user_name=f"Learner {i}",
            user_email=f"learner-{i}@example.com", course_title="Benchmark Course", certificate_enabled=True,
        )
        for i in range(n)
    ]
    progress_port = infra.free_port()
    progress = uvicorn.Server(uvicorn.Config(
        progress_stand_in({str(e.event_id): e.model_dump_json().encode() for e in completions}),
        host="127.0.0.1", port=progress_port, log_level="warning",
    ))
    progress_task = asyncio.create_task(progress.serve())
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "DATABASE_URL": database_url, "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC_PREFIX": prefix, "KAFKA_SESSION_TIMEOUT_MS": "6000", "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
        "CERTIFICATE_RENDER_PROCESSES": "1", "LOG_LEVEL": "WARNING",
        "PROGRESS_INTERNAL_URL": f"http://127.0.0.1:{progress_port}",
        "CERTIFICATE_SIGNING_KEYS": KEY.to_setting(),
    }
    ports = [infra.free_port() for _ in range(workers)]
    procs = [start_worker(env, p) for p in ports]
    try:
        async with httpx.AsyncClient(timeout=3) as client:
            for port in ports:
                deadline = time.monotonic() + 120
                while True:
                    try:
                        if (await client.get(f"http://127.0.0.1:{port}/ready")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"worker on {port} not ready")
                    await asyncio.sleep(0.5)
        await asyncio.sleep(8)  # let the group settle: a rebalance mid-run would be measured too
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=5)
        await producer.start()
        started = time.perf_counter()
        try:
            topic = prefix + Topic.COURSE_COMPLETED.value
            futures = []
            for event in completions:
                futures.append(await producer.send(topic, event.model_dump_json().encode(), key=event.key().encode()))
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        while True:
            if await pool.fetchval("SELECT count(*) FROM certificates") >= n:
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        await pool.close()
        return n / elapsed
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)
        progress.should_exit = True
        await progress_task
        admin = await asyncpg.connect(with_database(pg_url, "postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "bench_certs_{tag}" WITH (FORCE)')
        finally:
            await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    # Large enough that worker start-up and the first renders do not dominate a 2-worker run.
    parser.add_argument("--n", type=int, default=300, help="certificates per measurement")
    args = parser.parse_args()
    out(f"cores available: {len(os.sched_getaffinity(0))}")
    render_ms = per_item_ms(render_certificate, min(args.n, 60))
    sign_ms = per_item_ms(sign_only, min(args.n, 200))
    out(f"render one PDF:                        {render_ms:7.1f} ms")
    out(f"build and sign one credential:         {sign_ms:7.1f} ms  ({sign_ms / render_ms:.2f} of a render; "
        f"goal < 0.25)")
    raw = raw_rate(args.n)
    out(f"raw render + sign, plain loop:         {raw:7.1f} certificates/s")
    # What this machine gives two CPU-bound processes at once: the ceiling for 2 workers.
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        raw_pair = sum(pool.map(raw_rate, [args.n, args.n]))
    out(f"raw, two plain loops in parallel:     {raw_pair:7.1f} certificates/s ({raw_pair / raw:.2f} x one)")
    with tempfile.TemporaryDirectory() as tmp:
        pg = infra.choose_postgres(os.environ.get("DATABASE_URL"), Path(tmp) / "pg", probe_local=True, keep=False)
        port = infra.free_port()
        tansu = infra.start_tansu(port, Path(tmp) / "tansu.log")
        try:
            one = asyncio.run(end_to_end(f"127.0.0.1:{port}", pg.url, 1, args.n))
            out(f"end to end, 1 worker process:         {one:7.1f} certificates/s")
            two = asyncio.run(end_to_end(f"127.0.0.1:{port}", pg.url, 2, args.n))
            out(f"end to end, 2 worker processes:       {two:7.1f} certificates/s")
        finally:
            tansu.stop()
            pg.stop()
    out(f"1 worker / raw:      {one / raw:5.2f}  (goal >= 0.8)")
    out(f"2 workers / 1 worker: {two / one:5.2f}  (goal >= 1.8 with 2 free cores; "
        f"this machine's own ceiling: {raw_pair / raw:.2f})")


if __name__ == "__main__":
    main()
