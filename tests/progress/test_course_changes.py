"""Courses that change after learners started: the real enrollment service and two progress
processes (one database, like two replicas) on the session's broker. A change of the
required lessons recalculates every learner in batches, off the admin request; nobody loses
a completion; learners who now have everything still required complete once."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI

from services.enrollment.app import build_app as build_enrollment
from services.enrollment.settings import EnrollmentSettings
from services.progress import store
from services.progress.app import build_app as build_progress
from services.progress.settings import ProgressSettings
from services.progress.usecases import ProgressState, Recalculator
from shared.bus import ensure_topics
from shared.events import CourseCompleted, ProgressRecalculated, Topic
from shared.service import Runtime
from tests.enrollment.conftest import bearer
from tests.helpers import TestEnv, TopicReader, app_client, eventually, produce_raw, served


@dataclass
class Live:
    env: TestEnv
    enrollment: httpx.AsyncClient
    enrollment_settings: EnrollmentSettings
    progress: list[httpx.AsyncClient]
    progress_apps: list[FastAPI]

    @property
    def pool(self) -> Any:
        runtime: Runtime[Any] = self.progress_apps[0].state.runtime
        return runtime.pool

    @property
    def admin(self) -> dict[str, str]:
        return bearer(self.enrollment_settings, "admin-1", ["admin"], name="Ada Admin")

    def learner(self, user_id: str) -> dict[str, str]:
        return bearer(self.enrollment_settings, user_id, ["learner"], name=f"Learner {user_id}",
                      email=f"{user_id}@example.com")

    def topic(self, topic: Topic) -> str:
        return self.enrollment_settings.topic(topic.value)

    async def course(self, title: str, required: list[bool]) -> tuple[int, list[int]]:
        created = await self.enrollment.post("/api/admin/courses", json={"title": title}, headers=self.admin)
        assert created.status_code == 201, created.text
        course_id: int = created.json()["data"]["id"]
        lessons = [await self.add_lesson(course_id, f"Lesson {n}", req) for n, req in enumerate(required, 1)]
        published = await self.enrollment.post(f"/api/admin/courses/{course_id}/publish", headers=self.admin)
        assert published.status_code == 200, published.text
        return course_id, lessons

    async def add_lesson(self, course_id: int, title: str, required: bool = True) -> int:
        added = await self.enrollment.post(f"/api/admin/courses/{course_id}/lessons",
                                           json={"title": title, "is_required": required}, headers=self.admin)
        assert added.status_code == 201, added.text
        lesson_id: int = added.json()["data"]["lesson"]["id"]
        return lesson_id

    async def enroll(self, course_id: int, user_id: str) -> None:
        enrolled = await self.enrollment.post(f"/api/courses/{course_id}/enroll", headers=self.learner(user_id))
        assert enrolled.status_code == 200, enrolled.text

    async def complete(self, course_id: int, lesson_id: int, user_id: str, replica: int = 0) -> dict[str, Any]:
        done = await self.progress[replica].post(f"/api/courses/{course_id}/lessons/{lesson_id}/complete",
                                                 headers=self.learner(user_id))
        assert done.status_code == 200, done.text
        data: dict[str, Any] = done.json()["data"]
        return data

    async def progress_of(self, course_id: int, user_id: str) -> dict[str, Any]:
        shown = await self.progress[0].get(f"/api/courses/{course_id}/progress", headers=self.learner(user_id))
        assert shown.status_code == 200, shown.text
        data: dict[str, Any] = shown.json()["data"]
        return data

    async def students(self, course_id: int) -> dict[str, dict[str, Any]]:
        listed = await self.enrollment.get(f"/api/courses/{course_id}/students?per_page=100", headers=self.admin)
        assert listed.status_code == 200, listed.text
        return {s["user_id"]: s for s in listed.json()["data"]}

    async def my_course(self, course_id: int, user_id: str) -> dict[str, Any]:
        listed = await self.enrollment.get("/api/courses/my-courses", headers=self.learner(user_id))
        return next(c for c in listed.json()["data"] if c["course_id"] == course_id)

    async def percentages_become(self, course_id: int, wanted: dict[str, int]) -> dict[str, dict[str, Any]]:
        async def shown() -> dict[str, dict[str, Any]] | None:
            students = await self.students(course_id)
            got = {u: s["progress_percentage"] for u, s in students.items()}
            return students if got == wanted else None

        return await eventually(shown, timeout=60, what=f"students of course {course_id} at {wanted}")

    async def no_job_left(self) -> None:
        async def done() -> bool:
            return bool(await self.pool.fetchval("SELECT count(*) FROM course_recalculations") == 0)

        await eventually(done, timeout=60, what="every recalculation job done")

    async def completions(self, course_id: int) -> dict[str, Any]:
        rows = await self.pool.fetch(
            "SELECT user_id, completed_at FROM course_completions WHERE course_id = $1", course_id)
        return {r["user_id"]: r["completed_at"] for r in rows}

    async def outbox_position(self) -> int:
        return int(await self.pool.fetchval("SELECT coalesce(max(id), 0) FROM outbox"))

    async def recalculation_events(self, course_id: int, since: int = 0) -> list[ProgressRecalculated]:
        rows = await self.pool.fetch(
            "SELECT payload FROM outbox WHERE event_type = 'progress-recalculated' AND id > $1 ORDER BY id", since)
        events = [ProgressRecalculated.model_validate_json(r["payload"]) for r in rows]
        return [e for e in events if e.course_id == course_id]


@contextlib.asynccontextmanager
async def live_stack(test_env: TestEnv, replicas: int = 2, **progress: Any) -> AsyncIterator[Live]:
    enrollment_settings = test_env.settings(EnrollmentSettings, database="enrollment")
    await ensure_topics(enrollment_settings)
    enrollment_app = build_enrollment(enrollment_settings)
    async with served(enrollment_app) as url, contextlib.AsyncExitStack() as stack:
        overrides = {"recalculation_batch_size": 3, "recalculation_interval_s": 0.2,
                     "completion_recheck_interval_s": 0.2, **progress}
        apps = [build_progress(test_env.settings(ProgressSettings, database="progress", enrollment_internal_url=url,
                                                 replica_cache_ttl_s=0, **overrides)) for _ in range(replicas)]
        clients = [await stack.enter_async_context(app_client(app)) for app in apps]
        enrollment = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30))
        runtimes: list[Runtime[Any]] = [enrollment_app.state.runtime, *(app.state.runtime for app in apps)]

        async def subscribed() -> bool:
            return all(r.broker_started for r in runtimes)

        await eventually(subscribed, what="enrollment and progress subscribers started")
        yield Live(test_env, enrollment, enrollment_settings, clients, apps)


async def test_a_required_lesson_added_lowers_everyone_and_revokes_no_completion(test_env: TestEnv) -> None:
    async with live_stack(test_env) as live:
        course_id, (a, b, _optional) = await live.course("Growing Course", [True, True, False])
        users = [f"g{n}" for n in range(7)]  # more learners than one batch (3)
        for user in users:
            await live.enroll(course_id, user)
        for n, user in enumerate(users):
            await live.complete(course_id, a, user, replica=n % 2)
        for user in users[:2]:
            assert (await live.complete(course_id, b, user))["progress_percentage"] == 100
        await live.percentages_become(course_id, {u: 100 if u in users[:2] else 50 for u in users})

        async def completions_applied() -> dict[str, dict[str, Any]] | None:
            students = await live.students(course_id)
            return students if all(students[u]["status"] == "completed" for u in users[:2]) else None

        before = await eventually(completions_applied, what="the completions applied to the enrollments")
        completed_at = {u: before[u]["completed_at"] for u in users[:2]}
        assert all(completed_at.values()) and all(before[u]["status"] == "completed" for u in users[:2])
        revision_then = (await live.progress_of(course_id, users[0]))["completed_revision"]
        assert isinstance(revision_then, int) and revision_then > 0
        recorded = await live.completions(course_id)

        await live.no_job_left()  # the jobs of the revisions that built the course
        since = await live.outbox_position()
        added = await live.add_lesson(course_id, "Lesson 4 (new)")  # required; answers at once

        after = await live.percentages_become(course_id, {u: 66 if u in users[:2] else 33 for u in users})
        await live.no_job_left()
        for user in users[:2]:
            assert after[user]["status"] == "completed" and after[user]["completed_at"] == completed_at[user]
            mine = await live.my_course(course_id, user)
            assert (mine["status"], mine["progress_percentage"], mine["completed_lessons"], mine["total_lessons"]) \
                == ("completed", 66, 2, 3)
            shown = await live.progress_of(course_id, user)
            assert (shown["progress_percentage"], shown["total_lessons"]) == (66, 3)
            assert shown["completed_at"] is not None and shown["completed_revision"] == revision_then
            assert shown["new_required_lessons"] == [{"id": added, "title": "Lesson 4 (new)", "order": 4}]
        other = await live.progress_of(course_id, users[2])
        assert (other["progress_percentage"], other["completed_revision"], other["new_required_lessons"]) \
            == (33, None, [])
        assert (await live.my_course(course_id, users[2]))["progress_percentage"] == 33
        assert await live.completions(course_id) == recorded, "no completion revoked, none added"

        # In batches: each learner once per recalculation, at most 3 per event.
        events = await live.recalculation_events(course_id, since)
        assert all(len(e.learners) <= 3 for e in events) and len(events) >= 3
        assert sorted(learner.user_id for e in events for learner in e.learners) == users


async def test_learners_who_now_have_everything_required_complete_once(test_env: TestEnv) -> None:
    async with live_stack(test_env) as live, TopicReader(
        live.env.kafka_bootstrap, live.topic(Topic.COURSE_COMPLETED)
    ) as completed_topic:
        # Made optional: v0 and v1 miss only lesson b; v2 has only a; v3 had completed.
        course_id, (a, b, c) = await live.course("Relaxed Course", [True, True, True])
        # Archived: w0 and w1 miss only lesson y.
        archived_id, (x, y, z) = await live.course("Shrinking Course", [True, True, True])
        for user in ("v0", "v1", "v2", "v3"):
            await live.enroll(course_id, user)
        for user in ("w0", "w1", "w2"):
            await live.enroll(archived_id, user)
        for n, user in enumerate(("v0", "v1", "v3")):
            await live.complete(course_id, a, user, replica=n % 2)
            await live.complete(course_id, c, user, replica=(n + 1) % 2)
        await live.complete(course_id, a, "v2")
        await live.complete(course_id, b, "v3")
        for user in ("w0", "w1"):
            await live.complete(archived_id, x, user)
            await live.complete(archived_id, z, user)
        await live.complete(archived_id, y, "w2")
        assert set(await live.completions(course_id)) == {"v3"}

        relaxed = await live.enrollment.patch(f"/api/admin/courses/{course_id}/lessons/{b}",
                                              json={"is_required": False}, headers=live.admin)
        assert relaxed.status_code == 200, relaxed.text
        archived = await live.enrollment.delete(f"/api/admin/courses/{archived_id}/lessons/{y}", headers=live.admin)
        assert archived.status_code == 200, archived.text

        async def everyone_completed() -> bool:
            done = set(await live.completions(course_id)) | set(await live.completions(archived_id))
            return done == {"v0", "v1", "v3", "w0", "w1"}

        await eventually(everyone_completed, timeout=60, what="the learners who now have everything to complete")
        await live.percentages_become(course_id, {"v0": 100, "v1": 100, "v2": 50, "v3": 100})
        await live.percentages_become(archived_id, {"w0": 100, "w1": 100, "w2": 0})
        for course, user in ((course_id, "v0"), (course_id, "v1"), (archived_id, "w0"), (archived_id, "w1")):

            async def completed_there(course: int = course, user: str = user) -> bool:
                mine = await live.my_course(course, user)
                return mine["status"] == "completed" and mine["completed_at"] is not None

            await eventually(completed_there, what=f"{user}'s enrollment completed")
            shown = await live.progress_of(course, user)
            assert shown["completed_revision"] is not None and shown["new_required_lessons"] == []

        # The catalog event redelivered, and the job run again by either replica: nothing more.
        for entry_course in (course_id, archived_id):
            entry = await live.enrollment.get(f"/internal/courses/{entry_course}",
                                              headers={"X-Internal-Token": live.enrollment_settings.internal_token})
            await produce_raw(live.env.kafka_bootstrap, live.topic(Topic.COURSE_CATALOG), entry.content,
                              str(entry_course).encode())
            await live.pool.execute("INSERT INTO course_recalculations (course_id, revision) VALUES ($1, $2) "
                                    "ON CONFLICT DO NOTHING",
                                    entry_course, entry.json()["revision"])
        await live.no_job_left()

        async def published() -> bool:
            return len(completed_topic.messages) >= 5

        await eventually(published, timeout=60, what="five course-completed on the topic")
        # Settle: the recheck loops run every 0.2 s; a second decision would be queued by now.
        await live.no_job_left()
        pending = await live.pool.fetchval("SELECT count(*) FROM pending_confirmations")
        assert pending == 0
        queued = await live.pool.fetchval("SELECT count(*) FROM outbox WHERE event_type = 'course-completed'")
        assert queued == 5
        events = [CourseCompleted.model_validate_json(m.value) for m in completed_topic.messages]
        ours = Counter(e.user_id for e in events if e.course_id in (course_id, archived_id))
        assert ours == {"v0": 1, "v1": 1, "v3": 1, "w0": 1, "w1": 1}
        relaxed_revision = relaxed.json()["data"]["course"]["revision"]
        by_user = {e.user_id: e for e in events}
        assert by_user["v0"].course_revision == relaxed_revision


async def test_an_interrupted_recalculation_resumes_from_its_cursor(test_env: TestEnv) -> None:
    # The process's own loop is stopped (a notification would wake it at once when the job
    # is recorded): the test plays two processes by hand.
    async with live_stack(test_env, replicas=1, recalculation_interval_s=60, recalculation_batch_size=2) as live:
        state = live.progress_apps[0].state.runtime.state
        assert isinstance(state, ProgressState)
        await state.recalculations.stop()
        course_id, (a,) = await live.course("Resumed Course", [True])
        users = [f"r{n}" for n in range(5)]
        for user in users:
            await live.enroll(course_id, user)
        for user in users[:3]:
            await live.complete(course_id, a, user)
        await live.percentages_become(course_id, {u: 100 if u in users[:3] else 0 for u in users})
        since = await live.outbox_position()
        await live.add_lesson(course_id, "Lesson 2 (new)")
        shown_course = await live.enrollment.get(f"/api/admin/courses/{course_id}", headers=live.admin)
        revision = shown_course.json()["data"]["revision"]

        async def job() -> store.Recalculation | None:
            async with live.pool.acquire() as conn:
                found: store.Recalculation | None = await store.lock_recalculation(conn, course_id)
                return found

        async def new_revision_stored() -> bool:
            found = await job()
            return found is not None and found.revision == revision

        await eventually(new_revision_stored, what="the recalculation job recorded with the new revision")
        # A process claims the job, commits one batch, and stops (its lease runs out).
        first = Recalculator(live.pool, batch_size=2, lease_s=0.5)
        assert await store.claim_recalculations(live.pool, 10, 0.5) == [course_id]
        assert await first._batch(course_id) is True
        held = await job()
        assert held is not None and held.cursor == users[1]
        # Another process takes over once the lease has run out, from the cursor.
        second = Recalculator(live.pool, batch_size=2, lease_s=30)

        async def taken_over() -> int:
            return await second.run_due()

        assert await eventually(taken_over, what="the job taken over after its lease") == 2
        assert await job() is None
        events = await live.recalculation_events(course_id, since)
        assert [[learner.user_id for learner in e.learners] for e in events] == [users[:2], users[2:4], users[4:]]
        await live.percentages_become(course_id, {u: 50 if u in users[:3] else 0 for u in users})


async def test_a_process_stopped_mid_job_leaves_it_to_the_next_from_its_cursor(test_env: TestEnv) -> None:
    enrollment_settings = test_env.settings(EnrollmentSettings, database="enrollment")
    await ensure_topics(enrollment_settings)
    enrollment_app = build_enrollment(enrollment_settings)
    async with served(enrollment_app) as url, httpx.AsyncClient(base_url=url, timeout=30) as enrollment:

        def progress_app() -> FastAPI:
            return build_progress(test_env.settings(
                ProgressSettings, database="progress", enrollment_internal_url=url, replica_cache_ttl_s=0,
                recalculation_batch_size=10, recalculation_interval_s=0.1, recalculation_lease_s=1.0,
            ))

        first_app = progress_app()
        async with app_client(first_app):
            runtime: Runtime[Any] = first_app.state.runtime
            live = Live(test_env, enrollment, enrollment_settings, [], [first_app])

            async def started() -> bool:
                return runtime.broker_started

            await eventually(started, what="progress subscribers started")
            course_id, _ = await live.course("Stopped Course", [True])
            shown = await enrollment.get(f"/api/admin/courses/{course_id}", headers=live.admin)

            async def replicated() -> bool:
                entry = await store.get_course(live.pool, course_id)
                return entry is not None and entry.revision == shown.json()["data"]["revision"]

            await eventually(replicated, what="the published course in the replica")
            await live.no_job_left()
            # Enough learners for many small batches (150 of 10: the stop lands mid-job, and the
            # next process still finishes well within its deadline on a loaded machine), written
            # straight into the replica.
            users = [f"s{n:04d}" for n in range(1500)]
            await live.pool.execute(
                "INSERT INTO enrollments (user_id, course_id, enrollment_id, status, revision, enrolled_at) "
                "SELECT u, $1, 100000 + ordinality, 'active', 1, now() FROM unnest($2::text[]) WITH ORDINALITY AS u",
                course_id, users,
            )
            since = await live.outbox_position()
            await live.add_lesson(course_id, "Lesson 2 (new)")

            async def under_way() -> str | None:
                cursor: str | None = await live.pool.fetchval(
                    "SELECT cursor FROM course_recalculations WHERE course_id = $1", course_id)
                return cursor

            await eventually(under_way, interval=0.01, what="the job under way")
        # The process is stopped (its loop cancelled mid-job); the job stays with its cursor.
        pool = await asyncpg.connect(test_env.database_url("progress"))
        try:
            left = await pool.fetchrow("SELECT cursor FROM course_recalculations WHERE course_id = $1", course_id)
            assert left is not None and left["cursor"] in users[:-1], "stopped mid-job"
        finally:
            await pool.close()

        second_app = progress_app()
        async with app_client(second_app):
            live = Live(test_env, enrollment, enrollment_settings, [], [second_app])
            await live.no_job_left()
            events = await live.recalculation_events(course_id, since)
            recalculated = [learner.user_id for e in events for learner in e.learners]
            assert sorted(recalculated) == users, "every learner once: nothing lost, nothing done twice"
            assert {learner.total_lessons for e in events for learner in e.learners} == {2}
