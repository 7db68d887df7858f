"""One error shape for every failure; settings that refuse unsafe production defaults."""

from __future__ import annotations

import asyncpg
import httpx
import pytest
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, Field, ValidationError

from shared.errors import MAX_HEADER_BYTES, ApiError, install_error_handlers
from shared.settings import DEV_JWT_SECRET, ServiceSettings


class Body(BaseModel):
    course_id: int
    video_progress: float = Field(ge=0)


def make_app() -> FastAPI:
    router = APIRouter()

    @router.post("/things")
    async def create(body: Body, limit: int = 10) -> dict[str, int]:
        return {"course_id": body.course_id}

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError("SELECT secret FROM internals")

    @router.get("/db-away")
    async def db_away() -> None:
        raise asyncpg.CannotConnectNowError("the database system is starting up")

    @router.get("/peer-away")
    async def peer_away() -> None:
        raise ApiError(503, "progress_unavailable", "Course progress cannot be checked right now")

    @router.get("/teapot")
    async def teapot() -> None:
        raise ApiError(403, "not_enrolled", "You must be enrolled in this course", course_id=3)

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    return app


@pytest.fixture
async def client() -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=make_app(), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://t")


async def test_validation_failures_are_400_and_name_each_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/things?limit=x", json={"video_progress": -1})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_request"
    assert body["data"]["status"] == 400
    assert set(body["data"]["params"]) == {"course_id", "video_progress", "limit"}
    assert "course_id" in body["message"] and "video_progress" in body["message"]


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/things", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"


async def test_api_errors_keep_their_code_and_data(client: httpx.AsyncClient) -> None:
    response = await client.get("/teapot")
    assert response.status_code == 403
    assert response.json() == {
        "code": "not_enrolled",
        "message": "You must be enrolled in this course",
        "data": {"status": 403, "course_id": 3},
    }


async def test_unexpected_errors_are_500_without_internals(client: httpx.AsyncClient) -> None:
    response = await client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"code": "internal_error", "message": "Internal server error", "data": {"status": 500}}
    assert "SELECT" not in response.text


async def test_a_database_restart_is_503_try_again(client: httpx.AsyncClient) -> None:
    response = await client.get("/db-away")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json() == {
        "code": "service_unavailable", "message": "Temporarily unavailable, try again", "data": {"status": 503}
    }


async def test_every_503_says_when_to_retry(client: httpx.AsyncClient) -> None:
    response = await client.get("/peer-away")
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["code"] == "progress_unavailable"


async def test_nul_in_path_or_query_and_oversized_headers_are_refused(client: httpx.AsyncClient) -> None:
    for url in ("/teapot%00", "/teapot?x=a%00b", "/things%00?limit=1"):
        response = await client.get(url)
        assert response.status_code == 400, url
        assert response.json()["code"] == "invalid_request" and response.json()["data"] == {"status": 400}
    big = await client.get("/teapot", headers={"X-Padding": "a" * MAX_HEADER_BYTES})
    assert big.status_code == 431
    assert big.json() == {
        "code": "request_header_fields_too_large",
        "message": f"Request headers are larger than {MAX_HEADER_BYTES} bytes",
        "data": {"status": 431},
    }
    assert (await client.get("/teapot", headers={"X-Padding": "a" * 8000})).status_code == 403


PUBLIC = "https://learn.example"


def test_production_refuses_the_development_secrets() -> None:
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        ServiceSettings(env="production")
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        ServiceSettings(env="production", jwt_secret="short", internal_token="t" * 40)
    with pytest.raises(ValidationError, match="APP_PASSWORD_TOKEN_SECRET"):
        ServiceSettings(env="production", jwt_secret="s" * 40, internal_token="t" * 40, public_base_url=PUBLIC)
    ok = ServiceSettings(env="production", jwt_secret="s" * 40, internal_token="t" * 40, public_base_url=PUBLIC,
                         app_password_token_secret="a" * 40)
    assert ok.jwt_secret != DEV_JWT_SECRET
    jwks = ServiceSettings(
        env="production", jwt_jwks_url="https://id.example/jwks", internal_token="t" * 40, public_base_url=PUBLIC,
        app_password_token_secret="a" * 40,
    )
    assert jwks.jwt_jwks_url


def test_production_refuses_a_missing_public_url() -> None:
    with pytest.raises(ValidationError, match="PUBLIC_BASE_URL must be set"):
        ServiceSettings(env="production", jwt_secret="s" * 40, internal_token="t" * 40)
    assert ServiceSettings(env="development").public_base_url == "http://127.0.0.1:8080"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LESSONSTREAM_ENV", "production")
    monkeypatch.setenv("JWT_SECRET", "e" * 48)
    monkeypatch.setenv("INTERNAL_TOKEN", "i" * 48)
    monkeypatch.setenv("APP_PASSWORD_TOKEN_SECRET", "a" * 48)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db:5432/progress")
    monkeypatch.setenv("PUBLIC_BASE_URL", PUBLIC)
    settings = ServiceSettings()
    assert settings.public_base_url == PUBLIC
    assert settings.env == "production"
    assert settings.kafka_bootstrap_servers == "kafka:9092"
    assert settings.database_url.endswith("/progress")


def test_the_default_database_is_the_service_own() -> None:
    class ExampleSettings(ServiceSettings):
        DEFAULT_DATABASE = "lessonstream_example"

    assert ExampleSettings().database_url.endswith("/lessonstream_example")
