"""The migration runner: numbered files, applied once, safe with replicas starting together."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from shared.db import SHARED_MIGRATIONS, MigrationError, load_migrations, migrate_service
from tests.helpers import TestEnv


def write(folder: Path, name: str, sql: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(sql)


async def test_replicas_starting_at_once_apply_each_migration_once(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    write(folder, "001_things.sql", "CREATE TABLE things (id int PRIMARY KEY);")
    # Not idempotent on purpose: a second application would fail.
    write(folder, "002_seed.sql", "INSERT INTO things VALUES (1);")

    results = await asyncio.gather(*(migrate_service(db_url, "svc", folder) for _ in range(6)))

    applied = [r for r in results if r]
    assert len(applied) == 1
    assert applied[0][-2:] == ["svc/001_things", "svc/002_seed"]
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM things") == 1
        recorded = await conn.fetch("SELECT component, version FROM schema_migrations ORDER BY component, version")
        shared = [("shared", m.version) for m in load_migrations("shared", SHARED_MIGRATIONS)]
        assert shared == [("shared", n) for n in range(1, 6)]  # outbox, inbox, retention, dead letters, erasures
        assert [(r["component"], r["version"]) for r in recorded] == [*shared, ("svc", 1), ("svc", 2)]
    finally:
        await conn.close()

    write(folder, "003_more.sql", "INSERT INTO things VALUES (2);")
    assert await migrate_service(db_url, "svc", folder) == ["svc/003_more"]


async def test_an_edited_applied_migration_is_refused(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    write(folder, "001_things.sql", "CREATE TABLE things (id int);")
    await migrate_service(db_url, "svc", folder)
    write(folder, "001_things.sql", "CREATE TABLE things (id bigint);")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate_service(db_url, "svc", folder)


async def test_a_failing_migration_leaves_nothing_half_applied(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    write(folder, "001_bad.sql", "CREATE TABLE half (id int); SELECT no_such_function();")
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await migrate_service(db_url, "svc", folder)
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('half')") is None
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations WHERE component = 'svc'") == 0
    finally:
        await conn.close()


def test_badly_named_files_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "first.sql", "SELECT 1;")
    with pytest.raises(ValueError, match=r"001_name\.sql"):
        load_migrations("svc", tmp_path)


async def test_the_database_is_created_when_missing(test_env: TestEnv) -> None:
    url = test_env.database_url("brand_new")
    await migrate_service(url, "svc", Path("/nonexistent-empty-folder"))
    conn = await asyncpg.connect(url)
    try:
        # Only the shared migrations: the service has none.
        shared_count = len(list(SHARED_MIGRATIONS.glob("*.sql")))
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == shared_count
    finally:
        await conn.close()
