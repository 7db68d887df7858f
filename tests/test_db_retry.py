"""Transactions PostgreSQL aborts as deadlocked are run again, whole."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from shared.db import create_pool, retrying


async def test_two_transactions_locking_in_opposite_order_both_commit(db_url: str) -> None:
    pool = await create_pool(db_url, min_size=2, max_size=4)
    try:
        await pool.execute("CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)")
        await pool.execute("INSERT INTO counters VALUES (1, 0), (2, 0)")
        both_hold_their_first_lock = asyncio.Barrier(2)
        attempts = {"a": 0, "b": 0}

        async def transfer(name: str, first: int, second: int) -> None:
            attempts[name] += 1
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("UPDATE counters SET n = n + 1 WHERE id = $1", first)
                if attempts[name] == 1:  # only the first try meets the other half-way
                    await both_hold_their_first_lock.wait()
                await conn.execute("UPDATE counters SET n = n + 1 WHERE id = $1", second)

        results = await asyncio.gather(
            retrying(lambda: transfer("a", 1, 2)),
            retrying(lambda: transfer("b", 2, 1)),
            return_exceptions=True,
        )
        assert list(results) == [None, None]
        assert sorted(attempts.values()) == [1, 2], "exactly one of them was aborted and run again"
        rows = await pool.fetch("SELECT id, n FROM counters ORDER BY id")
        assert [(r["id"], r["n"]) for r in rows] == [(1, 2), (2, 2)]
    finally:
        await pool.close()


async def test_other_errors_are_not_retried(db_url: str) -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise asyncpg.UniqueViolationError("duplicate")

    with pytest.raises(asyncpg.UniqueViolationError):
        await retrying(broken)
    assert calls == 1
