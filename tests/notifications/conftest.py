"""Fixtures for the notifications tests: a real SMTP server, the service, and a publisher
that sends events through the transactional outbox over the real broker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.notifications.app import NotificationsSettings, build_app
from shared import outbox
from shared.auth import issue_token
from shared.events import Event
from shared.service import Runtime, ServiceSpec
from tests.helpers import TestEnv, app_client, eventually
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
class Service:
    runtime: Runtime
    client: httpx.AsyncClient
    settings: NotificationsSettings

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
def notifications(test_env: TestEnv) -> ServiceFactory:
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
        }
        values.update(overrides)
        settings = test_env.settings(NotificationsSettings, database="notifications", **values)
        app = build_app(settings)
        token = issue_token(settings, user_id="admin-1", name="Admin", roles=["admin"])
        async with app_client(app, token) as client:
            runtime: Runtime = app.state.runtime

            async def subscribed() -> bool:
                return runtime.broker_started

            await eventually(subscribed, what="notifications subscribed")
            yield Service(runtime, client, settings)

    return start


@dataclass
class Publisher:
    runtime: Runtime

    async def publish(self, *events: Event) -> None:
        """Events written through the outbox in one transaction, as a producing service does."""
        async with self.runtime.pool.acquire() as conn, conn.transaction():
            await outbox.add_many(conn, list(events))


@pytest.fixture
async def publisher(test_env: TestEnv, tmp_path: Path) -> AsyncIterator[Publisher]:
    migrations = tmp_path / "publisher_migrations"
    migrations.mkdir()
    runtime = Runtime(
        ServiceSpec(
            name="publisher",
            settings=test_env.settings(database="publisher", service_name="publisher"),
            migrations=migrations,
        )
    )
    await runtime.start()
    yield Publisher(runtime)
    await runtime.stop()


async def wait_for(probe: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition") -> Any:
    """``eventually`` for a plain (synchronous) probe."""

    async def check() -> Any:
        return probe()

    return await eventually(check, timeout=timeout, what=what)

