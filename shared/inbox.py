"""Idempotent, at-least-once consumption with bounded retries and a dead-letter topic.

A handler receives the parsed event and an ``EventContext``. Its effect runs inside
``ctx.transaction()``, which first records ``(consumer, event_id)`` in the ``inbox``
table: the marker and the effect commit together, so a redelivered event finds the
marker and changes nothing. Offsets are committed only after the handler returns.

A message that does not parse, or whose handler still fails after
``consumer_max_attempts`` tries, is written to the dead-letter topic (through the
outbox, so a broker outage cannot lose it) and the consumer moves on. A handler that
finds an event unacceptable (a forgery its owner does not confirm) raises
``RejectedEvent``: dead-lettered at once with the reason, never retried. Every dead
letter is also kept in the service's ``dead_letters`` table, in the same transaction
(``shared.dead_letters``), from where it can be replayed.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg
from faststream import BaseMiddleware
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.middlewares import AckPolicy
from pydantic import ValidationError

from shared import dead_letters, metrics
from shared.db import Connection, delete_in_batches
from shared.errors import is_database_unavailable
from shared.events import Event, Topic
from shared.logs import event_id_var
from shared.retry import Backoff
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)
S = TypeVar("S")


class AlreadyApplied(Exception):
    """Raised inside ``transaction()`` when this consumer has applied the event before."""


class TransientError(Exception):
    """A handler's way to say "not now": retried until it succeeds, never dead-lettered."""


class RejectedEvent(Exception):
    """A handler's way to say "never": the event is dead-lettered at once with ``reason``.

    Retrying cannot help (the owner of the data said no), so there are no further tries.
    No inbox marker is written: a forged copy that reuses a genuine event's id must not
    make the genuine event look applied when it arrives. A redelivered forgery is
    dead-lettered again, which is harmless.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Infrastructure faults delay work but must not send a good event to the dead-letter
# topic: the message is redelivered (nacked) instead, for as long as they last.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientError,
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)
TRANSIENT_PAUSE_S = 1.0
# A failing handler is retried in place, the partition waiting: never longer than this.
CONSUMER_RETRY_MAX_S = 30.0


def is_transient(exc: BaseException) -> bool:
    """An infrastructure fault (``TRANSIENT_ERRORS``, or any way the database can be unavailable)."""
    return isinstance(exc, TRANSIENT_ERRORS) or is_database_unavailable(exc)


class EventContext:
    """What a handler gets beside its event: the pool, the inbox transaction, and the
    service's state (``ServiceSpec.open_state``), as ``state_of`` gives it to a route."""

    def __init__(
        self, pool: asyncpg.Pool, consumer: str, event: Event, *, partition: int = -1, offset: int = -1,
        state: object = None,
    ) -> None:
        self.pool = pool
        self.consumer = consumer
        self.event = event
        self._state = state
        # Where the message came from (-1 when unknown): lets a handler that defers
        # work name the source message in a later dead letter.
        self.partition = partition
        self.offset = offset

    def state(self, kind: type[S]) -> S:
        """The service's typed state; it is open whenever a subscriber runs."""
        if not isinstance(self._state, kind):
            raise TypeError(f"the service's state is {type(self._state).__name__}, not {kind.__name__}")
        return self._state

    async def already_applied(self) -> bool:
        """A cheap check before expensive work done outside the transaction."""
        return bool(
            await self.pool.fetchval(
                "SELECT true FROM inbox WHERE consumer = $1 AND event_id = $2",
                self.consumer, self.event.event_id,
            )
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            # Two deliveries racing each other: the second blocks on the primary key
            # until the first commits, then finds the row and stops.
            fresh = await conn.fetchval(
                "INSERT INTO inbox (consumer, event_id, topic) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING RETURNING true",
                self.consumer, self.event.event_id, self.event.topic.value,
            )
            if not fresh:
                raise AlreadyApplied
            yield conn


Handler = Callable[[E, EventContext], Awaitable[None]]


@dataclass(frozen=True)
class Subscription(Generic[E]):
    topic: Topic
    model: type[E]
    handler: Handler[E]
    consumer: str  # consumer group name, without the topic prefix
    # Group members this process runs for the topic. Above 1, each member consumes its own
    # partitions in order, so messages of different partitions are handled concurrently.
    concurrency: int = 1


def subscribe(
    broker: KafkaBroker,
    settings: ServiceSettings,
    pool_getter: Callable[[], asyncpg.Pool],
    sub: Subscription[Any],
    state_getter: Callable[[], object] = lambda: None,
) -> None:
    """Register ``sub`` on ``broker``: apply once, retry, dead-letter.

    The handler's signature names the event model, so FastStream parses the message and
    its AsyncAPI document shows the payload; a message that does not parse is
    dead-lettered by ``InvalidMessages`` (installed on the broker by ``shared.service``).
    """
    service = settings.service_name
    topic_label = sub.topic.value

    async def on_message(event: Event, message: KafkaMessage) -> None:
        started = time.perf_counter()
        age_s = time.time() - event.occurred_at.timestamp()
        metrics.EVENT_AGE.labels(service, sub.consumer, topic_label).observe(max(0.0, age_s))
        token = event_id_var.set(str(event.event_id))
        try:
            await _handle_with_retries(
                pool_getter(), settings, sub, event, message.raw_message, message.body, state_getter()
            )
        finally:
            event_id_var.reset(token)
            metrics.EVENT_HANDLING.labels(service, topic_label).observe(time.perf_counter() - started)

    # The parameter's type is the subscription's model, known only at run time.
    on_message.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("event", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=sub.model),
            inspect.Parameter("message", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=KafkaMessage),
        ],
        return_annotation=None,
    )
    broker.subscriber(
        settings.topic(sub.topic.value),
        group_id=settings.group(sub.consumer),
        auto_offset_reset="earliest",  # Tansu's end offsets are unreliable
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        # How often the idle fetcher task wakes on its own (aiokafka's default, 0.2 s, is five
        # wake-ups a second per consumer); a fetch's answer wakes it at once regardless.
        consumer_timeout_ms=settings.kafka_fetch_max_wait_ms,
        ack_policy=AckPolicy.NACK_ON_ERROR,
        max_workers=max(1, sub.concurrency),
        title=f"{sub.consumer}:{sub.topic.value}",
        description=f"{sub.model.__name__} events consumed by {sub.consumer}",
    )(on_message)


def invalid_message_middleware(
    settings: ServiceSettings,
    pool_getter: Callable[[], asyncpg.Pool],
    subscriptions: list[Subscription[Any]],
) -> type[BaseMiddleware]:
    """A broker middleware that dead-letters messages which do not parse as their event.

    Without it a malformed message would be nacked and redelivered forever, blocking its
    partition. One subscription per topic per service, so the topic names the subscription.
    """
    by_topic = {settings.topic(sub.topic.value): sub for sub in subscriptions}
    if len(by_topic) != len(subscriptions):
        raise ValueError("one subscription per topic per service")

    class InvalidMessages(BaseMiddleware):
        async def consume_scope(self, call_next: Any, msg: Any) -> Any:
            try:
                return await call_next(msg)
            except ValidationError as exc:
                record = msg.raw_message
                sub = by_topic.get(record.topic)
                if sub is None:
                    raise
                await _dead_letter(
                    pool_getter(), settings, sub, record, msg.body, f"invalid event: {exc}", 1, None, mark=False
                )
                metrics.EVENTS_CONSUMED.labels(settings.service_name, sub.topic.value, "dead_lettered").inc()
                return None  # handled: the offset is committed and the consumer moves on

    return InvalidMessages


# Events about a learner whose erasure was requested after they were produced: dropped (see
# ``_about_erased_learner``). The subject is the id's SHA-256 as ``shared.erasure`` keeps it.
_ERASED_BEFORE = (
    "SELECT true FROM erasures WHERE subject = encode(sha256(convert_to($1, 'UTF8')), 'hex') "
    "AND requested_at >= $2 LIMIT 1"
)


async def _about_erased_learner(pool: asyncpg.Pool, sub: Subscription[Any], event: Event) -> bool:
    """An event naming a learner (``user_id``) produced before that learner's erasure was
    requested, delivered after this service erased them (late, or published again): applying
    it would bring back what was erased, and a refusal would dead-letter it with the
    person's data. It is marked applied and has no effect. A learner who comes back after
    the erasure is a new start: events produced later are applied."""
    user_id = getattr(event, "user_id", None)
    if not isinstance(user_id, str) or event.type == "learner-erased":
        return False
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval(_ERASED_BEFORE, user_id, event.occurred_at):
            return False
        await conn.execute(
            "INSERT INTO inbox (consumer, event_id, topic) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            sub.consumer, event.event_id, sub.topic.value,
        )
    return True


async def _handle_with_retries(
    pool: asyncpg.Pool,
    settings: ServiceSettings,
    sub: Subscription[Any],
    event: Event,
    record: Any,
    raw: bytes,
    state: object = None,
) -> None:
    service, topic_label = settings.service_name, sub.topic.value
    attempts = settings.consumer_max_attempts
    for attempt in range(1, attempts + 1):
        try:
            # At every attempt: a handler that failed because the erasure removed what it
            # needed (it committed meanwhile) finds the learner erased on the next one.
            if await _about_erased_learner(pool, sub, event):
                log.info("%s %s names a learner erased since: no effect", topic_label, event.event_id)
                metrics.EVENTS_CONSUMED.labels(service, topic_label, "erased").inc()
                return
            ctx = EventContext(
                pool, sub.consumer, event, partition=record.partition, offset=record.offset, state=state
            )
            await sub.handler(event, ctx)
        except AlreadyApplied:
            metrics.EVENTS_CONSUMED.labels(service, topic_label, "duplicate").inc()
            return
        except RejectedEvent as exc:
            log.warning("rejected %s: %s", topic_label, exc.reason)
            await _dead_letter(pool, settings, sub, record, raw, f"rejected: {exc.reason}", attempt, event, mark=False)
            metrics.EVENTS_CONSUMED.labels(service, topic_label, "dead_lettered").inc()
            return
        except Exception as exc:
            if is_transient(exc):
                log.warning("handling %s hit a transient fault: %r; redelivering", topic_label, exc)
                metrics.EVENTS_CONSUMED.labels(service, topic_label, "retried").inc()
                await asyncio.sleep(TRANSIENT_PAUSE_S)
                raise  # nacked: the same message comes back, nothing is committed past it
            if attempt == attempts:
                log.exception("giving up on %s after %d attempts", sub.topic.value, attempt)
                await _dead_letter(pool, settings, sub, record, raw, repr(exc), attempt, event, mark=True)
                metrics.EVENTS_CONSUMED.labels(service, topic_label, "dead_lettered").inc()
                return
            delay = Backoff(first_s=settings.consumer_retry_base_s, max_s=CONSUMER_RETRY_MAX_S).delay(attempt)
            log.warning("handling %s failed (attempt %d): %r; retrying in %.2fs", topic_label, attempt, exc, delay)
            metrics.EVENTS_CONSUMED.labels(service, topic_label, "retried").inc()
            await asyncio.sleep(delay)
        else:
            metrics.EVENTS_CONSUMED.labels(service, topic_label, "applied").inc()
            return


async def _dead_letter(
    pool: asyncpg.Pool,
    settings: ServiceSettings,
    sub: Subscription[Any],
    record: Any,
    raw: bytes,
    error: str,
    attempts: int,
    event: Event | None,
    *,
    mark: bool,
) -> None:
    log.error("dead-lettering %s[%d]@%d: %s", sub.topic.value, record.partition, record.offset, error[:500])
    # If this raises (database down), the message is nacked and redelivered later.
    async with pool.acquire() as conn, conn.transaction():
        # With ``mark``, the event is marked handled (origin: dead letter), so a redelivery
        # does not dead-letter it a second time; a replay removes that marker.
        await dead_letters.record(
            conn,
            consumer_group=sub.consumer,
            source_topic=sub.topic.value,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=raw,
            error=error,
            attempts=attempts,
            event_id=event.event_id if event is not None else None,
            event_type=event.type if event is not None else None,
            mark_inbox=mark,
        )
    metrics.DEAD_LETTERS.labels(settings.service_name, sub.consumer, sub.topic.value).inc()


async def prune(pool: asyncpg.Pool, retention_days: int, batch: int = 10_000) -> int:
    """Delete applied-event markers older than the retention, in batches; returns how many."""
    return await delete_in_batches(
        pool,
        "DELETE FROM inbox WHERE ctid = ANY(ARRAY("
        "SELECT ctid FROM inbox WHERE applied_at < now() - make_interval(days => $1) LIMIT $2))",
        retention_days, batch=batch,
    )
