"""Background loops of a service process (heartbeat flushes, analytics folds, re-checks,
inbox pruning): started with the service's state, stopped before it closes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def every(
    interval_s: float, work: Callable[[], Awaitable[object]], what: str, *, at_once: bool = False
) -> None:
    """Run ``work`` every ``interval_s`` (first right away if ``at_once``) until cancelled. A
    failure is logged and left to the next tick: what the work had not done stays to be done."""
    first = True
    while True:
        if not (first and at_once):
            await asyncio.sleep(interval_s)
        first = False
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s failed, retrying next tick: %r", what, exc)


class Periodic:
    """``every`` as a task with a start and a stop."""

    def __init__(
        self, interval_s: float, work: Callable[[], Awaitable[object]], what: str, *, at_once: bool = False
    ) -> None:
        self.interval_s = interval_s
        self._work = work
        self.what = what
        self._at_once = at_once
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(
                every(self.interval_s, self._work, self.what, at_once=self._at_once), name=self.what
            )

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        """Cancels the loop; a tick in progress is cancelled with it."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
