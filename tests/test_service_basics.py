"""Every service process: health, readiness, metrics, migrations, error shape, auth."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from shared.auth import issue_token
from tests.helpers import TestEnv, app_client, eventually

SERVICES = [
    ("progress", "services.progress.app", "ProgressSettings"),
    ("enrollment", "services.enrollment.app", "EnrollmentSettings"),
    ("certificates", "services.certificates.app", "CertificatesSettings"),
    ("certificates-worker", "services.certificates.worker", "WorkerSettings"),
    ("notifications", "services.notifications.app", "NotificationsSettings"),
]


def build(module_name: str, settings_name: str, test_env: TestEnv, database: str) -> Any:
    """The composition root ``module_name`` built with the service's settings class (from its
    ``settings.py``)."""
    module = importlib.import_module(module_name)
    settings_module = importlib.import_module(module_name.rsplit(".", 1)[0] + ".settings")
    settings = test_env.settings(getattr(settings_module, settings_name), database=database)
    return module.build_app(settings)


@pytest.mark.parametrize(("name", "module_name", "settings_name"), SERVICES)
async def test_service_is_healthy_ready_and_migrated(
    test_env: TestEnv, name: str, module_name: str, settings_name: str
) -> None:
    app = build(module_name, settings_name, test_env, database=name.split("-")[0])
    async with app_client(app) as client:
        health = await client.get("/health")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "service": name}

        async def ready() -> Any:
            response = await client.get("/ready")
            return response if response.status_code == 200 else None

        response = await eventually(ready, what=f"{name} ready")
        assert response.json()["checks"]["database"] == "ok"
        assert response.json()["checks"]["broker"] == "ok"
        assert response.headers["x-lessonstream-service"] == name

        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert "lessonstream_http_request_duration_seconds" in metrics.text

        runtime = app.state.runtime
        tables = {r["tablename"] for r in await runtime.pool.fetch("SELECT tablename FROM pg_tables")}
        assert {"outbox", "inbox", "schema_migrations"} <= tables


async def test_request_id_is_kept_or_made(test_env: TestEnv) -> None:
    app = build("services.progress.app", "ProgressSettings", test_env, "progress")
    async with app_client(app) as client:
        given = await client.get("/health", headers={"X-Request-ID": "abc-123"})
        assert given.headers["x-request-id"] == "abc-123"
        made = await client.get("/health")
        assert len(made.headers["x-request-id"]) == 32


async def test_ready_reports_an_unreachable_broker(test_env: TestEnv) -> None:
    app = build("services.notifications.app", "NotificationsSettings", test_env, "notifications")
    app.state.settings.kafka_bootstrap_servers = "127.0.0.1:1"  # nothing listens there
    app.state.runtime.relay._settings = app.state.settings
    async with app_client(app) as client:
        response = await client.get("/ready")
        assert response.status_code == 503
        body = response.json()
        assert body["code"] == "not_ready"
        assert body["data"]["status"] == 503
        assert body["data"]["checks"]["database"] == "ok"
        assert body["data"]["checks"]["broker"] == "unavailable"


async def test_unknown_route_and_method_use_the_error_shape(test_env: TestEnv) -> None:
    app = build("services.progress.app", "ProgressSettings", test_env, "progress")
    token = issue_token(app.state.settings, user_id="1")
    async with app_client(app, token) as client:
        missing = await client.get("/api/nothing-here")
        assert missing.status_code == 404
        assert missing.json() == {"code": "not_found", "message": "Not Found", "data": {"status": 404}}
        wrong_method = await client.delete("/health")
        assert wrong_method.status_code == 405
        assert wrong_method.json()["code"] == "method_not_allowed"
