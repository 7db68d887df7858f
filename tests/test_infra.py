"""The pieces the local runtime and the tests start from wheels."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import asyncpg
import pytest

from lessonstream import infra
from shared.db import ensure_database, with_database


def test_embedded_postgres_starts_and_serves_databases(tmp_path: Path) -> None:
    server = infra.start_embedded_postgres(tmp_path / "pgdata", keep=False)
    try:
        url = with_database(server.url, "lessonstream_example")

        async def use() -> int:
            await ensure_database(url)
            conn = await asyncpg.connect(url)
            try:
                value: int = await conn.fetchval("SELECT 40 + 2")
                return value
            finally:
                await conn.close()

        assert asyncio.run(use()) == 42
    finally:
        server.stop()


def test_the_broker_refuses_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="already in use"):
            infra.start_tansu(port)


def test_the_broker_starts_answers_and_stops() -> None:
    port = infra.free_port()
    proc = infra.start_tansu(port)
    try:
        assert proc.alive and infra.port_open("127.0.0.1", port)
    finally:
        proc.stop()
    assert not proc.alive
    assert not infra.port_open("127.0.0.1", port)
