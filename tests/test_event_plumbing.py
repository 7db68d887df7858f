"""The event plumbing end to end, over the real broker and PostgreSQL.

A "sender" service writes a state change and its event through the outbox in one
transaction; a "receiver" service applies each event once through its inbox. Both are
real ``Runtime`` objects (migrations, pool, relay, FastStream subscribers).
"""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from shared import outbox
from shared.errors import is_database_unavailable
from shared.events import DeadLetter, LessonCompleted, Topic
from shared.inbox import EventContext, Subscription
from shared.service import Runtime, ServiceSpec
from tests.helpers import TestEnv, TopicReader, eventually, produce_raw

FIXTURES = Path(__file__).parent / "fixtures"


async def record_completion(pool: asyncpg.Pool, user_id: str, lesson_id: int) -> LessonCompleted:
    """The sender's write: state change and event, one transaction."""
    event = LessonCompleted(
        user_id=user_id, course_id=1, lesson_id=lesson_id, completed_at=datetime.now(UTC),
        progress_percentage=10, completed_lessons=1, total_lessons=10,
    )
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO completions VALUES ($1, $2)", user_id, lesson_id)
        await outbox.add(conn, event)
    return event


class Receiver:
    def __init__(self, fail_lessons: set[int] | None = None) -> None:
        self.fail_lessons = fail_lessons or set()
        self.calls = 0

    async def on_lesson_completed(self, event: LessonCompleted, ctx: EventContext) -> None:
        self.calls += 1
        if event.lesson_id in self.fail_lessons:
            raise ValueError(f"lesson {event.lesson_id} cannot be applied")
        async with ctx.transaction() as conn:
            await conn.execute(
                "INSERT INTO applied VALUES ($1, $2) ON CONFLICT (user_id, lesson_id) "
                "DO UPDATE SET times = applied.times + 1",
                event.user_id, event.lesson_id,
            )


async def start_pair(test_env: TestEnv, receiver: Receiver) -> tuple[Runtime[Any], Runtime[Any]]:
    sender: Runtime[None] = Runtime(
        ServiceSpec(
            name="sender",
            settings=test_env.settings(database="sender", service_name="sender"),
            migrations=FIXTURES / "sender_migrations",
        )
    )
    consumer: Runtime[None] = Runtime(
        ServiceSpec(
            name="receiver",
            settings=test_env.settings(database="receiver", service_name="receiver", consumer_max_attempts=3),
            migrations=FIXTURES / "receiver_migrations",
            subscriptions=[
                Subscription(Topic.LESSON_COMPLETED, LessonCompleted, receiver.on_lesson_completed, "receiver")
            ],
        )
    )
    await sender.start()
    await consumer.start()
    await eventually(lambda: _ready(consumer), what="receiver subscribed")
    return sender, consumer


async def _ready(runtime: Runtime[Any]) -> bool:
    return runtime.broker_started


async def applied_rows(runtime: Runtime[Any]) -> dict[tuple[str, int], int]:
    rows = await runtime.pool.fetch("SELECT user_id, lesson_id, times FROM applied")
    return {(r["user_id"], r["lesson_id"]): r["times"] for r in rows}


async def test_event_written_with_state_is_applied_once_by_another_service(test_env: TestEnv) -> None:
    receiver = Receiver()
    sender, consumer = await start_pair(test_env, receiver)
    try:
        events = [await record_completion(sender.pool, f"u{i}", i) for i in range(20)]

        async def all_applied() -> bool:
            return len(await applied_rows(consumer)) == 20

        await eventually(all_applied, what="20 events applied")
        assert set((await applied_rows(consumer)).values()) == {1}
        assert await sender.pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0

        # (a) the same message delivered twice more, byte for byte: nothing changes.
        topic = test_env.topic_prefix + Topic.LESSON_COMPLETED.value
        for _ in range(2):
            await produce_raw(
                test_env.kafka_bootstrap, topic, events[3].model_dump_json().encode(), events[3].key().encode()
            )
        await record_completion(sender.pool, "after-duplicates", 99)

        async def marker_applied() -> bool:
            return ("after-duplicates", 99) in await applied_rows(consumer)

        await eventually(marker_applied, what="event after the duplicates applied")
        rows = await applied_rows(consumer)
        assert rows[("u3", 3)] == 1, "a redelivered event must change nothing"
        inbox = await consumer.pool.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1", events[3].event_id)
        assert inbox == 1
        assert await consumer.pool.fetchval("SELECT count(*) FROM inbox") == 21
    finally:
        await consumer.stop()
        await sender.stop()


async def test_writes_continue_while_broker_is_paused_and_nothing_is_lost(test_env: TestEnv) -> None:
    if test_env.tansu is None:
        pytest.skip("needs the test run's own broker process to pause")
    receiver = Receiver()
    sender, consumer = await start_pair(test_env, receiver)
    try:
        await record_completion(sender.pool, "before", 0)
        await eventually(lambda: _has(consumer, "before", 0), what="first event applied")

        test_env.tansu.pause()  # SIGSTOP: the broker neither answers nor drops connections
        try:
            for i in range(1, 31):  # writes keep succeeding: they only touch PostgreSQL
                await record_completion(sender.pool, "during", i)
            pending = await sender.pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            assert pending >= 1, "with the broker stopped, events wait in the outbox"
        finally:
            test_env.tansu.resume()

        async def all_applied() -> bool:
            rows = await applied_rows(consumer)
            return sum(1 for (user, _) in rows if user == "during") == 30

        await eventually(all_applied, timeout=90, what="all 30 events written during the outage")
        rows = await applied_rows(consumer)
        assert all(times == 1 for times in rows.values())
        assert await sender.pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
    finally:
        await consumer.stop()
        await sender.stop()


async def _has(runtime: Runtime[Any], user: str, lesson: int) -> bool:
    return (user, lesson) in await applied_rows(runtime)


async def test_bad_messages_go_to_the_dead_letter_topic_and_consumption_goes_on(test_env: TestEnv) -> None:
    receiver = Receiver(fail_lessons={13})
    sender, consumer = await start_pair(test_env, receiver)
    dlq_topic = test_env.topic_prefix + Topic.DEAD_LETTER.value
    topic = test_env.topic_prefix + Topic.LESSON_COMPLETED.value
    try:
        async with TopicReader(test_env.kafka_bootstrap, dlq_topic) as dead:
            # (c) malformed: not JSON at all, and JSON that is not a lesson-completed event.
            await produce_raw(test_env.kafka_bootstrap, topic, b"\x00not json{", b"bad:1")
            await produce_raw(test_env.kafka_bootstrap, topic, orjson.dumps({"type": "x"}), b"bad:1")
            # A key no PostgreSQL text column can store: the dead letter is still written.
            await produce_raw(test_env.kafka_bootstrap, topic, b"{", b"nul\x00key")
            # A well-formed event whose handler keeps failing.
            await record_completion(sender.pool, "poison", 13)
            # Good messages after all of them.
            for i in range(5):
                await record_completion(sender.pool, "good", i)

            async def good_applied() -> bool:
                rows = await applied_rows(consumer)
                return sum(1 for (u, _) in rows if u == "good") == 5

            await eventually(good_applied, what="good events after the bad ones")

            async def four_dead() -> bool:
                return len(dead.messages) >= 4

            await eventually(four_dead, what="four dead letters")
            letters = [DeadLetter.model_validate_json(m.value) for m in dead.messages]
            assert {letter.source_topic for letter in letters} == {"lesson-completed"}
            assert any("invalid event" in letter.error and "not json" in letter.value for letter in letters)
            assert any(letter.message_key == "nul\x00key" for letter in letters)
            poison = [letter for letter in letters if "cannot be applied" in letter.error]
            assert len(poison) == 1 and poison[0].attempts == 3
            assert receiver.calls >= 3 + 5
            assert ("poison", 13) not in await applied_rows(consumer)
    finally:
        await consumer.stop()
        await sender.stop()


async def test_state_change_and_event_roll_back_together(test_env: TestEnv) -> None:
    runtime: Runtime[None] = Runtime(
        ServiceSpec(
            name="sender", settings=test_env.settings(database="sender"), migrations=FIXTURES / "sender_migrations"
        )
    )
    await runtime.start()
    try:
        with pytest.raises(asyncpg.UniqueViolationError):
            async with runtime.pool.acquire() as conn, conn.transaction():
                event = LessonCompleted(
                    user_id="x", course_id=1, lesson_id=1, completed_at=datetime.now(UTC),
                    progress_percentage=1, completed_lessons=1, total_lessons=1,
                )
                await outbox.add(conn, event)
                await conn.execute("INSERT INTO completions VALUES ('x', 1)")
                await conn.execute("INSERT INTO completions VALUES ('x', 1)")  # fails: rolls back all
        assert await runtime.pool.fetchval("SELECT count(*) FROM completions") == 0
        assert await runtime.pool.fetchval("SELECT count(*) FROM outbox") == 0
    finally:
        await runtime.stop()


async def test_old_applied_markers_are_pruned_and_recent_ones_kept(test_env: TestEnv) -> None:
    from uuid import uuid4

    from shared.inbox import prune

    runtime: Runtime[None] = Runtime(
        ServiceSpec(
            name="receiver", settings=test_env.settings(database="receiver"),
            migrations=FIXTURES / "receiver_migrations",
        )
    )
    await runtime.start()
    try:
        await runtime.pool.executemany(
            "INSERT INTO inbox (consumer, event_id, topic, applied_at) VALUES ('c', $1, 't', now() - $2::interval)",
            [(uuid4(), timedelta(days=40)) for _ in range(25)] + [(uuid4(), timedelta(days=2)) for _ in range(5)],
        )
        assert await prune(runtime.pool, retention_days=30, batch=10) == 25
        assert await runtime.pool.fetchval("SELECT count(*) FROM inbox") == 5
    finally:
        await runtime.stop()


async def test_the_asyncapi_document_shows_consumed_and_published_event_schemas(test_env: TestEnv) -> None:
    from shared.service import create_app
    from tests.helpers import app_client

    receiver = Receiver()
    app = create_app(
        ServiceSpec(
            name="receiver",
            settings=test_env.settings(database="receiver"),
            migrations=FIXTURES / "receiver_migrations",
            subscriptions=[
                Subscription(Topic.LESSON_COMPLETED, LessonCompleted, receiver.on_lesson_completed, "receiver")
            ],
            publishes=[Topic.DEAD_LETTER],
        )
    )
    async with app_client(app) as client:
        document = (await client.get("/asyncapi.json")).json()
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses == {test_env.topic_prefix + "lesson-completed", test_env.topic_prefix + "dead-letter"}
    schemas = document["components"]["schemas"]
    assert "LessonCompleted" in schemas and "DeadLetter" in schemas
    assert {"event_id", "user_id", "course_id", "lesson_id"} <= set(schemas["LessonCompleted"]["properties"])


async def test_a_database_restart_delays_events_but_loses_and_repeats_none(
    test_env: TestEnv, tmp_path: Path
) -> None:
    """Both services' PostgreSQL stops mid-stream and comes back: every event is applied once."""
    from lessonstream import infra
    from shared.db import with_database

    server = infra.start_embedded_postgres(tmp_path / "pgdata", keep=False)

    def restart_database() -> None:
        before = server.embedded.get_pid()
        server.restart()
        assert server.embedded.get_pid() != before, "the database did not restart"

    def dead_lettered() -> float:
        from prometheus_client import REGISTRY

        labels = {"service": "receiver", "topic": "lesson-completed", "outcome": "dead_lettered"}
        return REGISTRY.get_sample_value("lessonstream_events_consumed_total", labels) or 0.0

    receiver = Receiver()
    sender: Runtime[None] = Runtime(ServiceSpec(
        name="sender", migrations=FIXTURES / "sender_migrations",
        settings=test_env.settings(database_url=with_database(server.url, "sender"), service_name="sender"),
    ))
    consumer: Runtime[None] = Runtime(ServiceSpec(
        name="receiver", migrations=FIXTURES / "receiver_migrations",
        settings=test_env.settings(database_url=with_database(server.url, "receiver"), service_name="receiver"),
        subscriptions=[Subscription(Topic.LESSON_COMPLETED, LessonCompleted, receiver.on_lesson_completed, "receiver")],
    ))
    await sender.start()
    await consumer.start()
    dead_before = dead_lettered()
    try:
        await eventually(lambda: _ready(consumer), what="receiver subscribed")
        for i in range(10):
            await record_completion(sender.pool, "before", i)
        # The events are on their way (some relayed, some consumed) when the database goes.
        await asyncio.to_thread(restart_database)

        async def write_after_restart(i: int) -> bool:
            try:
                await record_completion(sender.pool, "after", i)
            except Exception as exc:
                if is_database_unavailable(exc):
                    return False  # a pooled connection from before the restart: the pool replaces it
                raise
            return True

        for i in range(10):
            await eventually(functools.partial(write_after_restart, i), what=f"write {i} after the restart")

        async def all_applied() -> bool:
            try:
                return len(await applied_rows(consumer)) == 20
            except Exception as exc:
                if is_database_unavailable(exc):
                    return False
                raise

        await eventually(all_applied, timeout=90, what="all 20 events applied after the restart")
        assert set((await applied_rows(consumer)).values()) == {1}
        assert await sender.pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
        assert dead_lettered() == dead_before, "a database restart must not dead-letter good events"
    finally:
        await consumer.stop()
        await sender.stop()
        server.stop()


async def test_a_services_state_is_open_before_its_subscribers_start_and_closed_after_they_stop(
    test_env: TestEnv,
) -> None:
    """Events already waiting on the topic are delivered only once the state is open, and no
    event arrives while it is being closed."""
    seen: list[str] = []

    class State:
        def __init__(self) -> None:
            self.open = True

    holder: list[State] = []

    async def on_lesson_completed(event: LessonCompleted, ctx: EventContext) -> None:
        # The handler needs the state: it must be open whenever an event arrives.
        seen.append("event" if holder and holder[-1].open else "event-without-state")
        async with ctx.transaction() as conn:
            await conn.execute("INSERT INTO applied VALUES ($1, $2) ON CONFLICT DO NOTHING",
                               event.user_id, event.lesson_id)

    async def open_state(runtime: Runtime[State]) -> State:
        seen.append(f"open (subscribers running: {runtime.broker.running})")
        state = State()
        holder.append(state)
        return state

    async def close_state(state: State) -> None:
        seen.append(f"close (subscribers running: {runtime.broker.running})")
        state.open = False

    # Events wait on the topic before the consumer exists.
    topic = test_env.topic_prefix + Topic.LESSON_COMPLETED.value
    for i in range(3):
        event = record_completion_event(i)
        await produce_raw(test_env.kafka_bootstrap, topic, event.model_dump_json().encode(), event.key().encode())
    runtime: Runtime[State] = Runtime(
        ServiceSpec(
            name="receiver",
            settings=test_env.settings(database="receiver", service_name="receiver"),
            migrations=FIXTURES / "receiver_migrations",
            subscriptions=[Subscription(Topic.LESSON_COMPLETED, LessonCompleted, on_lesson_completed, "receiver")],
            open_state=open_state,
            close_state=close_state,
        )
    )
    await runtime.start()
    try:
        assert runtime.state is holder[0]
        await eventually(lambda: _has_rows(runtime, 3), what="the waiting events applied")
    finally:
        await runtime.stop()
    assert seen[0] == "open (subscribers running: False)"
    assert seen[-1] == "close (subscribers running: False)"
    assert seen[1:-1] == ["event"] * 3


def record_completion_event(lesson_id: int) -> LessonCompleted:
    return LessonCompleted(
        user_id="early", course_id=1, lesson_id=lesson_id, completed_at=datetime.now(UTC),
        progress_percentage=10, completed_lessons=1, total_lessons=10,
    )


async def _has_rows(runtime: Runtime[Any], n: int) -> bool:
    return bool(await runtime.pool.fetchval("SELECT count(*) FROM applied") == n)
