"""A killed worker's reservations: Kafka hands its uncommitted completions to another worker
after the session timeout, and the API hands the work over once the lease has run out. Either
way the learner gets exactly one certificate, with the identity reserved first."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lessonstream import infra
from services.certificates import domain, store
from tests.certificates.support import certificate_stack, completion
from tests.certificates.test_scaling import ready, start_worker
from tests.certificates.test_service import wait_for_certificate
from tests.helpers import TestEnv, eventually

ROOT = Path(__file__).resolve().parents[2]


async def test_a_lease_that_ran_out_is_handed_over_again_and_keeps_its_identity(test_env: TestEnv) -> None:
    async with certificate_stack(test_env) as stack:
        event = completion("lease-1", name="Lease Holder")
        stack.progress.completions[("lease-1", 10)] = event
        # A worker reserved the identity and died mid-render: no renewals, no certificate.
        reserved = await store.reserve_identity(stack.db, "lease-1", 10, datetime.now(UTC),
                                                domain.new_verification_code, domain.new_status_index,
                                                holder="dead-worker", lease_s=3)
        r = await stack.api.get("/api/courses/10/certificate", headers=stack.token("lease-1"))
        assert r.status_code == 202  # the lease is live: a worker is on it, nothing handed over
        assert stack.progress.calls == 0
        assert await stack.db.fetchval("SELECT count(*) FROM certificate_requests") == 0

        async def expired() -> bool:
            return bool(await stack.db.fetchval("SELECT lease_until < now() FROM certificate_identities"))

        await eventually(expired, timeout=10, what="the lease ran out")
        r = await stack.api.get("/api/courses/10/certificate", headers=stack.token("lease-1"))
        assert r.status_code == 202 and stack.progress.calls == 1  # handed over again
        data = await wait_for_certificate(stack, "lease-1")
        assert (data["certificate_id"], data["verification_code"]) == (reserved.certificate_id,
                                                                        reserved.verification_code)
        holder = await stack.db.fetchval("SELECT leased_by FROM certificate_identities")
        assert holder != "dead-worker"  # a live worker took the reservation over
        assert await stack.certificate_count() == 1


SESSION_TIMEOUT_S = 6
LEASE_S = 6
LEARNERS = 8
# What one render may take on a busy test machine: the survivor still has to render the
# work it took over, one certificate at a time.
RENDER_SLACK_S = 5


@pytest.mark.slow
async def test_a_worker_killed_mid_render_leaves_no_learner_waiting_past_session_timeout_plus_lease(
    test_env: TestEnv, tmp_path: Path
) -> None:
    async with certificate_stack(test_env, workers=1) as stack:  # the survivor, in this process
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "LESSONSTREAM_ENV": "test",
            "DATABASE_URL": stack.settings.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": test_env.kafka_bootstrap,
            "KAFKA_TOPIC_PREFIX": test_env.topic_prefix,
            "KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_S * 1000),
            "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
            "PROGRESS_INTERNAL_URL": str(stack.settings.progress_internal_url),
            "INTERNAL_TOKEN": stack.progress.token,
            "CERTIFICATE_LEASE_S": str(LEASE_S),
            "CERTIFICATE_RENDER_PROCESSES": "1",
            "CERTIFICATE_WORKER_CONSUMERS": "2",
            "DB_POOL_MIN": "1",
            "DB_POOL_MAX": "3",
            "SLOW_RENDER_S": "600",
        }
        port = infra.free_port()
        slow = start_worker(env, port, tmp_path / "slow-worker.log", "tests.certificates.slow_worker:build_app")
        try:
            await eventually(functools.partial(ready, port), timeout=90, interval=0.5, what="slow worker ready")
            await asyncio.sleep(SESSION_TIMEOUT_S)  # let the group settle with both workers in it
            for i in range(LEARNERS):
                await stack.publish_completion(completion(f"k-{i}", 40, name=f"Learner {i}"))

            async def held_by_the_slow_worker() -> list[tuple[str, str]]:
                rows = await stack.db.fetch(
                    "SELECT i.user_id, i.certificate_id FROM certificate_identities i "
                    "WHERE i.leased_by LIKE $1 AND i.lease_until > now() "
                    "AND NOT EXISTS (SELECT 1 FROM certificates c WHERE c.certificate_id = i.certificate_id)",
                    f"%:{slow.pid}",
                )
                return [(r["user_id"], r["certificate_id"]) for r in rows]

            stuck = await eventually(held_by_the_slow_worker, timeout=60, what="the slow worker mid-render")
            slow.send_signal(signal.SIGKILL)
            slow.wait(10)
            killed_at = time.monotonic()
            left = LEARNERS - await stack.certificate_count(40)
            bound = SESSION_TIMEOUT_S + LEASE_S + RENDER_SLACK_S * left

            async def all_issued() -> bool:
                return await stack.certificate_count(40) == LEARNERS

            await eventually(all_issued, timeout=bound + 30, interval=0.2, what="every learner's certificate")
            took = time.monotonic() - killed_at
            assert took < bound, (took, left)

            rows = await stack.db.fetch("SELECT user_id, certificate_id FROM certificates WHERE course_id = 40")
            issued = {r["user_id"]: r["certificate_id"] for r in rows}
            assert len(issued) == LEARNERS and len(set(issued.values())) == LEARNERS  # no duplicate number
            for user_id, certificate_id in stuck:
                assert issued[user_id] == certificate_id  # taken over with the reserved identity
            assert await stack.db.fetchval("SELECT count(*) FROM certificate_identities") == LEARNERS
            assert await stack.db.fetchval("SELECT count(*) FROM certificate_files") == LEARNERS
            numbers = sorted(int(c.rsplit("-", 1)[1]) for c in issued.values())
            assert numbers == list(range(1, LEARNERS + 1))  # no gaps either
        finally:
            if slow.poll() is None:
                slow.kill()
                slow.wait(10)
