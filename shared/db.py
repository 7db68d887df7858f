"""Database plumbing: the service's own database, its pool, and its migrations.

Migrations are numbered ``NNN_name.sql`` files. The shared ones (outbox, inbox) are
applied before the service's own. Several replicas may start at once: the runner
holds a PostgreSQL advisory lock while it applies, and records every file it applied
with its checksum so that an edited, already-applied migration is refused.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from shared.retry import Backoff, retry

# What a store function takes: a plain connection or one borrowed from a pool.
Connection = asyncpg.Connection | PoolConnectionProxy
# What a query that needs no transaction of its own runs on: a connection, or the pool.
Executor = Connection | asyncpg.Pool

M = TypeVar("M")


async def fetch_one(conn: Executor, model: Callable[..., M], sql: str, *args: object) -> M | None:
    """The one row ``sql`` returns as ``model`` (built from the row's columns by name), or None."""
    row = await conn.fetchrow(sql, *args)
    return None if row is None else model(**dict(row))


async def fetch_all(conn: Executor, model: Callable[..., M], sql: str, *args: object) -> list[M]:
    """Every row ``sql`` returns, each as ``model``."""
    return [model(**dict(row)) for row in await conn.fetch(sql, *args)]


async def delete_in_batches(conn: Executor, sql: str, *args: object, batch: int) -> int:
    """Run a DELETE of at most ``batch`` rows (its last parameter, after ``args``) until it
    deletes fewer; returns how many in all. Short statements hold their locks briefly and
    leave the table usable between them, however much there is to delete."""
    total = 0
    while True:
        deleted = int((await conn.execute(sql, *args, batch)).split()[-1])
        total += deleted
        if deleted < batch:
            return total

log = logging.getLogger(__name__)

SHARED_MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_NAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")
# Any constant works as long as every replica of every service uses the same one.
_MIGRATION_LOCK_KEY = 7_305_114_001


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or "postgres"


async def ensure_database(url: str) -> None:
    """Create the database named in ``url`` if the server does not have it yet."""
    try:
        conn = await asyncpg.connect(url)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return
    name = database_name(url)
    admin = await asyncpg.connect(with_database(url, "postgres"))
    try:
        quoted = '"' + name.replace('"', '""') + '"'
        await admin.execute(f"CREATE DATABASE {quoted}")
        log.info("created database %s", name)
    except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
        pass  # another replica (or the other process of the service) created it first
    finally:
        await admin.close()


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects; orjson is several times faster than json.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: orjson.dumps(v).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
        format="text",
    )


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    await ensure_database(url)
    pool = await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, init=_init_connection, command_timeout=30
    )
    assert pool is not None
    return pool


@dataclass(frozen=True)
class Migration:
    component: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(component: str, folder: Path) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file name must look like 001_name.sql: {path}")
        found.append(Migration(component, int(match.group(1)), path.stem, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration numbers in {folder}")
    return found


class MigrationError(RuntimeError):
    pass


async def migrate(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    """Apply what is missing, in order, each in its own transaction; returns what was applied."""
    applied_now: list[str] = []
    # Session-level lock: replicas starting together wait here, then find nothing to do.
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                component  text        NOT NULL,
                version    integer     NOT NULL,
                name       text        NOT NULL,
                checksum   text        NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (component, version)
            )
            """
        )
        rows = await conn.fetch("SELECT component, version, checksum FROM schema_migrations")
        done = {(r["component"], r["version"]): r["checksum"] for r in rows}
        for m in migrations:
            previous = done.get((m.component, m.version))
            if previous is not None:
                if previous != m.checksum:
                    raise MigrationError(f"migration {m.component}/{m.name} changed after it was applied")
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (component, version, name, checksum) "
                    "VALUES ($1, $2, $3, $4)",
                    m.component, m.version, m.name, m.checksum,
                )
            log.info("applied migration %s/%s", m.component, m.name)
            applied_now.append(f"{m.component}/{m.name}")
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_KEY)
    return applied_now


async def migrate_service(url: str, component: str, folder: Path) -> list[str]:
    """Create the database if needed, then apply shared and service migrations."""
    await ensure_database(url)
    migrations = load_migrations("shared", SHARED_MIGRATIONS) + load_migrations(component, folder)
    conn = await asyncpg.connect(url)
    try:
        return await migrate(conn, migrations)
    finally:
        await conn.close()


T = TypeVar("T")

# PostgreSQL aborts one of two transactions that wait on each other (or conflict under
# serializable isolation); the aborted one rolled back whole and is safe to run again.
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


# A deadlock victim retries at once with a little jitter: the winner has committed.
DEADLOCK_BACKOFF = Backoff(first_s=0.01, max_s=0.16, jitter=1.0)


async def retrying(transaction: Callable[[], Awaitable[T]], attempts: int = 5) -> T:
    """Run ``transaction`` (which opens and commits its own transaction), again on a deadlock."""
    return await retry(transaction, on=RETRYABLE_ERRORS, backoff=DEADLOCK_BACKOFF, attempts=attempts,
                       what="transaction")
