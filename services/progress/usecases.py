"""What the progress API does, between the thin routes and the SQL.

Locking: every completion change of one learner in one course (complete, incomplete,
course completion) first takes the row lock of that learner's enrollment replica row.
That serialises them, so when the last two required lessons are completed at the same
moment, exactly one transaction sees every required lesson done and writes the single
course-completed event (the course_completions key makes a second one impossible anyway).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol
from uuid import UUID

import asyncpg
import httpx
from prometheus_client import Counter

from services.progress import domain, store
from services.progress.domain import (
    CompletionNotFound,
    CourseNotFound,
    CourseNotPublished,
    LessonLocked,
    LessonNotFound,
    LessonNotInCourse,
    LessonNotWatched,
    NotEnrolled,
    VideoSessionNotFound,
)
from services.progress.heartbeats import Entry, HeartbeatBuffer
from services.progress.replicas import ACTIVE, OWNER, Replicas, store_enrollment
from shared import db, erasure, outbox
from shared.auth import User
from shared.db import Connection
from shared.domain import DomainError
from shared.events import (
    CatalogLesson,
    CertificateIssued,
    CourseCatalogEntry,
    CourseCompleted,
    EnrollmentChanged,
    LearnerErased,
    LearnerProgress,
    LessonCompleted,
    LessonReopened,
    ProgressRecalculated,
    VideoSessionEnded,
)
from shared.inbox import EventContext
from shared.internal import PeerUnavailable
from shared.listener import Listener
from shared.periodic import Periodic
from shared.retry import Backoff

log = logging.getLogger(__name__)

DEFERRED = Counter(
    "lessonstream_completions_deferred_total",
    "Completions recorded while the enrollment service could not confirm them (decision deferred)",
)
RECHECKS = Counter(
    "lessonstream_completion_rechecks_total", "Re-checks of deferred completions, by outcome", ["outcome"]
)
# A deferred completion whose re-check fails waits first_s * 2**attempts, at most max_s.
RECHECK_BACKOFF = Backoff(first_s=1.0, max_s=60.0)


def unconfirmed(what: str) -> PeerUnavailable:
    """The replica would refuse, but it may only be behind and the owner could not be asked."""
    return PeerUnavailable(OWNER, f"{what}, and the completion cannot be confirmed")


def lesson_completed(
    user_id: str, course_id: int, lesson_id: int, completed_at: datetime, standing: domain.CourseStanding,
    attempt: int,
) -> LessonCompleted:
    return LessonCompleted(
        user_id=user_id, course_id=course_id, lesson_id=lesson_id, completed_at=completed_at,
        progress_percentage=standing.progress_percentage, completed_lessons=standing.completed_required,
        total_lessons=standing.total_required, attempt=attempt,
    )


def record_json(row: store.ProgressRow, entry: Entry | None = None, duration: float | None = None) -> dict[str, Any]:
    """A stored row as the API shows it, with this process's unflushed heartbeats on top:
    the entry first takes from ``row`` whatever is newer there (another replica's flush),
    so nothing older than the database is shown; its pending intervals add only what the
    row's credited intervals do not cover yet. ``duration``: the lesson's (watched ratio)."""
    if entry is not None:
        entry.refresh(row)
        p = entry.playback
        return domain.progress_record(
            entry.id, entry.user_id, entry.course_id, entry.lesson_id, row.completed, row.completed_at,
            p.video_progress, p.last_position, entry.time_spent(), entry.created_at, entry.updated_at,
            entry.watched_seconds(), duration,
        )
    return domain.progress_record(
        row.id, row.user_id, row.course_id, row.lesson_id, row.completed, row.completed_at,
        row.video_progress, row.last_position, row.time_spent_seconds, row.created_at, row.updated_at,
        row.watched_seconds, duration,
    )


class NoThresholdRule(Exception):
    """An automatic completion found no threshold rule for the lesson in the confirmed
    revision: only the learner completes it."""


@dataclass(frozen=True)
class Completion:
    row: store.ProgressRow
    newly: bool
    standing: domain.CourseStanding
    confirmed: bool = True  # False: the owner could not be asked; course-completed is deferred


class Tracker:
    """The use cases of the progress API, on this process's replicas and heartbeat buffer."""

    def __init__(
        self, pool: asyncpg.Pool, replicas: Replicas, buffer: HeartbeatBuffer, recheck: Backoff = RECHECK_BACKOFF
    ) -> None:
        self.pool = pool
        self.replicas = replicas
        self.buffer = buffer
        self.recheck = recheck

    # ------------------------------------------------------------ checks
    async def course(self, course_id: int) -> CourseCatalogEntry:
        course = await self.replicas.course(course_id)
        if course is None:
            raise CourseNotFound(course_id)
        return course

    async def enrollment(self, user_id: str, course_id: int, own: bool = True) -> EnrollmentChanged:
        enrollment = await self.replicas.enrollment(user_id, course_id)
        if enrollment is None:
            raise NotEnrolled(own)
        return enrollment

    # ------------------------------------------------------------ heartbeats
    async def record(
        self,
        user: User,
        course_id: int,
        lesson_id: int,
        completed: bool,
        video_progress: float | None,
        last_position: float | None,
        client_at: float | None,
        played: domain.Intervals | None = None,
    ) -> dict[str, Any]:
        course = await self.course(course_id)
        if domain.find_lesson(course, lesson_id) is None:
            # The replica may be behind (a lesson added a moment ago): the owner decides.
            course = await self.replicas.refresh_course(course_id) or course
        lesson = domain.find_lesson(course, lesson_id)
        if lesson is None:
            raise LessonNotInCourse(lesson_id, course_id)
        enrollment = await self.enrollment(user.id, course_id)
        entry = self.buffer.peek(user.id, lesson_id)
        if entry is not None and entry.attempt < enrollment.attempt:
            # Buffered before the learner's course was reset: none of it is the new attempt's.
            self.buffer.drop(user.id, lesson_id)
            entry = None
        if course.requires_sequential_progress and (entry is None or not entry.unlocked):
            blocker = domain.lock_blocker(
                course, lesson_id, await store.completed_lesson_ids(self.pool, user.id, course_id)
            )
            if blocker is not None:
                raise LessonLocked(blocker)
            entry = await self.buffer.entry(user.id, course_id, lesson_id)
            entry.unlocked = True
        duration = float(lesson.duration_seconds) if lesson.duration_seconds else None
        entry = await self.buffer.heartbeat(
            user.id, course_id, lesson_id, video_progress, last_position, client_at, played, duration
        )
        if entry.completed:
            return entry.as_json(duration)
        # Under a threshold rule the coverage decides (with this process's pending ranges);
        # a `completed: true` below it records the playback and completes nothing.
        threshold = domain.completion_threshold(course, lesson)
        reached = threshold is not None and domain.watched_enough(course, lesson, entry.watched_seconds())
        if completed or reached:
            # Completions are written at once, with the playback merged just above.
            try:
                done = await self._complete(
                    user, course, enrollment, lesson_id, take_playback=True,
                    missing=lambda: LessonNotInCourse(lesson_id, course_id), auto=not completed,
                )
            except (LessonNotWatched, NoThresholdRule):
                pass  # the confirmed revision's rule says not yet
            except (DomainError, PeerUnavailable):
                if completed:
                    raise
                # Nobody asked for this completion: the heartbeat itself was recorded, and the
                # next one (or a flush) tries again.
                log.info("automatic completion of %s:%s not possible now", user.id, lesson_id, exc_info=True)
            else:
                entry.adopt(done.row)
        return entry.as_json(duration)

    # ------------------------------------------------------------ completion
    async def complete(self, user: User, course_id: int, lesson_id: int) -> Completion:
        course = await self.course(course_id)
        enrollment = await self.enrollment(user.id, course_id)
        # The lesson is checked against the confirmed revision (in _complete_tx), not the
        # replica's: a lesson added a moment ago is found, one removed is LessonNotFound.
        done = await self._complete(
            user, course, enrollment, lesson_id, take_playback=True, missing=lambda: LessonNotFound(lesson_id)
        )
        entry = self.buffer.peek(user.id, lesson_id)
        if entry is not None:
            entry.adopt(done.row)
        return done

    async def _confirm(self, user_id: str, course: CourseCatalogEntry) -> bool:
        """Bring the replica up to the owner's current course revision and the learner's
        enrollment (see Replicas.confirm). False if the owner cannot be asked; ``CourseNotFound``
        if it has no such course; ``NotEnrolled`` if the learner is no longer enrolled there."""
        try:
            answer = await self.replicas.confirm(user_id, course.course_id, course.revision)
        except PeerUnavailable:
            return False
        if answer is None:
            raise CourseNotFound(course.course_id)
        if answer.enrollment is None or answer.enrollment.status not in ACTIVE:
            raise NotEnrolled()
        return True

    async def _complete(
        self,
        user: User,
        course: CourseCatalogEntry,
        enrollment: EnrollmentChanged,
        lesson_id: int,
        take_playback: bool,
        missing: Callable[[], DomainError],
        auto: bool = False,
    ) -> Completion:
        """``auto``: the coverage reached a threshold (no request to complete): only a
        threshold rule in the confirmed revision completes the lesson (else
        ``NoThresholdRule``)."""
        confirmed = await self._confirm(user.id, course)
        pending = self.buffer.take_pending(user.id, lesson_id) if take_playback else None
        try:
            # Locks the learner's analytics row (migration 003) as concurrent flushes do: should
            # PostgreSQL abort one of two such transactions as a deadlock, it rolled back whole,
            # so run it again.
            return await db.retrying(
                lambda: self._complete_tx(user, course, enrollment, lesson_id, pending, confirmed, missing, auto)
            )
        except BaseException:
            self.buffer.give_back(pending)
            raise

    async def _complete_tx(
        self,
        user: User,
        course: CourseCatalogEntry,
        enrollment: EnrollmentChanged,
        lesson_id: int,
        pending: store.FlushRow | None,
        confirmed: bool,
        missing: Callable[[], DomainError],
        auto: bool = False,
    ) -> Completion:
        """Decide under the learner's lock, on the newest catalog row the replica holds: after
        a confirmation, at least the owner's revision. Unconfirmed (the owner could not be
        asked), the lesson is still recorded, but its lesson-completed and the course decision
        are left to the re-check, and a course not published or a lesson unknown in the
        replica is ``PeerUnavailable`` (it may only be behind), not a refusal."""
        async with self.pool.acquire() as conn, conn.transaction():
            course_id = course.course_id
            locked = await store.lock_enrollment(conn, user.id, course_id)
            if confirmed and (locked is None or locked.status not in ACTIVE):
                raise NotEnrolled()
            enrollment = locked or enrollment
            if pending is not None and pending.attempt != enrollment.attempt:
                pending = None  # playback of an attempt that ended is written into no other
            course = await store.get_course(conn, course_id) or course
            if course.status != "published":
                raise CourseNotPublished(course_id) if confirmed else unconfirmed("course not published here")
            lesson = domain.find_lesson(course, lesson_id)
            if lesson is None:
                raise missing() if confirmed else unconfirmed(f"lesson {lesson_id} unknown here")
            before = await store.get_progress(conn, user.id, lesson_id)
            if before is None or not before.completed:
                # The coverage rule of this revision, on the stored ranges (every replica's
                # flushes, under the row's lock below) with this process's pending ones.
                self._check_watched(course, lesson, before, pending, auto)
            ids = await store.completed_lesson_ids(conn, user.id, course_id)
            if before is not None and before.completed and pending is None:
                standing = domain.standing(course, ids)
                if confirmed:  # e.g. a retry after a deferred completion: decide now
                    await self._decide(conn, user, course, enrollment, standing, True, None)
                return Completion(before, False, standing, confirmed)
            if before is None or not before.completed:
                # Checked under the lock: a concurrent reopen cannot slip in between.
                blocker = domain.lock_blocker(course, lesson_id, ids)
                if blocker is not None:
                    raise LessonLocked(blocker)
            now = datetime.now(UTC)
            row = await store.mark_complete(conn, user.id, course_id, lesson_id, now, pending, enrollment.attempt)
            newly = before is None or not before.completed
            ids.add(lesson_id)
            standing = domain.standing(course, ids)
            if newly and confirmed:
                completed_at = row.completed_at or now
                await outbox.add(conn, lesson_completed(user.id, course_id, lesson_id, completed_at, standing,
                                                        enrollment.attempt))
            await self._decide(conn, user, course, enrollment, standing, confirmed, lesson_id if newly else None)
            return Completion(row, newly, standing, confirmed)

    @staticmethod
    def _check_watched(
        course: CourseCatalogEntry, lesson: CatalogLesson, before: store.ProgressRow | None,
        pending: store.FlushRow | None, auto: bool,
    ) -> None:
        threshold = domain.completion_threshold(course, lesson)
        if threshold is None:
            if auto:
                raise NoThresholdRule()
            return
        watched = domain.watched_union(before.watched if before else (), pending.watched if pending else ())
        seconds = domain.length(watched)
        if not domain.watched_enough(course, lesson, seconds):
            raise LessonNotWatched(domain.watched_ratio(seconds, lesson.duration_seconds), threshold)

    async def complete_watched(self) -> int:
        """Complete the lessons whose coverage a flush found at their threshold: coverage can
        reach it in the database only, when another replica's flush adds its ranges. The
        completion path decides (confirmed, locked, once). Returns how many it completed."""
        candidates = self.buffer.watch_candidates
        self.buffer.watch_candidates = {}
        completed = 0
        for key, row in candidates.items():
            try:
                course = await self.replicas.course(row.course_id)
                lesson = domain.find_lesson(course, row.lesson_id) if course is not None else None
                if course is None or lesson is None or domain.completion_threshold(course, lesson) is None:
                    continue
                if not domain.watched_enough(course, lesson, row.watched_seconds):
                    continue
                enrollment = await self.replicas.enrollment(row.user_id, row.course_id)
                if enrollment is None:
                    continue
                done = await self._complete(
                    User(id=row.user_id), course, enrollment, row.lesson_id, take_playback=True,
                    missing=functools.partial(LessonNotFound, row.lesson_id), auto=True,
                )
            except (DomainError, NoThresholdRule):
                continue  # not (or no longer) completable: the learner's next act decides
            except Exception as exc:
                # Try again after the next flush (a newer candidate of the key wins).
                log.warning("automatic completion of %s:%s failed: %r", row.user_id, row.lesson_id, exc)
                self.buffer.watch_candidates.setdefault(key, row)
                continue
            entry = self.buffer.peek(row.user_id, row.lesson_id)
            if entry is not None:
                entry.adopt(done.row)
            completed += int(done.newly)
        return completed

    async def complete_watched_round(self) -> bool:
        """One round of the loop that runs ``complete_watched`` after flushes: true while a
        failed try is left to retry (the loop keeps its interval), else it may back off."""
        await self.complete_watched()
        return bool(self.buffer.watch_candidates)

    async def _decide(
        self,
        conn: Connection,
        user: User,
        course: CourseCatalogEntry,
        enrollment: EnrollmentChanged,
        standing: domain.CourseStanding,
        confirmed: bool,
        newly_completed: int | None,
    ) -> None:
        if not confirmed:
            # Nothing that depends on the catalog leaves on unconfirmed data: the lesson's
            # lesson-completed (its figures) and the course decision wait for the re-check.
            DEFERRED.inc()
            await store.add_pending_confirmation(
                conn, user.id, course.course_id, user.name, user.email, newly_completed
            )
        elif standing.all_required_done:
            await self._course_completed(conn, user.id, user.name, user.email, course, enrollment)

    async def _course_completed(
        self, conn: Connection, user_id: str, name: str, email: str, course: CourseCatalogEntry,
        enrollment: EnrollmentChanged,
    ) -> None:
        """Once per enrollment and attempt, whatever is toggled afterwards. ``name``/``email``:
        the completing request's token claims, if any."""
        attempt = enrollment.attempt
        if await store.get_completion(conn, user_id, course.course_id, enrollment.enrollment_id, attempt) is not None:
            return
        own_claims = user_id == enrollment.user_id
        event = CourseCompleted(
            user_id=enrollment.user_id,
            course_id=course.course_id,
            completed_at=datetime.now(UTC),
            user_name=(name if own_claims and name else "") or enrollment.display_name
            or enrollment.username or enrollment.user_id,
            user_email=(email if own_claims and email else "") or enrollment.email,
            course_title=course.title,
            certificate_enabled=course.certificate_enabled,
            enrolled_at=enrollment.enrolled_at,
            instructor_ids=list(course.instructor_ids),
            # From the confirmed revision, like the title: the workers date the expiry by it.
            certificate_validity_days=course.certificate_validity_days,
            attempt=attempt,
            course_revision=course.revision,
        )
        if await store.add_completion(conn, enrollment.enrollment_id, event, domain.required_ids(course)):
            await outbox.add(conn, event)

    # ------------------------------------------------------------ deferred decisions
    async def recheck_pending(self, limit: int = 100) -> int:
        """Settle the completions deferred while the owner was unreachable: ask it, then
        publish and decide as a confirmed completion would. Rows are claimed in batches with
        a lease (see store.claim_pending_confirmations), so several processes share the work;
        a failed re-check keeps its row, due again after its backoff, and the first
        ``PeerUnavailable`` ends the round (the rest of the batch keeps its backoff too).
        Returns how many were settled."""
        settled = 0
        while True:
            claimed = await store.claim_pending_confirmations(self.pool, limit, self.recheck)
            for item in claimed:
                try:
                    await self._recheck(item)
                    settled += 1
                    RECHECKS.labels("settled").inc()
                except Exception as exc:
                    RECHECKS.labels("failed").inc()
                    log.warning("re-check of %s:%s failed (attempt %s): %r", item.user_id, item.course_id,
                                item.attempts, exc)
                    await store.pending_confirmation_failed(self.pool, item.user_id, item.course_id, repr(exc))
                    if isinstance(exc, PeerUnavailable):
                        return settled
            if len(claimed) < limit:
                return settled

    async def _recheck(self, item: store.PendingConfirmation) -> None:
        known = await store.get_course(self.pool, item.course_id)
        answer = await self.replicas.confirm(item.user_id, item.course_id, known.revision if known else 0)
        user_id, course_id = item.user_id, item.course_id

        async def decide() -> None:
            async with self.pool.acquire() as conn, conn.transaction():
                # The learner's lock first, as completions take it (they append to the row).
                locked = await store.lock_enrollment(conn, user_id, course_id)
                held = await store.lock_pending_confirmation(conn, user_id, course_id)
                if held is None:
                    return  # settled by another process meanwhile
                course = await store.get_course(conn, course_id)
                if (
                    answer is not None and locked is not None and locked.status in ACTIVE
                    and course is not None and course.status == "published"
                ):
                    standing = domain.standing(course, await store.completed_lesson_ids(conn, user_id, course_id))
                    for lesson_id in held.lesson_ids:  # appended in completion order
                        row = await store.get_progress(conn, user_id, lesson_id)
                        if row is None or row.completed_at is None or domain.find_lesson(course, lesson_id) is None:
                            continue  # reopened since (its event said so), or not in the course any more
                        await outbox.add(conn, lesson_completed(user_id, course_id, lesson_id, row.completed_at,
                                                                standing, locked.attempt))
                    if standing.all_required_done:
                        await self._course_completed(conn, user_id, held.user_name, held.user_email, course, locked)
                # Else nothing to publish: the learner has left, or the course is not published.
                await store.delete_pending_confirmation(conn, user_id, course_id)

        await db.retrying(decide)

    async def incomplete(
        self, user: User, course_id: int, lesson_id: int
    ) -> tuple[store.ProgressRow | None, domain.CourseStanding]:
        """Reopen a completed lesson; the row is None when it was not complete."""
        course = await self.course(course_id)
        await self.enrollment(user.id, course_id)
        # The percentage returned (and published) comes from a confirmed revision: without the
        # owner, PeerUnavailable and nothing changes.
        if not await self._confirm(user.id, course):
            raise PeerUnavailable(OWNER, "the percentage of a reopened lesson cannot be confirmed")

        async def reopen() -> tuple[store.ProgressRow | None, domain.CourseStanding]:
            async with self.pool.acquire() as conn, conn.transaction():
                locked = await store.lock_enrollment(conn, user.id, course_id)
                if locked is None or locked.status not in ACTIVE:
                    raise NotEnrolled()
                current = await store.get_course(conn, course_id) or course
                if current.status != "published":
                    raise CourseNotPublished(course_id)
                if domain.find_lesson(current, lesson_id) is None:
                    raise LessonNotFound(lesson_id)
                now = datetime.now(UTC)
                row = await store.mark_incomplete(conn, user.id, lesson_id, now)
                ids = await store.completed_lesson_ids(conn, user.id, course_id)
                standing = domain.standing(current, ids)
                if row is not None:
                    await outbox.add(conn, LessonReopened(
                        user_id=user.id, course_id=course_id, lesson_id=lesson_id, reopened_at=now,
                        progress_percentage=standing.progress_percentage,
                        completed_lessons=standing.completed_required, total_lessons=standing.total_required,
                        attempt=locked.attempt,
                    ))
                return row, standing

        row, standing = await db.retrying(reopen)
        if row is not None:
            entry = self.buffer.peek(user.id, lesson_id)
            if entry is not None:
                entry.adopt(row)
            self.buffer.relock(user.id, course_id)
        return row, standing

    # ------------------------------------------------------------ reads
    async def _durations(self, course_ids: set[int]) -> dict[int, float | None]:
        """Lesson durations of these courses, for the watched ratio (a course the replica
        cannot find now shows none rather than failing the read)."""
        durations: dict[int, float | None] = {}
        for course_id in course_ids:
            try:
                course = await self.replicas.course(course_id)
            except PeerUnavailable:
                continue
            for lesson in course.lessons if course is not None else ():
                durations[lesson.id] = float(lesson.duration_seconds) if lesson.duration_seconds else None
        return durations

    async def _overlay(self, rows: list[store.ProgressRow]) -> list[dict[str, Any]]:
        peek = self.buffer.peek

        def buffered(row: store.ProgressRow) -> Entry | None:
            entry = peek(row.user_id, row.lesson_id)
            # An earlier attempt's record (history) shows as stored; a later one replaces
            # the entry (Entry.refresh).
            return entry if entry is not None and entry.attempt <= row.attempt else None

        durations = await self._durations({row.course_id for row in rows})
        return [record_json(row, buffered(row), durations.get(row.lesson_id)) for row in rows]

    async def records(
        self, user_id: str, course_id: int | None, course_ids: list[int] | None = None, attempt: int | None = None
    ) -> list[Any]:
        return await self._overlay(await store.list_progress(self.pool, user_id, course_id, course_ids, attempt))

    async def my_records(self, user: User, course_id: int | None) -> list[Any]:
        if course_id is not None:
            await self.course(course_id)
        return await self.records(user.id, course_id)

    async def learner_records(
        self, viewer: User, learner_id: str, course_id: int | None, attempt: int | None = None
    ) -> list[Any]:
        """The learner's records for staff: the current attempt's, or ``attempt``'s (an
        earlier one's from the history)."""
        if viewer.is_admin:
            if course_id is not None:
                await self.course(course_id)
            return await self.records(learner_id, course_id, None, attempt)
        domain.check_sees_learners(viewer)
        if course_id is not None:
            domain.check_teaches(viewer, await self.course(course_id))
            return await self.records(learner_id, course_id, None, attempt)
        taught = await store.courses_taught_by(self.pool, viewer.id)
        return await self.records(learner_id, None, taught, attempt)

    async def course_progress(self, viewer: User, course_id: int, user_id: str | None) -> dict[str, Any]:
        course = await self.course(course_id)
        target = user_id or viewer.id
        domain.check_may_view(viewer, course, target)
        enrollment = await self.enrollment(target, course_id, own=target == viewer.id)
        records = await self.records(target, course_id)
        completed_ids = {r["lesson_id"] for r in records if r["completed"]}
        standing = domain.standing(course, completed_ids)
        seconds = round(sum(r["time_spent_seconds"] for r in records))
        attempt = enrollment.attempt
        async with self.pool.acquire() as conn:
            completion = await store.get_completion(conn, target, course_id, enrollment.enrollment_id, attempt)
            basis = await store.completion_basis(conn, target, course_id, enrollment.enrollment_id, attempt)
            certificate = await store.certificate_url(conn, target, course_id, attempt)
        return {
            "course_id": course_id,
            "user_id": target,
            "attempt": attempt,
            "progress_percentage": standing.progress_percentage,
            "completed_lessons": standing.completed_required,
            "total_lessons": standing.total_required,
            "time_spent": domain.time_spent_words(seconds),
            "time_spent_seconds": seconds,
            "last_accessed": max((r["updated_at"] for r in records), default=None),
            "started_at": enrollment.enrolled_at,
            "completed_at": completion.completed_at if completion else None,
            "certificate_url": certificate,
            "next_lesson": domain.lesson_ref(standing.next_lesson),
            "requires_sequential_progress": course.requires_sequential_progress,
            "missing_required_lessons": domain.lesson_refs(standing.missing_required),
            "locked_lessons": domain.lesson_refs(standing.locked),
            # A change of the course never revokes a completion: the revision it was decided
            # on, and what became required since (the percentage above counts those).
            "completed_revision": (basis.course_revision if basis else None) if completion else None,
            "new_required_lessons": domain.lesson_refs(
                domain.newly_required(course, basis.required_lesson_ids if basis else None)
            ) if completion else [],
        }

    async def completion_status(self, user_id: str, course_id: int) -> dict[str, Any]:
        """For the certificates service: has this learner completed the current attempt at
        the course, and the event."""
        course = await self.course(course_id)
        async with self.pool.acquire() as conn:
            completion = await store.latest_completion(conn, user_id, course_id)
            ids = await store.completed_lesson_ids(conn, user_id, course_id)
        return {
            "completed": completion is not None,
            "progress_percentage": domain.standing(course, ids).progress_percentage,
            "course_completed": completion.model_dump(mode="json") if completion else None,
        }

    async def video_session_event(self, event_id: UUID) -> VideoSessionEnded:
        """The stored video-session-ended event: consumers confirm an event with it."""
        event = await store.video_session_by_event_id(self.pool, event_id)
        if event is None:
            raise VideoSessionNotFound()
        return event

    async def completion_event(self, event_id: UUID) -> CourseCompleted:
        """The stored course-completed event: consumers confirm an event with it before they act."""
        event = await store.completion_by_event_id(self.pool, event_id)
        if event is None:
            raise CompletionNotFound()
        return event


# ---------------------------------------------------------------- recalculations

RECALCULATED = Counter(
    "lessonstream_progress_recalculated_total", "Learners whose progress was recalculated after a course change"
)


class Recalculator:
    """Recalculates every enrolled learner's progress after a change of a course's required
    lessons (the jobs ``store.save_course`` records), in batches, off the admin request.

    A batch is one transaction: the job row is locked (one batch of a course at a time,
    whichever process runs it), then the next ``batch_size`` enrollment replica rows after
    the cursor in user_id order (the lock completions take, always taken in that order, so
    a completion and a batch serialise and cannot deadlock), then their completed lessons
    are read in one query. The standings leave as ONE progress-recalculated event through
    the outbox, learners who now have every required lesson and no completion go to
    ``pending_confirmations`` (the re-check confirms with the owner and decides once), and
    the cursor advances, all in that transaction. A crash loses at most the batch in
    flight, which is done again from the cursor. The job computes with the revision the
    replica holds at each batch; when its required lessons differ from the ones the
    batches so far used, it starts again from the first learner."""

    def __init__(self, pool: asyncpg.Pool, batch_size: int, lease_s: float) -> None:
        self.pool = pool
        self.batch_size = batch_size
        self.lease_s = lease_s

    async def run_due(self, limit: int = 10) -> int:
        """Work through the due jobs; returns how many batches were committed."""
        batches = 0
        for course_id in await store.claim_recalculations(self.pool, limit, self.lease_s):
            try:
                while True:
                    more = await db.retrying(partial(self._batch, course_id))
                    batches += 1
                    if not more:
                        break
            except Exception as exc:
                # The lease is the backoff: the job is due again when it ends, from its cursor.
                log.warning("recalculation of course %s failed: %r", course_id, exc)
                await store.recalculation_failed(self.pool, course_id, repr(exc))
        return batches

    async def _batch(self, course_id: int) -> bool:
        """One batch; True when more learners may remain."""
        async with self.pool.acquire() as conn, conn.transaction():
            job = await store.lock_recalculation(conn, course_id)
            if job is None:
                return False  # finished by another process meanwhile
            course = await store.get_course(conn, course_id)
            if course is None:
                await store.delete_recalculation(conn, course_id)
                return False
            required = domain.required_ids(course)
            # Batches computed with other required lessons are stale: from the start again.
            cursor = job.cursor if job.required_lesson_ids == required else None
            learners = await store.lock_enrollment_batch(conn, course_id, cursor, self.batch_size)
            if not learners:
                await store.delete_recalculation(conn, course_id)
                return False
            completed = await store.completed_lessons_of(conn, course_id, [learner.user_id for learner in learners])
            already = await store.completed_enrollments(conn, course_id, learners)
            now = datetime.now(UTC)  # after the locks: later than any completion they waited for
            recalculated: list[LearnerProgress] = []
            for learner in learners:
                standing = domain.standing(course, completed.get(learner.user_id, set()))
                recalculated.append(LearnerProgress(
                    user_id=learner.user_id, attempt=learner.attempt,
                    progress_percentage=standing.progress_percentage,
                    completed_lessons=standing.completed_required, total_lessons=standing.total_required,
                ))
                if (
                    standing.all_required_done and learner.enrollment_id not in already
                    and learner.status in ACTIVE and course.status == "published"
                ):
                    # Decided on data the owner confirms, once: by the re-check loop.
                    await store.add_pending_confirmation(conn, learner.user_id, course_id, "", "", None)
            await outbox.add(conn, ProgressRecalculated(
                course_id=course_id, revision=course.revision, recalculated_at=now, learners=recalculated,
            ))
            RECALCULATED.inc(len(learners))
            if len(learners) < self.batch_size:
                await store.delete_recalculation(conn, course_id)
                return False
            await store.advance_recalculation(
                conn, course_id, course.revision, required, learners[-1].user_id, self.lease_s
            )
            return True


# ---------------------------------------------------------------- the replicas, fed by events

Transaction = Callable[[], AbstractAsyncContextManager[Connection]]


async def keep_course(transaction: Transaction, replicas: Replicas, entry: CourseCatalogEntry) -> None:
    """Store a catalog entry (older revisions are ignored), then remember it in this process."""
    async with transaction() as conn:
        saved = await store.save_course(conn, entry)
    if saved:
        replicas.on_course(entry)


async def keep_enrollment(transaction: Transaction, replicas: Replicas, event: EnrollmentChanged) -> None:
    async with transaction() as conn:
        saved = await store_enrollment(conn, event)
    if saved:
        replicas.on_enrollment(event)


async def keep_certificate(transaction: Transaction, event: CertificateIssued) -> None:
    async with transaction() as conn:
        await store.save_certificate(conn, event.user_id, event.course_id, event.certificate_url, event.issued_at,
                                     event.attempt)


# ---------------------------------------------------------------- viewing sessions

SESSION_BATCH = 500


class SessionCloser:
    """Ends idle viewing sessions and publishes each once (docs/progress.md, "Viewing
    sessions"). One transaction per batch: idle current sessions move to the ended ones,
    ended ones without an event are locked (``SKIP LOCKED``: several processes share the
    work and never take the same session), and each gets its video-session-ended event,
    stored with it and written to the outbox together. A session that has its event is
    never claimed again: once, by construction."""

    def __init__(self, pool: asyncpg.Pool, idle_s: float, expiry_s: float, batch: int = SESSION_BATCH) -> None:
        self.pool = pool
        self.idle_s = idle_s
        self.expiry_s = expiry_s  # a process silent this long no longer holds sessions open
        self.batch = batch

    async def close_idle(self) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            # Idle by the clock and by every live process's last flush (a heartbeat waiting
            # in a late process's buffer keeps its session open).
            cutoff = await store.session_cutoff(conn, self.idle_s, self.expiry_s)
            await store.end_idle_sessions(conn, cutoff, self.batch)
            ended = await store.claim_ended_sessions(conn, self.batch, self.idle_s)
            events = [domain.video_session_ended(session) for session in ended]
            await store.mark_sessions_published(conn, events)
            await outbox.add_many(conn, list(events))
        return len(events)


class Folder(Protocol):
    """The analytics folder (``services.progress.analytics.folder``), named by what the
    state needs of it: the analytics subpackage builds on the use cases, not under them."""

    async def fold(self) -> int: ...

    async def stop(self) -> None: ...


@dataclass
class ProgressState:
    """What one progress process runs on, opened by the composition root (``app.py``)."""

    enrollment_client: httpx.AsyncClient
    replicas: Replicas
    heartbeats: HeartbeatBuffer
    analytics_folder: Folder
    tracker: Tracker
    rechecks: Periodic  # the re-check of deferred completions (Tracker.recheck_pending)
    recalculations: Periodic  # progress recalculation after course changes (Recalculator.run_due)
    watching: Periodic | None = None  # automatic completions after flushes (Tracker.complete_watched_round)
    sessions: Periodic | None = None  # viewing sessions ended and published (SessionCloser.close_idle)
    listener: Listener | None = None  # wakes the re-checks and recalculations (migration 012)

    async def close(self) -> None:
        """Flush the heartbeats first: their last flush needs the pool, still open."""
        if self.listener is not None:
            await self.listener.stop()
        await self.heartbeats.stop()
        if self.watching is not None:
            await self.watching.stop()
            # The last flush's rows may have reached a threshold: decide them while the pool
            # and the enrollment client are still open.
            with contextlib.suppress(Exception):
                await self.tracker.complete_watched()
        await self.rechecks.stop()
        if self.sessions is not None:
            await self.sessions.stop()
        await self.recalculations.stop()
        await self.analytics_folder.stop()
        await self.enrollment_client.aclose()


# --- erasure and export (GDPR) ----------------------------------------------------------------


async def _pseudonymise(conn: Connection, user_id: str, pseudonym: str) -> tuple[dict[str, int], list[str]]:
    personal = await store.learner_personal_data(conn, user_id)
    return await store.pseudonymise_learner(conn, user_id, pseudonym), personal


async def erase_learner(state: ProgressState, event: LearnerErased, ctx: EventContext) -> None:
    """Once enrollment confirms the request: the learner's records under a random pseudonym,
    their name and address gone, the outbox purged of them (``shared.erasure.apply``)."""
    await erasure.apply(ctx, state.enrollment_client, event, _pseudonymise)


async def export_learner(pool: asyncpg.Pool, user_id: str) -> dict[str, Any]:
    """Every row of this service naming the learner."""
    async with pool.acquire() as conn:
        return await erasure.export_rows(conn, store.LEARNER_TABLES, user_id)
