"""`lessonstream seed-demo` against the enrollment service served in this process."""

from __future__ import annotations

import asyncio

import httpx
from typer.testing import CliRunner

from lessonstream import cli
from lessonstream.infra import free_port
from services.enrollment.app import build_app
from services.enrollment.settings import EnrollmentSettings
from shared.bus import ensure_topics
from tests.enrollment.conftest import Service
from tests.helpers import TestEnv, served


async def test_seed_demo_creates_a_published_course_learners_can_enroll_in(test_env: TestEnv) -> None:
    runner = CliRunner()
    settings = test_env.settings(EnrollmentSettings, database="enrollment")
    await ensure_topics(settings)
    app = build_app(settings)
    async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
        service = Service(app, client, settings, test_env)
        # The command is synchronous: run it off the event loop that serves the app.
        result = await asyncio.to_thread(
            runner.invoke, cli.app, ["seed-demo", "--gateway", url, "--instructor", "t1"]
        )
        assert result.exit_code == 0, result.output
        course_id = int(result.stdout.strip())

        course = await service.client.get(f"/api/courses/{course_id}", headers=service.learner("u1"))
        assert course.status_code == 200
        data = course.json()["data"]
        assert data["title"] == "Introduction to Web Development"
        assert data["status"] == "published" and data["instructor_ids"] == ["t1"]
        assert [lesson["title"] for lesson in data["lessons"]] == [lesson["title"] for lesson in cli.DEMO_LESSONS]
        assert [lesson["order"] for lesson in data["lessons"]] == [1, 2, 3, 4, 5]
        enrolled = await service.client.post(f"/api/courses/{course_id}/enroll", headers=service.learner("u1"))
        assert enrolled.status_code == 200

        # Run twice: a second course with its own slug.
        again = await asyncio.to_thread(runner.invoke, cli.app, ["seed-demo", "--gateway", url])
        assert again.exit_code == 0, again.output
        second = (await service.client.get(f"/api/admin/courses/{int(again.stdout)}", headers=service.admin)).json()
        assert second["data"]["slug"] == "introduction-to-web-development-2"


async def test_seed_demo_reports_an_unreachable_gateway() -> None:
    result = await asyncio.to_thread(
        CliRunner().invoke, cli.app, ["seed-demo", "--gateway", f"http://127.0.0.1:{free_port()}"]
    )
    assert result.exit_code == 1
    assert "cannot reach the gateway" in result.output
