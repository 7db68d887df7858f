"""A few asyncio workers of one process that sleep until there may be work: the mail
sender's and the delivery loop's.

Each worker waits on its own wake-up event rather than one shared event: a wake (work was
queued in this process, or the process stops) must reach every idle worker, and a worker
clears only its own event before it looks for work, so it never misses a wake that came
while it was busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


class WakeableWorkers:
    def __init__(self, name: str) -> None:
        self._name = name
        self.wakes: list[asyncio.Event] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.stopping = False

    def start(self, count: int, work: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
        """``count`` tasks of ``work(wake)``; each looks for work at once."""
        self.stopping = False
        for n in range(count):
            wake = asyncio.Event()
            wake.set()
            self.wakes.append(wake)
            self._tasks.append(asyncio.create_task(work(wake), name=f"{self._name}-{n}"))

    def wake(self, but: asyncio.Event | None = None) -> None:
        """Every worker (but the one whose event is ``but``) looks for work now."""
        for wake in self.wakes:
            if wake is not but:
                wake.set()

    async def stop(self, grace_s: float) -> None:
        """Ask every worker to end. Attempts in flight get ``grace_s`` to finish and be
        recorded; one cut short keeps its lease and is made again later."""
        self.stopping = True
        self.wake()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await task
                except Exception:
                    log.exception("%s worker ended with an error", self._name)
        self._tasks.clear()
        self.wakes.clear()
