"""The outbox's own guarantees, on real brokers and PostgreSQL.

- A broker that lost what was published (the in-memory broker restarted) gets every
  retained row again, with no service restart; a broker that kept them (a service
  restarted against the same broker) gets nothing twice.
- Rows of one key are committed, and so published, in the order their transactions
  committed, whatever order their ids were drawn in.
- Published rows past the retention window are pruned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from lessonstream import infra
from shared import outbox
from shared.events import LessonCompleted, Topic
from shared.service import Runtime, ServiceSpec
from shared.settings import ServiceSettings
from tests.helpers import TestEnv, TopicReader, eventually

FIXTURES = Path(__file__).parent / "fixtures"


def completion(user_id: str, lesson_id: int) -> LessonCompleted:
    return LessonCompleted(
        user_id=user_id, course_id=1, lesson_id=lesson_id, completed_at=datetime.now(UTC),
        progress_percentage=10, completed_lessons=1, total_lessons=10,
    )


def sender(test_env: TestEnv, bootstrap: str | None = None, **overrides: Any) -> Runtime[Any]:
    settings: ServiceSettings = test_env.settings(database="sender", service_name="sender", **overrides)
    if bootstrap is not None:
        settings = settings.model_copy(update={"kafka_bootstrap_servers": bootstrap})
    return Runtime(ServiceSpec(name="sender", settings=settings, migrations=FIXTURES / "sender_migrations"))


async def write(runtime: Runtime[Any], events: list[LessonCompleted]) -> None:
    async with runtime.pool.acquire() as conn, conn.transaction():
        for event in events:
            await outbox.add(conn, event)


async def pending(runtime: Runtime[Any]) -> int:
    count: int = await runtime.pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
    return count


def event_ids(messages: list[object]) -> list[str]:
    ids = []
    for msg in messages:
        value = msg.value  # type: ignore[attr-defined]
        ids.append(LessonCompleted.model_validate_json(value).event_id.hex)
    return ids


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[tuple[int, list[infra.Process]]]:
    """A broker of this test's own, on a port that can be given to a new broker later."""
    port = infra.free_port()
    procs = [infra.start_tansu(port, tmp_path / "tansu-1.log")]
    yield port, procs
    for proc in procs:
        proc.stop()


async def test_a_restarted_broker_gets_every_retained_event_again_without_a_service_restart(
    test_env: TestEnv, own_broker: tuple[int, list[infra.Process]], tmp_path: Path
) -> None:
    port, procs = own_broker
    bootstrap = f"127.0.0.1:{port}"
    topic = test_env.topic_prefix + Topic.LESSON_COMPLETED.value
    runtime = sender(test_env, bootstrap)
    await runtime.start()
    try:
        before = [completion(f"u{i}", i) for i in range(20)]
        await write(runtime, before)
        await eventually(lambda: _zero(pending(runtime)), what="first broker acknowledged every row")
        async with TopicReader(bootstrap, topic) as reader:
            await eventually(lambda: _at_least(reader.messages, 20), what="events on the first broker")

        # The broker loses everything: a new in-memory broker on the same address.
        procs[0].stop()
        procs.append(infra.start_tansu(port, tmp_path / "tansu-2.log"))
        after = [completion(f"v{i}", i) for i in range(5)]
        await write(runtime, after)

        async with TopicReader(bootstrap, topic) as reader:
            await eventually(lambda: _at_least(reader.messages, 25), timeout=45, what="events on the new broker")
            got = event_ids(reader.messages)
        expected = [e.event_id.hex for e in before + after]
        assert sorted(set(got)) == sorted(expected), "every retained and new event reached the new broker"
        assert runtime.relay.republished == 20
        # Each key's events stay in id order on the new broker, the re-published first.
        assert got.index(before[0].event_id.hex) < got.index(before[-1].event_id.hex)
    finally:
        await runtime.stop()


async def test_a_service_restart_against_a_broker_that_kept_its_topics_publishes_nothing_twice(
    test_env: TestEnv, own_broker: tuple[int, list[infra.Process]]
) -> None:
    port, _ = own_broker
    bootstrap = f"127.0.0.1:{port}"
    topic = test_env.topic_prefix + Topic.LESSON_COMPLETED.value
    first = sender(test_env, bootstrap)
    await first.start()
    try:
        await write(first, [completion(f"u{i}", i) for i in range(10)])
        await eventually(lambda: _zero(pending(first)), what="rows published")
    finally:
        await first.stop()

    second = sender(test_env, bootstrap)
    await second.start()
    try:
        marker_seen = await eventually(lambda: _relay_checked(second), what="the relay looked at the broker")
        assert marker_seen
        await write(second, [completion("late", 99)])
        await eventually(lambda: _zero(pending(second)), what="the new row published")
        async with TopicReader(bootstrap, topic) as reader:
            await eventually(lambda: _at_least(reader.messages, 11), what="eleven events")
            # Give a wrongly re-published batch every chance to show up: read until the
            # relay is idle again, then count.
            await eventually(lambda: _zero(pending(second)), what="relay idle")
            ids = event_ids(reader.messages)
        assert second.relay.republished == 0
        assert len(ids) == len(set(ids)) == 11
        published_twice = await second.pool.fetchval("SELECT count(*) FROM outbox WHERE publish_count > 1")
        assert published_twice == 0
    finally:
        await second.stop()


async def test_events_of_one_key_are_published_in_commit_order(test_env: TestEnv) -> None:
    topic = test_env.topic_prefix + Topic.LESSON_COMPLETED.value
    runtime = sender(test_env)
    await runtime.start()
    try:
        first, second, other = completion("ada", 1), completion("ada", 2), completion("bob", 3)
        assert first.key() == second.key() != other.key()
        async with runtime.pool.acquire() as conn_a, runtime.pool.acquire() as conn_b:
            tx_a = conn_a.transaction()
            await tx_a.start()
            await outbox.add(conn_a, first)  # holds ada's key until tx_a ends

            async def write_second() -> None:
                async with conn_b.transaction():
                    await outbox.add(conn_b, second)

            task = asyncio.create_task(write_second())
            # The second writer waits on the key lock (visible in pg_stat_activity) ...
            await eventually(lambda: _waiting_on_lock(runtime.pool, conn_b), what="second writer waiting")
            # ... while a writer of another key is not held up at all.
            await write(runtime, [other])
            assert not task.done()
            await tx_a.commit()
            await asyncio.wait_for(task, 10)
        ids = await runtime.pool.fetch("SELECT event_id FROM outbox ORDER BY id")
        order = [r["event_id"] for r in ids]
        assert order.index(first.event_id) < order.index(second.event_id)
        async with TopicReader(test_env.kafka_bootstrap, topic) as reader:
            await eventually(lambda: _at_least(reader.messages, 3), what="three events")
            got = event_ids(reader.messages)
        assert got.index(first.event_id.hex) < got.index(second.event_id.hex)
    finally:
        await runtime.stop()


async def test_published_rows_past_the_retention_window_are_pruned(test_env: TestEnv) -> None:
    runtime = sender(test_env, outbox_retention_hours=1)
    await runtime.start()
    try:
        await write(runtime, [completion(f"u{i}", i) for i in range(3)])
        await eventually(lambda: _zero(pending(runtime)), what="published")
        await runtime.pool.execute(
            "UPDATE outbox SET published_at = now() - interval '2 hours' WHERE id = (SELECT min(id) FROM outbox)"
        )
        await write(runtime, [completion("fresh", 9)])
        await eventually(lambda: _zero(pending(runtime)), what="published")
        runtime.relay._pruned_at = 0.0  # the next loop prunes instead of waiting a minute
        await write(runtime, [completion("wake", 10)])
        remaining = await eventually(lambda: _count_is(runtime.pool, 4), what="the old row pruned")
        assert remaining
    finally:
        await runtime.stop()


async def _zero(value: Awaitable[int]) -> bool:
    return await value == 0


async def _at_least(messages: list[object], n: int) -> bool:
    return len(messages) >= n


async def _relay_checked(runtime: Runtime[Any]) -> bool:
    return runtime.relay._checked_generation >= 0


async def _waiting_on_lock(pool: asyncpg.Pool, conn: object) -> bool:
    pid = conn.get_server_pid()  # type: ignore[attr-defined]
    waiting = await pool.fetchval(
        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
    )
    return bool(waiting)


async def _count_is(pool: asyncpg.Pool, n: int) -> bool:
    return bool(await pool.fetchval("SELECT count(*) FROM outbox") == n)
