"""Dead letters a service keeps: recorded with their outbox row, listed, shown, replayed.

Every message a consumer of this database gives up on (``shared.inbox``; notifications'
mail that never went out) is a row of ``dead_letters``, written in the transaction that
queues its ``DeadLetter`` event in the outbox: the table and the dead-letter topic agree.

A replay writes the original key and value back to the source topic through the outbox
(``outbox.add_raw``), in one transaction that also records the replay and removes the
inbox marker dead-lettering left for that consumer and event (only a marker whose origin
is ``dead_letter``), so the consumer applies the replayed copy once. What a replay
publishes, at most:

- one copy per dead letter: a letter already replayed answers ``already_replayed`` and
  publishes nothing, unless forced (a lost topic past the outbox's retention, say);
- none when its consumer has applied the event meanwhile (an ``applied`` marker in the
  inbox): ``already_applied``, the letter is closed as ``applied``;
- one per event in a selection: later letters of the same consumer and event are
  ``covered`` by the first one's copy;
- none for a letter older than the inbox retention (``expired``): other consumer groups of
  the topic may have forgotten that they applied the event, and would apply it again.

Whatever still arrives twice (an earlier copy redelivered, a replay racing the consumer)
is dropped by the consumer's inbox; other consumer groups of the topic drop the replayed
copy by their own markers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from uuid import UUID

import asyncpg
import orjson
from pydantic import BaseModel

from shared import outbox
from shared.db import Connection, Executor, delete_in_batches, fetch_all, fetch_one
from shared.events import DeadLetter

MAX_ERROR = 4000
REPLAY_EVENT_TYPE = "replay"


class DeadLetterStatus(StrEnum):
    PENDING = "pending"  # nothing done yet
    REPLAYED = "replayed"  # written back to its topic (or covered by a replay of the same event)
    APPLIED = "applied"  # its consumer had applied the event when a replay was asked for


class ReplayOutcome(StrEnum):
    REPLAYED = "replayed"
    ALREADY_REPLAYED = "already_replayed"
    ALREADY_APPLIED = "already_applied"
    COVERED = "covered"
    EXPIRED = "expired"


class DeadLetterNotFound(Exception):
    """No dead letter with this id in this service."""


class DeadLetterExpired(Exception):
    """The letter is older than the inbox retention: replaying it could apply it twice elsewhere."""


@dataclass(frozen=True)
class DeadLetterFilter:
    source_topic: str | None = None
    since: datetime | None = None
    status: DeadLetterStatus | None = None


class StoredDeadLetter(BaseModel):
    id: int
    consumer_group: str
    source_topic: str
    partition: int
    offset: int
    message_key: bytes | None
    value: bytes
    error: str
    attempts: int
    event_id: UUID | None
    event_type: str | None
    letter_id: UUID
    created_at: datetime
    status: DeadLetterStatus
    replayed_at: datetime | None
    replay_count: int
    replayed_by: str | None


@dataclass(frozen=True)
class Replayed:
    id: int
    outcome: ReplayOutcome


def decide(letter: StoredDeadLetter, *, applied: bool, expired: bool, force: bool = False) -> ReplayOutcome:
    """What a replay of ``letter`` does (pure): see the module's docstring."""
    if letter.status is DeadLetterStatus.REPLAYED and not force:
        return ReplayOutcome.ALREADY_REPLAYED
    if letter.status is DeadLetterStatus.APPLIED or applied:
        return ReplayOutcome.ALREADY_APPLIED
    if expired:
        return ReplayOutcome.EXPIRED
    return ReplayOutcome.REPLAYED


def identify(value: bytes) -> tuple[UUID | None, str | None]:
    """The event id and type a message names, when it is JSON that names them (a message
    that did not parse as its event may still say which event it was)."""
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    try:
        event_id = UUID(str(body.get("event_id")))
    except ValueError:
        event_id = None
    kind = body.get("type")
    event_type = _text(kind)[:200] if isinstance(kind, str) else None
    return event_id, event_type


def _text(value: str) -> str:
    # PostgreSQL text holds no NUL; an error message may quote the message that caused it.
    return value.replace("\x00", "\ufffd")


async def record(
    conn: Connection,
    *,
    consumer_group: str,
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes,
    error: str,
    attempts: int,
    event_id: UUID | None = None,
    event_type: str | None = None,
    mark_inbox: bool = False,
) -> DeadLetter:
    """Keep a dead letter and queue its ``DeadLetter`` event, in the caller's transaction.

    With ``mark_inbox`` (and an event id), the consumer's inbox marker is written too, with
    the origin ``dead_letter``: a redelivery is not dead-lettered twice, and a replay knows
    it may remove this marker (and only this kind).
    """
    if event_id is None:
        event_id, found_type = identify(value)
        event_type = event_type or found_type
    letter = DeadLetter(
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        consumer_group=consumer_group,
        message_key=key.decode("utf-8", "replace") if key else None,
        value=value.decode("utf-8", "replace"),
        error=error[:MAX_ERROR],
        attempts=attempts,
    )
    if mark_inbox and event_id is not None:
        await conn.execute(
            "INSERT INTO inbox (consumer, event_id, topic, origin) VALUES ($1, $2, $3, 'dead_letter') "
            "ON CONFLICT DO NOTHING",
            consumer_group, event_id, source_topic,
        )
    await conn.execute(
        "INSERT INTO dead_letters (consumer_group, source_topic, partition, \"offset\", message_key, value, error, "
        "attempts, event_id, event_type, letter_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        consumer_group, source_topic, partition, offset, key, value, _text(error[:MAX_ERROR]), attempts,
        event_id, event_type, letter.event_id,
    )
    await outbox.add(conn, letter)
    return letter


# --- queries ---------------------------------------------------------------------------

_COLUMNS = (
    'id, consumer_group, source_topic, partition, "offset", message_key, value, error, attempts, event_id, '
    "event_type, letter_id, created_at, status, replayed_at, replay_count, replayed_by"
)


def _where(found: DeadLetterFilter) -> tuple[str, list[object]]:
    clauses: list[str] = []
    args: list[object] = []
    if found.source_topic is not None:
        args.append(found.source_topic)
        clauses.append(f"source_topic = ${len(args)}")
    if found.since is not None:
        args.append(found.since)
        clauses.append(f"created_at >= ${len(args)}")
    if found.status is not None:
        args.append(found.status.value)
        clauses.append(f"status = ${len(args)}")
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


async def list_letters(
    db: Executor, found: DeadLetterFilter, *, page: int, per_page: int
) -> tuple[list[StoredDeadLetter], int]:
    """One page of dead letters, newest first, and how many match."""
    where, args = _where(found)
    total: int = await db.fetchval(f"SELECT count(*) FROM dead_letters{where}", *args)
    n = len(args)
    rows = await fetch_all(
        db, StoredDeadLetter,
        f"SELECT {_COLUMNS} FROM dead_letters{where} ORDER BY id DESC LIMIT ${n + 1} OFFSET ${n + 2}",
        *args, per_page, (page - 1) * per_page,
    )
    return rows, total


async def get_letter(db: Executor, letter_id: int) -> StoredDeadLetter:
    letter = await fetch_one(db, StoredDeadLetter, f"SELECT {_COLUMNS} FROM dead_letters WHERE id = $1", letter_id)
    if letter is None:
        raise DeadLetterNotFound(letter_id)
    return letter


# --- replay ------------------------------------------------------------------------------


async def replay(
    pool: asyncpg.Pool, letter_id: int, *, by: str, retention_days: int, force: bool = False
) -> tuple[ReplayOutcome, StoredDeadLetter]:
    """Replay one dead letter (see the module's docstring); raises ``DeadLetterNotFound``,
    and ``DeadLetterExpired`` for a letter older than the inbox retention."""
    async with pool.acquire() as conn, conn.transaction():
        letter = await _locked(conn, letter_id)
        if letter is None:
            raise DeadLetterNotFound(letter_id)
        outcome = await _replay_locked(conn, letter, by=by, retention_days=retention_days, force=force)
        if outcome is ReplayOutcome.EXPIRED:
            raise DeadLetterExpired(letter_id)
        return outcome, await get_letter(conn, letter_id)


async def replay_selection(
    pool: asyncpg.Pool, found: DeadLetterFilter, *, by: str, retention_days: int, limit: int
) -> list[Replayed]:
    """Replay the pending letters the filter selects, oldest first (so that letters of one
    key go back in the order they failed), at most ``limit``; one transaction per letter,
    so a long selection holds no lock for long."""
    where, args = _where(DeadLetterFilter(found.source_topic, found.since, DeadLetterStatus.PENDING))
    ids = [row["id"] for row in await pool.fetch(
        f"SELECT id FROM dead_letters{where} ORDER BY id LIMIT ${len(args) + 1}", *args, limit
    )]
    done: list[Replayed] = []
    replayed_events: set[tuple[str, UUID]] = set()
    for letter_id in ids:
        async with pool.acquire() as conn, conn.transaction():
            letter = await _locked(conn, letter_id)
            if letter is None:
                continue
            event = (letter.consumer_group, letter.event_id) if letter.event_id is not None else None
            if event is not None and event in replayed_events and letter.status is DeadLetterStatus.PENDING:
                # The copy this selection wrote back for the same event serves this letter too.
                await _mark(conn, letter.id, DeadLetterStatus.REPLAYED, by, published=False)
                done.append(Replayed(letter.id, ReplayOutcome.COVERED))
                continue
            outcome = await _replay_locked(conn, letter, by=by, retention_days=retention_days, force=False)
            if outcome is ReplayOutcome.REPLAYED and event is not None:
                replayed_events.add(event)
            done.append(Replayed(letter.id, outcome))
    return done


async def _locked(conn: Connection, letter_id: int) -> StoredDeadLetter | None:
    # Locked for the transaction: two replays of one letter are serialised, the second
    # finds it replayed.
    return await fetch_one(
        conn, StoredDeadLetter, f"SELECT {_COLUMNS} FROM dead_letters WHERE id = $1 FOR UPDATE", letter_id
    )


async def _replay_locked(
    conn: Connection, letter: StoredDeadLetter, *, by: str, retention_days: int, force: bool
) -> ReplayOutcome:
    applied = letter.event_id is not None and bool(await conn.fetchval(
        "SELECT true FROM inbox WHERE consumer = $1 AND event_id = $2 AND origin = 'applied'",
        letter.consumer_group, letter.event_id,
    ))
    expired = bool(await conn.fetchval(
        "SELECT $1::timestamptz < now() - make_interval(days => $2)", letter.created_at, retention_days
    ))
    outcome = decide(letter, applied=applied, expired=expired, force=force)
    if outcome is ReplayOutcome.ALREADY_APPLIED and letter.status is DeadLetterStatus.PENDING:
        # Closed without a copy; a letter replayed before stays "replayed" (that is what
        # got it applied).
        await _mark(conn, letter.id, DeadLetterStatus.APPLIED, by, published=False)
    if outcome is not ReplayOutcome.REPLAYED:
        return outcome
    if letter.event_id is not None:
        # Only the marker dead-lettering left: a marker of an applied event is never removed.
        await conn.execute(
            "DELETE FROM inbox WHERE consumer = $1 AND event_id = $2 AND origin = 'dead_letter'",
            letter.consumer_group, letter.event_id,
        )
    await outbox.add_raw(
        conn, letter.source_topic, letter.message_key, letter.value,
        event_id=letter.event_id or letter.letter_id, event_type=REPLAY_EVENT_TYPE,
    )
    await _mark(conn, letter.id, DeadLetterStatus.REPLAYED, by, published=True)
    return outcome


async def prune_settled(pool: asyncpg.Pool, retention_days: int, batch: int = 10_000) -> int:
    """Delete settled dead letters (replayed, or found applied) dead-lettered longer ago than
    the retention, in batches; returns how many. A pending letter is kept whatever its age:
    it is work not done, which only a replay ends."""
    return await delete_in_batches(
        pool,
        "DELETE FROM dead_letters WHERE id = ANY(ARRAY("
        "SELECT id FROM dead_letters WHERE status <> 'pending' "
        "AND created_at < now() - make_interval(days => $1) ORDER BY created_at, id LIMIT $2))",
        retention_days, batch=batch,
    )


async def _mark(conn: Connection, letter_id: int, status: DeadLetterStatus, by: str, *, published: bool) -> None:
    await conn.execute(
        "UPDATE dead_letters SET status = $2, replayed_by = $3, "
        "replayed_at = CASE WHEN $2 = 'replayed' THEN now() ELSE replayed_at END, "
        "replay_count = replay_count + CASE WHEN $4 THEN 1 ELSE 0 END WHERE id = $1",
        letter_id, status.value, _text(by)[:200], published,
    )
