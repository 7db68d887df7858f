"""SQL of the notifications service: the outgoing-mail queue and its attempt log, the
webhook endpoints, and the delivery queue (any destination kind) with its attempt log."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from services.notifications.domain import (
    WEBHOOK_KIND,
    XAPI_KIND,
    AttemptOutcome,
    Decision,
    DeliveryDecision,
    DeliveryFilter,
    MailFilter,
    MailKind,
    Outcome,
    PlannedMail,
)
from shared import dead_letters
from shared.db import Connection, Executor


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
            # Kept with the service's other dead letters (listed by the admin API). A replay of
            # it publishes nothing: the event was applied (the mail queued) by its consumer.
            await dead_letters.record(
                conn,
                consumer_group=mail.source.consumer_group,
                source_topic=mail.source.topic,
                partition=mail.source.partition,
                offset=mail.source.offset,
                key=mail.source.key.encode() if mail.source.key is not None else None,
                value=orjson.dumps(mail.event),
                error=f"{mail.kind.value} mail to {mail.recipient} {decision.status.value}: {detail}",
                attempts=mail.attempt,
                event_id=mail.event_id,
                event_type=str(mail.event.get("type")) if mail.event.get("type") else None,
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
        -- GREATEST ignores NULL: without the CASE, an empty queue would read as due now.
        SELECT CASE WHEN min(t) IS NOT NULL THEN GREATEST(0, EXTRACT(EPOCH FROM (min(t) - now())))::float8 END FROM (
            SELECT min(next_attempt_at) AS t FROM outgoing_mail WHERE status = 'pending'
            UNION ALL
            SELECT min(lease_until) FROM outgoing_mail WHERE status = 'sending'
        ) due
        """
    )
    return None if value is None else float(value)


async def queue_depth(pool: asyncpg.Pool) -> dict[str, int]:
    """Mail still to be sent, by status (both through their partial indexes)."""
    rows = await pool.fetch(
        "SELECT status, count(*) AS n FROM outgoing_mail WHERE status IN ('pending', 'sending') GROUP BY status"
    )
    depth = {"pending": 0, "sending": 0}
    depth.update({r["status"]: r["n"] for r in rows})
    return depth


DELIVERY_QUEUE_STATES = ("pending", "sending", "held")


async def delivery_queue_depth(pool: asyncpg.Pool, kinds: list[str]) -> dict[tuple[str, str], int]:
    """Deliveries still to be made, by destination kind and status (every pair, 0 when none).

    One count per status, each through that status's partial index (never the delivered history)."""
    rows = await pool.fetch(
        "SELECT destination_kind, 'pending' AS status, count(*) AS n FROM deliveries "
        "WHERE status = 'pending' GROUP BY destination_kind "
        "UNION ALL SELECT destination_kind, 'sending', count(*) FROM deliveries "
        "WHERE status = 'sending' GROUP BY destination_kind "
        "UNION ALL SELECT destination_kind, 'held', count(*) FROM deliveries "
        "WHERE status = 'held' GROUP BY destination_kind"
    )
    depth = {(kind, status): 0 for kind in kinds for status in DELIVERY_QUEUE_STATES}
    depth.update({(r["destination_kind"], r["status"]): r["n"] for r in rows})
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


# --- Webhook endpoints -----------------------------------------------------------------

_ENDPOINT_COLUMNS = (
    "id, url, event_types, description, owner_email, created_by, enabled, disabled_at, disabled_reason, "
    "failing_since, last_success_at, created_at, updated_at"
)


async def create_endpoint(
    conn: Executor, *, url: str, event_types: list[str], description: str, owner_email: str, created_by: str,
    secret: str,
) -> dict[str, Any]:
    row = await conn.fetchrow(
        "INSERT INTO webhook_endpoints (url, event_types, description, owner_email, created_by, secret) "
        f"VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_ENDPOINT_COLUMNS}",
        url, event_types, description, owner_email, created_by, secret,
    )
    assert row is not None  # INSERT ... RETURNING
    return dict(row)


async def list_endpoints(db: Executor, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    total = await db.fetchval("SELECT count(*) FROM webhook_endpoints")
    rows = await db.fetch(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY id LIMIT $1 OFFSET $2", limit, offset
    )
    return [dict(r) for r in rows], int(total)


async def get_endpoint(db: Executor, endpoint_id: int, *, lock: bool = False) -> dict[str, Any] | None:
    row = await db.fetchrow(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1" + (" FOR UPDATE" if lock else ""),
        endpoint_id,
    )
    return dict(row) if row is not None else None


async def update_endpoint(
    conn: Connection, endpoint_id: int, *, url: str | None, event_types: list[str] | None,
    description: str | None, owner_email: str | None,
) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "UPDATE webhook_endpoints SET url = coalesce($2, url), event_types = coalesce($3, event_types), "
        "description = coalesce($4, description), owner_email = coalesce($5, owner_email), updated_at = now() "
        f"WHERE id = $1 RETURNING {_ENDPOINT_COLUMNS}",
        endpoint_id, url, event_types, description, owner_email,
    )
    return dict(row) if row is not None else None


async def set_endpoint_enabled(conn: Connection, endpoint_id: int, enabled: bool, reason: str | None) -> None:
    """Enable (forgetting the failure streak) or disable by hand."""
    await conn.execute(
        "UPDATE webhook_endpoints SET enabled = $2, updated_at = now(), "
        "disabled_at = CASE WHEN $2 THEN NULL ELSE now() END, disabled_reason = CASE WHEN $2 THEN NULL ELSE $3 END, "
        "failing_since = CASE WHEN $2 THEN NULL ELSE failing_since END "
        "WHERE id = $1",
        endpoint_id, enabled, reason,
    )


async def delete_endpoint(conn: Connection, endpoint_id: int) -> bool:
    """The endpoint and its deliveries (attempts go with them)."""
    await conn.execute(
        "DELETE FROM deliveries WHERE destination_kind = $1 AND destination_id = $2", WEBHOOK_KIND, endpoint_id
    )
    return bool(await conn.fetchval("DELETE FROM webhook_endpoints WHERE id = $1 RETURNING true", endpoint_id))


async def rotate_secret(conn: Connection, endpoint_id: int, secret: str, overlap_s: float) -> bool:
    return bool(
        await conn.fetchval(
            "UPDATE webhook_endpoints SET previous_secret = secret, "
            "previous_secret_until = now() + make_interval(secs => $3), secret = $2, updated_at = now() "
            "WHERE id = $1 RETURNING true",
            endpoint_id, secret, overlap_s,
        )
    )


@dataclass(frozen=True)
class EndpointTarget:
    """Where and how a webhook delivery is sent, as the endpoint is now."""

    url: str
    secrets: list[str]  # the current one first; the previous one while a rotation overlaps
    enabled: bool


async def endpoint_target(db: Executor, endpoint_id: int) -> EndpointTarget | None:
    row = await db.fetchrow(
        "SELECT url, enabled, secret, CASE WHEN previous_secret_until > now() THEN previous_secret END AS previous "
        "FROM webhook_endpoints WHERE id = $1",
        endpoint_id,
    )
    if row is None:
        return None
    return EndpointTarget(
        url=row["url"], secrets=[row["secret"], *([row["previous"]] if row["previous"] else [])],
        enabled=row["enabled"],
    )


async def endpoints_want(db: Executor, event_type: str, occurred_at: datetime) -> bool:
    """Whether an enabled endpoint subscribes to ``event_type`` and was registered before it happened."""
    return bool(
        await db.fetchval(
            "SELECT true FROM webhook_endpoints WHERE enabled AND $1 = ANY (event_types) AND created_at <= $2 "
            "LIMIT 1",
            event_type, occurred_at,
        )
    )


async def queue_webhooks(
    conn: Connection, *, event_type: str, message_id: str, event_id: UUID, body: str, occurred_at: datetime
) -> int:
    """One delivery per enabled endpoint that subscribes to ``event_type`` and was registered
    before the event happened (a new endpoint does not receive the topic's history); a
    redelivered event adds nothing (the unique key)."""
    status = await conn.execute(
        """
        INSERT INTO deliveries (destination_kind, destination_id, message_id, event_id, event_type, body, status)
        SELECT $1, e.id, $2, $3, $4, $5, 'pending' FROM webhook_endpoints e
        WHERE e.enabled AND $4 = ANY (e.event_types) AND e.created_at <= $6
        ON CONFLICT (destination_kind, destination_id, message_id) DO NOTHING
        """,
        WEBHOOK_KIND, message_id, event_id, event_type, body, occurred_at,
    )
    return int(status.split()[-1])


async def queue_statements(
    conn: Connection, *, event_id: UUID, event_type: str, statements: list[tuple[str, str]]
) -> int:
    """One xAPI delivery per statement (id, JSON body) of an event, for the one LRS; a statement
    id already queued adds nothing (a redelivered event, or the video ``completed`` of one
    attempt stated by two events): the unique key."""
    if not statements:
        return 0
    status = await conn.execute(
        """
        INSERT INTO deliveries (destination_kind, destination_id, message_id, event_id, event_type, body, status)
        SELECT $1, 0, s.id, $2, $3, s.body, 'pending' FROM unnest($4::text[], $5::text[]) AS s (id, body)
        ON CONFLICT (destination_kind, destination_id, message_id) DO NOTHING
        """,
        XAPI_KIND, event_id, event_type, [sid for sid, _ in statements], [body for _, body in statements],
    )
    return int(status.split()[-1])


async def endpoint_succeeded(conn: Connection, endpoint_id: int) -> None:
    await conn.execute(
        "UPDATE webhook_endpoints SET failing_since = NULL, last_success_at = now() WHERE id = $1", endpoint_id
    )


async def endpoint_failed(conn: Connection, endpoint_id: int) -> dict[str, Any] | None:
    """Note a failed attempt (the streak starts now unless it already runs); the endpoint,
    locked until the transaction ends."""
    row = await conn.fetchrow(
        "UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, now()) WHERE id = $1 "
        f"RETURNING {_ENDPOINT_COLUMNS}",
        endpoint_id,
    )
    return dict(row) if row is not None else None


async def disable_endpoint(conn: Connection, endpoint_id: int, reason: str) -> bool:
    """Disable an enabled endpoint; False if it was not (already disabled, or gone)."""
    return bool(
        await conn.fetchval(
            "UPDATE webhook_endpoints SET enabled = false, disabled_at = now(), disabled_reason = $2, "
            "updated_at = now() WHERE id = $1 AND enabled RETURNING true",
            endpoint_id, reason,
        )
    )


# --- The delivery queue (any destination kind) ------------------------------------------


@dataclass(frozen=True)
class ClaimedDelivery:
    id: int
    kind: str
    destination_id: int
    message_id: str
    event_id: UUID
    event_type: str
    body: str
    attempt: int  # the number of the attempt this claim is (the log's numbering)
    tries: int  # attempts since the delivery was queued or replayed (the schedule's step)


async def claim_delivery(pool: asyncpg.Pool, lease_s: float, kinds: list[str]) -> ClaimedDelivery | None:
    """Take the most overdue delivery of ``kinds`` for one attempt, and log the attempt before
    anything is sent. ``FOR UPDATE SKIP LOCKED``: workers and processes never wait on each
    other, and a row is claimed by one of them at a time. A ``sending`` row whose lease ran
    out belonged to a worker that stopped mid-request: its open attempt is logged as
    interrupted and the delivery is attempted again (same message id)."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """
            WITH due AS (
                SELECT id FROM deliveries
                WHERE destination_kind = ANY ($2)
                  AND ((status = 'pending' AND next_attempt_at <= now())
                       OR (status = 'sending' AND lease_until < now()))
                ORDER BY next_attempt_at, id
                LIMIT 1
                FOR UPDATE SKIP LOCKED
            )
            UPDATE deliveries d
            SET status = 'sending', attempts = d.attempts + 1, tries = d.tries + 1, updated_at = now(),
                lease_until = now() + make_interval(secs => $1)
            FROM due WHERE d.id = due.id
            RETURNING d.id, d.destination_kind, d.destination_id, d.message_id, d.event_id, d.event_type, d.body,
                      d.attempts, d.tries
            """,
            lease_s, kinds,
        )
        if row is None:
            return None
        await conn.execute(
            "UPDATE delivery_attempts SET outcome = 'interrupted', finished_at = now(), "
            "error = 'the delivering process stopped before recording an outcome' "
            "WHERE delivery_id = $1 AND outcome = 'sending'",
            row["id"],
        )
        await conn.execute(
            "INSERT INTO delivery_attempts (delivery_id, attempt, outcome) VALUES ($1, $2, 'sending')",
            row["id"], row["attempts"],
        )
    return ClaimedDelivery(
        id=row["id"], kind=row["destination_kind"], destination_id=row["destination_id"],
        message_id=row["message_id"], event_id=row["event_id"], event_type=row["event_type"], body=row["body"],
        attempt=row["attempts"], tries=row["tries"],
    )


async def record_delivery(
    conn: Connection, delivery: ClaimedDelivery, outcome: Outcome, decision: DeliveryDecision
) -> bool:
    """The attempt's outcome, and the delivery's next status if this worker still holds it
    (False: its lease ran out and another worker took it over)."""
    # "interrupted" too: if this worker outlived its lease, the log still gets the truth.
    attempt_outcome = "held" if outcome.hold else "delivered" if outcome.delivered else "failed"
    await conn.execute(
        "UPDATE delivery_attempts SET outcome = $3, finished_at = now(), status_code = $4, error = $5, "
        "duration_ms = $6, response_excerpt = $7 "
        "WHERE delivery_id = $1 AND attempt = $2 AND outcome IN ('sending', 'interrupted')",
        delivery.id, delivery.attempt, attempt_outcome, outcome.status_code,
        outcome.error[:2000] if outcome.error else None, outcome.duration_ms,
        outcome.response_excerpt[:2000] if outcome.response_excerpt else None,
    )
    return bool(
        await conn.fetchval(
            "UPDATE deliveries SET status = $3, updated_at = now(), lease_until = NULL, "
            "next_attempt_at = now() + make_interval(secs => $4), "
            "last_status_code = coalesce($5, CASE WHEN $6 THEN NULL ELSE last_status_code END), "
            "last_error = CASE WHEN $6 THEN NULL ELSE coalesce($7, last_error) END, "
            "delivered_at = CASE WHEN $6 THEN now() ELSE delivered_at END "
            "WHERE id = $1 AND status = 'sending' AND attempts = $2 RETURNING true",
            delivery.id, delivery.attempt, decision.status.value, decision.retry_in_s or 0.0,
            outcome.status_code, outcome.delivered, outcome.error,
        )
    )


async def deliveries_due_in(pool: asyncpg.Pool, kinds: list[str]) -> float | None:
    """Seconds until the earliest pending delivery or lease end (0 if overdue); None if nothing waits."""
    value = await pool.fetchval(
        """
        -- GREATEST ignores NULL: without the CASE, an empty queue would read as due now.
        SELECT CASE WHEN min(t) IS NOT NULL THEN GREATEST(0, EXTRACT(EPOCH FROM (min(t) - now())))::float8 END FROM (
            SELECT min(next_attempt_at) AS t FROM deliveries WHERE status = 'pending' AND destination_kind = ANY ($1)
            UNION ALL
            SELECT min(lease_until) FROM deliveries WHERE status = 'sending' AND destination_kind = ANY ($1)
        ) due
        """,
        kinds,
    )
    return None if value is None else float(value)


async def hold_deliveries(conn: Connection, kind: str, destination_id: int) -> int:
    """A disabled destination's pending deliveries wait for it to be enabled again."""
    status = await conn.execute(
        "UPDATE deliveries SET status = 'held', updated_at = now() "
        "WHERE destination_kind = $1 AND destination_id = $2 AND status = 'pending'",
        kind, destination_id,
    )
    return int(status.split()[-1])


async def release_deliveries(conn: Connection, kind: str, destination_id: int) -> int:
    """An enabled-again destination's held deliveries are due now, with a fresh schedule."""
    status = await conn.execute(
        "UPDATE deliveries SET status = 'pending', tries = 0, next_attempt_at = now(), updated_at = now() "
        "WHERE destination_kind = $1 AND destination_id = $2 AND status = 'held'",
        kind, destination_id,
    )
    return int(status.split()[-1])


async def replay_delivery(
    conn: Connection, kind: str, destination_id: int, delivery_id: int, *, held: bool
) -> bool:
    """Queue a delivery again, same message id and body, with a fresh schedule (``held``: the
    destination is disabled, it waits). One in flight is left to finish: False for none such."""
    return bool(
        await conn.fetchval(
            "UPDATE deliveries SET status = $4, tries = 0, next_attempt_at = now(), updated_at = now() "
            "WHERE id = $3 AND destination_kind = $1 AND destination_id = $2 AND status <> 'sending' "
            "RETURNING true",
            kind, destination_id, delivery_id, "held" if held else "pending",
        )
    )


_DELIVERY_COLUMNS = (
    "id, destination_id, message_id, event_id, event_type, status, attempts, next_attempt_at, last_status_code, "
    "last_error, created_at, updated_at, delivered_at"
)


async def list_deliveries(
    db: Executor, kind: str, destination_id: int, where: DeliveryFilter, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    args: list[Any] = [kind, destination_id]
    condition = "destination_kind = $1 AND destination_id = $2"
    if where.status is not None:
        args.append(where.status.value)
        condition += f" AND status = ${len(args)}"
    total = await db.fetchval(f"SELECT count(*) FROM deliveries WHERE {condition}", *args)
    rows = await db.fetch(
        f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE {condition} "
        f"ORDER BY created_at DESC, id DESC LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}",
        *args, limit, offset,
    )
    return [dict(r) for r in rows], int(total)


async def get_delivery(db: Executor, kind: str, destination_id: int, delivery_id: int) -> dict[str, Any] | None:
    row = await db.fetchrow(
        f"SELECT {_DELIVERY_COLUMNS}, body FROM deliveries "
        "WHERE id = $3 AND destination_kind = $1 AND destination_id = $2",
        kind, destination_id, delivery_id,
    )
    if row is None:
        return None
    attempts = await db.fetch(
        "SELECT attempt, started_at, finished_at, outcome, status_code, error, duration_ms, response_excerpt "
        "FROM delivery_attempts WHERE delivery_id = $1 ORDER BY attempt",
        delivery_id,
    )
    return {**dict(row), "attempt_log": [dict(a) for a in attempts]}


# --- erasure (GDPR) ----------------------------------------------------------------------

# Every table that names a learner by id (for the export); deliveries name them in their body.
LEARNER_TABLES = [("outgoing_mail", "user_id")]
# Where the mailed events keep a learner's names and addresses.
_PERSONAL_FIELDS = ["user_name", "user_email", "student_name", "student_email", "display_name", "username", "email"]


async def learner_personal_data(conn: Connection, user_id: str) -> list[str]:
    """The learner's names and addresses as the mail log holds them (recipients, and the
    names in the mailed events): to find their deliveries and outbox rows."""
    rows = await conn.fetch(
        "SELECT recipient AS v FROM outgoing_mail WHERE user_id = $1 "
        "UNION SELECT event ->> f FROM outgoing_mail, unnest($2::text[]) AS f WHERE user_id = $1",
        user_id, _PERSONAL_FIELDS,
    )
    return [row["v"] for row in rows if row["v"]]


def _delivery_match(needles: list[bytes], addresses: list[str]) -> tuple[str, list[Any]]:
    """Deliveries (webhook payloads, xAPI statements) whose body names the learner: their id,
    a name or an address as a JSON string, or an address anywhere (an xAPI ``mailto:``)."""
    return (
        "EXISTS (SELECT 1 FROM unnest($1::bytea[]) AS n (needle) "
        "        WHERE position(n.needle IN convert_to(body, 'UTF8')) > 0) "
        "OR EXISTS (SELECT 1 FROM unnest($2::text[]) AS a (address) WHERE strpos(body, a.address) > 0)",
        [needles, addresses],
    )


async def learner_deliveries(conn: Executor, needles: list[bytes], addresses: list[str]) -> list[dict[str, Any]]:
    where, args = _delivery_match(needles, addresses)
    rows = await conn.fetch(
        "SELECT id, destination_kind, destination_id, event_type, status, body, created_at, delivered_at "
        f"FROM deliveries WHERE {where} ORDER BY id",
        *args,
    )
    return [orjson.loads(orjson.dumps(dict(row))) for row in rows]


async def erase_learner(conn: Connection, user_id: str, needles: list[bytes], addresses: list[str]) -> dict[str, int]:
    """Delete the learner's mails with their attempts, and every delivery (webhook, xAPI)
    whose body names them, with its attempts (cascade)."""
    mail_ids = [row["id"] for row in await conn.fetch(
        "SELECT id FROM outgoing_mail WHERE user_id = $1 OR recipient = ANY($2::text[]) ORDER BY id FOR UPDATE",
        user_id, addresses)]
    where, args = _delivery_match(needles, addresses)

    async def deleted(sql: str, *params: object) -> int:
        return int((await conn.execute(sql, *params)).split()[-1])

    return {
        "mail_attempts": await deleted("DELETE FROM mail_attempts WHERE mail_id = ANY($1::bigint[])", mail_ids),
        "outgoing_mail": await deleted("DELETE FROM outgoing_mail WHERE id = ANY($1::bigint[])", mail_ids),
        "deliveries": await deleted(f"DELETE FROM deliveries WHERE {where}", *args),
    }
