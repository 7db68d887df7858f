"""Bearer JWT verification: HS256 in development, RS256 through a JWKS URL in production."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import APIRouter, FastAPI

from shared.auth import CurrentUser, TokenVerifier, issue_app_password_token, issue_token
from shared.errors import ApiError, install_error_handlers
from shared.settings import APP_PASSWORD_ISSUER, ServiceSettings

SETTINGS = ServiceSettings(env="test")


def hs256(claims: dict[str, Any], secret: str = SETTINGS.jwt_secret) -> str:
    base = {"sub": "7", "iss": "lessonstream", "aud": "lessonstream", "exp": int(time.time()) + 60}
    return jwt.encode({**base, **claims}, secret, algorithm="HS256")


async def test_a_valid_development_token_gives_the_user() -> None:
    token = issue_token(SETTINGS, user_id="42", name="Ada", email="ada@example.com", roles=["instructor"])
    user = await TokenVerifier(SETTINGS).verify(token)
    assert (user.id, user.name, user.email, user.roles) == ("42", "Ada", "ada@example.com", ["instructor"])
    assert user.is_instructor and not user.is_admin


@pytest.mark.parametrize(
    ("claims", "secret", "message"),
    [
        ({"exp": -5}, SETTINGS.jwt_secret, "Token has expired"),
        ({"iss": "someone-else"}, SETTINGS.jwt_secret, "Invalid token"),
        ({"aud": "another-app"}, SETTINGS.jwt_secret, "Invalid token"),
        ({}, "x" * 40, "Invalid token"),
    ],
    ids=["expired", "wrong-issuer", "wrong-audience", "wrong-secret"],
)
async def test_bad_tokens_are_refused(claims: dict[str, Any], secret: str, message: str) -> None:
    if "exp" in claims:  # relative to now: tokens are made when the test runs
        claims = {**claims, "exp": int(time.time()) + claims["exp"]}
    with pytest.raises(ApiError) as info:
        await TokenVerifier(SETTINGS).verify(hs256(claims, secret))
    assert info.value.status == 401 and info.value.code == "unauthorized"
    assert info.value.message == message


async def test_garbage_is_refused() -> None:
    with pytest.raises(ApiError) as info:
        await TokenVerifier(SETTINGS).verify("not-a-jwt")
    assert info.value.status == 401 and info.value.message == "Invalid token"


async def test_missing_claims_are_refused() -> None:
    token = jwt.encode({"sub": "1", "iss": "lessonstream", "aud": "lessonstream"}, SETTINGS.jwt_secret, "HS256")
    with pytest.raises(ApiError):
        await TokenVerifier(SETTINGS).verify(token)  # no exp


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_alg_none_is_refused() -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    claims = {"sub": "1", "iss": "lessonstream", "aud": "lessonstream", "exp": int(time.time()) + 60}
    token = f"{header}.{_b64(json.dumps(claims).encode())}."
    with pytest.raises(ApiError) as info:
        await TokenVerifier(SETTINGS).verify(token)
    assert info.value.status == 401


SLOW_RELEASE = threading.Event()
SLOW_ANSWERED = threading.Event()


@pytest.fixture(scope="module")
def jwks_server() -> Iterator[tuple[str, Any]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    body = json.dumps({"keys": [{**public, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if "slow" in self.path:  # answers once the test releases it (or after 5 s)
                SLOW_RELEASE.wait(5)
                SLOW_ANSWERED.set()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json", key
    server.shutdown()


def rs256(key: Any, kid: str, **claims: Any) -> str:
    base = {"sub": "9", "iss": "lessonstream", "aud": "lessonstream", "exp": int(time.time()) + 60, "roles": ["admin"]}
    return jwt.encode({**base, **claims}, key, algorithm="RS256", headers={"kid": kid})


async def test_rs256_tokens_are_verified_against_the_jwks(jwks_server: tuple[str, Any]) -> None:
    url, key = jwks_server
    verifier = TokenVerifier(ServiceSettings(env="test", jwt_jwks_url=url))
    user = await verifier.verify(rs256(key, "k1"))
    assert user.id == "9" and user.is_admin


async def test_unknown_keys_and_symmetric_tokens_are_refused_with_a_jwks(jwks_server: tuple[str, Any]) -> None:
    url, _ = jwks_server
    verifier = TokenVerifier(ServiceSettings(env="test", jwt_jwks_url=url))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for token in (rs256(other, "k1"), rs256(other, "unknown-kid"), hs256({})):
        with pytest.raises(ApiError) as info:
            await verifier.verify(token)
        assert info.value.status == 401


async def test_fetching_the_jwks_does_not_block_the_event_loop(jwks_server: tuple[str, Any]) -> None:
    url, key = jwks_server
    verifier = TokenVerifier(ServiceSettings(env="test", jwt_jwks_url=url.replace("jwks.json", "slow/jwks.json")))
    verifying = asyncio.create_task(verifier.verify(rs256(key, "k1")))
    ticks = 0
    while ticks < 20:  # the loop keeps running while the issuer has not answered
        await asyncio.sleep(0.01)
        assert not SLOW_ANSWERED.is_set()
        ticks += 1
    assert not verifying.done()
    SLOW_RELEASE.set()
    user = await asyncio.wait_for(verifying, 10)
    assert user.id == "9"


def app_password_token(settings: ServiceSettings = SETTINGS) -> str:
    token, _ = issue_app_password_token(
        settings, user_id="5", name="John Doe", email="john@example.com", roles=["learner", "instructor"],
        ttl_seconds=60, app_password_id=3,
    )
    return token


async def test_tokens_exchanged_for_application_passwords_are_accepted() -> None:
    user = await TokenVerifier(SETTINGS).verify(app_password_token())
    assert (user.id, user.name, user.email, user.roles) == ("5", "John Doe", "john@example.com",
                                                           ["learner", "instructor"])


async def test_exchanged_tokens_are_accepted_beside_a_jwks(jwks_server: tuple[str, Any]) -> None:
    """In production tokens come from the identity provider's JWKS; the exchanged ones are
    still verified, with their own secret and issuer, and nothing else passes as one."""
    url, key = jwks_server
    settings = ServiceSettings(env="test", jwt_jwks_url=url, app_password_token_secret="p" * 40)
    verifier = TokenVerifier(settings)
    assert (await verifier.verify(app_password_token(settings))).id == "5"
    assert (await verifier.verify(rs256(key, "k1"))).id == "9"
    forged = [
        app_password_token(ServiceSettings(env="test", app_password_token_secret="q" * 40)),  # another secret
        hs256({"iss": APP_PASSWORD_ISSUER}, secret=settings.jwt_secret),  # the JWT secret
        hs256({"iss": APP_PASSWORD_ISSUER, "aud": "other"}, secret="p" * 40),  # another audience
        rs256(key, "k1", iss=APP_PASSWORD_ISSUER),  # the provider's key, the app-password issuer
        hs256({}, secret="p" * 40),  # the app-password secret, the identity provider's issuer
    ]
    for token in forged:
        with pytest.raises(ApiError) as info:
            await verifier.verify(token)
        assert info.value.status == 401


def test_the_identity_provider_cannot_share_the_app_password_issuer() -> None:
    with pytest.raises(ValueError, match="JWT_ISSUER"):
        ServiceSettings(env="test", jwt_issuer=APP_PASSWORD_ISSUER)


async def test_routes_answer_401_in_the_error_shape_without_a_valid_token() -> None:
    import httpx

    router = APIRouter()

    @router.get("/me")
    async def me(user: CurrentUser) -> dict[str, str]:
        return {"id": user.id}

    app = FastAPI()
    app.state.token_verifier = TokenVerifier(SETTINGS)
    install_error_handlers(app)
    app.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer nope"}):
            response = await client.get("/me", headers=headers)
            assert response.status_code == 401
            assert response.json()["code"] == "unauthorized"
            assert response.json()["data"] == {"status": 401}
            assert response.headers["www-authenticate"] == "Bearer"
        ok = await client.get("/me", headers={"Authorization": f"Bearer {issue_token(SETTINGS, user_id='5')}"})
        assert ok.json() == {"id": "5"}
