"""What the certificates tests share: a progress stand-in, event factories, database probes."""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx
from fastapi import FastAPI, Header, HTTPException

from services.certificates.app import build_app
from services.certificates.settings import CertificatesSettings, WorkerSettings
from services.certificates.worker import build_app as build_worker
from shared.auth import issue_token
from shared.events import CourseCompleted, Topic
from tests.helpers import TestEnv, app_client, eventually, produce_raw, served


def completion(user_id: str, course_id: int = 10, *, name: str = "John Doe", enabled: bool = True,
               title: str = "Introduction to Web Development", validity_days: int | None = None) -> CourseCompleted:
    return CourseCompleted(
        user_id=user_id, course_id=course_id, completed_at=datetime.now(UTC), user_name=name,
        user_email=f"{user_id}@example.com", course_title=title, certificate_enabled=enabled,
        certificate_validity_days=validity_days,
    )


@dataclass
class ProgressStandIn:
    """Serves progress's internal completion API from dicts, as the progress service would."""

    token: str
    completions: dict[tuple[str, int], CourseCompleted] = field(default_factory=dict)
    percentages: dict[tuple[str, int], int] = field(default_factory=dict)
    # Every course-completed progress published (what it stores in course_completions).
    published: dict[UUID, CourseCompleted] = field(default_factory=dict)
    calls: int = 0
    confirmations: int = 0
    down: bool = False  # answer 503, as a progress service that cannot reach its database

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/internal/courses/{course_id}/learners/{user_id}/completion")
        async def completion_status(
            course_id: int, user_id: str, x_internal_token: str = Header("")
        ) -> dict[str, Any]:
            self.calls += 1
            if x_internal_token != self.token:
                raise HTTPException(403)
            key = (user_id, course_id)
            if key in self.completions:
                event = self.completions[key]
                return {"completed": True, "progress_percentage": 100,
                        "course_completed": event.model_dump(mode="json")}
            if key in self.percentages:
                return {"completed": False, "progress_percentage": self.percentages[key], "course_completed": None}
            raise HTTPException(404)

        @app.get("/internal/completions/{event_id}")
        async def completion_event(event_id: UUID, x_internal_token: str = Header("")) -> dict[str, Any]:
            self.confirmations += 1
            if self.down:
                raise HTTPException(503)
            if x_internal_token != self.token:
                raise HTTPException(403)
            known = {**{e.event_id: e for e in self.completions.values()}, **self.published}
            if event_id not in known:
                raise HTTPException(404)
            return known[event_id].model_dump(mode="json")

        return app


@dataclass
class Stack:
    env: TestEnv
    settings: CertificatesSettings
    api: httpx.AsyncClient
    progress: ProgressStandIn
    db: asyncpg.Pool

    def token(self, user_id: str, roles: list[str] | None = None) -> dict[str, str]:
        return {"Authorization": "Bearer " + issue_token(self.settings, user_id=user_id, roles=roles)}

    async def publish_completion(self, event: CourseCompleted) -> None:
        """A genuine completion: progress stored it before publishing it."""
        self.progress.published[event.event_id] = event
        await self.publish_forged(event)

    async def publish_forged(self, event: CourseCompleted) -> None:
        """Straight onto the topic, as anyone able to write to it could."""
        await produce_raw(self.env.kafka_bootstrap, self.settings.topic(Topic.COURSE_COMPLETED.value),
                          event.model_dump_json().encode(), key=event.key().encode())

    async def certificate_count(self, course_id: int | None = None) -> int:
        if course_id is None:
            return int(await self.db.fetchval("SELECT count(*) FROM certificates"))
        return int(await self.db.fetchval("SELECT count(*) FROM certificates WHERE course_id = $1", course_id))


def worker_settings(env: TestEnv, **overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {"database": "certs", "render_processes": 1, "consumers": 2}
    values.update(overrides)
    return env.settings(WorkerSettings, **values)


@contextlib.asynccontextmanager
async def certificate_stack(env: TestEnv, *, workers: int = 1, signing_keys: str = "") -> AsyncIterator[Stack]:
    """The API app and ``workers`` in-process worker apps on one database, plus a progress stand-in."""
    progress = ProgressStandIn(token="test-internal-token")
    async with contextlib.AsyncExitStack() as stack:
        progress_url = await stack.enter_async_context(served(progress.app()))
        # The API and the workers share the issuer's development key, as a stack's processes do.
        key_file = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "signing-keys"
        settings = env.settings(CertificatesSettings, database="certs", progress_internal_url=progress_url,
                                internal_token=progress.token, signing_key_file=key_file, signing_keys=signing_keys)
        api = await stack.enter_async_context(app_client(build_app(settings)))
        for _ in range(workers):
            worker = build_worker(worker_settings(env, progress_internal_url=progress_url,
                                                  internal_token=progress.token, signing_key_file=key_file,
                                                  signing_keys=signing_keys))
            await stack.enter_async_context(app_client(worker))
            await eventually(functools.partial(_subscribed, worker), what="worker subscribed", timeout=60)
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=3)
        stack.push_async_callback(pool.close)
        yield Stack(env, settings, api, progress, pool)


async def _subscribed(app: FastAPI) -> bool:
    return bool(app.state.runtime.broker_started)
