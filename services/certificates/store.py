"""SQL of the certificates service (asyncpg, parameterised)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from services.certificates.domain import (
    Certificate,
    Identity,
    RegenerationProgress,
    WorkInFlight,
    certificate_number,
    new_verification_code,
    status_list_for,
)
from shared import outbox
from shared.db import Connection, Executor, fetch_one
from shared.events import CertificateRequested, Event

_CERT_COLUMNS = (
    "certificate_id, user_id, course_id, verification_code, student_name, student_email, "
    "course_title, completed_at, issued_at, current_version, issued_event_id, valid_until, revoked_at, "
    "revocation_reason, status_changed_at, attempt"
)


def _certificate(row: asyncpg.Record | None) -> Certificate | None:
    return None if row is None else Certificate.model_validate(dict(row))


async def get_certificate(
    conn: Executor, user_id: str, course_id: int, attempt: int | None = None
) -> Certificate | None:
    """The learner's certificate for the course and ``attempt``; without it, the latest
    attempt's (the highest attempt that has one)."""
    row = await conn.fetchrow(
        f"SELECT {_CERT_COLUMNS} FROM certificates WHERE user_id = $1 AND course_id = $2 "
        "AND ($3::integer IS NULL OR attempt = $3) ORDER BY attempt DESC LIMIT 1",
        user_id, course_id, attempt,
    )
    return _certificate(row)


async def get_certificate_by_code(conn: Executor, code: str) -> Certificate | None:
    row = await conn.fetchrow(f"SELECT {_CERT_COLUMNS} FROM certificates WHERE verification_code = $1", code)
    return _certificate(row)


async def get_certificate_by_id(conn: Executor, certificate_id: str) -> Certificate | None:
    row = await conn.fetchrow(f"SELECT {_CERT_COLUMNS} FROM certificates WHERE certificate_id = $1", certificate_id)
    return _certificate(row)


async def list_course_certificates(
    conn: Executor, course_id: int, limit: int, offset: int
) -> tuple[list[Certificate], int]:
    rows = await conn.fetch(
        f"SELECT {_CERT_COLUMNS} FROM certificates WHERE course_id = $1 ORDER BY issued_at, certificate_id "
        "LIMIT $2 OFFSET $3",
        course_id, limit, offset,
    )
    total = await conn.fetchval("SELECT count(*) FROM certificates WHERE course_id = $1", course_id)
    return [Certificate.model_validate(dict(r)) for r in rows], int(total)


@dataclass(frozen=True)
class PdfFile:
    certificate_id: str
    version: int
    pdf: bytes
    sha256: str
    rendered_at: datetime


async def get_pdf(conn: Executor, code: str, version: int | None) -> PdfFile | None:
    return await fetch_one(
        conn, PdfFile,
        "SELECT f.certificate_id, f.version, f.pdf, f.sha256, f.rendered_at "
        "FROM certificates c JOIN certificate_files f ON f.certificate_id = c.certificate_id "
        "WHERE c.verification_code = $1 AND f.version = coalesce($2, c.current_version)",
        code, version,
    )


_IDENTITY_COLUMNS = (
    "user_id, course_id, certificate_id, verification_code, issued_at, status_list, status_index, attempt"
)


async def reserve_identity(
    pool: asyncpg.Pool, user_id: str, course_id: int, now: datetime, new_code: Callable[[], str],
    new_status_index: Callable[[], int], *, holder: str, lease_s: float, attempt: int = 1,
) -> Identity:
    """The certificate's id and code, reserved once per (learner, course, attempt) before rendering,
    and leased to ``holder`` for ``lease_s`` seconds (renewed while it renders).

    An advisory lock on the (learner, course) pair serialises racing workers: the second
    finds the first one's row and takes the lease over, keeping the id and code (a worker
    that died mid-render leaves its reservation to whoever gets the work next). The
    per-year counter row is locked only for this short transaction, so numbers have no gaps.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7305114))", f"{user_id}:{course_id}")
        row = await conn.fetchrow(
            "UPDATE certificate_identities SET lease_until = now() + make_interval(secs => $3), leased_by = $4 "
            "WHERE user_id = $1 AND course_id = $2 AND attempt = $5 "
            f"RETURNING {_IDENTITY_COLUMNS}",
            user_id, course_id, lease_s, holder, attempt,
        )
        if row is None:
            sequence = await conn.fetchval(
                "INSERT INTO certificate_numbers (year, last_number) VALUES ($1, 1) "
                "ON CONFLICT (year) DO UPDATE SET last_number = certificate_numbers.last_number + 1 "
                "RETURNING last_number",
                now.year,
            )
            number, code = certificate_number(now.year, sequence), new_code()
            status_list = await _status_list_with_room(conn)
            while row is None:
                try:
                    # A savepoint: an index another reservation took meanwhile is drawn again.
                    async with conn.transaction():
                        row = await conn.fetchrow(
                            "INSERT INTO certificate_identities (user_id, course_id, certificate_id, "
                            "verification_code, issued_at, lease_until, leased_by, status_list, status_index, "
                            "attempt) "
                            "VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6), $7, $8, $9, $10) "
                            f"RETURNING {_IDENTITY_COLUMNS}",
                            user_id, course_id, number, code, now, lease_s, holder, status_list,
                            new_status_index(), attempt,
                        )
                except asyncpg.UniqueViolationError as exc:
                    if exc.constraint_name != "certificate_identities_status":
                        raise
        return Identity(**dict(row))


async def _status_list_with_room(conn: Connection) -> int:
    """The list a new entry goes on (``domain.status_list_for``); the caller's transaction
    holds no lock on it: two reservations may both take the last free half-list slot, which
    only fills a list a little past half."""
    row = await conn.fetchrow(
        "SELECT status_list, count(*) AS n FROM certificate_identities "
        "WHERE status_list = (SELECT max(status_list) FROM certificate_identities) GROUP BY status_list"
    )
    return 1 if row is None else status_list_for(row["n"], row["status_list"])


async def get_identity(conn: Executor, certificate_id: str) -> Identity:
    identity = await fetch_one(
        conn, Identity, f"SELECT {_IDENTITY_COLUMNS} FROM certificate_identities WHERE certificate_id = $1",
        certificate_id,
    )
    if identity is None:
        raise LookupError(f"no identity reserved for {certificate_id}")
    return identity


@dataclass(frozen=True)
class StoredCredential:
    credential: dict[str, Any]
    version: int
    current_version: int
    valid_until: datetime | None
    revoked_at: datetime | None
    revocation_reason: str | None
    status_list: int | None
    status_index: int | None


async def get_credential(conn: Executor, code: str, version: int | None) -> StoredCredential | None:
    """The credential of a certificate's current rendering (or ``version``), with its status."""
    return await fetch_one(
        conn, StoredCredential,
        "SELECT f.credential, f.version, c.current_version, c.valid_until, c.revoked_at, c.revocation_reason, "
        "i.status_list, i.status_index "
        "FROM certificates c JOIN certificate_files f ON f.certificate_id = c.certificate_id "
        "JOIN certificate_identities i ON i.certificate_id = c.certificate_id "
        "WHERE c.verification_code = $1 AND f.version = coalesce($2, c.current_version) "
        "AND f.credential IS NOT NULL",
        code, version,
    )


async def renew_lease(
    pool: asyncpg.Pool, user_id: str, course_id: int, *, holder: str, lease_s: float, attempt: int = 1
) -> bool:
    """Extend ``holder``'s lease; False if another worker has taken the reservation over."""
    renewed = await pool.fetchval(
        "UPDATE certificate_identities SET lease_until = now() + make_interval(secs => $3) "
        "WHERE user_id = $1 AND course_id = $2 AND attempt = $5 AND leased_by = $4 RETURNING true",
        user_id, course_id, lease_s, holder, attempt,
    )
    return bool(renewed)


async def work_in_flight(conn: Executor, user_id: str, course_id: int) -> WorkInFlight:
    """A worker's lease and the API's last hand-over for a (learner, course), on the database's
    clock: those of the latest attempt that has them."""
    row = await conn.fetchrow(
        "SELECT now() AS now, i.lease_until, r.requested_at FROM (SELECT 1) AS one "
        "LEFT JOIN LATERAL (SELECT lease_until FROM certificate_identities WHERE user_id = $1 AND course_id = $2 "
        "                   ORDER BY attempt DESC LIMIT 1) AS i ON true "
        "LEFT JOIN LATERAL (SELECT requested_at FROM certificate_requests WHERE user_id = $1 AND course_id = $2 "
        "                   ORDER BY attempt DESC LIMIT 1) AS r ON true",
        user_id, course_id,
    )
    assert row is not None
    return WorkInFlight(now=row["now"], lease_until=row["lease_until"], requested_at=row["requested_at"])


async def insert_certificate(
    conn: Connection,
    identity: Identity,
    *,
    student_name: str,
    student_email: str,
    course_title: str,
    completed_at: datetime,
    source_event_id: object,
    issued_event_id: UUID,
    pdf: bytes,
    sha256: str,
    template_revision: int,
    rendered_by: str,
    credential: dict[str, Any] | None,
    valid_until: datetime | None,
) -> bool:
    """Store the record and its first PDF; False if this (learner, course, attempt) already has one.

    A racing insert of the same pair waits on the unique key until the other commits, then
    does nothing: exactly one record, and the caller publishes only when this returns True.
    """
    inserted = await conn.fetchval(
        "INSERT INTO certificates (certificate_id, user_id, course_id, verification_code, student_name, "
        "student_email, course_title, completed_at, issued_at, source_event_id, issued_event_id, valid_until, "
        "attempt) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) "
        "ON CONFLICT (user_id, course_id, attempt) DO NOTHING RETURNING true",
        identity.certificate_id, identity.user_id, identity.course_id, identity.verification_code,
        student_name, student_email, course_title, completed_at, identity.issued_at, source_event_id,
        issued_event_id, valid_until, identity.attempt,
    )
    if not inserted:
        return False
    await conn.execute(
        "INSERT INTO certificate_files (certificate_id, version, pdf, sha256, template_revision, rendered_by, "
        "credential) VALUES ($1, 1, $2, $3, $4, $5, $6)",
        identity.certificate_id, pdf, sha256, template_revision, rendered_by, credential,
    )
    return True


async def add_version(
    conn: Connection,
    certificate_id: str,
    *,
    pdf: bytes,
    sha256: str,
    template_revision: int,
    regeneration_id: int | None,
    rendered_by: str,
    credential: dict[str, Any] | None,
) -> int:
    """A new rendering becomes the current one; earlier versions stay."""
    # The row lock orders concurrent re-renderings of one certificate.
    version = await conn.fetchval(
        "UPDATE certificates SET current_version = current_version + 1 WHERE certificate_id = $1 "
        "RETURNING current_version",
        certificate_id,
    )
    await conn.execute(
        "INSERT INTO certificate_files (certificate_id, version, pdf, sha256, template_revision, "
        "regeneration_id, rendered_by, credential) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        certificate_id, version, pdf, sha256, template_revision, regeneration_id, rendered_by, credential,
    )
    return int(version)


async def list_versions(conn: Executor, certificate_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT version, sha256, template_revision, regeneration_id, rendered_at, length(pdf) AS size "
        "FROM certificate_files WHERE certificate_id = $1 ORDER BY version",
        certificate_id,
    )


# -- completions handed to the workers by the API ---------------------------------------

async def record_request(conn: Connection, event: CertificateRequested, now: datetime) -> None:
    """Remember the hand-over and queue the event, in the caller's transaction."""
    attempt = event.completion.attempt if event.completion is not None else event.attempt
    await conn.execute(
        "INSERT INTO certificate_requests (user_id, course_id, attempt, requested_at) VALUES ($1, $2, $4, $3) "
        "ON CONFLICT (user_id, course_id, attempt) DO UPDATE SET requested_at = EXCLUDED.requested_at",
        event.user_id, event.course_id, now, attempt,
    )
    await outbox.add(conn, event)


# -- templates and regeneration -------------------------------------------------------------

@dataclass(frozen=True)
class CourseTemplate:
    course_id: int
    source: str | None
    revision: int
    updated_at: datetime | None


async def get_template(conn: Executor, course_id: int) -> CourseTemplate:
    row = await conn.fetchrow(
        "SELECT course_id, source, revision, updated_at FROM course_templates WHERE course_id = $1", course_id
    )
    if row is None:
        return CourseTemplate(course_id, None, 0, None)
    return CourseTemplate(**dict(row))


async def set_template(conn: Executor, course_id: int, source: str | None, by: str) -> int:
    revision: int = await conn.fetchval(
        "INSERT INTO course_templates (course_id, source, revision, updated_by) VALUES ($1, $2, 1, $3) "
        "ON CONFLICT (course_id) DO UPDATE SET source = EXCLUDED.source, "
        "revision = course_templates.revision + 1, updated_at = now(), updated_by = EXCLUDED.updated_by "
        "RETURNING revision",
        course_id, source, by,
    )
    return revision


async def request_regeneration(
    conn: Connection, course_id: int, requested_by: str, make_event: Callable[[str, int, int, int], Event]
) -> tuple[int, int]:
    """Queue one re-render per issued certificate of the course (every attempt's); returns
    (id, count). ``make_event(user_id, course_id, regeneration_id, attempt)``."""
    async with conn.transaction():
        issued = await conn.fetch(
            "SELECT user_id, attempt FROM certificates WHERE course_id = $1 ORDER BY certificate_id", course_id
        )
        regeneration_id: int = await conn.fetchval(
            "INSERT INTO regenerations (course_id, total, requested_by) VALUES ($1, $2, $3) RETURNING id",
            course_id, len(issued), requested_by,
        )
        await outbox.add_many(
            conn, [make_event(r["user_id"], course_id, regeneration_id, r["attempt"]) for r in issued]
        )
    return regeneration_id, len(issued)


async def regeneration_status(conn: Executor, course_id: int, regeneration_id: int) -> RegenerationProgress | None:
    return await fetch_one(
        conn, RegenerationProgress,
        "SELECT r.id AS regeneration_id, r.course_id, r.total, r.requested_at, r.requested_by, "
        "(SELECT count(*) FROM certificate_files f WHERE f.regeneration_id = r.id) AS done "
        "FROM regenerations r WHERE r.id = $1 AND r.course_id = $2",
        regeneration_id, course_id,
    )


# -- revocation ------------------------------------------------------------------------------

async def lock_certificate(conn: Connection, certificate_id: str) -> Certificate | None:
    """The certificate, its row locked: status changes of one certificate are serialised."""
    row = await conn.fetchrow(f"SELECT {_CERT_COLUMNS} FROM certificates WHERE certificate_id = $1 FOR UPDATE",
                              certificate_id)
    return _certificate(row)


async def change_status(
    conn: Connection, certificate_id: str, *, revoked_at: datetime | None, reason: str, changed_by: str,
    changed_at: datetime,
) -> None:
    """Revoke (``revoked_at`` set) or reinstate; recorded, and the certificate's status list
    marked changed in the same transaction."""
    await conn.execute(
        "UPDATE certificates SET revoked_at = $2, revocation_reason = $3, status_changed_at = $4 "
        "WHERE certificate_id = $1",
        certificate_id, revoked_at, reason if revoked_at is not None else None, changed_at,
    )
    await conn.execute(
        "INSERT INTO certificate_status_changes (certificate_id, status, reason, changed_by, changed_at) "
        "VALUES ($1, $2, $3, $4, $5)",
        certificate_id, "revoked" if revoked_at is not None else "reinstated", reason, changed_by, changed_at,
    )
    await conn.execute(
        "INSERT INTO status_lists (status_list, revision) "
        "SELECT status_list, 1 FROM certificate_identities WHERE certificate_id = $1 AND status_list IS NOT NULL "
        "ON CONFLICT (status_list) DO UPDATE SET revision = status_lists.revision + 1",
        certificate_id,
    )


@dataclass(frozen=True)
class StatusListState:
    revision: int
    credential: dict[str, Any] | None
    signed_revision: int | None


async def get_status_list(conn: Executor, status_list: int) -> StatusListState | None:
    """The list's revision and its signed credential; None when no certificate is on it."""
    return await fetch_one(
        conn, StatusListState,
        "SELECT coalesce(s.revision, 0) AS revision, s.credential, s.signed_revision "
        "FROM (SELECT 1 FROM certificate_identities WHERE status_list = $1 LIMIT 1) AS used "
        "LEFT JOIN status_lists s ON s.status_list = $1",
        status_list,
    )


async def revoked_indexes(conn: Executor, status_list: int) -> list[int]:
    rows = await conn.fetch(
        "SELECT i.status_index FROM certificates c JOIN certificate_identities i USING (certificate_id) "
        "WHERE i.status_list = $1 AND c.revoked_at IS NOT NULL",
        status_list,
    )
    return [row["status_index"] for row in rows]


async def save_status_list(conn: Executor, status_list: int, revision: int, credential: dict[str, Any]) -> None:
    """Keep the list signed for ``revision``, unless a newer change came meanwhile (then the
    next request signs again)."""
    await conn.execute(
        "INSERT INTO status_lists (status_list, revision, credential, signed_revision, signed_at) "
        "VALUES ($1, $2, $3, $2, now()) ON CONFLICT (status_list) DO UPDATE "
        "SET credential = $3, signed_revision = $2, signed_at = now() WHERE status_lists.revision = $2",
        status_list, revision, credential,
    )



# -- erasure (GDPR) ------------------------------------------------------------------------------

# Every table that names a learner, by its user column (for the export).
LEARNER_TABLES = [("certificate_identities", "user_id"), ("certificates", "user_id"),
                  ("certificate_requests", "user_id")]


async def learner_personal_data(conn: Connection, user_id: str) -> list[str]:
    """The names and addresses on the learner's certificates (to find them in the outbox)."""
    rows = await conn.fetch(
        "SELECT student_name AS v FROM certificates WHERE user_id = $1 "
        "UNION SELECT student_email FROM certificates WHERE user_id = $1",
        user_id,
    )
    return [row["v"] for row in rows if row["v"]]


async def learner_certificate_files(conn: Executor, user_id: str) -> list[dict[str, Any]]:
    """The learner's certificate files as the export lists them: which, not their bytes."""
    rows = await conn.fetch(
        "SELECT f.certificate_id, f.version, f.rendered_at, f.credential IS NOT NULL AS has_credential "
        "FROM certificate_files f JOIN certificates c USING (certificate_id) WHERE c.user_id = $1 "
        "ORDER BY f.certificate_id, f.version",
        user_id,
    )
    return [{**dict(row), "rendered_at": row["rendered_at"].isoformat()} for row in rows]


async def erase_learner(conn: Connection, user_id: str, pseudonym: str, now: datetime) -> dict[str, int]:
    """Revoke the learner's certificates (the status lists say so from their next signing,
    so a copy of a credential no longer verifies), delete every PDF and signed credential of
    theirs, and keep only an anonymous record under ``pseudonym``: the certificate numbers
    and status-list entries stay taken, the revocation stays listed, and the verification
    code is replaced, so the learner's code finds nothing. Certificates are locked in id order."""
    ids = [row["certificate_id"] for row in await conn.fetch(
        "SELECT certificate_id FROM certificates WHERE user_id = $1 ORDER BY certificate_id FOR UPDATE", user_id)]
    revoked = 0
    for certificate_id in ids:
        cert = await lock_certificate(conn, certificate_id)
        if cert is not None and cert.revoked_at is None:
            await change_status(conn, certificate_id, revoked_at=now, reason="erased at the learner's request",
                                changed_by="erasure", changed_at=now)
            revoked += 1
        # A new code nobody knows: the learner's code (on their PDF, in their mails) no longer
        # finds the record.
        code = new_verification_code()
        await conn.execute("UPDATE certificates SET verification_code = $2 WHERE certificate_id = $1",
                           certificate_id, code)
        await conn.execute("UPDATE certificate_identities SET verification_code = $2 WHERE certificate_id = $1",
                           certificate_id, code)

    async def changed(sql: str, *args: object) -> int:
        return int((await conn.execute(sql, *args)).split()[-1])

    return {
        "revoked": revoked,
        "certificate_files": await changed("DELETE FROM certificate_files WHERE certificate_id = ANY($1::text[])", ids),
        "certificates": await changed(
            "UPDATE certificates SET user_id = $2, student_name = '', student_email = '' WHERE user_id = $1",
            user_id, pseudonym),
        "certificate_identities": await changed(
            "UPDATE certificate_identities SET user_id = $2 WHERE user_id = $1", user_id, pseudonym),
        "certificate_requests": await changed("DELETE FROM certificate_requests WHERE user_id = $1", user_id),
    }
