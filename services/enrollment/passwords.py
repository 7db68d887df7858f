"""Machinery of application passwords: argon2id hashing off the event loop, and what one
enrollment process remembers of credentials it has verified (never a password: a keyed
hash of the credentials) and of the bearer tokens it exchanged them for.

Every request of a Fluent client carries its Basic credentials (a heartbeat every few
seconds), so the check must cost nothing once a credential is known: a remembered
credential is answered from memory, and its row is looked at again (one indexed read, no
hash) once ``APP_PASSWORD_CACHE_S`` has passed, which is how long a revocation may take.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import argon2

from services.enrollment.domain import APP_PASSWORD_ALPHABET, APP_PASSWORD_LENGTH, AppPassword, Credentials
from services.enrollment.settings import EnrollmentSettings
from shared.auth import issue_app_password_token

# OWASP's argon2id parameters (19 MiB, two passes, one lane): about 50 ms here.
_HASHER = argon2.PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)
# Checked when a user has no live password, so that an unknown user takes as long as a wrong password.
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(18))
# Bounds of what is remembered; cleared whole when full (refills with the credentials in use).
MAX_REMEMBERED = 100_000


def generate_password() -> str:
    return "".join(secrets.choice(APP_PASSWORD_ALPHABET) for _ in range(APP_PASSWORD_LENGTH))


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


class Hasher:
    """argon2id in worker threads (argon2-cffi releases the GIL), at most ``threads`` at a
    time, so that a burst of sign-ins neither blocks the event loop nor takes every core."""

    def __init__(self, threads: int) -> None:
        self._slots = asyncio.Semaphore(threads)

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(_HASHER.hash, password)

    async def match(self, candidates: list[tuple[int, str]], password: str) -> int | None:
        """The id of the candidate (id, hash) the password is, or None."""
        async with self._slots:
            return await asyncio.to_thread(_match, candidates, password)


def _match(candidates: list[tuple[int, str]], password: str) -> int | None:
    if not candidates:
        _verify(_DUMMY_HASH, password)
        return None
    for password_id, password_hash in candidates:
        if _verify(password_hash, password):
            return password_id
    return None


@dataclass
class Known:
    """A credential verified by this process: which password it is, and when its row was
    last seen live (monotonic seconds)."""

    password: AppPassword
    checked_at: float


@dataclass(frozen=True)
class Exchanged:
    token: str
    expires: int  # unix seconds


class CredentialMemory:
    """What one process remembers: verified credentials (by a keyed hash), exchanged tokens
    (by password id, reused until a quarter of their life is left, so that a learner's
    requests keep one token and so one progress replica), and the lock-outs it has seen."""

    def __init__(self, settings: EnrollmentSettings) -> None:
        self._settings = settings
        self._key = secrets.token_bytes(32)  # per process: the memory never leaves it
        self._known: dict[bytes, Known] = {}
        self._tokens: dict[int, Exchanged] = {}
        self._locked: dict[str, float] = {}  # "scope:key" -> monotonic end of the lock-out

    def key(self, credentials: Credentials) -> bytes:
        message = f"{credentials.username}\x00{credentials.password}".encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def known(self, key: bytes) -> Known | None:
        return self._known.get(key)

    def fresh(self, known: Known) -> bool:
        return time.monotonic() - known.checked_at < self._settings.app_password_cache_s

    def remember(self, key: bytes, password: AppPassword) -> None:
        if len(self._known) >= MAX_REMEMBERED:
            self._known.clear()
        self._known[key] = Known(password, time.monotonic())

    def forget(self, key: bytes) -> None:
        self._known.pop(key, None)

    def forget_password(self, password_id: int) -> None:
        """A revocation in this process takes effect here at once."""
        self._tokens.pop(password_id, None)
        for key in [k for k, known in self._known.items() if known.password.id == password_id]:
            del self._known[key]

    def lock(self, scope: str, key: str, seconds: float) -> None:
        self._locked[f"{scope}:{key}"] = time.monotonic() + seconds

    def locked(self, user_id: str, address: str) -> bool:
        """Whether this process has seen the user or the address locked out: a remembered
        credential is not honoured then either (a right password during a lock-out is refused)."""
        if not self._locked:
            return False
        now = time.monotonic()
        for name in (f"user:{user_id}", f"address:{address}"):
            until = self._locked.get(name)
            if until is not None:
                if until > now:
                    return True
                del self._locked[name]
        return False

    def token(self, password: AppPassword) -> str:
        ttl = self._settings.app_password_token_ttl_s
        found = self._tokens.get(password.id)
        if found is not None and found.expires - time.time() > ttl / 4:
            return found.token
        token, expires = issue_app_password_token(
            self._settings, user_id=password.user_id, name=password.name, email=password.email,
            roles=list(password.roles), ttl_seconds=ttl, app_password_id=password.id,
        )
        if len(self._tokens) >= MAX_REMEMBERED:
            self._tokens.clear()
        self._tokens[password.id] = Exchanged(token, expires)
        return token
