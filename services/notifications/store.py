"""SQL of the notifications service: the outgoing-mail queue and the attempt log."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from services.notifications.domain import AttemptOutcome, Decision, MailFilter, MailKind, PlannedMail
from shared import outbox
from shared.db import Connection, Executor
from shared.events import DeadLetter


@dataclass(frozen=True)
class Source:
    """The Kafka message a mail came from."""

    topic: str
    partition: int
    offset: int
    consumer_group: str
    key: str | None


@dataclass(frozen=True)
class ClaimedMail:
    id: int
    event_id: UUID
    kind: MailKind
    recipient: str
    message_id: str
    event: dict[str, Any]
    attempt: int  # the number of the attempt this claim is
    created_at: datetime
    source: Source


async def enqueue(conn: Connection, mail: PlannedMail, event: dict[str, Any], source: Source) -> bool:
    """Queue a mail (or log it as skipped); False if this (event, kind) is already there."""
    inserted = await conn.fetchval(
        """
        INSERT INTO outgoing_mail (event_id, kind, user_id, course_id, recipient, message_id, event,
                                   source_topic, source_partition, source_offset, consumer_group,
                                   message_key, status, last_error)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
        ON CONFLICT (event_id, kind) DO NOTHING
        RETURNING true
        """,
        mail.event_id, mail.kind.value, mail.user_id, mail.course_id, mail.recipient, mail.message_id, event,
        source.topic, source.partition, source.offset, source.consumer_group, source.key,
        mail.status.value, mail.note,
    )
    return bool(inserted)


async def claim_next(pool: asyncpg.Pool, lease_s: float) -> ClaimedMail | None:
    """Take the most overdue mail for one attempt and log the attempt before anything is sent.

    ``FOR UPDATE SKIP LOCKED`` lets any number of workers and replicas claim side by side
    without waiting on each other. A ``sending`` row whose lease has run out belonged to
    a worker that stopped mid-send: its open attempt is logged as interrupted and the
    mail is tried again under the same Message-ID.
    """
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """
            WITH due AS (
                SELECT id FROM outgoing_mail
                WHERE (status = 'pending' AND next_attempt_at <= now())
                   OR (status = 'sending' AND lease_until < now())
                ORDER BY next_attempt_at, id
                LIMIT 1
                FOR UPDATE SKIP LOCKED
            )
            UPDATE outgoing_mail m
            SET status = 'sending', attempts = m.attempts + 1, updated_at = now(),
                lease_until = now() + make_interval(secs => $1)
            FROM due WHERE m.id = due.id
            RETURNING m.id, m.event_id, m.kind, m.recipient, m.message_id, m.event, m.attempts,
                      m.created_at, m.source_topic, m.source_partition, m.source_offset,
                      m.consumer_group, m.message_key
            """,
            lease_s,
        )
        if row is None:
            return None
        await conn.execute(
            "UPDATE mail_attempts SET outcome = 'interrupted', finished_at = now(), "
            "detail = 'the sending process stopped before recording an outcome' "
            "WHERE mail_id = $1 AND outcome = 'sending'",
            row["id"],
        )
        await conn.execute(
            "INSERT INTO mail_attempts (mail_id, attempt, outcome) VALUES ($1, $2, 'sending')",
            row["id"], row["attempts"],
        )
    return ClaimedMail(
        id=row["id"],
        event_id=row["event_id"],
        kind=MailKind(row["kind"]),
        recipient=row["recipient"],
        message_id=row["message_id"],
        event=row["event"],
        attempt=row["attempts"],
        created_at=row["created_at"],
        source=Source(
            row["source_topic"], row["source_partition"], row["source_offset"],
            row["consumer_group"], row["message_key"],
        ),
    )


async def record_sent(pool: asyncpg.Pool, mail: ClaimedMail, response: str) -> bool:
    async with pool.acquire() as conn, conn.transaction():
        await _finish_attempt(conn, mail, AttemptOutcome.SENT, None, response)
        return bool(
            await conn.fetchval(
                "UPDATE outgoing_mail SET status = 'sent', sent_at = now(), updated_at = now(), "
                "lease_until = NULL, smtp_response = $3, last_error = NULL "
                "WHERE id = $1 AND status = 'sending' AND attempts = $2 RETURNING true",
                mail.id, mail.attempt, response[:1000],
            )
        )


async def record_failure(
    pool: asyncpg.Pool, mail: ClaimedMail, decision: Decision, smtp_code: int | None, detail: str
) -> bool:
    """Log the failed attempt and what follows (retry, give up); a given-up mail's dead
    letter is queued in the same transaction, so it is written exactly when the mail ends."""
    async with pool.acquire() as conn, conn.transaction():
        await _finish_attempt(conn, mail, decision.outcome, smtp_code, detail)
        updated = await conn.fetchval(
            "UPDATE outgoing_mail SET status = $3, updated_at = now(), lease_until = NULL, last_error = $4, "
            "next_attempt_at = now() + make_interval(secs => $5) "
            "WHERE id = $1 AND status = 'sending' AND attempts = $2 RETURNING true",
            mail.id, mail.attempt, decision.status.value, detail[:2000], decision.retry_in_s or 0.0,
        )
        if updated and decision.dead_letter:
            await outbox.add(
                conn,
                DeadLetter(
                    source_topic=mail.source.topic,
                    partition=mail.source.partition,
                    offset=mail.source.offset,
                    consumer_group=mail.source.consumer_group,
                    message_key=mail.source.key,
                    value=orjson.dumps(mail.event).decode(),
                    error=f"{mail.kind.value} mail to {mail.recipient} {decision.status.value}: {detail}"[:4000],
                    attempts=mail.attempt,
                ),
            )
        return bool(updated)


async def _finish_attempt(
    conn: Connection, mail: ClaimedMail, outcome: AttemptOutcome, smtp_code: int | None, detail: str | None
) -> None:
    # "interrupted" too: if this worker outlived its lease, the log still gets the truth.
    await conn.execute(
        "UPDATE mail_attempts SET outcome = $3, finished_at = now(), smtp_code = $4, detail = $5 "
        "WHERE mail_id = $1 AND attempt = $2 AND outcome IN ('sending', 'interrupted')",
        mail.id, mail.attempt, outcome.value, smtp_code, detail[:2000] if detail else None,
    )


async def next_due_in(pool: asyncpg.Pool) -> float | None:
    """Seconds until the earliest pending mail or lease end (0 if overdue); None if nothing waits."""
    value = await pool.fetchval(
        """
        SELECT GREATEST(0, EXTRACT(EPOCH FROM (min(t) - now())))::float8 FROM (
            SELECT min(next_attempt_at) AS t FROM outgoing_mail WHERE status = 'pending'
            UNION ALL
            SELECT min(lease_until) FROM outgoing_mail WHERE status = 'sending'
        ) due
        """
    )
    return None if value is None else float(value)


async def queue_depth(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT status, count(*) AS n FROM outgoing_mail WHERE status IN ('pending', 'sending') GROUP BY status"
    )
    depth = {"pending": 0, "sending": 0}
    depth.update({r["status"]: r["n"] for r in rows})
    return depth


# --- Admin reads ----------------------------------------------------------------------


_MAIL_COLUMNS = (
    "id, event_id, kind, user_id, course_id, recipient, message_id, status, attempts, "
    "next_attempt_at, last_error, smtp_response, created_at, updated_at, sent_at"
)


async def list_mail(db: Executor, f: MailFilter, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    conditions, args = [], []
    for column, value in (
        ("user_id", f.user_id),
        ("course_id", f.course_id),
        ("event_id", f.event_id),
        ("status", f.status.value if f.status else None),
        ("kind", f.kind.value if f.kind else None),
    ):
        if value is not None:
            args.append(value)
            conditions.append(f"{column} = ${len(args)}")
    where = ("WHERE " + " AND ".join(conditions)) if conditions else ""
    total = await db.fetchval(f"SELECT count(*) FROM outgoing_mail {where}", *args)
    rows = await db.fetch(
        f"SELECT {_MAIL_COLUMNS} FROM outgoing_mail {where} "
        f"ORDER BY created_at DESC, id DESC LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}",
        *args, limit, offset,
    )
    return [dict(r) for r in rows], int(total)


async def get_mail(db: Executor, mail_id: int) -> dict[str, Any] | None:
    row = await db.fetchrow(f"SELECT {_MAIL_COLUMNS} FROM outgoing_mail WHERE id = $1", mail_id)
    if row is None:
        return None
    attempts = await db.fetch(
        "SELECT attempt, started_at, finished_at, outcome, smtp_code, detail FROM mail_attempts "
        "WHERE mail_id = $1 ORDER BY attempt",
        mail_id,
    )
    return {**dict(row), "attempt_log": [dict(a) for a in attempts]}
