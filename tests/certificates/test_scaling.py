"""Three worker processes (uvicorn, as deployed) share the completions; one is SIGKILLed
mid-run. Every learner still gets exactly one certificate and one certificate-issued event."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from lessonstream import infra
from shared.events import CertificateIssued, CourseCompleted, Topic
from tests.certificates.support import ProgressStandIn, completion
from tests.helpers import TestEnv, TopicReader, eventually, served

ROOT = Path(__file__).resolve().parents[2]
# Enough for every worker to take part before one is killed, and to keep rendering after.
LEARNERS = 60


def start_worker(
    env: dict[str, str], port: int, log: Path, factory: str = "services.certificates.worker:build_app"
) -> subprocess.Popen[bytes]:
    """A worker process as deployed: uvicorn with the worker's factory (or a test's own)."""
    return subprocess.Popen(
        [sys.executable, "-m", "shared.serve", "--factory", factory,
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )


async def ready(port: int) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            return (await client.get(f"http://127.0.0.1:{port}/ready")).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
async def test_three_workers_and_a_killed_one_issue_exactly_one_certificate_each(
    test_env: TestEnv, tmp_path: Path
) -> None:
    database_url = test_env.database_url("scale")
    # Progress confirms every completion before a worker issues a certificate for it.
    progress = ProgressStandIn(token="test-internal-token")
    completions = [completion(f"learner-{i}", 30, name=f"Learner {i}") for i in range(LEARNERS)]
    progress.published.update((e.event_id, e) for e in completions)
    async with served(progress.app()) as progress_url:
        await _run(test_env, tmp_path, database_url, progress_url, progress.token, completions)


async def _run(test_env: TestEnv, tmp_path: Path, database_url: str, progress_url: str, token: str,
               completions: list[CourseCompleted]) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LESSONSTREAM_ENV": "test",
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": test_env.kafka_bootstrap,
        "KAFKA_TOPIC_PREFIX": test_env.topic_prefix,
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
        "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
        "CERTIFICATE_RENDER_PROCESSES": "1",
        "CERTIFICATE_WORKER_CONSUMERS": "2",
        "DB_POOL_MIN": "1",
        "DB_POOL_MAX": "4",
        "PROGRESS_INTERNAL_URL": progress_url,
        "INTERNAL_TOKEN": token,
    }
    ports = [infra.free_port() for _ in range(3)]
    workers = [start_worker(env, port, tmp_path / f"worker-{i}.log") for i, port in enumerate(ports)]
    pool: asyncpg.Pool | None = None
    try:
        for port in ports:
            await eventually(functools.partial(ready, port), timeout=90, interval=0.5, what=f"worker on {port} ready")
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        issued_topic = f"{test_env.topic_prefix}{Topic.CERTIFICATE_ISSUED.value}"
        async with TopicReader(test_env.kafka_bootstrap, issued_topic) as reader:
            producer = AIOKafkaProducer(bootstrap_servers=test_env.kafka_bootstrap, acks="all",
                                        enable_idempotence=False, linger_ms=5)
            await producer.start()
            try:
                topic = f"{test_env.topic_prefix}{Topic.COURSE_COMPLETED.value}"
                sends = [await producer.send(topic, e.model_dump_json().encode(), key=e.key().encode())
                         for e in completions]
                await asyncio.gather(*sends)
            finally:
                await producer.stop()

            async def count() -> int:
                assert pool is not None
                return int(await pool.fetchval("SELECT count(*) FROM certificates"))

            async def renderers() -> set[str]:
                assert pool is not None
                rows = await pool.fetch("SELECT DISTINCT rendered_by FROM certificate_files")
                return {r["rendered_by"] for r in rows}

            # Every worker takes part before one of them is killed mid-run.
            await eventually(lambda: _all_three(renderers), timeout=120, interval=0.2, what="all workers rendering")
            done_before_kill = await count()
            assert done_before_kill < LEARNERS, "the run finished before a worker could be killed"
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait(10)

            await eventually(lambda: _reached(count, LEARNERS), timeout=240, interval=0.5,
                             what=f"{LEARNERS} certificates")

            async def all_events() -> bool:
                return len({m.value for m in reader.messages}) >= LEARNERS

            await eventually(all_events, timeout=60, what=f"{LEARNERS} certificate-issued events")

            assert await count() == LEARNERS
            numbers = await pool.fetch("SELECT certificate_id FROM certificates")
            assert len({r["certificate_id"] for r in numbers}) == LEARNERS
            sequences = sorted(int(r["certificate_id"].rsplit("-", 1)[1]) for r in numbers)
            assert sequences == list(range(1, LEARNERS + 1))  # unique ids, no gaps
            assert await pool.fetchval("SELECT count(*) FROM certificate_files") == LEARNERS
            assert len(await renderers()) == 3

            events = [CertificateIssued.model_validate_json(m.value) for m in reader.messages]
            # A killed process may have published an outbox row without deleting it, so the
            # same event can appear twice on the topic; what counts is one event per learner.
            by_learner: dict[str, set[object]] = {}
            for e in events:
                by_learner.setdefault(e.user_id, set()).add(e.event_id)
            assert len(by_learner) == LEARNERS
            assert all(len(ids) == 1 for ids in by_learner.values())
    finally:
        if pool is not None:
            await pool.close()
        for w in workers:
            if w.poll() is None:
                w.terminate()
        for w in workers:
            try:
                w.wait(15)
            except subprocess.TimeoutExpired:
                w.kill()


async def _all_three(renderers: object) -> bool:
    return len(await renderers()) >= 3  # type: ignore[operator]


async def _reached(count: object, n: int) -> bool:
    return bool(await count() >= n)  # type: ignore[operator]
