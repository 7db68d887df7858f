"""Local replicas of the catalog and of enrollments, with read-your-writes fallbacks.

The replicas are fed by the course-catalog and enrollment-changed topics. A miss (or an
enrollment the replica thinks is gone) is never answered from the replica alone: the
enrollment service's internal API is asked, its answer stored and trusted.

Both are read on every heartbeat, so positive answers are also kept in process memory
for a few seconds (``replica_cache_ttl_s``). This process's event handlers refresh the
memory at once; a change consumed by another replica reaches it within the TTL.

Decisions that cannot be undone (a lesson's percentage, course-completed) are not taken on
the replica alone: ``confirm`` asks the owner for the course's current revision (and the
whole entry when the replica is behind) and the learner's current enrollment, and brings
the replica and the memory up to that before the caller decides.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import quote

import asyncpg
import httpx

from services.progress import domain, store
from shared.db import Connection
from shared.events import CourseCatalogEntry, EnrollmentChanged
from shared.internal import CourseConfirmation, PeerUnavailable, get_internal

log = logging.getLogger(__name__)

ACTIVE = ("active", "completed")
OWNER = "enrollment"  # the service that owns the catalog and the enrollments


async def store_enrollment(conn: Connection, e: EnrollmentChanged) -> bool:
    """Store an enrollment in the replica (an older revision is ignored), in the caller's
    transaction; every path that stores enrollments comes here. When it begins a later
    attempt than the replica held, the earlier attempt's records move to the history and
    its pending confirmation goes in the same transaction, under the enrollment row lock
    completions take: no completion decides on the old attempt's records afterwards."""
    held = await store.held_attempt(conn, e.user_id, e.course_id)
    saved = await store.save_enrollment(conn, e)
    if saved and domain.begins_attempt(held, e.attempt):
        moved = await store.end_attempts_before(conn, e.user_id, e.course_id, e.attempt)
        log.info("%s begins attempt %d of course %d (%d records kept as history)", e.user_id, e.attempt,
                 e.course_id, moved)
    return saved


class Replicas:
    def __init__(self, pool: asyncpg.Pool, enrollment_api: httpx.AsyncClient, ttl_s: float) -> None:
        self._pool = pool
        self._api = enrollment_api
        self._ttl = ttl_s
        self._courses: dict[int, tuple[float, CourseCatalogEntry]] = {}
        self._enrollments: dict[tuple[str, int], tuple[float, EnrollmentChanged]] = {}

    # ------------------------------------------------------------ catalog
    async def course(self, course_id: int) -> CourseCatalogEntry | None:
        cached = self._courses.get(course_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        entry = await store.get_course(self._pool, course_id)
        if entry is None:
            entry = await self._fetch_course(course_id)
        if entry is not None:
            self._remember_course(entry)
        return entry

    async def _fetch_course(self, course_id: int) -> CourseCatalogEntry | None:
        body = await get_internal(self._api, f"/internal/courses/{course_id}", OWNER)
        if body is None:
            return None
        entry = CourseCatalogEntry.model_validate_json(body)
        await store.save_course(self._pool, entry)
        # A newer revision may already be stored (an event won the race): read it back.
        return await store.get_course(self._pool, course_id) or entry

    async def refresh_course(self, course_id: int) -> CourseCatalogEntry | None:
        """The owner's current entry (stored, remembered), whatever the replica holds."""
        entry = await self._fetch_course(course_id)
        if entry is not None:
            self._remember_course(entry)
        return entry

    def on_course(self, entry: CourseCatalogEntry) -> None:
        cached = self._courses.get(entry.course_id)
        if cached is None or cached[1].revision <= entry.revision:
            self._remember_course(entry)

    def _remember_course(self, entry: CourseCatalogEntry) -> None:
        self._courses[entry.course_id] = (time.monotonic() + self._ttl, entry)

    # ------------------------------------------------------------ enrollments
    async def enrollment(self, user_id: str, course_id: int) -> EnrollmentChanged | None:
        """The learner's current enrollment (active or completed), or None if not enrolled."""
        key = (user_id, course_id)
        cached = self._enrollments.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        found = await store.get_enrollment(self._pool, user_id, course_id)
        if found is None or found.status not in ACTIVE:
            # Missing or unenrolled here may only mean the replica is behind.
            found = await self._fetch_enrollment(user_id, course_id)
        if found is not None and found.status in ACTIVE:
            self._enrollments[key] = (time.monotonic() + self._ttl, found)
            return found
        return None

    async def _fetch_enrollment(self, user_id: str, course_id: int) -> EnrollmentChanged | None:
        body = await get_internal(self._api, f"/internal/courses/{course_id}/enrollments/{user_id}", OWNER)
        if body is None:
            return None
        enrollment = EnrollmentChanged.model_validate_json(body)
        await self._store_enrollment(enrollment)
        return enrollment

    async def _store_enrollment(self, e: EnrollmentChanged) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await store_enrollment(conn, e)

    def on_enrollment(self, e: EnrollmentChanged) -> None:
        key = (e.user_id, e.course_id)
        cached = self._enrollments.get(key)
        if cached is not None and cached[1].enrollment_id == e.enrollment_id and cached[1].revision > e.revision:
            return
        if e.status in ACTIVE:
            self._enrollments[key] = (time.monotonic() + self._ttl, e)
        else:
            self._enrollments.pop(key, None)

    # ------------------------------------------------------------ confirmation
    async def confirm(self, user_id: str, course_id: int, known_revision: int) -> CourseConfirmation | None:
        """Ask the owner for the course's current revision and the learner's enrollment, and
        bring the replica (rows and memory) up to them. After it returns, the replica's row of
        the course is at least at the confirmed revision and its enrollment row at least the
        owner's current one. None: the owner has no such course. ``PeerUnavailable`` if it
        cannot be asked."""
        body = await get_internal(
            self._api,
            f"/internal/courses/{course_id}/confirmation?user_id={quote(user_id, safe='')}&revision={known_revision}",
            OWNER,
        )
        if body is None:
            return None
        answer = CourseConfirmation.model_validate_json(body)
        if answer.course is not None:
            await store.save_course(self._pool, answer.course)
            self.on_course(answer.course)
        elif answer.revision > known_revision:
            # The owner always sends a newer entry; without one we cannot upgrade.
            log.warning("confirmation of course %s r%s came without the entry", course_id, answer.revision)
            raise PeerUnavailable(OWNER, f"course {course_id} r{answer.revision} confirmed without its entry")
        if answer.enrollment is not None:
            held = self._enrollments.get((user_id, course_id))
            owned = answer.enrollment
            # What this process remembers was stored first: the row is at least that new.
            if held is None or held[1].enrollment_id != owned.enrollment_id or held[1].revision < owned.revision:
                await self._store_enrollment(owned)
                self.on_enrollment(owned)
        else:
            self._enrollments.pop((user_id, course_id), None)
        return answer
