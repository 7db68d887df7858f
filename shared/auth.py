"""Bearer JWT authentication shared by every service.

HS256 with a shared secret in development; RS256/ES256 keys from a JWKS URL in
production. ``exp``, ``iss`` and ``aud`` are always checked; ``alg: none`` and keys
the JWKS does not know are refused.

Besides, in every environment, the tokens enrollment signs for callers with an
application password (HTTP Basic, exchanged at the gateway): HS256 with
``APP_PASSWORD_TOKEN_SECRET``, issuer ``lessonstream-app-passwords`` (``APP_PASSWORD_ISSUER``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
from typing import Annotated, Any

import httpx
import jwt
from fastapi import Depends, Request

from shared.domain import User as User  # re-exported: routes type their caller with it
from shared.errors import ApiError, forbidden, unauthorized
from shared.settings import APP_PASSWORD_ISSUER, ServiceSettings
from shared.validation import storable

log = logging.getLogger(__name__)

# Verified tokens are remembered briefly: a client sends the same token with every
# request (a heartbeat every few seconds), and checking it again costs more than the
# rest of a small request. Never beyond the token's own expiry.
VERIFIED_CACHE_SIZE = 50_000
VERIFIED_CACHE_S = 60.0
ASYMMETRIC_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]


class JwksKeys:
    """The signing keys published at a JWKS URL, fetched with an async client so that a
    cache miss never blocks the event loop (PyJWT's ``PyJWKClient`` fetches synchronously).

    Keys are kept ``lifespan_s``; an unknown key id triggers a refetch (a rotated key), at
    most every ``min_refetch_s`` so that tokens with made-up key ids cannot flood the issuer.
    """

    def __init__(self, url: str, lifespan_s: float = 300.0, min_refetch_s: float = 10.0) -> None:
        self.url = url
        self._lifespan_s = lifespan_s
        self._min_refetch_s = min_refetch_s
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -math.inf
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> Any:
        if kid in self._keys and time.monotonic() - self._fetched_at < self._lifespan_s:
            return self._keys[kid].key
        async with self._lock:  # one fetch at a time; waiters use its result
            age = time.monotonic() - self._fetched_at
            if age >= self._lifespan_s or (kid not in self._keys and age >= self._min_refetch_s):
                await self._fetch()
        found = self._keys.get(kid)
        if found is None:
            raise unauthorized("Invalid token")
        return found.key

    async def _fetch(self) -> None:
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=2.0)) as client:
                response = await client.get(self.url)
                response.raise_for_status()
            keys = jwt.PyJWKSet.from_dict(response.json()).keys
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            # Keys already held stay usable until the next successful fetch.
            log.warning("JWKS fetch from %s failed: %r", self.url, exc)
            return
        self._keys = {k.key_id: k for k in keys if k.key_id}
        self._fetched_at = time.monotonic()


class TokenVerifier:
    def __init__(self, settings: ServiceSettings) -> None:
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._secret = settings.jwt_secret
        self._app_password_secret = settings.app_password_token_secret.get_secret_value()
        self._jwks = JwksKeys(settings.jwt_jwks_url) if settings.jwt_jwks_url else None
        self._verified: dict[str, tuple[float, User]] = {}

    async def verify(self, token: str) -> User:
        now = time.time()
        cached = self._verified.get(token)
        if cached is not None and cached[0] > now:
            return cached[1]
        user, expires = await self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()  # crude but bounded; refills with the tokens in use
        self._verified[token] = (min(expires, now + VERIFIED_CACHE_S), user)
        return user

    async def _verify(self, token: str) -> tuple[User, float]:
        try:
            header = jwt.get_unverified_header(token)
            options: Any = {"require": ["exp", "iss", "aud", "sub"]}
            if header.get("alg") == "HS256" and _unverified_issuer(token) == APP_PASSWORD_ISSUER:
                # Exchanged for an application password (see the module docstring): its own
                # key and issuer, so a token of the identity provider can never pass as one.
                claims = jwt.decode(
                    token, self._app_password_secret, algorithms=["HS256"], audience=self._audience,
                    issuer=APP_PASSWORD_ISSUER, options=options,
                )
            elif self._jwks is not None:
                if header.get("alg") not in ASYMMETRIC_ALGORITHMS:
                    raise unauthorized("Token algorithm not accepted")
                kid = header.get("kid")
                if not isinstance(kid, str):
                    raise unauthorized("Invalid token")
                key = await self._jwks.key(kid)
                claims = jwt.decode(
                    token, key, algorithms=ASYMMETRIC_ALGORITHMS, audience=self._audience,
                    issuer=self._issuer, options=options,
                )
            else:
                if header.get("alg") != "HS256":
                    raise unauthorized("Token algorithm not accepted")
                claims = jwt.decode(
                    token, self._secret, algorithms=["HS256"], audience=self._audience,
                    issuer=self._issuer, options=options,
                )
        except ApiError:
            raise
        except jwt.ExpiredSignatureError as exc:
            raise unauthorized("Token has expired") from exc
        except (jwt.PyJWTError, ValueError) as exc:
            raise unauthorized("Invalid token") from exc
        user = user_from_claims(claims)
        return user, float(claims["exp"])


def _unverified_issuer(token: str) -> object:
    return jwt.decode(token, options={"verify_signature": False}).get("iss")


# Claim lengths a service accepts: OpenID Connect caps ``sub`` at 255 characters; the
# others are generous bounds so that a token cannot make rows or index entries too large.
_CLAIM_LIMITS = {"sub": 255, "name": 1000, "email": 320, "preferred_username": 255, "username": 255,
                 "picture": 2000, "avatar": 2000}


def _claim(claims: dict[str, Any], name: str) -> str | None:
    """A string claim, or None if absent/null. Anything else a client could not have been
    given by a sound issuer: not a string, over the length limit, NUL characters or lone
    surrogates (PostgreSQL cannot store them). Refused as 401 before anything is looked up or buffered."""
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > _CLAIM_LIMITS[name] or not storable(value):
        raise unauthorized(f"Invalid token: claim {name!r}")
    return value


def user_from_claims(claims: dict[str, Any]) -> User:
    """The user of verified claims; a claim of the wrong type or shape is 401, never a 500."""
    sub = _claim(claims, "sub")
    if not sub:
        raise unauthorized("Invalid token: claim 'sub'")
    roles = claims.get("roles")
    if roles is None or roles == []:
        roles = ["learner"]
    elif isinstance(roles, str):
        roles = [roles]
    elif not (isinstance(roles, list) and all(isinstance(r, str) for r in roles)):
        raise unauthorized("Invalid token: claim 'roles' must be a string or a list of strings")
    # Unknown role names are ignored (an identity provider may add its own).
    known = [r for r in roles if r in ("learner", "instructor", "admin")]
    return User.model_validate(
        {
            "sub": sub,
            "name": _claim(claims, "name") or "",
            "email": _claim(claims, "email") or "",
            "roles": known or ["learner"],
            "username": _claim(claims, "preferred_username") or _claim(claims, "username") or "",
            "avatar": _claim(claims, "picture") or _claim(claims, "avatar"),
        }
    )


def issue_token(
    settings: ServiceSettings,
    *,
    user_id: str,
    name: str = "",
    email: str = "",
    roles: list[str] | None = None,
    ttl_seconds: int = 12 * 3600,
    username: str | None = None,
) -> str:
    """Sign an HS256 token with the configured secret (development and tests)."""
    now = int(time.time())
    claims = {
        "sub": user_id,
        "name": name,
        "email": email,
        "roles": roles or ["learner"],
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "exp": now + ttl_seconds,
    }
    if username:
        claims["preferred_username"] = username
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def issue_app_password_token(
    settings: ServiceSettings,
    *,
    user_id: str,
    name: str,
    email: str,
    roles: list[str],
    ttl_seconds: int,
    app_password_id: int,
) -> tuple[str, int]:
    """The bearer token an application password is exchanged for, and its expiry (unix
    seconds): HS256 with ``APP_PASSWORD_TOKEN_SECRET``, issuer ``APP_PASSWORD_ISSUER``."""
    now = int(time.time())
    expires = now + ttl_seconds
    claims = {
        "sub": user_id, "name": name, "email": email, "roles": roles, "iss": APP_PASSWORD_ISSUER,
        "aud": settings.jwt_audience, "iat": now, "exp": expires, "app_password_id": app_password_id,
    }
    return jwt.encode(claims, settings.app_password_token_secret.get_secret_value(), algorithm="HS256"), expires


def _verifier(request: Request) -> TokenVerifier:
    verifier: TokenVerifier = request.app.state.token_verifier
    return verifier


# Dependencies are ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in a
# worker thread, a thread hop per request that costs more than verifying the token.
async def current_user(request: Request) -> User:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "basic":
        # Application passwords are exchanged for a bearer token by the gateway.
        raise unauthorized("HTTP Basic credentials are accepted through the gateway only")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized()
    return await user_of_token(request, token)


async def user_of_token(request: Request, token: str) -> User:
    """The user of a bearer token: the Authorization header's, or one that came without it
    (a heartbeat's body, for navigator.sendBeacon)."""
    return await _verifier(request).verify(token.strip())


CurrentUser = Annotated[User, Depends(current_user)]


async def require_admin(user: CurrentUser) -> User:
    if not user.is_admin:
        raise forbidden("Administrators only")
    return user


AdminUser = Annotated[User, Depends(require_admin)]


async def require_internal(request: Request) -> None:
    """Service-to-service calls carry the shared internal token; the gateway never routes them."""
    expected: str = request.app.state.settings.internal_token
    given = request.headers.get("x-internal-token", "")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(403, "forbidden", "Internal API")


InternalCaller = Annotated[None, Depends(require_internal)]
