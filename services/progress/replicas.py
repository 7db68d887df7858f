"""Local replicas of the catalog and of enrollments, with read-your-writes fallbacks.

The replicas are fed by the course-catalog and enrollment-changed topics. A miss (or an
enrollment the replica thinks is gone) is never answered from the replica alone: the
enrollment service's internal API is asked, its answer stored and trusted.

Both are read on every heartbeat, so positive answers are also kept in process memory
for a few seconds (``replica_cache_ttl_s``). This process's event handlers refresh the
memory at once; a change consumed by another replica reaches it within the TTL.
"""

from __future__ import annotations

import logging
import time

import asyncpg
import httpx

from services.progress import store
from shared.errors import ApiError
from shared.events import CourseCatalogEntry, EnrollmentChanged

log = logging.getLogger(__name__)

ACTIVE = ("active", "completed")


def unavailable() -> ApiError:
    return ApiError(503, "service_unavailable", "Enrollment data is unavailable, try again")


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
        try:
            response = await self._api.get(f"/internal/courses/{course_id}")
        except httpx.HTTPError as exc:
            log.warning("enrollment internal API unreachable for course %s: %r", course_id, exc)
            raise unavailable() from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            log.warning("enrollment internal API answered %s for course %s", response.status_code, course_id)
            raise unavailable()
        entry = CourseCatalogEntry.model_validate_json(response.content)
        await store.save_course(self._pool, entry)
        # A newer revision may already be stored (an event won the race): read it back.
        return await store.get_course(self._pool, course_id) or entry

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
        try:
            response = await self._api.get(f"/internal/courses/{course_id}/enrollments/{user_id}")
        except httpx.HTTPError as exc:
            log.warning("enrollment internal API unreachable for %s:%s: %r", user_id, course_id, exc)
            raise unavailable() from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            log.warning("enrollment internal API answered %s for %s:%s", response.status_code, user_id, course_id)
            raise unavailable()
        enrollment = EnrollmentChanged.model_validate_json(response.content)
        await store.save_enrollment(self._pool, enrollment)
        return enrollment

    def on_enrollment(self, e: EnrollmentChanged) -> None:
        key = (e.user_id, e.course_id)
        cached = self._enrollments.get(key)
        if cached is not None and cached[1].enrollment_id == e.enrollment_id and cached[1].revision > e.revision:
            return
        if e.status in ACTIVE:
            self._enrollments[key] = (time.monotonic() + self._ttl, e)
        else:
            self._enrollments.pop(key, None)
