"""Helpers for tests: per-test names, settings, and waiting for a condition with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from lessonstream import infra
from shared.db import with_database
from shared.settings import ServiceSettings

S = TypeVar("S", bound=ServiceSettings)
T = TypeVar("T")


@dataclass
class TestEnv:
    __test__ = False  # not a test class

    postgres_url: str
    kafka_bootstrap: str
    prefix: str
    topic_prefix: str
    tansu: infra.Process | None

    def database_url(self, name: str) -> str:
        return with_database(self.postgres_url, f"{self.prefix}{name}")

    def settings(self, cls: type[S] = ServiceSettings, *, database: str = "svc", **overrides: Any) -> S:  # type: ignore[assignment]
        values: dict[str, Any] = {
            "env": "test",
            "database_url": self.database_url(database),
            "kafka_bootstrap_servers": self.kafka_bootstrap,
            "topic_prefix": self.topic_prefix,
            "kafka_session_timeout_ms": 2000,
            "kafka_heartbeat_interval_ms": 300,
            # Each test's topics are new: on Tansu a partition's first record waits out the
            # consumer's fetch (docs/operations.md, "Idle cost"), so in-process tests wait less.
            "kafka_fetch_max_wait_ms": 1000,
            "consumer_retry_base_s": 0.05,
            "db_pool_min": 1,
            "db_pool_max": 5,
        }
        values.update(overrides)
        return cls(**values)


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = 30.0,
    interval: float = 0.1,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with the last value at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        last = await probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last value: {last!r}")
        await asyncio.sleep(interval)


async def produce_raw(bootstrap: str, topic: str, value: bytes, key: bytes | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value=value, key=key)
    finally:
        await producer.stop()


class TopicReader:
    """Reads every message of a topic from the beginning (its own consumer group)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.messages: list[Any] = []
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=f"reader-{topic}-{time.monotonic_ns()}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=2000,
            heartbeat_interval_ms=300,
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TopicReader:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        async for msg in self._consumer:
            self.messages.append(msg)

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._consumer.stop()


@contextlib.asynccontextmanager
async def app_client(app: Any, token: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on ``app`` in-process, with its lifespan (migrations, relay, subscribers) running."""
    async with app.router.lifespan_context(app):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers) as client:
            yield client


@contextlib.asynccontextmanager
async def served(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free port in this process (lifespan included); yields its base URL."""
    port = infra.free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server stopped while starting")
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
