"""A running progress service on the real PostgreSQL and broker, fed through its topics,
with a stand-in for the enrollment service's internal API (replica-miss fallbacks)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from services.progress import store
from services.progress.app import build_app
from services.progress.heartbeats import HeartbeatBuffer
from services.progress.settings import ProgressSettings
from shared.auth import issue_token
from shared.events import CatalogLesson, CourseCatalogEntry, EnrollmentChanged, Event
from shared.internal import CourseConfirmation
from shared.service import Runtime
from tests.helpers import TestEnv, app_client, eventually, produce_raw, served

_ids = itertools.count(1)


def course(
    course_id: int,
    lessons: list[tuple[int, bool]],
    *,
    revision: int = 1,
    sequential: bool = False,
    instructors: list[str] | None = None,
    title: str = "Introduction to Web Development",
    certificate_enabled: bool = True,
) -> CourseCatalogEntry:
    """A course whose lessons are (id, is_required), in this order."""
    return CourseCatalogEntry(
        course_id=course_id, revision=revision, title=title, slug=f"course-{course_id}", status="published",
        requires_sequential_progress=sequential, certificate_enabled=certificate_enabled,
        instructor_ids=instructors or [],
        lessons=[
            CatalogLesson(id=lid, title=f"Lesson {lid}", order=i + 1, is_required=req, duration_seconds=600)
            for i, (lid, req) in enumerate(lessons)
        ],
    )


def enrollment(
    user_id: str, course_id: int, *, status: str = "active", revision: int = 1, enrollment_id: int | None = None,
    name: str = "", email: str = "",
) -> EnrollmentChanged:
    return EnrollmentChanged(
        user_id=user_id, course_id=course_id, enrollment_id=enrollment_id or next(_ids) + 1000,
        status=status,
        revision=revision, enrolled_at=datetime(2025, 10, 15, 10, 0, tzinfo=UTC),
        display_name=name, email=email,
    )


@dataclass
class EnrollmentStandIn:
    """Answers the enrollment service's internal API contract from two dicts (the owner's
    truth: ``Stack.publish`` records what it publishes here too). ``down`` answers 503."""

    courses: dict[int, CourseCatalogEntry] = field(default_factory=dict)
    enrollments: dict[tuple[str, int], EnrollmentChanged] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    down: bool = False

    def own(self, event: Event) -> None:
        """Hold ``event`` as the owner would, if it is newer than what is held."""
        if isinstance(event, CourseCatalogEntry):
            held = self.courses.get(event.course_id)
            if held is None or held.revision <= event.revision:
                self.courses[event.course_id] = event
        elif isinstance(event, EnrollmentChanged):
            key = (event.user_id, event.course_id)
            had = self.enrollments.get(key)
            if had is None or had.enrollment_id != event.enrollment_id or had.revision <= event.revision:
                self.enrollments[key] = event

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def outage(request: Any, call_next: Any) -> Any:
            if self.down:
                return JSONResponse({"code": "service_unavailable"}, status_code=503)
            return await call_next(request)

        @app.get("/internal/courses/{course_id}/confirmation")
        async def confirmation(course_id: int, user_id: str, revision: int = 0) -> Any:
            self.calls.append(f"confirm:{user_id}:{course_id}:{revision}")
            found = self.courses.get(course_id)
            if found is None:
                return JSONResponse({"code": "course_not_found"}, status_code=404)
            enrollment = self.enrollments.get((user_id, course_id))
            return CourseConfirmation(
                course_id=course_id, revision=found.revision, status=found.status,
                course=found if found.revision > revision else None, enrollment=enrollment,
            ).model_dump(mode="json")

        @app.get("/internal/courses/{course_id}")
        async def get_course(course_id: int) -> Any:
            self.calls.append(f"course:{course_id}")
            found = self.courses.get(course_id)
            if found is None:
                return JSONResponse({"code": "course_not_found"}, status_code=404)
            return found.model_dump(mode="json")

        @app.get("/internal/courses/{course_id}/enrollments/{user_id}")
        async def get_enrollment(course_id: int, user_id: str) -> Any:
            self.calls.append(f"enrollment:{user_id}:{course_id}")
            found = self.enrollments.get((user_id, course_id))
            if found is None or found.status == "unenrolled":
                return JSONResponse({"code": "not_enrolled"}, status_code=404)
            return found.model_dump(mode="json")

        return app


@dataclass
class Stack:
    env: TestEnv
    app: FastAPI
    client: httpx.AsyncClient
    settings: ProgressSettings
    enrollment_api: EnrollmentStandIn

    @property
    def runtime(self) -> Runtime[Any]:
        runtime: Runtime[Any] = self.app.state.runtime
        return runtime

    @property
    def buffer(self) -> HeartbeatBuffer:
        buffer: HeartbeatBuffer = self.runtime.state.heartbeats
        return buffer

    def token(self, user_id: str, *roles: str, name: str = "", email: str = "") -> dict[str, str]:
        token = issue_token(self.settings, user_id=user_id, name=name, email=email, roles=list(roles) or None)
        return {"Authorization": f"Bearer {token}"}

    def topic(self, event: Event) -> str:
        return self.settings.topic(event.topic.value)

    async def publish(self, event: Event) -> None:
        self.enrollment_api.own(event)
        await produce_raw(self.env.kafka_bootstrap, self.topic(event), event.model_dump_json().encode(),
                          event.key().encode())

    async def catalog(self, entry: CourseCatalogEntry) -> None:
        """Publish a catalog entry and wait until the replica holds it (or a later revision)."""
        await self.publish(entry)

        async def stored() -> bool:
            row = await store.get_course(self.runtime.pool, entry.course_id)
            return row is not None and row.revision >= entry.revision

        await eventually(stored, what=f"course {entry.course_id} r{entry.revision} in the replica")

    async def enroll(self, e: EnrollmentChanged) -> None:
        await self.publish(e)

        async def stored() -> bool:
            row = await store.get_enrollment(self.runtime.pool, e.user_id, e.course_id)
            return row is not None and row.revision >= e.revision and row.enrollment_id == e.enrollment_id

        await eventually(stored, what=f"enrollment {e.user_id}:{e.course_id} in the replica")


async def start_stack(test_env: TestEnv, stand_in: EnrollmentStandIn, url: str, **overrides: Any) -> Any:
    settings = test_env.settings(ProgressSettings, database="progress", enrollment_internal_url=url,
                                 replica_cache_ttl_s=0, **overrides)
    return settings, build_app(settings)


@pytest.fixture
async def stack(test_env: TestEnv) -> AsyncIterator[Stack]:
    stand_in = EnrollmentStandIn()
    async with served(stand_in.app()) as url:
        settings, app = await start_stack(test_env, stand_in, url)
        async with app_client(app) as client:
            runtime: Runtime[Any] = app.state.runtime

            async def subscribed() -> bool:
                return runtime.broker_started

            await eventually(subscribed, what="progress subscribers started")
            yield Stack(test_env, app, client, settings, stand_in)
