"""Transactional outbox: events are rows written with the state change, then relayed.

``add`` writes the event into the caller's transaction, so the state change and its
event commit or roll back together. ``OutboxRelay`` publishes pending rows to Kafka in
id order (``acks=all``) and deletes them once the broker has acknowledged them.

Ordering: exactly one relay per database publishes at a time (a session advisory lock),
and a batch is deleted only up to its first failure, so rows of one key are never
published out of order. A failure retries the same rows after a backoff; a row may then
be published twice, which idempotent consumers absorb.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from shared import metrics
from shared.db import Connection
from shared.events import Event
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)

_RELAY_LOCK_KEY = 7_305_114_002
BATCH_SIZE = 500
# Fallback poll for a notification lost while the listening connection was down.
IDLE_POLL_S = 2.0
MAX_BACKOFF_S = 5.0


async def add(conn: Connection, event: Event) -> None:
    """Queue ``event`` in the caller's transaction (the trigger wakes the relay at commit)."""
    await conn.execute(
        "INSERT INTO outbox (topic, key, event_id, event_type, payload) VALUES ($1, $2, $3, $4, $5)",
        event.topic.value,
        event.key(),
        event.event_id,
        event.type,
        event.model_dump_json().encode(),
    )


async def add_many(conn: Connection, events: list[Event]) -> None:
    if not events:
        return
    await conn.executemany(
        "INSERT INTO outbox (topic, key, event_id, event_type, payload) VALUES ($1, $2, $3, $4, $5)",
        [(e.topic.value, e.key(), e.event_id, e.type, e.model_dump_json().encode()) for e in events],
    )


def make_producer(settings: ServiceSettings) -> AIOKafkaProducer:
    # Tansu has no idempotent producer (InitProducerId fails): acks=all without it.
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.service_name}-outbox",
        acks="all",
        enable_idempotence=False,
        request_timeout_ms=settings.kafka_request_timeout_ms,
        linger_ms=2,
    )


class OutboxRelay:
    def __init__(self, settings: ServiceSettings) -> None:
        self._settings = settings
        self._wake = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.active = False  # holds the relay lock for this database
        self.last_error: str | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._close_producer()

    def wake(self) -> None:
        self._wake.set()

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
            return self._producer

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                await self._relay_while_holding_lock()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.active = False
                self.last_error = repr(exc)
                log.warning("outbox relay interrupted: %r; retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _relay_while_holding_lock(self) -> None:
        conn: asyncpg.Connection = await asyncpg.connect(self._settings.database_url)
        try:
            # One relay per database keeps per-key order; other replicas stand by.
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _RELAY_LOCK_KEY):
                self.active = False
                await asyncio.sleep(IDLE_POLL_S)
            self.active = True
            await conn.add_listener("outbox", self._on_notify)
            backoff = 0.1
            while not self._stopping:
                self._wake.clear()
                rows = await conn.fetch(
                    "SELECT id, topic, key, payload FROM outbox ORDER BY id LIMIT $1", BATCH_SIZE
                )
                metrics.OUTBOX_PENDING.labels(self._settings.service_name).set(len(rows))
                if not rows:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)
                    continue
                sent, error = await self._publish(rows)
                if sent:
                    await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", sent)
                    metrics.OUTBOX_PUBLISHED.labels(self._settings.service_name).inc(len(sent))
                if error is not None:
                    failed_id = rows[len(sent)]["id"]
                    await conn.execute(
                        "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1",
                        failed_id, error[:2000],
                    )
                    self.last_error = error
                    log.warning("outbox publish failed: %s; retrying in %.1fs", error, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
                else:
                    backoff = 0.1
                    self.last_error = None
        finally:
            self.active = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)

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
                        key=row["key"].encode(),
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
