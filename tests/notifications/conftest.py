"""Fixtures for the notifications tests: a real SMTP server, the service, and a publisher
that sends events through the transactional outbox over the real broker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from fastapi import FastAPI, Header, HTTPException

from services.notifications.app import build_app
from services.notifications.settings import NotificationsSettings
from shared import outbox
from shared.auth import issue_token
from shared.events import (
    CertificateIssued,
    CertificateRevoked,
    CourseCompleted,
    Event,
    RecertificationScheduled,
    VideoSessionEnded,
)
from shared.service import Runtime, ServiceSpec
from tests.helpers import TestEnv, app_client, eventually, served
from tests.notifications.smtp_server import MailServer

FROM_NAME = "Lessonstream Academy"
FROM_ADDRESS = "learn@academy.example"


@pytest.fixture
async def smtp() -> AsyncIterator[MailServer]:
    server = MailServer()
    await server.astart()
    yield server
    await server.astop()


@dataclass
class Owners:
    """The internal APIs notifications confirms events with: progress's completion events,
    the certificates service's issued certificates (with their current revocation status, from
    the latest revoked/reinstated change it published) and enrollment's recertification
    notices and progress's video-session events, as those services answer them."""

    token: str = "test-internal-token"
    url: str = ""
    completions: dict[UUID, CourseCompleted] = field(default_factory=dict)
    certificates: dict[str, CertificateIssued] = field(default_factory=dict)
    status_changes: dict[str, CertificateRevoked] = field(default_factory=dict)  # the latest per certificate
    recertifications: dict[UUID, RecertificationScheduled] = field(default_factory=dict)
    video_sessions: dict[UUID, VideoSessionEnded] = field(default_factory=dict)
    down: bool = False

    def register(self, event: Event) -> None:
        """What the producing service stored when it published ``event``."""
        if isinstance(event, CourseCompleted):
            self.completions[event.event_id] = event
        elif isinstance(event, CertificateIssued):
            self.certificates[event.certificate_id] = event
        elif isinstance(event, RecertificationScheduled):
            self.recertifications[event.event_id] = event
        elif isinstance(event, VideoSessionEnded):
            self.video_sessions[event.event_id] = event
        elif isinstance(event, CertificateRevoked):
            held = self.status_changes.get(event.certificate_id)
            if held is None or held.changed_at <= event.changed_at:
                self.status_changes[event.certificate_id] = event

    def status_of(self, certificate_id: str) -> dict[str, Any]:
        """The status fields of the internal answer about one certificate."""
        change = self.status_changes.get(certificate_id)
        if change is None:
            return {"status": "valid", "revoked_at": None, "revocation_reason": None, "status_changed_at": None}
        revoked = change.status == "revoked"
        return {
            "status": "revoked" if revoked else "valid",
            "revoked_at": change.changed_at.isoformat() if revoked else None,
            "revocation_reason": change.reason if revoked else None,
            "status_changed_at": change.changed_at.isoformat(),
        }

    def app(self) -> FastAPI:
        app = FastAPI()

        def check(token: str) -> None:
            if self.down:
                raise HTTPException(503)
            if token != self.token:
                raise HTTPException(403)

        @app.get("/internal/completions/{event_id}")
        async def completion(event_id: UUID, x_internal_token: str = Header("")) -> dict[str, Any]:
            check(x_internal_token)
            if event_id not in self.completions:
                raise HTTPException(404)
            return self.completions[event_id].model_dump(mode="json")

        @app.get("/internal/certificates/{certificate_id}")
        async def issued(certificate_id: str, x_internal_token: str = Header("")) -> dict[str, Any]:
            check(x_internal_token)
            if certificate_id not in self.certificates:
                raise HTTPException(404)
            event = self.certificates[certificate_id]
            return {**event.model_dump(mode="json", exclude={"event_id", "type", "version", "occurred_at"}),
                    "issued_event_id": str(event.event_id), **self.status_of(certificate_id)}

        @app.get("/internal/recertifications/{event_id}")
        async def recertification(event_id: UUID, x_internal_token: str = Header("")) -> dict[str, Any]:
            check(x_internal_token)
            if event_id not in self.recertifications:
                raise HTTPException(404)
            return self.recertifications[event_id].model_dump(mode="json")

        @app.get("/internal/video-sessions/{event_id}")
        async def video_session(event_id: UUID, x_internal_token: str = Header("")) -> dict[str, Any]:
            check(x_internal_token)
            if event_id not in self.video_sessions:
                raise HTTPException(404)
            return self.video_sessions[event_id].model_dump(mode="json")

        return app


@pytest.fixture
async def owners() -> AsyncIterator[Owners]:
    found = Owners()
    async with served(found.app()) as url:
        found.url = url
        yield found


@dataclass
class Service:
    runtime: Runtime[Any]
    client: httpx.AsyncClient
    settings: NotificationsSettings

    async def sent(self, event_id: Any) -> dict[str, Any] | None:
        """The event's one mail once recorded as sent (the SMTP server has a message a moment
        before the sender records the outcome)."""
        rows = await self.mail(event_id=event_id)
        return rows[0] if len(rows) == 1 and rows[0]["status"] == "sent" else None

    async def mail(self, **where: Any) -> list[dict[str, Any]]:
        conditions = " AND ".join(f"{k} = ${i + 1}" for i, k in enumerate(where)) or "true"
        rows = await self.runtime.pool.fetch(
            f"SELECT * FROM outgoing_mail WHERE {conditions} ORDER BY id", *where.values()
        )
        return [dict(r) for r in rows]

    async def attempts(self, mail_id: int) -> list[dict[str, Any]]:
        rows = await self.runtime.pool.fetch(
            "SELECT * FROM mail_attempts WHERE mail_id = $1 ORDER BY attempt", mail_id
        )
        return [dict(r) for r in rows]


ServiceFactory = Callable[..., AbstractAsyncContextManager[Service]]


@pytest.fixture
def notifications(test_env: TestEnv, owners: Owners) -> ServiceFactory:
    """Start the notifications service against ``smtp`` (in-process, lifespan running)."""

    @asynccontextmanager
    async def start(smtp: MailServer, **overrides: Any) -> AsyncIterator[Service]:
        values: dict[str, Any] = {
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp.port,
            "smtp_timeout_s": 5.0,
            "mail_from_name": FROM_NAME,
            "mail_from_address": FROM_ADDRESS,
            "mail_site_url": "https://learn.example",
            "mail_retry_base_s": 0.1,
            "mail_retry_max_s": 0.5,
            "mail_poll_interval_s": 0.2,
            "mail_max_attempts": 40,
            "progress_internal_url": owners.url,
            "certificates_internal_url": owners.url,
            "enrollment_internal_url": owners.url,
            "internal_token": owners.token,
        }
        values.update(overrides)
        settings = test_env.settings(NotificationsSettings, database="notifications", **values)
        app = build_app(settings)
        token = issue_token(settings, user_id="admin-1", name="Admin", roles=["admin"])
        async with app_client(app, token) as client:
            runtime: Runtime[Any] = app.state.runtime

            async def subscribed() -> bool:
                return runtime.broker_started

            await eventually(subscribed, what="notifications subscribed")
            yield Service(runtime, client, settings)

    return start


@dataclass
class Publisher:
    runtime: Runtime[Any]
    owners: Owners

    async def publish(self, *events: Event) -> None:
        """Events written through the outbox in one transaction, as a producing service does
        (which also keeps what it published, so that consumers can confirm it)."""
        for event in events:
            self.owners.register(event)
        async with self.runtime.pool.acquire() as conn, conn.transaction():
            await outbox.add_many(conn, list(events))


@pytest.fixture
async def publisher(test_env: TestEnv, tmp_path: Path, owners: Owners) -> AsyncIterator[Publisher]:
    migrations = tmp_path / "publisher_migrations"
    migrations.mkdir()
    runtime: Runtime[None] = Runtime(
        ServiceSpec(
            name="publisher",
            settings=test_env.settings(database="publisher", service_name="publisher"),
            migrations=migrations,
        )
    )
    await runtime.start()
    yield Publisher(runtime, owners)
    await runtime.stop()


async def wait_for(probe: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition") -> Any:
    """``eventually`` for a plain (synchronous) probe."""

    async def check() -> Any:
        return probe()

    return await eventually(check, timeout=timeout, what=what)

