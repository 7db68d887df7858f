"""Verified tokens are remembered, but never past their expiry."""

from __future__ import annotations

import pytest

from shared.auth import TokenVerifier, issue_token
from shared.errors import ApiError
from shared.settings import ServiceSettings
from tests.helpers import eventually


async def test_a_cached_token_is_still_refused_once_expired() -> None:
    settings = ServiceSettings(env="test")
    verifier = TokenVerifier(settings)
    token = issue_token(settings, user_id="u1", name="A", roles=["instructor"], ttl_seconds=1)
    first = await verifier.verify(token)
    assert (first.id, first.name, first.roles) == ("u1", "A", ["instructor"])
    assert await verifier.verify(token) is first  # served from the cache

    async def refused() -> bool:
        try:
            await verifier.verify(token)
        except ApiError as exc:
            return exc.status == 401 and exc.message == "Token has expired"
        return False

    await eventually(refused, timeout=5, what="expired token refused")


async def test_a_bad_signature_is_never_cached_as_valid() -> None:
    settings = ServiceSettings(env="test")
    verifier = TokenVerifier(settings)
    forged = issue_token(ServiceSettings(env="test", jwt_secret="x" * 40), user_id="u1")
    for _ in range(2):
        with pytest.raises(ApiError) as caught:
            await verifier.verify(forged)
        assert caught.value.status == 401
