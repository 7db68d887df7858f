"""Completion decisions against the real enrollment service: progress and enrollment run
in-process on their own databases and the session's broker, progress asking enrollment's
internal API over HTTP. The catalog replica lagging behind (a paused broker, or the race of
create-publish-enroll-complete) never yields a wrong percentage or a course-completed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.enrollment.app import build_app as build_enrollment
from services.enrollment.settings import EnrollmentSettings
from services.progress import store
from services.progress.app import build_app as build_progress
from services.progress.settings import ProgressSettings
from shared.bus import ensure_topics
from shared.events import CourseCompleted, Topic
from shared.service import Runtime
from tests.enrollment.conftest import bearer
from tests.helpers import TestEnv, TopicReader, app_client, eventually, served


@dataclass
class Live:
    env: TestEnv
    enrollment: httpx.AsyncClient
    enrollment_settings: EnrollmentSettings
    progress: httpx.AsyncClient
    progress_app: FastAPI

    @property
    def pool(self) -> Any:
        runtime: Runtime[Any] = self.progress_app.state.runtime
        return runtime.pool

    @property
    def admin(self) -> dict[str, str]:
        return bearer(self.enrollment_settings, "admin-1", ["admin"], name="Ada Admin")

    def learner(self, user_id: str) -> dict[str, str]:
        return bearer(self.enrollment_settings, user_id, ["learner"], name=f"Learner {user_id}",
                      email=f"{user_id}@example.com")

    async def new_course(self, title: str) -> int:
        created = await self.enrollment.post("/api/admin/courses", json={"title": title}, headers=self.admin)
        assert created.status_code == 201, created.text
        course_id: int = created.json()["data"]["id"]
        return course_id

    async def add_lesson(self, course_id: int, title: str) -> int:
        added = await self.enrollment.post(f"/api/admin/courses/{course_id}/lessons", json={"title": title},
                                           headers=self.admin)
        assert added.status_code == 201, added.text
        lesson_id: int = added.json()["data"]["lesson"]["id"]
        return lesson_id

    async def publish(self, course_id: int) -> None:
        published = await self.enrollment.post(f"/api/admin/courses/{course_id}/publish", headers=self.admin)
        assert published.status_code == 200, published.text

    async def enroll(self, course_id: int, user_id: str) -> None:
        enrolled = await self.enrollment.post(f"/api/courses/{course_id}/enroll", headers=self.learner(user_id))
        assert enrolled.status_code == 200, enrolled.text

    async def complete(self, course_id: int, lesson_id: int, user_id: str) -> dict[str, Any]:
        done = await self.progress.post(f"/api/courses/{course_id}/lessons/{lesson_id}/complete",
                                        headers=self.learner(user_id))
        assert done.status_code == 200, done.text
        data: dict[str, Any] = done.json()["data"]
        return data

    async def completions(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM course_completions"))

    async def queued_course_completed(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM outbox WHERE event_type = 'course-completed'"))

    def topic(self, topic: Topic) -> str:
        return self.enrollment_settings.topic(topic.value)


@pytest.fixture
async def live(test_env: TestEnv) -> AsyncIterator[Live]:
    enrollment_settings = test_env.settings(EnrollmentSettings, database="enrollment")
    await ensure_topics(enrollment_settings)
    enrollment_app = build_enrollment(enrollment_settings)
    async with served(enrollment_app) as url:
        # The production cache time: a replica entry may be trusted for reads for 5 s.
        progress_settings = test_env.settings(ProgressSettings, database="progress", enrollment_internal_url=url,
                                              replica_cache_ttl_s=5.0)
        progress_app = build_progress(progress_settings)
        async with app_client(progress_app) as progress, httpx.AsyncClient(base_url=url, timeout=30) as enrollment:
            runtimes: list[Runtime[Any]] = [enrollment_app.state.runtime, progress_app.state.runtime]

            async def subscribed() -> bool:
                return all(r.broker_started for r in runtimes)

            await eventually(subscribed, what="enrollment and progress subscribers started")
            yield Live(test_env, enrollment, enrollment_settings, progress, progress_app)


async def test_a_lesson_added_while_the_broker_is_paused_counts_at_once(live: Live) -> None:
    tansu = live.env.tansu
    if tansu is None:
        pytest.skip("needs the session's own broker to pause")
    course_id = await live.new_course("Paused Catalog")
    first, second = [await live.add_lesson(course_id, f"Lesson {n}") for n in (1, 2)]
    await live.publish(course_id)
    await live.enroll(course_id, "p1")

    async def replicated() -> bool:
        entry = await store.get_course(live.pool, course_id)
        enrolled = await store.get_enrollment(live.pool, "p1", course_id)
        return entry is not None and entry.status == "published" and len(entry.lessons) == 2 and enrolled is not None

    await eventually(replicated, what="course and enrollment in the progress replicas")
    # Progress holds the course in memory too (the 5 s cache).
    shown = await live.progress.get(f"/api/courses/{course_id}/progress", headers=live.learner("p1"))
    assert shown.json()["data"]["total_lessons"] == 2

    tansu.pause()
    try:
        third = await live.add_lesson(course_id, "Lesson 3")  # required; cannot reach progress's consumer
        one = await live.complete(course_id, first, "p1")
        assert (one["progress_percentage"], one["total_lessons"]) == (33, 3)
        two = await live.complete(course_id, second, "p1")
        assert (two["progress_percentage"], two["completed_lessons"], two["total_lessons"]) == (66, 2, 3)
        assert two["next_lesson"]["id"] == third
        assert await live.completions() == 0 and await live.queued_course_completed() == 0
        entry = await store.get_course(live.pool, course_id)
        assert entry is not None and [lesson.id for lesson in entry.lessons] == [first, second, third]
    finally:
        tansu.resume()

    async with TopicReader(live.env.kafka_bootstrap, live.topic(Topic.COURSE_COMPLETED)) as topic:
        last = await live.complete(course_id, third, "p1")
        assert last["progress_percentage"] == 100
        assert await live.completions() == 1

        async def published() -> bool:
            return len(topic.messages) >= 1

        # The relay publishes in order: whatever course-completed had been queued before
        # would arrive before this one.
        await eventually(published, timeout=60, what="course-completed on the topic")
        assert len(topic.messages) == 1
        event = CourseCompleted.model_validate_json(topic.messages[0].value)
        assert (event.user_id, event.course_id, event.course_title) == ("p1", course_id, "Paused Catalog")


async def test_create_publish_enroll_complete_at_once_never_completes_early(live: Live) -> None:
    runs = 20

    async def scenario(n: int) -> tuple[int, int, dict[str, Any]]:
        course_id = await live.new_course(f"Race {n}")
        first = await live.add_lesson(course_id, "Lesson 1")
        second = await live.add_lesson(course_id, "Lesson 2")
        await live.publish(course_id)
        await live.enroll(course_id, f"r{n}")
        if n % 2:
            done = await live.complete(course_id, first, f"r{n}")
        else:  # the heartbeat form of a completion
            response = await live.progress.post("/api/progress", headers=live.learner(f"r{n}"), json={
                "course_id": course_id, "lesson_id": first, "video_progress": 30, "completed": True})
            assert response.status_code == 200, response.text
            done = (await live.progress.get(f"/api/courses/{course_id}/progress",
                                            headers=live.learner(f"r{n}"))).json()["data"]
        return course_id, second, done

    results = await asyncio.gather(*(scenario(n) for n in range(runs)))
    assert [(r[2]["progress_percentage"], r[2]["total_lessons"]) for r in results] == [(50, 2)] * runs
    assert await live.completions() == 0 and await live.queued_course_completed() == 0

    async with TopicReader(live.env.kafka_bootstrap, live.topic(Topic.COURSE_COMPLETED)) as topic:
        finals = await asyncio.gather(*(live.complete(c, lesson, f"r{n}") for n, (c, lesson, _) in enumerate(results)))
        assert [f["progress_percentage"] for f in finals] == [100] * runs
        assert await live.completions() == runs

        async def published() -> bool:
            return len(topic.messages) >= runs

        await eventually(published, timeout=60, what="every course-completed on the topic")
        events = [CourseCompleted.model_validate_json(m.value) for m in topic.messages]
        assert sorted((e.user_id, e.course_id) for e in events) == sorted(
            (f"r{n}", c) for n, (c, _, _) in enumerate(results))
