"""One ``LISTEN`` connection per process that wakes loops when their table gets work.

A trigger (or the writing transaction) calls ``pg_notify(channel, '')``; PostgreSQL delivers
it to every listener at commit, so a woken loop always finds the row. Loops keep a long
safety poll besides (a notification is lost while this connection is down, or when a
statement forgets to notify), and the listener wakes every loop whenever it (re)connects:
whatever was queued while it was away is looked for at once.

The connection is checked every ``check_s`` (one ``SELECT 1``): a connection cut without a
word from the server (a dead network path) would otherwise deliver nothing and never fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from shared.periodic import cancel
from shared.retry import Backoff, Delays

log = logging.getLogger(__name__)

RECONNECT = Backoff(first_s=0.2, max_s=5.0)


class Listener:
    def __init__(self, database_url: str, *, check_s: float = 30.0, name: str = "lessonstream-listener") -> None:
        self._url = database_url
        self._name = name  # its application_name: operators (and tests) can find its backend
        self._check_s = check_s
        self._wakes: dict[str, list[Callable[[], None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self.connections = 0  # how many times it has connected (tests watch it come back)

    def on(self, channel: str, wake: Callable[[], None]) -> None:
        """Call ``wake`` for each notification on ``channel``, and on every (re)connect.
        Register before ``start``."""
        self._wakes.setdefault(channel, []).append(wake)

    def start(self) -> None:
        if self._task is None and self._wakes:
            self._task = asyncio.create_task(self._run(), name="listener")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel(task)

    def _wake_all(self) -> None:
        for wakes in self._wakes.values():
            for wake in wakes:
                wake()

    def _on_notify(self, _conn: Any, _pid: int, channel: str, _payload: object) -> None:
        for wake in self._wakes.get(channel, ()):
            wake()

    async def _run(self) -> None:
        delays = Delays(RECONNECT)
        while True:
            try:
                await self._listen(delays)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                pause = delays.next()
                log.warning("listener connection lost: %r; reconnecting in %.1fs", exc, pause)
                await asyncio.sleep(pause)

    async def _listen(self, delays: Delays) -> None:
        conn: asyncpg.Connection = await asyncpg.connect(
            self._url, timeout=10, server_settings={"application_name": self._name}
        )
        self._lost.clear()
        conn.add_termination_listener(lambda _: self._lost.set())
        try:
            for channel in self._wakes:
                await conn.add_listener(channel, self._on_notify)
            self.connections += 1
            delays.reset()
            # Listening from now on: what was queued while no one listened is looked for now.
            self._wake_all()
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._lost.wait(), self._check_s)
                if self._lost.is_set() or conn.is_closed():
                    raise ConnectionError("the listening connection closed")
                await conn.fetchval("SELECT 1", timeout=10)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
