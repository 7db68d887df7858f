"""Dead letters kept, listed and replayed, over the real broker and PostgreSQL.

A "sender" writes events through its outbox; a "receiver" service (its real app: lifespan,
relay, FastStream subscribers, the shared dead-letter routes) applies each once through its
inbox and gives up on what its handler refuses; a second consumer group ("bystander", a
service of its own) applies the same topic. The refusals are switched off as an operator's
fix would remove their cause, then the letters are replayed through the admin API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from typer.testing import CliRunner

from shared import dead_letters, dead_letters_api
from shared.auth import issue_token
from shared.events import DeadLetter, LessonCompleted, Topic
from shared.inbox import EventContext, RejectedEvent, Subscription
from shared.service import Runtime, ServiceSpec, create_app
from tests.helpers import TestEnv, TopicReader, app_client, eventually, produce_raw
from tests.test_event_plumbing import applied_rows, record_completion

FIXTURES = Path(__file__).parent / "fixtures"
BASE = "/api/admin/dead-letters/receiver"


class Receiver:
    """Applies lesson completions; refuses the lessons in ``fail`` (a handler error: retried,
    then dead-lettered with its inbox marker) and ``reject`` (a refusal: dead-lettered at
    once, no marker), until the operator's fix empties them."""

    def __init__(self, fail: set[int] | None = None, reject: set[int] | None = None) -> None:
        self.fail = fail or set()
        self.reject = reject or set()

    async def on_lesson_completed(self, event: LessonCompleted, ctx: EventContext) -> None:
        if event.lesson_id in self.reject:
            raise RejectedEvent(f"lesson {event.lesson_id} is not confirmed")
        async with ctx.transaction() as conn:
            if event.lesson_id in self.fail:
                raise ValueError(f"lesson {event.lesson_id} cannot be applied")
            await conn.execute(
                "INSERT INTO applied VALUES ($1, $2) ON CONFLICT (user_id, lesson_id) "
                "DO UPDATE SET times = applied.times + 1",
                event.user_id, event.lesson_id,
            )


def receiver_app(env: TestEnv, receiver: Receiver, name: str = "receiver") -> FastAPI:
    return create_app(ServiceSpec(
        name=name,
        settings=env.settings(database=name, service_name=name, consumer_max_attempts=2),
        migrations=FIXTURES / "receiver_migrations",
        routers=[dead_letters_api.router(name)],
        subscriptions=[Subscription(Topic.LESSON_COMPLETED, LessonCompleted, receiver.on_lesson_completed, name)],
    ))


@asynccontextmanager
async def running(env: TestEnv, receiver: Receiver, name: str = "receiver") -> AsyncIterator[
    tuple[Runtime[Any], httpx.AsyncClient]
]:
    app = receiver_app(env, receiver, name)
    token = issue_token(app.state.settings, user_id="ops-1", roles=["admin"])
    async with app_client(app, token) as client:
        runtime: Runtime[Any] = app.state.runtime
        await eventually(lambda: _started(runtime), what=f"{name} subscribed")
        yield runtime, client


@asynccontextmanager
async def sender(env: TestEnv) -> AsyncIterator[Runtime[None]]:
    runtime: Runtime[None] = Runtime(ServiceSpec(
        name="sender", settings=env.settings(database="sender", service_name="sender"),
        migrations=FIXTURES / "sender_migrations",
    ))
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


async def _started(runtime: Runtime[Any]) -> bool:
    return runtime.broker_started


async def letters(client: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    response = await client.get(BASE, params=params)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["data"]
    return found


async def replays_queued(runtime: Runtime[Any]) -> int:
    return int(await runtime.pool.fetchval("SELECT count(*) FROM outbox WHERE event_type = 'replay'"))


async def test_a_fixed_poison_message_is_replayed_and_applied_once_by_its_consumer_only(test_env: TestEnv) -> None:
    fixable = Receiver(fail={13})
    async with (
        sender(test_env) as source,
        running(test_env, fixable) as (consumer, client),
        running(test_env, Receiver(), "bystander") as (bystander, _),
        TopicReader(test_env.kafka_bootstrap, test_env.topic_prefix + Topic.DEAD_LETTER.value) as dead,
    ):
        poison = await record_completion(source.pool, "poison", 13)
        good = await record_completion(source.pool, "good", 1)
        await eventually(lambda: _has(consumer, ("good", 1)), what="the good event after the poison one")
        await eventually(lambda: _has(bystander, ("poison", 13)), what="the other group applied the poison one")

        [letter] = await eventually(lambda: letters(client), what="the dead letter listed")
        assert (letter["source_topic"], letter["consumer_group"], letter["status"]) == (
            "lesson-completed", "receiver", "pending")
        assert letter["event_id"] == str(poison.event_id) and letter["attempts"] == 2
        assert "cannot be applied" in letter["error"] and letter["message_key"] == poison.key()
        shown = (await client.get(f"{BASE}/{letter['id']}")).json()["data"]
        assert LessonCompleted.model_validate_json(shown["value"]) == poison
        # The row and the dead-letter event were written together: the topic has that letter.
        await eventually(lambda: _count(dead.messages, 1), what="the dead-letter event")
        assert str(DeadLetter.model_validate_json(dead.messages[0].value).event_id) == shown["letter_id"]
        origin = await consumer.pool.fetchval(
            "SELECT origin FROM inbox WHERE consumer = 'receiver' AND event_id = $1", poison.event_id)
        assert origin == "dead_letter"

        fixable.fail.clear()  # the operator's fix
        replayed = await client.post(f"{BASE}/{letter['id']}/replay")
        assert replayed.status_code == 200, replayed.text
        assert replayed.json()["data"]["outcome"] == "replayed"
        assert replayed.json()["data"]["dead_letter"]["status"] == "replayed"
        await eventually(lambda: _has(consumer, ("poison", 13)), what="the replayed event applied")

        # Replaying again, plain or forced, writes nothing more: replayed before, then applied.
        again = (await client.post(f"{BASE}/{letter['id']}/replay")).json()["data"]
        assert again["outcome"] == "already_replayed"
        forced = (await client.post(f"{BASE}/{letter['id']}/replay", params={"force": "true"})).json()["data"]
        assert forced["outcome"] == "already_applied" and forced["dead_letter"]["status"] == "replayed"
        assert await replays_queued(consumer) == 1

        # A later event passes both groups: whatever came before it has been seen by both.
        await record_completion(source.pool, "after", 2)
        await eventually(lambda: _has(consumer, ("after", 2)), what="the next event (receiver)")
        await eventually(lambda: _has(bystander, ("after", 2)), what="the next event (bystander)")
        assert (await applied_rows(consumer))[("poison", 13)] == 1
        assert (await applied_rows(bystander))[("poison", 13)] == 1, "the other group skips the replayed copy"
        assert (await applied_rows(consumer))[("good", 1)] == 1 == (await applied_rows(bystander))[("good", 1)]
        assert good.event_id != poison.event_id
        origin = await consumer.pool.fetchval(
            "SELECT origin FROM inbox WHERE consumer = 'receiver' AND event_id = $1", poison.event_id)
        assert origin == "applied"
        assert len(await letters(client)) == 1, "the replayed copy was applied, not dead-lettered again"


async def test_a_selection_writes_one_copy_per_event_and_none_for_an_event_applied_meanwhile(
    test_env: TestEnv,
) -> None:
    refusing = Receiver(reject={7, 8})
    topic = test_env.topic_prefix + Topic.LESSON_COMPLETED.value
    twice = LessonCompleted(user_id="twice", course_id=1, lesson_id=7, completed_at=datetime.now(UTC),
                            progress_percentage=10, completed_lessons=1, total_lessons=10)
    meanwhile = twice.model_copy(update={"user_id": "meanwhile", "lesson_id": 8, "event_id": _uuid()})

    async def produce(event: LessonCompleted) -> None:
        await produce_raw(test_env.kafka_bootstrap, topic, event.model_dump_json().encode(), event.key().encode())

    async with running(test_env, refusing) as (consumer, client):
        # Refused (no inbox marker: a refusal leaves none), the first one delivered twice.
        for event in (twice, twice, meanwhile):
            await produce(event)
        await eventually(lambda: _listed(client, 3), what="three dead letters")

        refusing.reject.clear()  # the owner confirms them now
        await produce(meanwhile)  # ... and one is delivered again and applied meanwhile
        await eventually(lambda: _has(consumer, ("meanwhile", 8)), what="the event applied meanwhile")

        response = await client.post(f"{BASE}/replay", params={"source": "lesson-completed"})
        assert response.status_code == 200, response.text
        summary = response.json()["data"]
        assert summary["counts"] == {"replayed": 1, "covered": 1, "already_applied": 1}
        event_of = {letter["id"]: letter["event_id"] for letter in await letters(client)}
        outcomes = sorted((event_of[item["id"]], item["outcome"]) for item in summary["items"])
        assert outcomes == sorted([(str(twice.event_id), "replayed"), (str(twice.event_id), "covered"),
                                   (str(meanwhile.event_id), "already_applied")])
        [first, _] = [item for item in summary["items"] if event_of[item["id"]] == str(twice.event_id)]
        assert first["outcome"] == "replayed", "the oldest letter of the event is the one written back"
        assert await replays_queued(consumer) == 1
        await eventually(lambda: _has(consumer, ("twice", 7)), what="the replayed event applied")

        # Nothing is pending any more: a second selection writes nothing.
        second = (await client.post(f"{BASE}/replay")).json()["data"]
        assert second == {"counts": {}, "items": []}
        statuses = sorted(letter["status"] for letter in await letters(client))
        assert statuses == ["applied", "replayed", "replayed"]
        assert [letter["event_id"] for letter in await letters(client, status="applied")] == [
            str(meanwhile.event_id)]

        await produce(meanwhile.model_copy(update={"user_id": "after", "event_id": _uuid()}))
        await eventually(lambda: _has(consumer, ("after", 8)), what="a later event")
        rows = await applied_rows(consumer)
        assert rows[("twice", 7)] == 1 and rows[("meanwhile", 8)] == 1


async def test_admin_routes_refuse_strangers_unknown_ids_bad_filters_and_expired_letters(test_env: TestEnv) -> None:
    app = receiver_app(test_env, Receiver())
    settings = app.state.settings
    learner = {"Authorization": "Bearer " + issue_token(settings, user_id="u1", roles=["learner"])}
    admin = {"Authorization": "Bearer " + issue_token(settings, user_id="ops-1", roles=["admin"])}
    async with app_client(app) as client:
        runtime: Runtime[Any] = app.state.runtime
        async with runtime.pool.acquire() as conn, conn.transaction():
            await dead_letters.record(
                conn, consumer_group="receiver", source_topic="lesson-completed", partition=0, offset=4,
                key=b"k\x00ey", value=b"\xff not utf-8", error="invalid event: \x00", attempts=1,
            )
        [letter_id] = [r["id"] for r in await runtime.pool.fetch("SELECT id FROM dead_letters")]
        calls = [("GET", BASE), ("GET", f"{BASE}/{letter_id}"), ("POST", f"{BASE}/{letter_id}/replay"),
                 ("POST", f"{BASE}/replay")]
        for method, path in calls:
            assert (await client.request(method, path)).status_code == 401, path
            refused = await client.request(method, path, headers=learner)
            assert refused.status_code == 403 and refused.json()["code"] == "forbidden", path

        shown = await client.get(f"{BASE}/{letter_id}", headers=admin)
        assert shown.status_code == 200
        assert shown.json()["data"]["message_key"] == "k\x00ey" and shown.json()["data"]["event_id"] is None
        for method, path in [("GET", f"{BASE}/999"), ("POST", f"{BASE}/999/replay")]:
            missing = await client.request(method, path, headers=admin)
            assert missing.status_code == 404 and missing.json()["code"] == "dead_letter_not_found", path

        for params in [{"source": "no-such-topic"}, {"since": "yesterday"}, {"since": "2026-01-01T00:00:00"},
                       {"status": "lost"}, {"per_page": "0"}, {"page": "0"}]:
            bad = await client.get(BASE, params=params, headers=admin)
            assert bad.status_code == 400 and bad.json()["code"] == "invalid_request", params
        bad = await client.post(f"{BASE}/replay", params={"limit": "0"}, headers=admin)
        assert bad.status_code == 400
        assert (await client.get(f"{BASE}/abc", headers=admin)).status_code == 400
        later = await client.get(BASE, params={"since": "2999-01-01T00:00:00Z"}, headers=admin)
        assert later.json()["meta"]["total"] == 0
        listed = await client.get(BASE, params={"source": "lesson-completed", "since": "2020-01-01T00:00:00+02:00"},
                                  headers=admin)
        assert listed.json()["meta"]["total"] == 1

        # Older than the inbox retention: other consumers may have forgotten the event.
        await runtime.pool.execute("UPDATE dead_letters SET created_at = now() - interval '31 days'")
        expired = await client.post(f"{BASE}/{letter_id}/replay", headers=admin)
        assert expired.status_code == 409 and expired.json()["code"] == "dead_letter_expired"
        selection = (await client.post(f"{BASE}/replay", headers=admin)).json()["data"]
        assert selection["counts"] == {"expired": 1}
        assert await replays_queued(runtime) == 0


def test_the_cli_lists_shows_and_replays_a_services_dead_letters(test_env: TestEnv) -> None:
    import asyncio

    import asyncpg

    from lessonstream.cli import app
    from lessonstream.infra import ROOT
    from shared.db import migrate_service

    prefix = f"{test_env.prefix}cli_"
    url = test_env.database_url("cli_enrollment")

    async def prepare() -> None:
        await migrate_service(url, "enrollment", ROOT / "services" / "enrollment" / "migrations")
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                await dead_letters.record(
                    conn, consumer_group="enrollment.lesson-completed", source_topic="lesson-completed",
                    partition=3, offset=9, key=b"u1:1", value=b'{"event_id": "not an id"}',
                    error="ValueError('no enrollment')", attempts=5,
                )
        finally:
            await conn.close()

    asyncio.run(prepare())
    runner = CliRunner()
    common = ["--database-url", test_env.postgres_url, "--db-prefix", prefix, "--service", "enrollment"]
    listed = runner.invoke(app, ["dead-letters", "list", *common, "--source", "lesson-completed"])
    assert listed.exit_code == 0, listed.output
    assert "lesson-completed" in listed.stdout and "no enrollment" in listed.stdout and "pending" in listed.stdout
    shown = runner.invoke(app, ["dead-letters", "show", "1", *common])
    assert shown.exit_code == 0 and "not an id" in shown.stdout
    missing = runner.invoke(app, ["dead-letters", "show", "2", *common])
    assert missing.exit_code == 1
    bad = runner.invoke(app, ["dead-letters", "list", *common, "--since", "soon"])
    assert bad.exit_code == 2
    replayed = runner.invoke(app, ["dead-letters", "replay", *common, "--since", "2020-01-01"])
    assert replayed.exit_code == 0, replayed.output
    assert "1\treplayed" in replayed.stdout
    again = runner.invoke(app, ["dead-letters", "replay", "1", *common])
    assert again.exit_code == 0 and "already_replayed" in again.stdout

    async def queued() -> list[Any]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch("SELECT topic, raw_key, payload FROM outbox WHERE event_type = 'replay'"))
        finally:
            await conn.close()

    [row] = asyncio.run(queued())
    assert (row["topic"], row["raw_key"], row["payload"]) == ("lesson-completed", b"u1:1", b'{"event_id": "not an id"}')


def _uuid() -> Any:
    from uuid import uuid4

    return uuid4()


async def _has(runtime: Runtime[Any], row: tuple[str, int]) -> bool:
    return row in await applied_rows(runtime)


async def _count(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def _listed(client: httpx.AsyncClient, n: int) -> bool:
    return len(await letters(client)) >= n


def test_what_a_replay_does_follows_the_letter_and_the_inbox() -> None:
    from shared.dead_letters import DeadLetterStatus, ReplayOutcome, StoredDeadLetter, decide

    def letter(status: DeadLetterStatus) -> StoredDeadLetter:
        return StoredDeadLetter(
            id=1, consumer_group="c", source_topic="t", partition=0, offset=0, message_key=None, value=b"{}",
            error="e", attempts=1, event_id=None, event_type=None, letter_id=_uuid(), created_at=datetime.now(UTC),
            status=status, replayed_at=None, replay_count=0, replayed_by=None,
        )

    pending, replayed, applied = (letter(s) for s in DeadLetterStatus)
    assert decide(pending, applied=False, expired=False) is ReplayOutcome.REPLAYED
    assert decide(pending, applied=True, expired=False) is ReplayOutcome.ALREADY_APPLIED
    assert decide(pending, applied=False, expired=True) is ReplayOutcome.EXPIRED
    assert decide(pending, applied=True, expired=True) is ReplayOutcome.ALREADY_APPLIED
    assert decide(replayed, applied=False, expired=False) is ReplayOutcome.ALREADY_REPLAYED
    assert decide(replayed, applied=False, expired=False, force=True) is ReplayOutcome.REPLAYED
    assert decide(replayed, applied=True, expired=False, force=True) is ReplayOutcome.ALREADY_APPLIED
    assert decide(replayed, applied=False, expired=True, force=True) is ReplayOutcome.EXPIRED
    assert decide(applied, applied=False, expired=False, force=True) is ReplayOutcome.ALREADY_APPLIED


def test_a_message_that_did_not_parse_may_still_name_its_event() -> None:
    from shared.dead_letters import identify

    event_id = _uuid()
    assert identify(f'{{"event_id": "{event_id}", "type": "lesson-completed"}}'.encode()) == (
        event_id, "lesson-completed")
    assert identify(b'{"event_id": 7, "type": "x\\u0000y"}') == (None, "x\ufffdy")
    for value in (b"\xff{", b"[1]", b"null", b'{"type": 3}'):
        assert identify(value) == (None, None), value


async def test_settled_dead_letters_are_pruned_after_the_retention_and_pending_ones_kept(test_env: TestEnv) -> None:
    async with running(test_env, Receiver()) as (runtime, _):
        pool = runtime.pool

        async def keep(age_days: int, status: str) -> int:
            return int(await pool.fetchval(
                "INSERT INTO dead_letters (consumer_group, source_topic, partition, \"offset\", value, error, "
                "attempts, letter_id, created_at, status) VALUES ('receiver', 'lesson-completed', 0, 0, "
                "'\\x7b7d', 'x', 1, gen_random_uuid(), now() - make_interval(days => $1), $2) RETURNING id",
                age_days, status,
            ))

        old_pending = await keep(400, "pending")
        old_replayed = await keep(91, "replayed")
        old_applied = await keep(120, "applied")
        recent_replayed = await keep(10, "replayed")
        assert await dead_letters.prune_settled(pool, 90, batch=1) == 2
        left = {row["id"] for row in await pool.fetch("SELECT id FROM dead_letters")}
        assert {old_pending, recent_replayed} <= left
        assert not {old_replayed, old_applied} & left
        assert await dead_letters.prune_settled(pool, 90) == 0
