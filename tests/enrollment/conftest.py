"""The enrollment service on the test run's PostgreSQL and broker, and ways to call it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI

from services.enrollment.app import build_app
from services.enrollment.settings import EnrollmentSettings
from shared.bus import ensure_topics
from shared.events import Event, Topic
from shared.service import Runtime
from tests.helpers import TestEnv, app_client, eventually


def bearer(
    settings: EnrollmentSettings, user_id: str, roles: Iterable[str] = ("learner",), **claims: Any
) -> dict[str, str]:
    """Authorization header for a user; extra claims (name, email, preferred_username, picture) as given."""
    now = int(time.time())
    payload = {
        "sub": user_id, "roles": list(roles), "iss": settings.jwt_issuer, "aud": settings.jwt_audience,
        "iat": now, "exp": now + 3600, **claims,
    }
    return {"Authorization": "Bearer " + jwt.encode(payload, settings.jwt_secret, algorithm="HS256")}


@dataclass
class Service:
    app: FastAPI
    client: httpx.AsyncClient
    settings: EnrollmentSettings
    env: TestEnv

    @property
    def runtime(self) -> Runtime[Any]:
        runtime: Runtime[Any] = self.app.state.runtime
        return runtime

    @property
    def admin(self) -> dict[str, str]:
        return bearer(self.settings, "admin-1", ["admin"], name="Ada Admin")

    def learner(self, user_id: str, **claims: Any) -> dict[str, str]:
        return bearer(self.settings, user_id, ["learner"], **claims)

    def instructor(self, user_id: str) -> dict[str, str]:
        return bearer(self.settings, user_id, ["instructor"], name=f"Instructor {user_id}")

    def topic(self, topic: Topic) -> str:
        return self.settings.topic(topic.value)

    @property
    def internal(self) -> dict[str, str]:
        return {"X-Internal-Token": self.settings.internal_token}

    async def create_course(
        self, title: str = "Intro to Web", *, lessons: int = 3, publish: bool = True, **fields: Any
    ) -> dict[str, Any]:
        response = await self.client.post("/api/admin/courses", json={"title": title, **fields}, headers=self.admin)
        assert response.status_code == 201, response.text
        course_id = response.json()["data"]["id"]
        for i in range(1, lessons + 1):
            added = await self.client.post(
                f"/api/admin/courses/{course_id}/lessons", json={"title": f"Lesson {i}", "duration_seconds": 60 * i},
                headers=self.admin,
            )
            assert added.status_code == 201, added.text
        if publish:
            published = await self.client.post(f"/api/admin/courses/{course_id}/publish", headers=self.admin)
            assert published.status_code == 200, published.text
        final = await self.client.get(f"/api/admin/courses/{course_id}", headers=self.admin)
        data: dict[str, Any] = final.json()["data"]
        return data

    async def enroll(self, course_id: int, user_id: str, **claims: Any) -> dict[str, Any]:
        response = await self.client.post(f"/api/courses/{course_id}/enroll", headers=self.learner(user_id, **claims))
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    async def publish(self, events: Sequence[Event]) -> None:
        """Publish events to the real topics, as the progress and certificates services would."""
        producer = AIOKafkaProducer(bootstrap_servers=self.env.kafka_bootstrap, acks="all", enable_idempotence=False)
        await producer.start()
        try:
            for event in events:
                await producer.send(
                    self.topic(event.topic), value=event.model_dump_json().encode(), key=event.key().encode()
                )
            await producer.flush()
        finally:
            await producer.stop()

    async def enrollment_row(self, user_id: str, course_id: int) -> dict[str, Any]:
        row = await self.runtime.pool.fetchrow(
            "SELECT * FROM enrollments WHERE user_id = $1 AND course_id = $2", user_id, course_id
        )
        assert row is not None
        return dict(row)


@pytest.fixture
async def service(test_env: TestEnv) -> AsyncIterator[Service]:
    """The service with its HTTP API, relay and (starting) subscribers.

    Topics are created up front, so the relay may publish at once; tests that need the
    consumers running use ``consuming`` as well.
    """
    # A short session timeout keeps consumer-group joins quick (the broker waits about
    # half of it on each join).
    settings = test_env.settings(
        EnrollmentSettings, database="enrollment"
    )
    await ensure_topics(settings)
    app = build_app(settings)
    async with app_client(app) as client:
        yield Service(app, client, settings, test_env)


@pytest.fixture
async def consuming(service: Service) -> Service:
    async def started() -> bool:
        return service.runtime.broker_started

    await eventually(started, what="enrollment subscribers started")
    return service
