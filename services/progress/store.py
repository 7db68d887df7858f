"""SQL of the progress service. Every statement is parameterised; asyncpg prepares and
caches each statement text per connection, so the hot statements are planned once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from services.progress import domain
from shared.db import Connection, Executor
from shared.events import CourseCatalogEntry, CourseCompleted, EnrollmentChanged, VideoSessionEnded
from shared.retry import Backoff

_PROGRESS_COLUMNS = (
    "id, user_id, course_id, lesson_id, completed, completed_at, video_progress, last_position, "
    "position_at, position_seen_at, time_spent_seconds, credited, credited_until, created_at, updated_at, "
    "watched, watched_seconds, attempt"
)


@dataclass(slots=True)
class LessonRecord:
    """What every view of a learner's record of a lesson starts with: which record, whose,
    and whether the lesson is complete (the stored row, and its copy in a heartbeat buffer)."""

    id: int
    user_id: str
    course_id: int
    lesson_id: int
    completed: bool
    completed_at: datetime | None


@dataclass(slots=True)
class ProgressRow(LessonRecord):
    video_progress: float
    last_position: float
    position_at: datetime | None  # latest client timestamp behind the position
    position_seen_at: datetime | None  # server time of the heartbeat that set the position
    time_spent_seconds: float
    credited: domain.Intervals  # recent credited wall-clock intervals (epoch s), see domain.credit
    credited_until: float | None  # nothing before this is credited any more
    created_at: datetime
    updated_at: datetime
    watched: domain.Intervals = ()  # watched media ranges (seconds of the video), see domain.watched_union
    watched_seconds: float = 0.0
    attempt: int = 1  # the learner's attempt at the course the record belongs to

    @classmethod
    def of(cls, r: asyncpg.Record) -> ProgressRow:
        return cls(
            r["id"], r["user_id"], r["course_id"], r["lesson_id"], r["completed"], r["completed_at"],
            r["video_progress"], r["last_position"], r["position_at"], r["position_seen_at"],
            r["time_spent_seconds"], domain.pairs(r["credited"]), r["credited_until"],
            r["created_at"], r["updated_at"], domain.pairs(r["watched"]), r["watched_seconds"],
            attempt=r["attempt"],
        )


@dataclass(frozen=True, slots=True)
class FlushRow:
    """One learner-lesson's coalesced heartbeats: the latest position (with its ordering
    keys) and the wall-clock intervals credited since the last flush (normalized)."""

    user_id: str
    course_id: int
    lesson_id: int
    video_progress: float
    last_position: float
    position_at: datetime | None
    position_seen_at: datetime
    credited: domain.Intervals
    updated_at: datetime
    watched: domain.Intervals = ()  # media ranges watched since the last flush (normalized, bounded)
    attempt: int = 1  # the attempt the playback was recorded in: it is written into no other


# ---------------------------------------------------------------- progress rows

async def get_progress(conn: Executor, user_id: str, lesson_id: int) -> ProgressRow | None:
    r = await conn.fetchrow(
        f"SELECT {_PROGRESS_COLUMNS} FROM lesson_progress WHERE user_id = $1 AND lesson_id = $2", user_id, lesson_id
    )
    return ProgressRow.of(r) if r else None


async def ensure_progress(conn: Executor, user_id: str, course_id: int, lesson_id: int) -> ProgressRow:
    """The row for (user, lesson), created empty if missing, in the learner's current attempt.
    Never two rows: the unique key decides between concurrent creators, and the loser reads
    the winner's row."""
    while True:
        # Insert first: the common case is a learner opening a lesson for the first time.
        # The attempt is read with a share lock on the enrollment row: a reset committing
        # meanwhile is waited for, so a new record never lands in the attempt that ended.
        r = await conn.fetchrow(
            "INSERT INTO lesson_progress (user_id, course_id, lesson_id, attempt) "
            "SELECT $1::text, $2::bigint, $3::bigint, coalesce(e.attempt, 1) FROM (SELECT 1) AS one LEFT JOIN LATERAL "
            "(SELECT attempt FROM enrollments WHERE user_id = $1 AND course_id = $2 FOR SHARE) AS e ON true "
            f"ON CONFLICT (user_id, lesson_id) DO NOTHING RETURNING {_PROGRESS_COLUMNS}",
            user_id, course_id, lesson_id,
        )
        if r is not None:
            return ProgressRow.of(r)
        # The row exists (or a concurrent insert just committed it): read it, new snapshot.
        row = await get_progress(conn, user_id, lesson_id)
        if row is not None:
            return row


# The merge, one rule per column (shared with bench/progress_ingest.py, its single-row form):
# - the position moves only for a newer reading (domain.position_newer: client timestamps
#   when both have one, else server receive times), so replicas flushing in any order agree;
# - time spent grows by what the fresh intervals add to the record's credited union
#   (progress_credit, migration 006), so seconds seen by two replicas count once;
# - completion columns are never written here, so a heartbeat cannot undo a completion.
_POSITION_NEWER = """(CASE WHEN excluded.position_at IS NOT NULL AND p.position_at IS NOT NULL
                       THEN excluded.position_at >= p.position_at
                       ELSE p.position_seen_at IS NULL OR excluded.position_seen_at >= p.position_seen_at END)"""
_CREDIT = """
    (time_spent_seconds, credited, credited_until) = (
        SELECT p.time_spent_seconds + c.added, c.credited, c.credited_until
        FROM progress_credit(p.credited, p.credited_until, excluded.credited) c)"""
# Watched media ranges: the union of the stored and the fresh ones (progress_watch,
# migration 007), so replicas and repeated flushes agree.
_WATCH = """
    (watched, watched_seconds) = (
        SELECT w.watched, w.watched_seconds
        FROM progress_watch(p.watched, excluded.watched, stored_seconds => p.watched_seconds) w)"""
FLUSH_ON_CONFLICT = f"""
ON CONFLICT (user_id, lesson_id) DO UPDATE SET
    video_progress = CASE WHEN {_POSITION_NEWER} THEN excluded.video_progress ELSE p.video_progress END,
    last_position = CASE WHEN {_POSITION_NEWER} THEN excluded.last_position ELSE p.last_position END,
    position_at = CASE WHEN {_POSITION_NEWER} THEN GREATEST(p.position_at, excluded.position_at)
                       ELSE p.position_at END,
    position_seen_at = CASE WHEN {_POSITION_NEWER} THEN excluded.position_seen_at ELSE p.position_seen_at END,
    {_CREDIT.strip()},
    {_WATCH.strip()},
    updated_at = GREATEST(p.updated_at, excluded.updated_at)
WHERE p.attempt = excluded.attempt
"""
# A row that does not exist yet (the flush also creates) gets the fresh intervals as they
# are, and their length; one that exists gets the merge above.
# The rows' intervals travel as one flat array ($9), each row's being the slice after
# offset $10 (exclusive) up to $11 (inclusive); their watched ranges likewise ($13, $14,
# $15), with their lengths ($16).
# A row is written only into the attempt it was recorded in ($17): the lateral join finds
# the learner's enrollment replica row at that attempt, share-locked, so a reset (which
# updates that row) committing meanwhile is waited for and the row re-checked and dropped.
# The buffer takes a row that comes back from none as one of an attempt that ended.
FLUSH_SQL = """
INSERT INTO lesson_progress AS p
    (user_id, course_id, lesson_id, video_progress, last_position, position_at, position_seen_at,
     time_spent_seconds, credited, updated_at, watched, watched_seconds, attempt)
SELECT u, c, l, v, lp, pa, ps, t, CASE WHEN hi > lo THEN ($9::float8[])[lo + 1:hi] ELSE '{}' END, ua,
       CASE WHEN whi > wlo THEN ($13::float8[])[wlo + 1:whi] ELSE '{}' END, ws, a
FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::float8[], $5::float8[], $6::timestamptz[],
            $7::timestamptz[], $8::float8[], $10::int[], $11::int[], $12::timestamptz[],
            $14::int[], $15::int[], $16::float8[], $17::int[])
     AS x (u, c, l, v, lp, pa, ps, t, lo, hi, ua, wlo, whi, ws, a)
CROSS JOIN LATERAL (SELECT FROM enrollments e WHERE e.user_id = x.u AND e.course_id = x.c AND e.attempt = x.a
                    FOR SHARE) AS current_attempt
""" + FLUSH_ON_CONFLICT + f"RETURNING {_PROGRESS_COLUMNS}"


async def flush_heartbeats(conn: Executor, rows: Sequence[FlushRow]) -> list[ProgressRow]:
    """One statement for the whole batch; returns the records as they are now. Rows arrive
    sorted by key, so concurrent flushers (several replicas) take row locks in the same
    order and cannot deadlock each other."""
    bounds: list[float] = []
    starts: list[int] = []
    ends: list[int] = []
    lengths: list[float] = []
    for r in rows:
        starts.append(len(bounds))
        total = 0.0
        for start, end in r.credited:
            bounds.append(start)
            bounds.append(end)
            total += end - start
        ends.append(len(bounds))
        lengths.append(total)
    watched: list[float] = []
    watched_starts: list[int] = []
    watched_ends: list[int] = []
    watched_lengths: list[float] = []
    for r in rows:
        watched_starts.append(len(watched))
        watched.extend(domain.flat(r.watched))
        watched_ends.append(len(watched))
        watched_lengths.append(domain.length(r.watched))
    records = await conn.fetch(
        FLUSH_SQL,
        [r.user_id for r in rows],
        [r.course_id for r in rows],
        [r.lesson_id for r in rows],
        [r.video_progress for r in rows],
        [r.last_position for r in rows],
        [r.position_at for r in rows],
        [r.position_seen_at for r in rows],
        lengths,
        bounds,
        starts,
        ends,
        [r.updated_at for r in rows],
        watched,
        watched_starts,
        watched_ends,
        watched_lengths,
        [r.attempt for r in rows],
    )
    return [ProgressRow.of(r) for r in records]


async def mark_complete(
    conn: Connection, user_id: str, course_id: int, lesson_id: int, now: datetime, playback: FlushRow | None,
    attempt: int = 1,
) -> ProgressRow:
    """Complete the lesson (keeping the first completed_at), writing any pending playback
    with it by the flush's rules (position ordering, credited intervals). Under the
    learner's enrollment lock, ``attempt`` its current one: the row it finds is of it too."""
    r = await conn.fetchrow(
        f"""
        INSERT INTO lesson_progress AS p (user_id, course_id, lesson_id, completed, completed_at,
            video_progress, last_position, position_at, position_seen_at, time_spent_seconds, credited, updated_at,
            watched, watched_seconds, attempt)
        VALUES ($1, $2, $3, true, $4, COALESCE($5, 0), COALESCE($6, 0), $7, $8, $9, $10::float8[], $4,
                $11::float8[], $12, $13)
        ON CONFLICT (user_id, lesson_id) DO UPDATE SET
            completed = true,
            completed_at = COALESCE(p.completed_at, excluded.completed_at),
            video_progress = CASE WHEN $5::float8 IS NOT NULL AND {_POSITION_NEWER}
                                  THEN $5 ELSE p.video_progress END,
            last_position = CASE WHEN $6::float8 IS NOT NULL AND {_POSITION_NEWER}
                                 THEN $6 ELSE p.last_position END,
            position_at = CASE WHEN $8::timestamptz IS NOT NULL AND {_POSITION_NEWER}
                               THEN GREATEST(p.position_at, excluded.position_at) ELSE p.position_at END,
            position_seen_at = CASE WHEN $8::timestamptz IS NOT NULL AND {_POSITION_NEWER}
                                    THEN excluded.position_seen_at ELSE p.position_seen_at END,
            {_CREDIT.strip()},
            {_WATCH.strip()},
            updated_at = GREATEST(p.updated_at, $4)  -- never backwards (analytics' last activity)
        RETURNING {_PROGRESS_COLUMNS}
        """,
        user_id, course_id, lesson_id, now,
        playback.video_progress if playback else None,
        playback.last_position if playback else None,
        playback.position_at if playback else None,
        playback.position_seen_at if playback else None,
        domain.length(playback.credited) if playback else 0.0,
        domain.flat(playback.credited) if playback else [],
        domain.flat(playback.watched) if playback else [],
        domain.length(playback.watched) if playback else 0.0,
        attempt,
    )
    assert r is not None
    return ProgressRow.of(r)


async def mark_incomplete(conn: Connection, user_id: str, lesson_id: int, now: datetime) -> ProgressRow | None:
    """Undo a completion; None when the lesson was not complete."""
    r = await conn.fetchrow(
        f"""
        UPDATE lesson_progress SET completed = false, completed_at = NULL, updated_at = GREATEST(updated_at, $3)
        WHERE user_id = $1 AND lesson_id = $2 AND completed
        RETURNING {_PROGRESS_COLUMNS}
        """,
        user_id, lesson_id, now,
    )
    return ProgressRow.of(r) if r else None


async def list_progress(
    conn: Executor, user_id: str, course_id: int | None = None, course_ids: Sequence[int] | None = None,
    attempt: int | None = None,
) -> list[ProgressRow]:
    """The learner's current records; with ``attempt``, that attempt's records instead,
    current or kept in the history."""
    if attempt is None:
        rows = await conn.fetch(
            f"""
            SELECT {_PROGRESS_COLUMNS} FROM lesson_progress
            WHERE user_id = $1 AND ($2::bigint IS NULL OR course_id = $2)
              AND ($3::bigint[] IS NULL OR course_id = ANY($3))
            ORDER BY course_id, lesson_id
            """,
            user_id, course_id, list(course_ids) if course_ids is not None else None,
        )
    else:
        rows = await conn.fetch(
            f"""
            SELECT * FROM (
                SELECT {_PROGRESS_COLUMNS} FROM lesson_progress WHERE user_id = $1 AND attempt = $4
                UNION ALL
                SELECT {_PROGRESS_COLUMNS} FROM lesson_progress_history WHERE user_id = $1 AND attempt = $4
            ) AS r
            WHERE ($2::bigint IS NULL OR course_id = $2) AND ($3::bigint[] IS NULL OR course_id = ANY($3))
            ORDER BY course_id, lesson_id
            """,
            user_id, course_id, list(course_ids) if course_ids is not None else None, attempt,
        )
    return [ProgressRow.of(r) for r in rows]


async def completed_lesson_ids(conn: Executor, user_id: str, course_id: int) -> set[int]:
    rows = await conn.fetch(
        "SELECT lesson_id FROM lesson_progress WHERE user_id = $1 AND course_id = $2 AND completed",
        user_id, course_id,
    )
    return {r["lesson_id"] for r in rows}


# ---------------------------------------------------------------- catalog replica

async def get_course(conn: Executor, course_id: int) -> CourseCatalogEntry | None:
    entry = await conn.fetchval("SELECT entry FROM courses WHERE course_id = $1", course_id)
    return CourseCatalogEntry.model_validate(entry) if entry is not None else None


async def save_course(conn: Executor, entry: CourseCatalogEntry) -> bool:
    """Store ``entry`` unless the replica already holds this or a later revision. When it
    replaces a stored revision whose required lessons differ, the statement also records
    (or keeps) the course's recalculation job: every path that stores a revision (the
    course-catalog handler, a replica miss, a confirmation) goes through here, so no change
    of the required lessons goes without one. All of it is one statement: one transaction."""
    saved = await conn.fetchval(
        """
        WITH old AS (
            SELECT ARRAY(SELECT (l ->> 'id')::bigint FROM jsonb_array_elements(entry -> 'lessons') AS l
                         WHERE COALESCE((l ->> 'is_required')::boolean, true) ORDER BY 1) AS required
            FROM courses WHERE course_id = $1
        ), saved AS (
            INSERT INTO courses (course_id, revision, entry) VALUES ($1, $2, $3)
            ON CONFLICT (course_id) DO UPDATE SET revision = excluded.revision, entry = excluded.entry,
                updated_at = now()
            WHERE courses.revision < excluded.revision
            RETURNING true AS saved
        ), job AS (
            INSERT INTO course_recalculations AS r (course_id, revision)
            SELECT $1, $2 FROM saved, old WHERE old.required IS DISTINCT FROM $4::bigint[]
            ON CONFLICT (course_id) DO UPDATE SET revision = GREATEST(r.revision, excluded.revision),
                updated_at = now()
        )
        SELECT saved FROM saved
        """,
        entry.course_id, entry.revision, entry.model_dump(mode="json"), domain.required_ids(entry),
    )
    return bool(saved)


async def courses_taught_by(conn: Executor, instructor_id: str) -> list[int]:
    rows = await conn.fetch("SELECT course_id FROM courses WHERE entry->'instructor_ids' ? $1", instructor_id)
    return [r["course_id"] for r in rows]


# ---------------------------------------------------------------- enrollment replica

def _enrollment(r: asyncpg.Record) -> EnrollmentChanged:
    return EnrollmentChanged(
        user_id=r["user_id"], course_id=r["course_id"], enrollment_id=r["enrollment_id"], status=r["status"],
        revision=r["revision"], enrolled_at=r["enrolled_at"], display_name=r["display_name"], email=r["email"],
        attempt=r["attempt"],
    )


_ENROLLMENT_COLUMNS = "user_id, course_id, enrollment_id, status, revision, enrolled_at, display_name, email, attempt"


async def get_enrollment(conn: Executor, user_id: str, course_id: int) -> EnrollmentChanged | None:
    r = await conn.fetchrow(
        f"SELECT {_ENROLLMENT_COLUMNS} FROM enrollments WHERE user_id = $1 AND course_id = $2", user_id, course_id
    )
    return _enrollment(r) if r else None


async def lock_enrollment(conn: Connection, user_id: str, course_id: int) -> EnrollmentChanged | None:
    """Row lock that serialises one learner's completions in one course (see usecases)."""
    r = await conn.fetchrow(
        f"SELECT {_ENROLLMENT_COLUMNS} FROM enrollments WHERE user_id = $1 AND course_id = $2 FOR UPDATE",
        user_id, course_id,
    )
    return _enrollment(r) if r else None


async def held_attempt(conn: Connection, user_id: str, course_id: int) -> int | None:
    """The attempt the replica holds for the learner, its enrollment row locked (the lock
    completions take); None when it holds no row."""
    attempt: int | None = await conn.fetchval(
        "SELECT attempt FROM enrollments WHERE user_id = $1 AND course_id = $2 FOR UPDATE", user_id, course_id
    )
    return attempt


async def save_enrollment(conn: Executor, e: EnrollmentChanged) -> bool:
    """Store ``e`` unless the replica already holds this or a later revision. The attempt
    never goes back."""
    saved = await conn.fetchval(
        """
        INSERT INTO enrollments (user_id, course_id, enrollment_id, status, revision, enrolled_at,
                                 display_name, email, attempt)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        ON CONFLICT (user_id, course_id) DO UPDATE SET enrollment_id = excluded.enrollment_id,
            status = excluded.status, revision = excluded.revision, enrolled_at = excluded.enrolled_at,
            display_name = excluded.display_name, email = excluded.email,
            attempt = GREATEST(enrollments.attempt, excluded.attempt), updated_at = now()
        WHERE enrollments.revision < excluded.revision
           OR enrollments.enrollment_id <> excluded.enrollment_id AND excluded.enrolled_at > enrollments.enrolled_at
        RETURNING true
        """,
        e.user_id, e.course_id, e.enrollment_id, e.status, e.revision, e.enrolled_at,
        e.display_name or e.username, e.email, e.attempt,
    )
    return bool(saved)


async def end_attempts_before(conn: Connection, user_id: str, course_id: int, attempt: int) -> int:
    """The learner begins ``attempt``: the records of earlier attempts move to the history
    (``SELECT *``: the two tables have the same columns, see migration 009) and the pending
    confirmation goes (its completions were of an earlier attempt). Returns how many
    records moved. Run under the enrollment row lock, in the transaction that stored it."""
    moved = await conn.fetchval(
        """
        WITH ended AS (
            DELETE FROM lesson_progress WHERE user_id = $1 AND course_id = $2 AND attempt < $3 RETURNING *
        ), kept AS (
            INSERT INTO lesson_progress_history SELECT * FROM ended RETURNING 1
        )
        SELECT count(*) FROM kept
        """,
        user_id, course_id, attempt,
    )
    await conn.execute("DELETE FROM pending_confirmations WHERE user_id = $1 AND course_id = $2", user_id, course_id)
    return int(moved)


# ---------------------------------------------------------------- course completions

async def get_completion(
    conn: Executor, user_id: str, course_id: int, enrollment_id: int, attempt: int
) -> CourseCompleted | None:
    event = await conn.fetchval(
        "SELECT event FROM course_completions WHERE user_id = $1 AND course_id = $2 AND enrollment_id = $3 "
        "AND attempt = $4",
        user_id, course_id, enrollment_id, attempt,
    )
    return CourseCompleted.model_validate(event) if event is not None else None


async def latest_completion(conn: Executor, user_id: str, course_id: int) -> CourseCompleted | None:
    """The completion of the learner's current enrollment and attempt, as the replica holds them."""
    event = await conn.fetchval(
        "SELECT c.event FROM course_completions c JOIN enrollments e USING (user_id, course_id, enrollment_id) "
        "WHERE c.user_id = $1 AND c.course_id = $2 AND c.attempt = e.attempt",
        user_id, course_id,
    )
    return CourseCompleted.model_validate(event) if event is not None else None


async def completion_by_event_id(conn: Executor, event_id: UUID) -> CourseCompleted | None:
    """The course-completed event progress published with this id, if it published one."""
    event = await conn.fetchval(
        "SELECT event FROM course_completions WHERE event ->> 'event_id' = $1", str(event_id)
    )
    return CourseCompleted.model_validate(event) if event is not None else None


async def add_completion(
    conn: Connection, enrollment_id: int, event: CourseCompleted, required_lesson_ids: Sequence[int] | None = None
) -> bool:
    """Record the completion with what it was decided on (``event.course_revision`` and the
    required lessons then); False if the enrollment already has one."""
    added = await conn.fetchval(
        "INSERT INTO course_completions (user_id, course_id, enrollment_id, attempt, completed_at, event, "
        "course_revision, required_lesson_ids) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
        "ON CONFLICT DO NOTHING RETURNING true",
        event.user_id, event.course_id, enrollment_id, event.attempt, event.completed_at,
        event.model_dump(mode="json"), event.course_revision,
        list(required_lesson_ids) if required_lesson_ids is not None else None,
    )
    return bool(added)


@dataclass(frozen=True, slots=True)
class CompletionBasis:
    """The catalog a completion was decided on (None: recorded before it was kept)."""

    course_revision: int | None
    required_lesson_ids: list[int] | None


async def completion_basis(
    conn: Executor, user_id: str, course_id: int, enrollment_id: int, attempt: int
) -> CompletionBasis | None:
    r = await conn.fetchrow(
        "SELECT course_revision, required_lesson_ids FROM course_completions "
        "WHERE user_id = $1 AND course_id = $2 AND enrollment_id = $3 AND attempt = $4",
        user_id, course_id, enrollment_id, attempt,
    )
    if r is None:
        return None
    ids = r["required_lesson_ids"]
    return CompletionBasis(r["course_revision"], list(ids) if ids is not None else None)


# ---------------------------------------------------------------- certificates

async def save_certificate(
    conn: Executor, user_id: str, course_id: int, url: str, issued_at: datetime, attempt: int = 1
) -> None:
    await conn.execute(
        "INSERT INTO certificates (user_id, course_id, attempt, certificate_url, issued_at) "
        "VALUES ($1, $2, $5, $3, $4) "
        "ON CONFLICT (user_id, course_id, attempt) DO UPDATE SET certificate_url = excluded.certificate_url, "
        "issued_at = excluded.issued_at WHERE certificates.issued_at <= excluded.issued_at",
        user_id, course_id, url, issued_at, attempt,
    )


async def certificate_url(conn: Executor, user_id: str, course_id: int, attempt: int = 1) -> str | None:
    url: Any = await conn.fetchval(
        "SELECT certificate_url FROM certificates WHERE user_id = $1 AND course_id = $2 AND attempt = $3",
        user_id, course_id, attempt,
    )
    return str(url) if url is not None else None


# ---------------------------------------------------------------- pending confirmations

async def add_pending_confirmation(
    conn: Connection, user_id: str, course_id: int, name: str, email: str, lesson_id: int | None
) -> None:
    """A completion to confirm with the owner later (see usecases); ``lesson_id``: a lesson
    whose lesson-completed event waits for it."""
    await conn.execute(
        """
        INSERT INTO pending_confirmations AS p (user_id, course_id, user_name, user_email, lesson_ids)
        VALUES ($1, $2, $3, $4, CASE WHEN $5::bigint IS NULL THEN '{}' ELSE ARRAY[$5::bigint] END)
        ON CONFLICT (user_id, course_id) DO UPDATE SET
            user_name = COALESCE(NULLIF(excluded.user_name, ''), p.user_name),
            user_email = COALESCE(NULLIF(excluded.user_email, ''), p.user_email),
            lesson_ids = CASE WHEN $5::bigint IS NULL OR $5::bigint = ANY(p.lesson_ids) THEN p.lesson_ids
                              ELSE p.lesson_ids || $5::bigint END
        """,
        user_id, course_id, name, email, lesson_id,
    )


@dataclass(frozen=True, slots=True)
class PendingCompletion:
    user_name: str
    user_email: str
    lesson_ids: list[int]


async def lock_pending_confirmation(conn: Connection, user_id: str, course_id: int) -> PendingCompletion | None:
    """The pending row, locked (take the learner's enrollment lock first, as completions do)."""
    r = await conn.fetchrow(
        "SELECT user_name, user_email, lesson_ids FROM pending_confirmations "
        "WHERE user_id = $1 AND course_id = $2 FOR UPDATE",
        user_id, course_id,
    )
    return PendingCompletion(r["user_name"], r["user_email"], list(r["lesson_ids"])) if r else None


@dataclass(frozen=True, slots=True)
class PendingConfirmation:
    user_id: str
    course_id: int
    attempts: int


async def claim_pending_confirmations(conn: Executor, limit: int, backoff: Backoff) -> list[PendingConfirmation]:
    """Up to ``limit`` due rows, each pushed ``backoff.delay(attempts)`` into the future in
    the same statement: a lease against other processes (rows locked by a concurrent claim
    are skipped) and the retry backoff if the re-check fails. A re-check that succeeds
    deletes its row."""
    rows = await conn.fetch(
        """
        UPDATE pending_confirmations p
        SET attempts = p.attempts + 1,
            due_at = now() + make_interval(secs => least($2 * power($4::float8, p.attempts), $3))
        FROM (SELECT user_id, course_id FROM pending_confirmations WHERE due_at <= now()
              ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED) due
        WHERE p.user_id = due.user_id AND p.course_id = due.course_id
        RETURNING p.user_id, p.course_id, p.attempts
        """,
        limit, backoff.first_s, backoff.max_s, backoff.factor,
    )
    return [PendingConfirmation(r["user_id"], r["course_id"], r["attempts"]) for r in rows]


async def pending_confirmation_failed(conn: Executor, user_id: str, course_id: int, error: str) -> None:
    await conn.execute(
        "UPDATE pending_confirmations SET last_error = $3 WHERE user_id = $1 AND course_id = $2",
        user_id, course_id, error[:500],
    )


async def delete_pending_confirmation(conn: Connection, user_id: str, course_id: int) -> None:
    await conn.execute("DELETE FROM pending_confirmations WHERE user_id = $1 AND course_id = $2", user_id, course_id)


# ---------------------------------------------------------------- recalculations


@dataclass(frozen=True, slots=True)
class Recalculation:
    course_id: int
    revision: int
    required_lesson_ids: list[int] | None  # what the batches so far were computed with
    cursor: str | None  # the last user_id recalculated


async def claim_recalculations(conn: Executor, limit: int, lease_s: float) -> list[int]:
    """Up to ``limit`` due jobs (course ids), each leased for ``lease_s`` in the same statement:
    rows another process is claiming or working on (locked) are skipped. A batch renews the
    lease; a process that dies leaves the job due again once its lease ends."""
    rows = await conn.fetch(
        """
        UPDATE course_recalculations r
        SET attempts = r.attempts + 1, due_at = now() + make_interval(secs => $2)
        FROM (SELECT course_id FROM course_recalculations WHERE due_at <= now()
              ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED) due
        WHERE r.course_id = due.course_id
        RETURNING r.course_id
        """,
        limit, lease_s,
    )
    return [r["course_id"] for r in rows]


async def lock_recalculation(conn: Connection, course_id: int) -> Recalculation | None:
    """The job, locked until commit: one batch of a course at a time, whichever process runs it."""
    r = await conn.fetchrow(
        "SELECT course_id, revision, required_lesson_ids, cursor FROM course_recalculations "
        "WHERE course_id = $1 FOR UPDATE",
        course_id,
    )
    if r is None:
        return None
    ids = r["required_lesson_ids"]
    return Recalculation(r["course_id"], r["revision"], list(ids) if ids is not None else None, r["cursor"])


async def advance_recalculation(
    conn: Connection, course_id: int, revision: int, required_lesson_ids: Sequence[int], cursor: str, lease_s: float
) -> None:
    await conn.execute(
        "UPDATE course_recalculations SET revision = GREATEST(revision, $2), required_lesson_ids = $3, cursor = $4, "
        "due_at = now() + make_interval(secs => $5), attempts = 0, last_error = NULL, updated_at = now() "
        "WHERE course_id = $1",
        course_id, revision, list(required_lesson_ids), cursor, lease_s,
    )


async def delete_recalculation(conn: Connection, course_id: int) -> None:
    await conn.execute("DELETE FROM course_recalculations WHERE course_id = $1", course_id)


async def recalculation_failed(conn: Executor, course_id: int, error: str) -> None:
    await conn.execute(
        "UPDATE course_recalculations SET last_error = $2, updated_at = now() WHERE course_id = $1",
        course_id, error[:500],
    )


@dataclass(frozen=True, slots=True)
class BatchLearner:
    user_id: str
    enrollment_id: int
    status: str
    attempt: int


async def lock_enrollment_batch(
    conn: Connection, course_id: int, after: str | None, limit: int
) -> list[BatchLearner]:
    """The next ``limit`` enrollments of the course after user ``after``, row-locked in user_id
    order: the lock completions take (see usecases), always taken in one order, with the
    learner's current attempt."""
    rows = await conn.fetch(
        """
        SELECT e.user_id, e.enrollment_id, e.status, e.attempt
        FROM enrollments e
        WHERE e.course_id = $1 AND ($2::text IS NULL OR e.user_id > $2)
        ORDER BY e.user_id LIMIT $3
        FOR UPDATE
        """,
        course_id, after, limit,
    )
    return [BatchLearner(r["user_id"], r["enrollment_id"], r["status"], r["attempt"]) for r in rows]


async def completed_lessons_of(conn: Executor, course_id: int, user_ids: Sequence[str]) -> dict[str, set[int]]:
    """Each learner's completed lessons of the course, for many learners in one query."""
    rows = await conn.fetch(
        "SELECT user_id, array_agg(lesson_id) AS ids FROM lesson_progress "
        "WHERE user_id = ANY($2::text[]) AND course_id = $1 AND completed GROUP BY user_id",
        course_id, list(user_ids),
    )
    return {r["user_id"]: set(r["ids"]) for r in rows}


async def completed_enrollments(conn: Executor, course_id: int, learners: Sequence[BatchLearner]) -> set[int]:
    """The enrollment ids among ``learners`` that have a course completion of their current attempt."""
    rows = await conn.fetch(
        "SELECT DISTINCT c.enrollment_id FROM course_completions c "
        "JOIN unnest($2::text[], $3::bigint[], $4::int[]) AS x (u, e, a) "
        "ON c.user_id = x.u AND c.enrollment_id = x.e AND c.attempt = x.a "
        "WHERE c.course_id = $1",
        course_id, [learner.user_id for learner in learners], [learner.enrollment_id for learner in learners],
        [learner.attempt for learner in learners],
    )
    return {r["enrollment_id"] for r in rows}


# ---------------------------------------------------------------- viewing sessions

@dataclass(frozen=True, slots=True)
class SessionRow:
    """A learner-lesson's playback in one flush batch, for its viewing session: when the
    first and the last accepted heartbeat arrived (server time), the positions then, and
    the media ranges played (normalized)."""

    user_id: str
    course_id: int
    lesson_id: int
    attempt: int
    first_seen: datetime
    start_position: float
    last_seen: datetime
    end_position: float
    played: domain.Intervals = ()


# One statement per flush batch: each learner's newest row opens or extends the learner's
# current session (migration 010). The session goes on when the row is of its lesson and
# attempt and began within the idle time of its last heartbeat: its last heartbeat and end
# position move forward only (replicas flush in any order), its played ranges are merged
# (progress_watch, like the records' watched ranges; its length is not kept, but passing one
# lets playback that goes on take the function's short cut). Otherwise the row starts a new session
# in place (the trigger keeps the replaced one, ended, for the closing loop), unless it is
# older than the current session altogether (a replica's late flush of the lesson the
# learner left), which changes nothing. Rows arrive sorted by user, as the flush's are.
SESSIONS_SQL = """
INSERT INTO video_sessions_current AS s
    (user_id, session_id, course_id, lesson_id, attempt, started_at, start_position, last_seen_at, end_position,
     played)
SELECT DISTINCT ON (u) u, gen_random_uuid(), c, l, a, f,
       CASE WHEN whi > wlo THEN LEAST(sp, ($9::float8[])[wlo + 1]) ELSE sp END, ls, ep,
       CASE WHEN whi > wlo THEN ($9::float8[])[wlo + 1:whi] ELSE '{}' END
FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::int[], $5::timestamptz[], $6::float8[],
            $7::timestamptz[], $8::float8[], $10::int[], $11::int[])
     AS x (u, c, l, a, f, sp, ls, ep, wlo, whi)
ORDER BY u, ls DESC
ON CONFLICT (user_id) DO UPDATE SET
    (session_id, course_id, lesson_id, attempt, started_at, start_position, last_seen_at, end_position, played) = (
        SELECT CASE WHEN k.goes_on THEN s.session_id ELSE excluded.session_id END,
               excluded.course_id, excluded.lesson_id, excluded.attempt,
               CASE WHEN k.goes_on THEN LEAST(s.started_at, excluded.started_at) ELSE excluded.started_at END,
               CASE WHEN k.goes_on AND s.started_at <= excluded.started_at THEN s.start_position
                    ELSE excluded.start_position END,
               CASE WHEN k.goes_on THEN GREATEST(s.last_seen_at, excluded.last_seen_at)
                    ELSE excluded.last_seen_at END,
               CASE WHEN k.goes_on AND s.last_seen_at > excluded.last_seen_at THEN s.end_position
                    ELSE excluded.end_position END,
               CASE WHEN k.goes_on THEN (progress_watch(s.played, excluded.played, stored_seconds => 0)).watched
                    ELSE excluded.played END
        FROM (SELECT s.lesson_id = excluded.lesson_id AND s.attempt = excluded.attempt
                     AND excluded.started_at <= s.last_seen_at + $12 * interval '1 second' AS goes_on) AS k)
WHERE (s.lesson_id = excluded.lesson_id AND s.attempt = excluded.attempt) OR excluded.last_seen_at >= s.started_at
"""


async def keep_sessions(conn: Executor, rows: Sequence[SessionRow], idle_s: float) -> None:
    if not rows:
        return
    played: list[float] = []
    starts: list[int] = []
    ends: list[int] = []
    for r in rows:
        starts.append(len(played))
        played.extend(domain.flat(r.played))
        ends.append(len(played))
    await conn.execute(
        SESSIONS_SQL,
        [r.user_id for r in rows], [r.course_id for r in rows], [r.lesson_id for r in rows],
        [r.attempt for r in rows], [r.first_seen for r in rows], [r.start_position for r in rows],
        [r.last_seen for r in rows], [r.end_position for r in rows], played, starts, ends, idle_s,
    )


async def mark_flushed(conn: Executor, process_id: UUID, through: datetime) -> None:
    """Every heartbeat the process accepted before ``through`` is in the database (written
    in the transaction of the flush that wrote them, or alone when nothing was buffered)."""
    await conn.execute(
        "INSERT INTO heartbeat_flushers AS f (process_id, flushed_through) VALUES ($1, $2) "
        "ON CONFLICT (process_id) DO UPDATE SET "
        "flushed_through = GREATEST(f.flushed_through, excluded.flushed_through), written_at = now()",
        process_id, through,
    )


async def forget_flusher(conn: Executor, process_id: UUID) -> None:
    """The process stopped after its last flush: it holds no session open any more."""
    await conn.execute("DELETE FROM heartbeat_flushers WHERE process_id = $1", process_id)


async def session_cutoff(conn: Connection, idle_s: float, expiry_s: float) -> datetime:
    """Sessions whose last heartbeat is older than this have ended: idle for ``idle_s`` by
    the database clock, and by every live process's flush, so that no heartbeat of theirs
    still waits in a buffer. Processes silent for ``expiry_s`` count as gone; their rows are
    removed (skipping any another closer is removing)."""
    cutoff: datetime = await conn.fetchval(
        """
        WITH gone AS (
            DELETE FROM heartbeat_flushers
            WHERE process_id IN (SELECT process_id FROM heartbeat_flushers
                                 WHERE written_at < now() - $2 * interval '1 second' FOR UPDATE SKIP LOCKED)
        )
        SELECT LEAST(now(), (SELECT min(flushed_through) FROM heartbeat_flushers
                             WHERE written_at >= now() - $2 * interval '1 second'))
               - $1 * interval '1 second'
        """,
        idle_s, expiry_s,
    )
    return cutoff


async def end_idle_sessions(conn: Connection, cutoff: datetime, limit: int) -> None:
    """Sessions whose last heartbeat is before ``cutoff`` (``session_cutoff``) end: moved
    from the current ones to the ended ones (unpublished). Rows a flush is extending are
    skipped, not waited for."""
    await conn.execute(
        """
        WITH idle AS (
            DELETE FROM video_sessions_current c
            WHERE c.user_id IN (SELECT user_id FROM video_sessions_current
                                WHERE last_seen_at < $1
                                ORDER BY last_seen_at LIMIT $2 FOR UPDATE SKIP LOCKED)
              AND c.last_seen_at < $1
            RETURNING c.*
        )
        INSERT INTO video_sessions (session_id, user_id, course_id, lesson_id, attempt, started_at, last_seen_at,
                                    start_position, end_position, played)
        SELECT session_id, user_id, course_id, lesson_id, attempt, started_at, last_seen_at,
               start_position, end_position, played
        FROM idle
        """,
        cutoff, limit,
    )


async def claim_ended_sessions(conn: Connection, limit: int, idle_s: float) -> list[domain.EndedSession]:
    """Ended sessions not published yet, locked (others skipped), with what their event
    says beyond the session: the record's watched seconds, the video's length from the
    catalog replica, and whether the lesson was completed in the session (from its start
    to the idle time after its last heartbeat: a completion by watching follows a flush)."""
    rows = await conn.fetch(
        """
        SELECT s.session_id, s.user_id, s.course_id, s.lesson_id, s.attempt, s.started_at, s.last_seen_at,
               s.start_position, s.end_position, s.played, p.watched_seconds,
               COALESCE(p.completed_at BETWEEN s.started_at AND s.last_seen_at + $2 * interval '1 second', false)
                   AS completed,
               (SELECT (l ->> 'duration_seconds')::float8
                FROM courses k CROSS JOIN LATERAL jsonb_array_elements(k.entry -> 'lessons') AS l
                WHERE k.course_id = s.course_id AND (l ->> 'id')::bigint = s.lesson_id) AS length
        FROM video_sessions s
        LEFT JOIN lesson_progress p ON p.user_id = s.user_id AND p.lesson_id = s.lesson_id AND p.attempt = s.attempt
        WHERE s.event IS NULL
        ORDER BY s.last_seen_at
        LIMIT $1
        FOR UPDATE OF s SKIP LOCKED
        """,
        limit, idle_s,
    )
    return [
        domain.EndedSession(
            r["session_id"], r["user_id"], r["course_id"], r["lesson_id"], r["attempt"], r["started_at"],
            r["last_seen_at"], r["start_position"], r["end_position"], domain.pairs(r["played"]),
            r["watched_seconds"], r["length"], r["completed"],
        )
        for r in rows
    ]


async def mark_sessions_published(conn: Connection, events: Sequence[VideoSessionEnded]) -> None:
    await conn.executemany(
        "UPDATE video_sessions SET event_id = $2, event = $3 WHERE session_id = $1 AND event IS NULL",
        [(e.session_id, e.event_id, e.model_dump(mode="json")) for e in events],
    )


async def video_session_by_event_id(conn: Executor, event_id: UUID) -> VideoSessionEnded | None:
    """The video-session-ended event progress published with this id, if it published one."""
    event = await conn.fetchval("SELECT event FROM video_sessions WHERE event_id = $1", event_id)
    return VideoSessionEnded.model_validate(event) if event is not None else None


# --- erasure (GDPR) --------------------------------------------------------------------------

# Every table that names a learner, by its user column (for the export and the erasure).
LEARNER_TABLES = [
    ("lesson_progress", "user_id"), ("lesson_progress_history", "user_id"), ("enrollments", "user_id"),
    ("course_completions", "user_id"), ("certificates", "user_id"), ("analytics_learners", "user_id"),
    ("pending_confirmations", "user_id"), ("video_sessions_current", "user_id"), ("video_sessions", "user_id"),
]


async def learner_personal_data(conn: Connection, user_id: str) -> list[str]:
    """The learner's names and addresses as this service stored them (to find them in the outbox)."""
    rows = await conn.fetch(
        "SELECT display_name AS v FROM enrollments WHERE user_id = $1 UNION SELECT email FROM enrollments "
        "WHERE user_id = $1 UNION SELECT event ->> 'user_name' FROM course_completions WHERE user_id = $1 "
        "UNION SELECT event ->> 'user_email' FROM course_completions WHERE user_id = $1 "
        "UNION SELECT user_name FROM pending_confirmations WHERE user_id = $1 "
        "UNION SELECT user_email FROM pending_confirmations WHERE user_id = $1",
        user_id,
    )
    return [row["v"] for row in rows if row["v"]]


async def pseudonymise_learner(conn: Connection, user_id: str, pseudonym: str) -> dict[str, int]:
    """Give the learner's records the id ``pseudonym`` and drop their name and address, so
    that every course figure (analytics included) stays what it was and nothing names them.

    The order keeps the analytics exact: the learner's ``analytics_learners`` rows are copied
    under the pseudonym first, so when the records are renamed their trigger takes each
    record out of its cohort's buckets (old id) and puts it back into the same cohort (new
    id): the deltas cancel out. The replica rows are renamed next (their trigger finds the
    cohort unchanged), and the old learner rows go last. Rows are locked as completions lock
    them (the replica row, then the learner rows, in course order). Pending confirmations
    are dropped: they would publish a completion with the learner's name."""
    async def changed(sql: str, *, renamed: bool = True) -> int:
        args = (user_id, pseudonym) if renamed else (user_id,)
        return int((await conn.execute(sql, *args)).split()[-1])

    await conn.execute("SELECT 1 FROM enrollments WHERE user_id = $1 ORDER BY course_id FOR UPDATE", user_id)
    await conn.execute("SELECT 1 FROM analytics_learners WHERE user_id = $1 ORDER BY course_id FOR UPDATE", user_id)
    await changed(
        "INSERT INTO analytics_learners (course_id, user_id, cohort_day, last_activity_at, last_lesson_id) "
        "SELECT course_id, $2, cohort_day, last_activity_at, last_lesson_id FROM analytics_learners "
        "WHERE user_id = $1 ORDER BY course_id"
    )
    summary = {
        "lesson_progress": await changed("UPDATE lesson_progress SET user_id = $2 WHERE user_id = $1"),
        "enrollments": await changed(
            "UPDATE enrollments SET user_id = $2, display_name = '', email = '' WHERE user_id = $1"),
        "analytics_learners": await changed("DELETE FROM analytics_learners WHERE user_id = $1", renamed=False),
        "lesson_progress_history": await changed(
            "UPDATE lesson_progress_history SET user_id = $2 WHERE user_id = $1"),
        "course_completions": await changed(
            "UPDATE course_completions SET user_id = $2, event = event || jsonb_build_object("
            "'user_id', $2::text, 'user_name', '', 'user_email', '') WHERE user_id = $1"),
        "certificates": await changed("UPDATE certificates SET user_id = $2 WHERE user_id = $1"),
        "pending_confirmations": await changed(
            "DELETE FROM pending_confirmations WHERE user_id = $1", renamed=False),
        "video_sessions_current": await changed("UPDATE video_sessions_current SET user_id = $2 WHERE user_id = $1"),
        "video_sessions": await changed(
            "UPDATE video_sessions SET user_id = $2, event = CASE WHEN event IS NULL THEN NULL "
            "ELSE event || jsonb_build_object('user_id', $2::text) END WHERE user_id = $1"),
        "course_recalculations": await changed("UPDATE course_recalculations SET cursor = $2 WHERE cursor = $1"),
    }
    return summary
