"""Transactional outbox: events are rows written with the state change, then relayed.

``add`` writes the event into the caller's transaction, so the state change and its
event commit or roll back together. ``OutboxRelay`` publishes pending rows to Kafka in
id order (``acks=all``) and marks them published once the broker has acknowledged them.

Ordering per key is the outbox's own guarantee. Ids are assigned at insert, but
transactions commit in any order, so id order alone is not commit order: a row with a
lower id may become visible after the relay has published a higher one. ``add`` therefore
takes a transaction-scoped advisory lock on the event's key before inserting: a second
transaction writing an event of the same key waits until the first has committed (or
rolled back), so its row gets a higher id *and* becomes visible later. Rows of one key
are thus committed in id order, and the relay, reading in id order, publishes them in
that order. Exactly one relay per database publishes at a time (a session advisory
lock), and a batch is marked published only up to its first failure; a failure retries
the same rows after a backoff, so a row may be published twice, which idempotent
consumers absorb.

Durability across a broker that forgets: published rows are kept for
``outbox_retention_hours``. Each database's relay owns a marker topic on the broker
(``lessonstream-relay.<relay_id>``, created after its first successful look at the
broker). A broker without the marker has not received this database's events (a new
broker, or the in-memory one restarted): the relay creates the topics, queues every
retained row again, and only then creates the marker, so a crash in between queues them
again rather than losing them. On a broker that keeps its topics (Apache Kafka) the marker
stays, and a service restart publishes nothing twice.

``add_raw`` queues a message given as bytes rather than as an ``Event``: a dead letter
written back to its source topic (``shared.dead_letters``), key and value as they came.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any
from uuid import UUID

import asyncpg
from aiokafka import AIOKafkaProducer

from shared import bus, metrics
from shared.db import Connection, delete_in_batches
from shared.events import Event
from shared.retry import Backoff, Delays
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)

_RELAY_LOCK_KEY = 7_305_114_002
# The first half of the two-key advisory locks taken per event key (the second is the
# key's hash): a namespace of its own, apart from the single-key locks used elsewhere.
_KEY_LOCK_SPACE = 73_051_140
BATCH_SIZE = 500
# How often a standby relay tries for the relay lock (a holder that died is replaced this fast).
IDLE_POLL_S = 2.0
RELAY_BACKOFF = Backoff(first_s=0.1, max_s=5.0)
# How often the relay looks for its marker on the broker while the producer is unchanged.
MARKER_CHECK_S = 5.0
PRUNE_EVERY_S = 60.0
PRUNE_BATCH = 10_000

# The key lock is taken by the statement that inserts the row, before the row (and so
# its id) is formed: the id is drawn only once the same key's earlier writer has ended.
_INSERT = """
    INSERT INTO outbox (topic, key, event_id, event_type, payload)
    SELECT $1, $2, $3, $4, $5 FROM (SELECT pg_advisory_xact_lock($6::int, hashtext($2))) AS key_lock
"""


def _row(event: Event) -> tuple[Any, ...]:
    return (event.topic.value, event.key(), event.event_id, event.type, event.model_dump_json().encode(),
            _KEY_LOCK_SPACE)


async def add(conn: Connection, event: Event) -> None:
    """Queue ``event`` in the caller's transaction (the trigger wakes the relay at commit).

    Waits while another open transaction holds an event of the same key: see the module
    docstring for why that makes per-key order the outbox's guarantee.
    """
    await conn.execute(_INSERT, *_row(event))


_INSERT_RAW = """
    INSERT INTO outbox (topic, key, raw_key, event_id, event_type, payload)
    SELECT $1, $2, $3, $4, $5, $6 FROM (SELECT pg_advisory_xact_lock($7::int, hashtext($2))) AS key_lock
"""


async def add_raw(
    conn: Connection, topic: str, key: bytes | None, value: bytes, *, event_id: UUID, event_type: str
) -> None:
    """Queue a message given as bytes (a dead letter written back to its topic), not as an
    ``Event``: the key and value leave exactly as they came. Ordered and locked by the key
    like ``add`` (its text form, so a replay waits for the key's other writers); a message
    that had no key goes out with an empty one.
    """
    raw_key = key or b""
    text_key = raw_key.decode("utf-8", "replace").replace("\x00", "\ufffd")
    await conn.execute(_INSERT_RAW, topic, text_key, raw_key, event_id, event_type, value, _KEY_LOCK_SPACE)


async def add_many(conn: Connection, events: list[Event]) -> None:
    if not events:
        return
    # Keys locked in one order (a stable sort keeps each key's own events in order), so
    # two transactions writing events of the same keys cannot wait on each other.
    ordered = sorted(events, key=lambda e: e.key())
    await conn.executemany(_INSERT, [_row(e) for e in ordered])


def marker_topic(settings: ServiceSettings, relay_id: UUID) -> str:
    return settings.topic(f"lessonstream-relay.{relay_id}")


def make_producer(settings: ServiceSettings) -> AIOKafkaProducer:
    # Tansu has no idempotent producer (InitProducerId fails): acks=all without it.
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.service_name}-outbox",
        acks="all",
        enable_idempotence=False,
        request_timeout_ms=settings.kafka_request_timeout_ms,
        linger_ms=2,
        **settings.kafka_client_options(),
    )


class OutboxRelay:
    def __init__(self, settings: ServiceSettings) -> None:
        self._settings = settings
        self._wake = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._generation = 0  # bumped for every new producer: a new connection to the broker
        self._checked_generation = -1
        self._checked_at = 0.0
        self._pruned_at = 0.0
        self.active = False  # holds the relay lock for this database
        self.last_error: str | None = None
        self.republished = 0  # retained rows queued again for a broker that lacked them

    async def start(self) -> None:
        self._stopping = False  # a stopped relay may be started again
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._close_producer()

    async def broker_reachable(self, timeout: float = 2.0) -> bool:
        try:
            producer = await asyncio.wait_for(self._ensure_producer(), timeout)
            return bool(await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout))
        except Exception:
            return False

    async def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 5)

    async def _ensure_producer(self) -> AIOKafkaProducer:
        # Shared by the relay loop and readiness probes: the lock keeps it to one producer.
        async with self._producer_lock:
            if self._producer is None:
                producer = make_producer(self._settings)
                try:
                    await producer.start()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await producer.stop()
                    raise
                self._producer = producer
                self._generation += 1
            return self._producer

    async def _run(self) -> None:
        delays = Delays(RELAY_BACKOFF)
        while not self._stopping:
            try:
                await self._relay_while_holding_lock()
                delays.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.active = False
                self.last_error = repr(exc)
                pause = delays.next()
                log.warning("outbox relay interrupted: %r; retrying in %.1fs", exc, pause)
                await asyncio.sleep(pause)

    async def _relay_while_holding_lock(self) -> None:
        conn: asyncpg.Connection = await asyncpg.connect(self._settings.database_url)
        try:
            # One relay per database keeps per-key order; other replicas stand by.
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _RELAY_LOCK_KEY):
                self.active = False
                await asyncio.sleep(IDLE_POLL_S)
            self.active = True
            relay_id: UUID = await conn.fetchval("SELECT relay_id FROM outbox_relay")
            self._checked_generation = -1  # a new holder looks at the broker first
            await conn.add_listener("outbox", self._on_notify)
            # A closed connection hears no notification: without this, a database restart
            # would leave the relay waiting out its safety poll before it reconnects.
            conn.add_termination_listener(lambda _: self._wake.set())
            delays = Delays(RELAY_BACKOFF)
            while not self._stopping:
                self._wake.clear()
                if not await self._meet_broker(conn, relay_id):
                    # Nothing is published to a broker whose marker was not looked at: rows
                    # published first would be queued again once the look succeeds.
                    await asyncio.sleep(delays.next())
                    continue
                await self._prune(conn)
                rows = await conn.fetch(
                    "SELECT id, topic, key, raw_key, payload FROM outbox WHERE published_at IS NULL "
                    "ORDER BY id LIMIT $1",
                    BATCH_SIZE,
                )
                if not rows:
                    # Woken at commit by the trigger; the poll is only a safety net (this
                    # connection listens, and a new one looks first), hence rare.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._settings.idle_poll_s)
                    continue
                sent, error = await self._publish(rows)
                if sent:
                    await conn.execute(
                        "UPDATE outbox SET published_at = now(), publish_count = publish_count + 1 "
                        "WHERE id = ANY($1::bigint[])",
                        sent,
                    )
                    metrics.OUTBOX_PUBLISHED.labels(self._settings.service_name).inc(len(sent))
                if error is not None:
                    failed_id = rows[len(sent)]["id"]
                    await conn.execute(
                        "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1",
                        failed_id, error[:2000],
                    )
                    self.last_error = error
                    pause = delays.next()
                    log.warning("outbox publish failed: %s; retrying in %.1fs", error, pause)
                    await asyncio.sleep(pause)
                else:
                    delays.reset()
                    self.last_error = None
        finally:
            self.active = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)

    async def _meet_broker(self, conn: asyncpg.Connection, relay_id: UUID) -> bool:
        """Queue every retained row again if the broker has not seen this relay's marker.

        Looked at whenever a new producer connected and every ``MARKER_CHECK_S``: a broker
        restarted under a live producer is found without a failed send. Returns whether the
        broker has been looked at on this connection: an unreachable broker is no answer,
        and nothing is published until there is one.
        """
        now = time.monotonic()
        if self._checked_generation == self._generation and now - self._checked_at < MARKER_CHECK_S:
            return True
        settings = self._settings
        marker = marker_topic(settings, relay_id)
        try:
            producer = await self._ensure_producer()
            generation = self._generation
            metadata = await asyncio.wait_for(producer.client.fetch_all_metadata(), 10)
            if marker in metadata.topics() or await bus.topic_listed(settings, marker):
                # Asked twice before concluding it is missing: queueing every retained row
                # again on a wrong answer would publish them all twice.
                self._checked_generation, self._checked_at = generation, now
                return True
            # Order matters: topics first (publishing must not auto-create them with other
            # partition counts), the rows queued again durably, and the marker last.
            await bus.ensure_topics(settings)
            requeued = int((await conn.execute(
                "UPDATE outbox SET published_at = NULL WHERE published_at IS NOT NULL"
            )).split()[-1])
            await bus.create_marker_topic(settings, marker)
        except Exception as exc:
            log.info("could not look for the relay marker on the broker: %r", exc)
            if self._checked_generation == self._generation:
                return True  # a later look failed; this connection's broker was met already
            await self._close_producer()
            return False
        if requeued:
            self.republished += requeued
            metrics.OUTBOX_REPUBLISHED.labels(settings.service_name).inc(requeued)
            log.warning("the broker has not received this database's events: publishing %d retained rows again",
                        requeued)
        self._checked_generation, self._checked_at = generation, now
        return True

    async def _prune(self, conn: asyncpg.Connection) -> None:
        """Forget published rows past the retention window (a few thousand at a time)."""
        now = time.monotonic()
        if now - self._pruned_at < PRUNE_EVERY_S:
            return
        self._pruned_at = now
        await delete_in_batches(
            conn,
            "DELETE FROM outbox WHERE id = ANY(ARRAY(SELECT id FROM outbox "
            "WHERE published_at < now() - make_interval(secs => $1) LIMIT $2))",
            self._settings.outbox_retention_hours * 3600, batch=PRUNE_BATCH,
        )

    def _on_notify(self, *_: Any) -> None:
        self._wake.set()

    async def _publish(self, rows: list[asyncpg.Record]) -> tuple[list[int], str | None]:
        """Send a batch; returns the ids acknowledged before the first failure, and that failure."""
        try:
            producer = await self._ensure_producer()
        except Exception as exc:
            await self._close_producer()
            return [], f"broker unavailable: {exc!r}"
        futures = []
        try:
            for row in rows:
                futures.append(
                    await producer.send(
                        self._settings.topic(row["topic"]),
                        value=row["payload"],
                        # A replayed message keeps its key's bytes (see ``add_raw``).
                        key=row["raw_key"] if row["raw_key"] is not None else row["key"].encode(),
                    )
                )
        except Exception as exc:
            # Nothing past this row was queued; what was queued is awaited below.
            error: str | None = f"send failed: {exc!r}"
        else:
            error = None
        results = await asyncio.gather(*futures, return_exceptions=True)
        sent: list[int] = []
        for row, result in zip(rows, results, strict=False):
            if isinstance(result, BaseException):
                error = f"not acknowledged: {result!r}"
                break
            sent.append(row["id"])
        if error is not None and not sent:
            # A stuck connection (paused or restarted broker) is best replaced.
            await self._close_producer()
        return sent, error


async def pending_figures(pool: asyncpg.Pool) -> tuple[int, float]:
    """How many rows wait to be published, and the age in seconds of the oldest (0 if none).

    Both through the partial index of pending rows: the oldest is the lowest id (ids are
    drawn at insert, so it is the earliest written up to a transaction's length). The count
    stops at 100,000: beyond that the number matters less than that it is large.
    """
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox WHERE published_at IS NULL LIMIT 100000) p) AS n, "
        "coalesce(extract(epoch FROM now() - (SELECT created_at FROM outbox WHERE published_at IS NULL "
        "ORDER BY id LIMIT 1)), 0)::float8 AS age"
    )
    assert row is not None
    return int(row["n"]), max(0.0, float(row["age"]))
