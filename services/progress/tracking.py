"""What the progress API does, between the thin routes and the SQL.

Locking: every completion change of one learner in one course (complete, incomplete,
course completion) first takes the row lock of that learner's enrollment replica row.
That serialises them, so when the last two required lessons are completed at the same
moment, exactly one transaction sees every required lesson done and writes the single
course-completed event (the course_completions key makes a second one impossible anyway).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.progress import domain, store
from services.progress.heartbeats import Entry, HeartbeatBuffer
from services.progress.replicas import Replicas
from shared import db, outbox
from shared.auth import User
from shared.db import Connection
from shared.errors import ApiError, bad_request, forbidden
from shared.events import (
    CatalogLesson,
    CourseCatalogEntry,
    CourseCompleted,
    EnrollmentChanged,
    LessonCompleted,
    LessonReopened,
)


def course_not_found(course_id: int) -> ApiError:
    return ApiError(404, "course_not_found", "Course not found", course_id=course_id)


def lesson_not_found(lesson_id: int) -> ApiError:
    return ApiError(404, "lesson_not_found", "Lesson not found in this course", lesson_id=lesson_id)


def not_enrolled(own: bool = True) -> ApiError:
    message = "You must be enrolled in this course" if own else "This learner is not enrolled in this course"
    return ApiError(403, "not_enrolled", message)


def lesson_locked(blocker: CatalogLesson) -> ApiError:
    return ApiError(
        403, "lesson_locked",
        f'Complete "{blocker.title}" first: this course requires lessons in order',
        next_lesson=domain.lesson_ref(blocker),
    )


def row_json(row: store.ProgressRow, entry: Entry | None = None) -> dict[str, Any]:
    """A stored row as the API shows it, with this process's unflushed heartbeats on top:
    the entry first takes from ``row`` whatever is newer there (another replica's flush),
    so nothing older than the database is shown; its pending intervals add only what the
    row's credited intervals do not cover yet."""
    if entry is not None:
        entry.refresh(row)
        data = entry.as_json()
        data["completed"] = row.completed
        data["completed_at"] = row.completed_at
        data["state"] = domain.progress_state(True, row.completed, data["video_progress"], data["last_position"])
        return data
    return {
        "id": row.id,
        "user_id": row.user_id,
        "course_id": row.course_id,
        "lesson_id": row.lesson_id,
        "completed": row.completed,
        "completed_at": row.completed_at,
        "video_progress": row.video_progress,
        "last_position": row.last_position,
        "time_spent_seconds": round(row.time_spent_seconds),
        "state": domain.progress_state(True, row.completed, row.video_progress, row.last_position),
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


@dataclass(frozen=True)
class Completion:
    row: store.ProgressRow
    newly: bool
    standing: domain.CourseStanding


class Tracker:
    def __init__(self, pool: asyncpg.Pool, replicas: Replicas, buffer: HeartbeatBuffer) -> None:
        self.pool = pool
        self.replicas = replicas
        self.buffer = buffer

    # ------------------------------------------------------------ checks
    async def course(self, course_id: int) -> CourseCatalogEntry:
        course = await self.replicas.course(course_id)
        if course is None:
            raise course_not_found(course_id)
        return course

    async def enrollment(self, user_id: str, course_id: int, own: bool = True) -> EnrollmentChanged:
        enrollment = await self.replicas.enrollment(user_id, course_id)
        if enrollment is None:
            raise not_enrolled(own)
        return enrollment

    @staticmethod
    def may_view(viewer: User, course: CourseCatalogEntry, user_id: str) -> bool:
        return viewer.id == user_id or viewer.is_admin or (viewer.is_instructor and viewer.id in course.instructor_ids)

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
    ) -> dict[str, Any]:
        course = await self.course(course_id)
        if domain.find_lesson(course, lesson_id) is None:
            raise bad_request(
                "invalid_request", "Invalid or missing fields: lesson_id",
                params={"lesson_id": f"lesson {lesson_id} is not in course {course_id}"},
            )
        enrollment = await self.enrollment(user.id, course_id)
        entry = self.buffer.peek(user.id, lesson_id)
        if course.requires_sequential_progress and (entry is None or not entry.unlocked):
            blocker = domain.lock_blocker(
                course, lesson_id, await store.completed_lesson_ids(self.pool, user.id, course_id)
            )
            if blocker is not None:
                raise lesson_locked(blocker)
            entry = await self.buffer.entry(user.id, course_id, lesson_id)
            entry.unlocked = True
        entry = await self.buffer.heartbeat(user.id, course_id, lesson_id, video_progress, last_position, client_at)
        if completed and not entry.completed:
            # Completions are written at once, with the playback merged just above.
            done = await self._complete(user, course, enrollment, lesson_id, take_playback=True)
            entry.adopt(done.row)
        return entry.as_json()

    # ------------------------------------------------------------ completion
    async def complete(self, user: User, course_id: int, lesson_id: int) -> tuple[str, dict[str, Any]]:
        course = await self.course(course_id)
        if domain.find_lesson(course, lesson_id) is None:
            raise lesson_not_found(lesson_id)
        enrollment = await self.enrollment(user.id, course_id)
        done = await self._complete(user, course, enrollment, lesson_id, take_playback=True)
        entry = self.buffer.peek(user.id, lesson_id)
        if entry is not None:
            entry.adopt(done.row)
        data = {
            "lesson_id": lesson_id,
            "completed_at": done.row.completed_at,
            "progress_percentage": done.standing.progress_percentage,
            "completed_lessons": done.standing.completed_required,
            "total_lessons": done.standing.total_required,
            "next_lesson": domain.lesson_ref(done.standing.next_lesson),
        }
        return ("Lesson marked as complete" if done.newly else "Lesson already marked as complete"), data

    async def _complete(
        self,
        user: User,
        course: CourseCatalogEntry,
        enrollment: EnrollmentChanged,
        lesson_id: int,
        take_playback: bool,
    ) -> Completion:
        pending = self.buffer.take_pending(user.id, lesson_id) if take_playback else None
        try:
            # Locks the learner's analytics row (migration 003) as concurrent flushes do: should
            # PostgreSQL abort one of two such transactions as a deadlock, it rolled back whole,
            # so run it again.
            return await db.retrying(lambda: self._complete_tx(user, course, enrollment, lesson_id, pending))
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
    ) -> Completion:
        async with self.pool.acquire() as conn, conn.transaction():
            locked = await store.lock_enrollment(conn, user.id, course.course_id)
            enrollment = locked or enrollment
            before = await store.get_progress(conn, user.id, lesson_id)
            if before is not None and before.completed and pending is None:
                ids = await store.completed_lesson_ids(conn, user.id, course.course_id)
                return Completion(before, False, domain.standing(course, ids))
            ids = await store.completed_lesson_ids(conn, user.id, course.course_id)
            if before is None or not before.completed:
                # Checked under the lock: a concurrent reopen cannot slip in between.
                blocker = domain.lock_blocker(course, lesson_id, ids)
                if blocker is not None:
                    raise lesson_locked(blocker)
            now = datetime.now(UTC)
            row = await store.mark_complete(conn, user.id, course.course_id, lesson_id, now, pending)
            newly = before is None or not before.completed
            ids.add(lesson_id)
            standing = domain.standing(course, ids)
            if newly:
                await outbox.add(conn, LessonCompleted(
                    user_id=user.id, course_id=course.course_id, lesson_id=lesson_id,
                    completed_at=row.completed_at or now, progress_percentage=standing.progress_percentage,
                    completed_lessons=standing.completed_required, total_lessons=standing.total_required,
                ))
                if standing.all_required_done:
                    await self._course_completed(conn, user, course, enrollment, now)
            return Completion(row, newly, standing)

    async def _course_completed(
        self, conn: Connection, user: User, course: CourseCatalogEntry, enrollment: EnrollmentChanged, now: datetime
    ) -> None:
        """Once per enrollment, whatever is toggled afterwards."""
        if await store.get_completion(conn, user.id, course.course_id, enrollment.enrollment_id) is not None:
            return
        own_claims = user.id == enrollment.user_id
        event = CourseCompleted(
            user_id=enrollment.user_id,
            course_id=course.course_id,
            completed_at=now,
            user_name=(user.name if own_claims and user.name else "") or enrollment.display_name
            or enrollment.username or enrollment.user_id,
            user_email=(user.email if own_claims and user.email else "") or enrollment.email,
            course_title=course.title,
            certificate_enabled=course.certificate_enabled,
            enrolled_at=enrollment.enrolled_at,
            instructor_ids=list(course.instructor_ids),
        )
        if await store.add_completion(conn, enrollment.enrollment_id, event):
            await outbox.add(conn, event)

    async def incomplete(self, user: User, course_id: int, lesson_id: int) -> tuple[str, dict[str, Any]]:
        course = await self.course(course_id)
        if domain.find_lesson(course, lesson_id) is None:
            raise lesson_not_found(lesson_id)
        await self.enrollment(user.id, course_id)
        async def reopen() -> tuple[store.ProgressRow | None, domain.CourseStanding]:
            async with self.pool.acquire() as conn, conn.transaction():
                await store.lock_enrollment(conn, user.id, course_id)
                now = datetime.now(UTC)
                row = await store.mark_incomplete(conn, user.id, lesson_id, now)
                ids = await store.completed_lesson_ids(conn, user.id, course_id)
                standing = domain.standing(course, ids)
                if row is not None:
                    await outbox.add(conn, LessonReopened(
                        user_id=user.id, course_id=course_id, lesson_id=lesson_id, reopened_at=now,
                        progress_percentage=standing.progress_percentage,
                        completed_lessons=standing.completed_required, total_lessons=standing.total_required,
                    ))
                return row, standing

        row, standing = await db.retrying(reopen)
        if row is not None:
            entry = self.buffer.peek(user.id, lesson_id)
            if entry is not None:
                entry.adopt(row)
            self.buffer.relock(user.id, course_id)
        data = {
            "lesson_id": lesson_id,
            "completed_at": None,
            "progress_percentage": standing.progress_percentage,
            "completed_lessons": standing.completed_required,
            "total_lessons": standing.total_required,
            "next_lesson": domain.lesson_ref(standing.next_lesson),
        }
        return ("Lesson marked as incomplete" if row is not None else "Lesson is not marked as complete"), data

    # ------------------------------------------------------------ reads
    def _overlay(self, rows: list[store.ProgressRow]) -> list[dict[str, Any]]:
        peek = self.buffer.peek
        return [row_json(row, peek(row.user_id, row.lesson_id)) for row in rows]

    async def records(self, user_id: str, course_id: int | None, course_ids: list[int] | None = None) -> list[Any]:
        return self._overlay(await store.list_progress(self.pool, user_id, course_id, course_ids))

    async def my_records(self, user: User, course_id: int | None) -> list[Any]:
        if course_id is not None:
            await self.course(course_id)
        return await self.records(user.id, course_id)

    async def learner_records(self, viewer: User, learner_id: str, course_id: int | None) -> list[Any]:
        if viewer.is_admin:
            if course_id is not None:
                await self.course(course_id)
            return await self.records(learner_id, course_id)
        if not viewer.is_instructor:
            raise forbidden("Administrators and the course's instructors only")
        if course_id is not None:
            course = await self.course(course_id)
            if viewer.id not in course.instructor_ids:
                raise forbidden("You do not teach this course")
            return await self.records(learner_id, course_id)
        taught = await store.courses_taught_by(self.pool, viewer.id)
        return await self.records(learner_id, None, taught)

    async def course_progress(self, viewer: User, course_id: int, user_id: str | None) -> dict[str, Any]:
        course = await self.course(course_id)
        target = user_id or viewer.id
        if not self.may_view(viewer, course, target):
            raise forbidden("You may only see your own progress")
        enrollment = await self.enrollment(target, course_id, own=target == viewer.id)
        records = await self.records(target, course_id)
        completed_ids = {r["lesson_id"] for r in records if r["completed"]}
        standing = domain.standing(course, completed_ids)
        seconds = round(sum(r["time_spent_seconds"] for r in records))
        async with self.pool.acquire() as conn:
            completion = await store.get_completion(conn, target, course_id, enrollment.enrollment_id)
            certificate = await store.certificate_url(conn, target, course_id)
        return {
            "course_id": course_id,
            "user_id": target,
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
        }

    async def completion_status(self, user_id: str, course_id: int) -> dict[str, Any]:
        """For the certificates service: has this learner completed the course, and the event."""
        course = await self.course(course_id)
        async with self.pool.acquire() as conn:
            completion = await store.latest_completion(conn, user_id, course_id)
            ids = await store.completed_lesson_ids(conn, user_id, course_id)
        return {
            "completed": completion is not None,
            "progress_percentage": domain.standing(course, ids).progress_percentage,
            "course_completed": completion.model_dump(mode="json") if completion else None,
        }
