"""SQL of the enrollment service: courses, lessons, enrollments and application passwords.
Parameterised only."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from pydantic import BaseModel

from services.enrollment.domain import (
    AppPassword,
    AttemptWindow,
    Course,
    DueCompletion,
    Enrollment,
    EnrollmentStatus,
    Lesson,
    Profile,
    SortOrder,
    StudentOrderBy,
)
from shared.db import Connection, Executor, fetch_all, fetch_one
from shared.erasure import ErasureRequest
from shared.events import EnrollmentChanged, LearnerErased, RecertificationScheduled

_COURSE_COLUMNS = (
    "id, title, slug, description, status, requires_sequential_progress, certificate_enabled, "
    "certificate_validity_days, video_completion_threshold, instructor_ids, revision, created_at, updated_at, "
    "last_event_id, last_event_at, recertify_after_days"
)
# Columns a course update may set (names come from this set only, never from input).
COURSE_FIELDS = frozenset(
    {
        "title", "slug", "description", "status", "requires_sequential_progress", "certificate_enabled",
        "certificate_validity_days", "video_completion_threshold", "instructor_ids", "recertify_after_days",
    }
)
LESSON_FIELDS = frozenset({"title", "is_required", "duration_seconds", "kind", "video_completion_threshold"})


class SlugTaken(Exception):
    pass


# --- courses ---------------------------------------------------------------------------


async def get_course(conn: Connection, course_id: int, *, lock: bool = False) -> Course | None:
    """The course with its lessons in order; ``lock`` holds the course row until commit.

    Every catalog change locks the course row first, so changes of one course (and the
    revisions and outbox rows they write) happen one after another.
    """
    row = await conn.fetchrow(
        f"SELECT {_COURSE_COLUMNS} FROM courses WHERE id = $1" + (" FOR UPDATE" if lock else ""), course_id
    )
    if row is None:
        return None
    lessons = await conn.fetch(
        "SELECT id, course_id, title, position AS \"order\", is_required, duration_seconds, kind, "
        "video_completion_threshold FROM lessons WHERE course_id = $1 AND archived_at IS NULL ORDER BY position",
        course_id,
    )
    return Course(**dict(row), lessons=[Lesson(**dict(r)) for r in lessons])


async def course_head(conn: Connection, course_id: int) -> tuple[int, str] | None:
    """The course's current (revision, status), without its lessons: the cheap confirmation."""
    row = await conn.fetchrow("SELECT revision, status FROM courses WHERE id = $1", course_id)
    return (row["revision"], row["status"]) if row is not None else None


async def insert_course(
    conn: Connection, fields: dict[str, Any], now: datetime, event_id: UUID
) -> int:
    try:
        course_id: int = await conn.fetchval(
            "INSERT INTO courses (title, slug, description, requires_sequential_progress, certificate_enabled, "
            "instructor_ids, created_at, updated_at, last_event_id, last_event_at, certificate_validity_days, "
            "video_completion_threshold, recertify_after_days) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $7, $9, $10, $11) RETURNING id",
            fields["title"], fields["slug"], fields.get("description", ""),
            fields.get("requires_sequential_progress", False), fields.get("certificate_enabled", True),
            fields.get("instructor_ids", []), now, event_id, fields.get("certificate_validity_days"),
            fields.get("video_completion_threshold"), fields.get("recertify_after_days"),
        )
    except asyncpg.UniqueViolationError as exc:
        raise SlugTaken from exc
    return course_id


async def slug_exists(conn: Connection, slug: str) -> bool:
    return bool(await conn.fetchval("SELECT true FROM courses WHERE slug = $1", slug))


async def bump_course(
    conn: Connection, course_id: int, changes: dict[str, Any], now: datetime, event_id: UUID
) -> None:
    """Apply ``changes`` and record a new revision, whose event is ``event_id``."""
    unknown = set(changes) - COURSE_FIELDS
    if unknown:
        raise ValueError(f"not course fields: {sorted(unknown)}")
    names = sorted(changes)
    sets = "".join(f", {name} = ${i}" for i, name in enumerate(names, start=5))
    try:
        await conn.execute(
            "UPDATE courses SET revision = revision + 1, updated_at = $2, last_event_id = $3, "
            f"last_event_at = $4{sets} WHERE id = $1",
            course_id, now, event_id, now, *[changes[n] for n in names],
        )
    except asyncpg.UniqueViolationError as exc:
        raise SlugTaken from exc


async def insert_lesson(conn: Connection, course_id: int, fields: dict[str, Any], position: int) -> int:
    lesson_id: int = await conn.fetchval(
        "INSERT INTO lessons (course_id, title, position, is_required, duration_seconds, kind, "
        "video_completion_threshold) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        course_id, fields["title"], position, fields.get("is_required", True),
        fields.get("duration_seconds"), fields.get("kind", "video"), fields.get("video_completion_threshold"),
    )
    return lesson_id


async def update_lesson(conn: Connection, lesson_id: int, changes: dict[str, Any]) -> None:
    unknown = set(changes) - LESSON_FIELDS
    if unknown:
        raise ValueError(f"not lesson fields: {sorted(unknown)}")
    if not changes:
        return
    names = sorted(changes)
    sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=2))
    await conn.execute(f"UPDATE lessons SET {sets} WHERE id = $1", lesson_id, *[changes[n] for n in names])


async def archive_lesson(conn: Connection, lesson_id: int, now: datetime) -> None:
    """Take the lesson out of its course (no position; see migration 005); renumber the rest after."""
    await conn.execute(
        "UPDATE lessons SET archived_at = $2, position = NULL WHERE id = $1 AND archived_at IS NULL", lesson_id, now
    )


async def set_lesson_order(conn: Connection, course_id: int, lesson_ids: list[int]) -> None:
    # One statement; the (course_id, position) uniqueness is checked at commit.
    await conn.execute(
        "UPDATE lessons AS l SET position = o.position "
        "FROM unnest($2::bigint[]) WITH ORDINALITY AS o(id, position) "
        "WHERE l.id = o.id AND l.course_id = $1 AND l.position <> o.position",
        course_id, lesson_ids,
    )


async def course_ids(conn: Connection) -> list[int]:
    return [r["id"] for r in await conn.fetch("SELECT id FROM courses ORDER BY id")]


# --- enrollments -----------------------------------------------------------------------

_ENROLLMENT_COLUMNS = (
    "id, user_id, course_id, status, attempt, revision, enrolled_at, unenrolled_at, username, display_name, email, "
    "avatar, progress_percentage, completed_lessons, total_lessons, progress_at, progress_seq, last_accessed, "
    "completed_at, certificate_id, certificate_url, certificate_issued_at, certificate_revoked_at, "
    "certificate_revocation_reason, certificate_status_changed_at, last_event_id, last_event_at"
)


async def get_enrollment(
    conn: Connection, user_id: str, course_id: int, *, lock: bool = False
) -> Enrollment | None:
    return await fetch_one(
        conn, Enrollment,
        f"SELECT {_ENROLLMENT_COLUMNS} FROM enrollments WHERE user_id = $1 AND course_id = $2"
        + (" FOR UPDATE" if lock else ""),
        user_id, course_id,
    )


async def insert_enrollment(
    conn: Connection, user_id: str, course_id: int, profile: Profile, now: datetime, event_id: UUID
) -> Enrollment | None:
    """The new enrollment, or ``None`` if a concurrent request created it first."""
    return await fetch_one(
        conn, Enrollment,
        "INSERT INTO enrollments (user_id, course_id, status, enrolled_at, username, display_name, email, avatar, "
        "last_event_id, last_event_at) VALUES ($1, $2, 'active', $3, $4, $5, $6, $7, $8, $3) "
        f"ON CONFLICT (user_id, course_id) DO NOTHING RETURNING {_ENROLLMENT_COLUMNS}",
        user_id, course_id, now, profile.username, profile.display_name, profile.email, profile.avatar, event_id,
    )


async def change_enrollment(
    conn: Connection,
    enrollment_id: int,
    status: EnrollmentStatus,
    now: datetime,
    event_id: UUID,
    *,
    profile: Profile | None = None,
) -> Enrollment:
    """A published change of status (and profile): new revision, new event id."""
    row = await conn.fetchrow(
        "UPDATE enrollments SET status = $2, revision = revision + 1, last_event_id = $3, last_event_at = $4, "
        "unenrolled_at = CASE WHEN $2 = 'unenrolled' THEN $4 ELSE unenrolled_at END, "
        "username = coalesce($5, username), display_name = coalesce($6, display_name), "
        "email = coalesce($7, email), avatar = CASE WHEN $5::text IS NULL THEN avatar ELSE $8 END "
        f"WHERE id = $1 RETURNING {_ENROLLMENT_COLUMNS}",
        enrollment_id, status, event_id, now,
        profile.username if profile else None, profile.display_name if profile else None,
        profile.email if profile else None, profile.avatar if profile else None,
    )
    assert row is not None
    return Enrollment(**dict(row))


async def start_attempt(
    conn: Connection,
    enrollment_id: int,
    attempt: int,
    now: datetime,
    event_id: UUID,
    *,
    only_completed: bool = False,
) -> Enrollment | None:
    """Reset the enrollment to a new attempt (``attempt`` + 1) from zero: active, not completed,
    progress 0 of the same total, stamped ``now`` so that progress facts from before are
    older; a published change (new revision, new event id). The certificate fields stay.

    Conditional on the enrollment still being at ``attempt`` (and completed, with
    ``only_completed``): ``None`` when it is not, so one attempt is reset at most once.
    """
    return await fetch_one(
        conn, Enrollment,
        "UPDATE enrollments SET attempt = attempt + 1, status = 'active', completed_at = NULL, "
        "progress_percentage = 0, completed_lessons = 0, progress_at = $3, progress_seq = $3, "
        "revision = revision + 1, last_event_id = $4, last_event_at = $3 "
        "WHERE id = $1 AND attempt = $2 AND (NOT $5 OR status = 'completed') "
        f"RETURNING {_ENROLLMENT_COLUMNS}",
        enrollment_id, attempt, now, event_id, only_completed,
    )


async def set_progress(
    conn: Connection,
    enrollment_id: int,
    *,
    percentage: int,
    completed_lessons: int,
    total_lessons: int,
    at: datetime,
    seq: datetime,
) -> None:
    await conn.execute(
        "UPDATE enrollments SET progress_percentage = $2, completed_lessons = $3, total_lessons = $4, "
        "progress_at = $5, progress_seq = $6 WHERE id = $1",
        enrollment_id, percentage, completed_lessons, total_lessons, at, seq,
    )


async def set_progress_batch(
    conn: Connection,
    course_id: int,
    learners: list[tuple[str, int, int, int, int]],
    *,
    at: datetime,
    seq: datetime,
) -> int:
    """(user_id, percentage, completed, total, attempt) of many learners of one course, in
    one statement, each only where it is of the learner's current attempt (figures of an
    attempt reset since are history) and (``at``, ``seq``) is newer than the stored progress
    fact (``domain.is_newer_progress``'s rule). Returns how many rows changed."""
    # The rows are locked in id order first: two batches touching the same learners (a
    # redelivery during a rebalance) wait for each other instead of deadlocking.
    status: str = await conn.execute(
        "UPDATE enrollments AS e SET progress_percentage = s.p, completed_lessons = s.c, total_lessons = s.t, "
        "progress_at = $6, progress_seq = $7 "
        "FROM (SELECT l.id, x.p, x.c, x.t, x.a FROM enrollments AS l "
        "      JOIN unnest($2::text[], $3::int[], $4::int[], $5::int[], $8::int[]) AS x (u, p, c, t, a) "
        "      ON l.user_id = x.u "
        "      WHERE l.course_id = $1 ORDER BY l.id FOR UPDATE OF l) AS s "
        "WHERE e.id = s.id AND e.attempt = s.a "
        "AND (e.progress_at IS NULL OR e.progress_seq IS NULL OR (e.progress_at, e.progress_seq) < ($6, $7))",
        course_id, [r[0] for r in learners], [r[1] for r in learners], [r[2] for r in learners],
        [r[3] for r in learners], at, seq, [r[4] for r in learners],
    )
    return int(status.split()[-1])


async def touch_last_accessed(conn: Connection, enrollment_id: int, at: datetime) -> None:
    await conn.execute(
        "UPDATE enrollments SET last_accessed = greatest(last_accessed, $2) WHERE id = $1", enrollment_id, at
    )


async def set_completion(
    conn: Connection,
    enrollment_id: int,
    *,
    completed_at: datetime,
    progress_to_full: bool,
    seq: datetime,
) -> None:
    await conn.execute(
        "UPDATE enrollments SET completed_at = $2, "
        "progress_percentage = CASE WHEN $3 THEN 100 ELSE progress_percentage END, "
        "completed_lessons = CASE WHEN $3 THEN greatest(completed_lessons, total_lessons) ELSE completed_lessons END, "
        "progress_at = CASE WHEN $3 THEN $2 ELSE progress_at END, "
        "progress_seq = CASE WHEN $3 THEN $4 ELSE progress_seq END "
        "WHERE id = $1",
        enrollment_id, completed_at, progress_to_full, seq,
    )


async def set_certificate(
    conn: Connection, enrollment_id: int, *, certificate_id: str, url: str, issued_at: datetime
) -> None:
    await conn.execute(
        "UPDATE enrollments SET certificate_id = $2, certificate_url = $3, certificate_issued_at = $4 WHERE id = $1",
        enrollment_id, certificate_id, url, issued_at,
    )


async def set_certificate_status(
    conn: Connection,
    enrollment_id: int,
    *,
    revoked_at: datetime | None,
    reason: str | None,
    changed_at: datetime,
) -> None:
    await conn.execute(
        "UPDATE enrollments SET certificate_revoked_at = $2, certificate_revocation_reason = $3, "
        "certificate_status_changed_at = $4 WHERE id = $1",
        enrollment_id, revoked_at, reason, changed_at,
    )


# --- recertification -------------------------------------------------------------------


async def completions_due_for_notice(
    conn: Connection, now: datetime, notice_days: int, limit: int
) -> list[DueCompletion]:
    """Completed enrollments of recertifying courses, completed at least
    ``recertify_after_days - notice_days`` days before ``now``, whose current attempt has no
    notice yet; locked (rows another transaction holds are skipped, for the next run)."""
    rows = await conn.fetch(
        "SELECT e.id AS enrollment_id, e.user_id, e.course_id, e.attempt, e.completed_at, e.display_name, "
        "e.email, c.title AS course_title, c.recertify_after_days "
        "FROM enrollments e JOIN courses c ON c.id = e.course_id "
        "WHERE c.recertify_after_days IS NOT NULL AND e.status = 'completed' AND e.completed_at IS NOT NULL "
        "AND e.completed_at + make_interval(days => c.recertify_after_days - $2) <= $1 "
        "AND NOT EXISTS (SELECT 1 FROM recertification_notices n "
        "                WHERE n.enrollment_id = e.id AND n.attempt = e.attempt) "
        "ORDER BY e.id LIMIT $3 FOR UPDATE OF e SKIP LOCKED",
        now, notice_days, limit,
    )
    return [DueCompletion(**dict(r)) for r in rows]


async def insert_notice(conn: Connection, event: RecertificationScheduled, now: datetime) -> bool:
    """Record the notice of (enrollment, attempt); False if it was recorded already."""
    inserted = await conn.fetchval(
        "INSERT INTO recertification_notices (enrollment_id, attempt, completed_at, reset_at, event_id, event, "
        "created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) "
        "ON CONFLICT (enrollment_id, attempt) DO NOTHING RETURNING true",
        event.enrollment_id, event.attempt, event.completed_at, event.reset_at, event.event_id,
        event.model_dump(mode="json"), now,
    )
    return bool(inserted)


async def notices_due_for_reset(conn: Connection, now: datetime, limit: int) -> list[tuple[int, int]]:
    """(enrollment id, attempt) of pending notices whose reset time has come, whose
    enrollment is still completed at that attempt, in a course that still recertifies;
    notice and enrollment rows locked (rows another transaction holds are skipped)."""
    rows = await conn.fetch(
        "SELECT n.enrollment_id, n.attempt FROM recertification_notices n "
        "JOIN enrollments e ON e.id = n.enrollment_id JOIN courses c ON c.id = e.course_id "
        "WHERE n.settled_at IS NULL AND n.reset_at <= $1 AND e.attempt = n.attempt AND e.status = 'completed' "
        "AND c.recertify_after_days IS NOT NULL "
        "ORDER BY n.reset_at, n.enrollment_id LIMIT $2 FOR UPDATE OF n, e SKIP LOCKED",
        now, limit,
    )
    return [(r["enrollment_id"], r["attempt"]) for r in rows]


async def settle_notice(conn: Connection, enrollment_id: int, attempt: int, now: datetime) -> None:
    await conn.execute(
        "UPDATE recertification_notices SET settled_at = $3 WHERE enrollment_id = $1 AND attempt = $2",
        enrollment_id, attempt, now,
    )


async def settle_overtaken_notices(conn: Connection, now: datetime) -> int:
    """Settle pending notices of attempts that were reset otherwise (by staff): nothing is left to do."""
    status = await conn.execute(
        "UPDATE recertification_notices n SET settled_at = $1 FROM enrollments e "
        "WHERE e.id = n.enrollment_id AND n.settled_at IS NULL AND e.attempt > n.attempt",
        now,
    )
    return int(status.split()[-1])


async def get_notice(conn: Connection, event_id: UUID) -> RecertificationScheduled | None:
    body = await conn.fetchval("SELECT event FROM recertification_notices WHERE event_id = $1", event_id)
    return RecertificationScheduled.model_validate(body) if body is not None else None


async def keep_enrollment_event(conn: Connection, event: EnrollmentChanged) -> None:
    await conn.execute(
        "INSERT INTO enrollment_events (event_id, enrollment_id, event) VALUES ($1, $2, $3)",
        event.event_id, event.enrollment_id, event.model_dump(mode="json"),
    )


async def get_enrollment_event(conn: Connection, event_id: UUID) -> EnrollmentChanged | None:
    body = await conn.fetchval("SELECT event FROM enrollment_events WHERE event_id = $1", event_id)
    return EnrollmentChanged.model_validate(body) if body is not None else None


# --- lists -----------------------------------------------------------------------------


class StudentRow(BaseModel):
    enrollment_id: int
    user_id: str
    username: str
    display_name: str
    email: str
    avatar: str | None
    status: EnrollmentStatus
    attempt: int
    progress_percentage: int
    enrolled_at: datetime
    last_accessed: datetime | None
    completed_at: datetime | None
    certificate_url: str | None
    certificate_revoked_at: datetime | None  # null: not revoked (or no certificate)
    certificate_revocation_reason: str | None


class MyCourseRow(BaseModel):
    enrollment_id: int
    course_id: int
    course_title: str
    course_slug: str
    course_status: str
    status: EnrollmentStatus
    attempt: int
    progress_percentage: int
    completed_lessons: int
    total_lessons: int
    enrolled_at: datetime
    last_accessed: datetime | None
    completed_at: datetime | None
    certificate_url: str | None
    certificate_revoked_at: datetime | None
    certificate_revocation_reason: str | None


# Sort expressions by the API's orderby names; only these strings ever reach the SQL.
_STUDENT_SORT: dict[StudentOrderBy, str] = {
    "enrolled_at": "enrolled_at",
    "last_accessed": "last_accessed",
    "progress_percentage": "progress_percentage",
    "display_name": "lower(display_name)",
}
_SORT_ORDER: dict[SortOrder, str] = {"asc": "ASC", "desc": "DESC"}


async def _counted_page(
    pool: asyncpg.Pool, count_sql: str, page_sql: str, args: tuple[Any, ...], limit: int, offset: int
) -> tuple[int, list[asyncpg.Record]]:
    """A total and one page of rows (``page_sql`` takes ``args``, then LIMIT and OFFSET),
    read from one snapshot so that the total and the page agree."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        total: int = await conn.fetchval(count_sql, *args)
        rows = await conn.fetch(page_sql, *args, limit, offset)
    return total, rows


class ManagedCourseRow(BaseModel):
    id: int
    title: str
    slug: str
    status: str
    instructor_ids: list[str]
    total_lessons: int
    learners: int  # enrolled now (active or completed)
    completed: int
    created_at: datetime
    updated_at: datetime


async def list_managed_courses(
    pool: asyncpg.Pool, instructor_id: str | None, limit: int, offset: int
) -> tuple[int, list[ManagedCourseRow]]:
    """Every course (``instructor_id`` None: an admin's view) or the ones listing that
    instructor, newest first, with their learner counts."""
    total, rows = await _counted_page(
        pool,
        "SELECT count(*) FROM courses WHERE $1::text IS NULL OR $1 = ANY(instructor_ids)",
        "SELECT c.id, c.title, c.slug, c.status, c.instructor_ids, c.created_at, c.updated_at, "
        "(SELECT count(*) FROM lessons l WHERE l.course_id = c.id AND l.archived_at IS NULL) AS total_lessons, "
        "(SELECT count(*) FROM enrollments e WHERE e.course_id = c.id AND e.status <> 'unenrolled') AS learners, "
        "(SELECT count(*) FROM enrollments e WHERE e.course_id = c.id AND e.status = 'completed') AS completed "
        "FROM courses c WHERE $1::text IS NULL OR $1 = ANY(c.instructor_ids) "
        "ORDER BY c.created_at DESC, c.id DESC LIMIT $2 OFFSET $3",
        (instructor_id,), limit, offset,
    )
    return total, [ManagedCourseRow(**dict(r)) for r in rows]


async def list_students(
    pool: asyncpg.Pool, course_id: int, orderby: StudentOrderBy, order: SortOrder, limit: int, offset: int
) -> tuple[int, list[StudentRow]]:
    direction = _SORT_ORDER[order]
    # The enrollment id breaks ties, so pages neither repeat nor skip rows; never-accessed
    # learners sort last either way.
    sort = f"{_STUDENT_SORT[orderby]} {direction} NULLS LAST, id {direction}"
    total, rows = await _counted_page(
        pool,
        "SELECT count(*) FROM enrollments WHERE course_id = $1 AND status <> 'unenrolled'",
        "SELECT id AS enrollment_id, user_id, username, display_name, email, avatar, status, attempt, "
        "progress_percentage, "
        "enrolled_at, last_accessed, completed_at, certificate_url, certificate_revoked_at, "
        "certificate_revocation_reason FROM enrollments "
        f"WHERE course_id = $1 AND status <> 'unenrolled' ORDER BY {sort} LIMIT $2 OFFSET $3",
        (course_id,), limit, offset,
    )
    return total, [StudentRow(**dict(r)) for r in rows]


async def my_courses(
    pool: asyncpg.Pool, user_id: str, statuses: list[str], limit: int, offset: int
) -> tuple[int, list[MyCourseRow]]:
    total, rows = await _counted_page(
        pool,
        "SELECT count(*) FROM enrollments WHERE user_id = $1 AND status = ANY($2::text[])",
        "SELECT e.id AS enrollment_id, e.course_id, c.title AS course_title, c.slug AS course_slug, "
        "c.status AS course_status, e.status, e.attempt, e.progress_percentage, e.completed_lessons, "
        "e.total_lessons, "
        "e.enrolled_at, e.last_accessed, e.completed_at, e.certificate_url, e.certificate_revoked_at, "
        "e.certificate_revocation_reason "
        "FROM enrollments e JOIN courses c ON c.id = e.course_id "
        "WHERE e.user_id = $1 AND e.status = ANY($2::text[]) "
        "ORDER BY coalesce(e.last_accessed, e.enrolled_at) DESC, e.id DESC LIMIT $3 OFFSET $4",
        (user_id, statuses), limit, offset,
    )
    return total, [MyCourseRow(**dict(r)) for r in rows]



# --- application passwords ----------------------------------------------------------------

_APP_PASSWORD_COLUMNS = "id, user_id, label, name, email, roles, created_at, last_used_at, revoked_at"


def _app_password(row: asyncpg.Record) -> AppPassword:
    return AppPassword(**{k: row[k] for k in AppPassword.model_fields})


async def insert_app_password(
    conn: Connection, *, user_id: str, label: str, name: str, email: str, roles: list[str], password_hash: str,
    now: datetime,
) -> AppPassword:
    row = await conn.fetchrow(
        "INSERT INTO app_passwords (user_id, label, name, email, roles, password_hash, created_at) "
        f"VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_APP_PASSWORD_COLUMNS}",
        user_id, label, name, email, roles, password_hash, now,
    )
    assert row is not None
    return _app_password(row)


async def list_app_passwords(conn: Connection, user_id: str | None) -> list[AppPassword]:
    rows = await conn.fetch(
        f"SELECT {_APP_PASSWORD_COLUMNS} FROM app_passwords WHERE $1::text IS NULL OR user_id = $1 ORDER BY id",
        user_id,
    )
    return [_app_password(r) for r in rows]


async def revoke_app_password(conn: Connection, password_id: int, now: datetime) -> bool:
    """Whether the password exists; one already revoked keeps its first revocation time."""
    found = await conn.fetchval(
        "UPDATE app_passwords SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1 RETURNING id",
        password_id, now,
    )
    return found is not None


async def live_app_passwords(conn: Connection, user_id: str) -> list[tuple[AppPassword, str]]:
    """The user's live passwords with their hashes (index app_passwords_live)."""
    rows = await conn.fetch(
        f"SELECT {_APP_PASSWORD_COLUMNS}, password_hash FROM app_passwords "
        "WHERE user_id = $1 AND revoked_at IS NULL ORDER BY id",
        user_id,
    )
    return [(_app_password(r), r["password_hash"]) for r in rows]


async def live_app_password_use(conn: Connection, password_id: int) -> tuple[bool, datetime | None]:
    """Whether the password is live, and when it was last used."""
    row = await conn.fetchrow(
        "SELECT last_used_at FROM app_passwords WHERE id = $1 AND revoked_at IS NULL", password_id
    )
    return (row is not None, row["last_used_at"] if row is not None else None)


async def touch_app_password(conn: Connection, password_id: int, now: datetime) -> None:
    await conn.execute(
        "UPDATE app_passwords SET last_used_at = $2 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
        password_id, now,
    )


# --- failed sign-ins ------------------------------------------------------------------------


async def lock_attempt_windows(conn: Connection, keys: list[tuple[str, str]], now: datetime) -> list[AttemptWindow]:
    """The windows of these (scope, key) pairs, created if missing, locked until commit in
    (scope, key) order (concurrent sign-ins lock them in the same order)."""
    scopes = [scope for scope, _ in keys]
    names = [key for _, key in keys]
    await conn.execute(
        "INSERT INTO auth_attempts (scope, key, window_start, failures) "
        "SELECT scope, key, $3, 0 FROM unnest($1::text[], $2::text[]) AS k (scope, key) "
        "ON CONFLICT (scope, key) DO NOTHING",
        scopes, names, now,
    )
    rows = await conn.fetch(
        "SELECT a.scope, a.key, a.window_start, a.failures FROM auth_attempts a "
        "JOIN unnest($1::text[], $2::text[]) AS k (scope, key) USING (scope, key) "
        "ORDER BY a.scope, a.key FOR UPDATE OF a",
        scopes, names,
    )
    return [AttemptWindow(r["scope"], r["key"], r["window_start"], r["failures"]) for r in rows]


async def save_attempt_windows(conn: Connection, windows: list[AttemptWindow]) -> None:
    await conn.execute(
        "UPDATE auth_attempts a SET window_start = w.window_start, failures = w.failures "
        "FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::int[]) AS w (scope, key, window_start, failures) "
        "WHERE a.scope = w.scope AND a.key = w.key",
        [w.scope for w in windows], [w.key for w in windows], [w.window_start for w in windows],
        [w.failures for w in windows],
    )


async def uncount_attempts(conn: Connection, windows: list[AttemptWindow]) -> None:
    """Take back attempts counted in these windows (the password was right); a window
    that has since been replaced by a newer one is left alone."""
    await conn.execute(
        "UPDATE auth_attempts a SET failures = greatest(a.failures - 1, 0) "
        "FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS w (scope, key, window_start) "
        "WHERE a.scope = w.scope AND a.key = w.key AND a.window_start = w.window_start",
        [w.scope for w in windows], [w.key for w in windows], [w.window_start for w in windows],
    )


async def prune_attempts(conn: Connection, before: datetime) -> int:
    deleted: str = await conn.execute("DELETE FROM auth_attempts WHERE window_start < $1", before)
    return int(deleted.split()[-1])


# --- erasure (GDPR): the learner's enrollments, passwords and sign-in failures --------------


async def lock_erasure_subject(conn: Connection, subject: str) -> None:
    """Serialise requests for one learner: the second finds the first's record."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('erasure:' || $1))", subject)


_ERASURE_COLUMNS = "event_id, subject, requested_at, completed_at"


async def get_erasure(conn: Executor, *, subject: str | None = None, event_id: UUID | None = None,
                      ) -> ErasureRequest | None:
    if event_id is not None:
        return await fetch_one(conn, ErasureRequest, f"SELECT {_ERASURE_COLUMNS} FROM erasures WHERE event_id = $1",
                               event_id)
    return await fetch_one(conn, ErasureRequest, f"SELECT {_ERASURE_COLUMNS} FROM erasures WHERE subject = $1",
                           subject)


async def incomplete_erasures(conn: Executor) -> list[ErasureRequest]:
    return await fetch_all(
        conn, ErasureRequest,
        f"SELECT {_ERASURE_COLUMNS} FROM erasures WHERE completed_at IS NULL ORDER BY requested_at LIMIT 100",
    )


async def personal_data(conn: Connection, user_id: str) -> list[str]:
    """The learner's names and addresses as this service stored them (to find them in the outbox)."""
    rows = await conn.fetch(
        "SELECT username AS v FROM enrollments WHERE user_id = $1 UNION SELECT display_name FROM enrollments "
        "WHERE user_id = $1 UNION SELECT email FROM enrollments WHERE user_id = $1 "
        "UNION SELECT name FROM app_passwords WHERE user_id = $1 UNION SELECT email FROM app_passwords "
        "WHERE user_id = $1",
        user_id,
    )
    return [row["v"] for row in rows if row["v"]]


async def app_password_ids(conn: Connection, user_id: str) -> list[int]:
    return [row["id"] for row in await conn.fetch("SELECT id FROM app_passwords WHERE user_id = $1", user_id)]


async def erase_learner(conn: Connection, user_id: str) -> dict[str, int]:
    """Delete the learner's enrollments (locked first, as the event handlers lock them),
    the events and notices kept for them, their application passwords and their per-user
    sign-in failures. Returns the rows deleted, by table."""
    ids = [row["id"] for row in await conn.fetch(
        "SELECT id FROM enrollments WHERE user_id = $1 ORDER BY id FOR UPDATE", user_id)]

    async def deleted(sql: str, *args: object) -> int:
        return int((await conn.execute(sql, *args)).split()[-1])

    return {
        "recertification_notices": await deleted(
            "DELETE FROM recertification_notices WHERE enrollment_id = ANY($1::bigint[])", ids),
        "enrollment_events": await deleted(
            "DELETE FROM enrollment_events WHERE enrollment_id = ANY($1::bigint[])", ids),
        "enrollments": await deleted("DELETE FROM enrollments WHERE id = ANY($1::bigint[])", ids),
        "app_passwords": await deleted("DELETE FROM app_passwords WHERE user_id = $1", user_id),
        "auth_attempts": await deleted("DELETE FROM auth_attempts WHERE scope = 'user' AND key = $1", user_id),
    }


async def insert_erasure(conn: Connection, event: LearnerErased, subject: str, summary: dict[str, int]) -> None:
    await conn.execute(
        "INSERT INTO erasures (event_id, subject, requested_at, erased_at, summary) VALUES ($1, $2, $3, $3, $4)",
        event.event_id, subject, event.requested_at, summary,
    )


async def complete_erasure(conn: Connection, event_id: UUID, now: datetime) -> bool:
    """Every service has erased the learner: the request is complete, and the outbox row of
    its learner-erased event (the last copy of the user id here) is deleted. Only a
    published row: a consumer cannot have erased before it was published."""
    done = await conn.fetchval(
        "UPDATE erasures SET completed_at = $2 WHERE event_id = $1 AND completed_at IS NULL RETURNING true",
        event_id, now,
    )
    if done:
        await conn.execute("DELETE FROM outbox WHERE event_id = $1 AND published_at IS NOT NULL", event_id)
    return bool(done)


# What the export shows of each table holding the learner (user column), and what it leaves out.
EXPORT_TABLES = [("enrollments", "user_id"), ("app_passwords", "user_id")]
EXPORT_OMIT = ["password_hash"]
