"""Metrics read at scrape, over the real broker and PostgreSQL: a consumer group's lag in
messages rises while its consumer is stopped and falls back to 0 once it runs again; the
outbox's pending rows and the age of the oldest while the relay is stopped; dead letters
by source topic; one exporter per process (several uvicorn workers are refused)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared import metrics, outbox
from shared.events import LessonCompleted, Topic
from shared.inbox import EventContext, Subscription
from shared.service import Runtime, ServiceSpec, create_app
from tests.helpers import TestEnv, app_client, eventually, produce_raw

FIXTURES = Path(__file__).parent / "fixtures"


def samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield sample.name, sample.labels, sample.value


def value(text: str, name: str, **labels: str) -> float | None:
    """The one sample of ``name`` whose labels include ``labels``, or None."""
    found = [v for n, ls, v in samples(text) if n == name and labels.items() <= ls.items()]
    assert len(found) <= 1, f"{name}{labels}: {found}"
    return found[0] if found else None


class Receiver:
    def __init__(self) -> None:
        self.applied = 0
        self.fail_lessons: set[int] = set()

    async def on_lesson_completed(self, event: LessonCompleted, ctx: EventContext) -> None:
        if event.lesson_id in self.fail_lessons:
            raise ValueError(f"lesson {event.lesson_id} cannot be applied")
        async with ctx.transaction():
            self.applied += 1


def completion(lesson_id: int) -> LessonCompleted:
    return LessonCompleted(
        user_id=f"u{lesson_id}", course_id=1, lesson_id=lesson_id, completed_at=datetime.now(UTC),
        progress_percentage=10, completed_lessons=1, total_lessons=10,
    )


async def test_lag_rises_while_the_consumer_is_stopped_and_falls_after(test_env: TestEnv) -> None:
    """The sender's relay is stopped first (its outbox holds the events: pending rows and
    their age), then started with the receiver's consumer stopped (the group's lag is every
    event), then the consumer runs again (lag 0, the events applied, each one's age seen)."""
    receiver = Receiver()
    sender: Runtime[None] = Runtime(ServiceSpec(
        name="lag-sender", settings=test_env.settings(database="sender", service_name="lag-sender"),
        migrations=FIXTURES / "sender_migrations",
    ))
    app = create_app(ServiceSpec(
        name="lag-receiver",
        settings=test_env.settings(database="receiver", service_name="lag-receiver"),
        migrations=FIXTURES / "receiver_migrations",
        subscriptions=[Subscription(Topic.LESSON_COMPLETED, LessonCompleted, receiver.on_lesson_completed,
                                    "lag-receiver")],
    ))
    runtime: Runtime[None] = app.state.runtime
    lag = {"group": "lag-receiver", "topic": Topic.LESSON_COMPLETED.value}
    await sender.start()
    try:
        async with app_client(app) as client:
            async def scrape() -> str:
                answer = await client.get("/metrics")
                assert answer.status_code == 200
                return answer.text

            async def lag_is(expected: int) -> bool:
                return value(await scrape(), "lessonstream_consumer_lag_messages", **lag) == expected

            await eventually(lambda: _true(runtime.broker_started), what="receiver subscribed")
            await eventually(lambda: lag_is(0), what="a lag of 0 before anything is published")

            # The relay stopped: what is written waits in the outbox, and says since when.
            await sender.relay.stop()
            async with sender.pool.acquire() as conn, conn.transaction():
                for lesson in range(15):
                    await outbox.add(conn, completion(lesson))
            pending, _ = await outbox.pending_figures(sender.pool)
            assert pending == 15
            await sender.read_figures()
            exported = _exported()
            assert value(exported, "lessonstream_outbox_pending", service="lag-sender") == 15
            oldest = value(exported, "lessonstream_outbox_oldest_pending_age_seconds", service="lag-sender")
            assert oldest is not None and oldest >= 0

            # The consumer stopped, the relay started: the group's lag is every event.
            for subscriber in runtime.broker.subscribers:
                await subscriber.stop()
            await sender.relay.start()
            await eventually(lambda: lag_is(15), timeout=20, what="a lag of 15 while the consumer is stopped")

            async def outbox_empty() -> bool:
                await sender.read_figures()
                exported = _exported()
                figures = ("lessonstream_outbox_pending", "lessonstream_outbox_oldest_pending_age_seconds")
                return all(value(exported, name, service="lag-sender") == 0 for name in figures)

            await eventually(outbox_empty, what="the outbox published (the rows marked after the broker's ack)")
            assert receiver.applied == 0

            # Running again: the lag falls to 0 once every event is applied and committed.
            for subscriber in runtime.broker.subscribers:
                await subscriber.start()
            await eventually(lambda: lag_is(0), timeout=30, what="the lag back to 0")
            assert receiver.applied == 15
            ages = value(await scrape(), "lessonstream_event_age_seconds_count", **lag)
            assert ages is not None and ages >= 15
    finally:
        await sender.stop()


async def _true(value: bool) -> bool:
    return value


def _exported() -> str:
    from prometheus_client import REGISTRY, generate_latest

    return generate_latest(REGISTRY).decode()


async def test_dead_letters_are_counted_by_source_topic(test_env: TestEnv) -> None:
    receiver = Receiver()
    receiver.fail_lessons = {7}
    app = create_app(ServiceSpec(
        name="dl-receiver",
        settings=test_env.settings(database="receiver", service_name="dl-receiver", consumer_max_attempts=2),
        migrations=FIXTURES / "receiver_migrations",
        subscriptions=[Subscription(Topic.LESSON_COMPLETED, LessonCompleted, receiver.on_lesson_completed,
                                    "dl-receiver")],
    ))
    labels = {"service": "dl-receiver", "source_topic": Topic.LESSON_COMPLETED.value}
    async with app_client(app) as client:
        await eventually(lambda: _true(app.state.runtime.broker_started), what="receiver subscribed")
        topic = test_env.topic_prefix + Topic.LESSON_COMPLETED.value
        for lesson in (7, 8):
            event = completion(lesson)
            await produce_raw(test_env.kafka_bootstrap, topic, event.model_dump_json().encode(), event.key().encode())
        await produce_raw(test_env.kafka_bootstrap, topic, b"not an event", b"k")

        async def two_dead_letters() -> bool:
            text = (await client.get("/metrics")).text
            return value(text, "lessonstream_dead_letters_total", **labels) == 2

        await eventually(two_dead_letters, timeout=20, what="two dead letters counted")
        assert receiver.applied == 1


def test_several_uvicorn_workers_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    uvicorn = ["uvicorn", "--factory", "services.progress.app:build_app", "--port", "8000"]
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    metrics.check_single_process(uvicorn)
    metrics.check_single_process([*uvicorn, "--workers", "1"])
    for argv in ([*uvicorn, "--workers", "4"], [*uvicorn, "--workers=2"]):
        with pytest.raises(RuntimeError, match="uvicorn workers"):
            metrics.check_single_process(argv)
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    with pytest.raises(RuntimeError, match="4 uvicorn workers"):
        metrics.check_single_process(uvicorn)
    monkeypatch.setenv("WEB_CONCURRENCY", "1")
    metrics.check_single_process(uvicorn)
    # A throughput benchmark may say it accepts per-worker figures (bench/progress_ingest.py).
    monkeypatch.setenv("LESSONSTREAM_ALLOW_UVICORN_WORKERS", "true")
    metrics.check_single_process([*uvicorn, "--workers", "4"])





async def test_a_scrape_answers_without_the_broker_and_says_which_figures_it_could_not_read(
    test_env: TestEnv,
) -> None:
    """No broker at the configured address: /metrics still answers at once, within its bound,
    with the database's figures, no lag series (rather than a stale one), and the failure counted."""
    import time

    from lessonstream import infra

    receiver = Receiver()
    app = create_app(ServiceSpec(
        name="nobroker-receiver",
        settings=test_env.settings(database="receiver", service_name="nobroker-receiver",
                                   kafka_bootstrap_servers=f"127.0.0.1:{infra.free_port()}",
                                   kafka_request_timeout_ms=1000),
        migrations=FIXTURES / "receiver_migrations",
        subscriptions=[Subscription(Topic.LESSON_COMPLETED, LessonCompleted, receiver.on_lesson_completed,
                                    "nobroker-receiver")],
    ))
    async with app_client(app) as client:
        started = time.monotonic()
        answer = await client.get("/metrics")
        took = time.monotonic() - started
    assert answer.status_code == 200
    assert took < metrics.SCRAPE_TIMEOUT_S + 2, took
    text = answer.text
    assert value(text, "lessonstream_outbox_pending", service="nobroker-receiver") == 0
    assert value(text, "lessonstream_consumer_lag_messages", service="nobroker-receiver") is None
    errors = value(text, "lessonstream_metrics_scrape_errors_total", service="nobroker-receiver", what="lag")
    assert errors is not None and errors >= 1
