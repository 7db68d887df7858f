"""Background loops of a service process (heartbeat flushes, analytics folds, re-checks,
inbox pruning): started with the service's state, stopped before it closes.

A loop whose work says how much it did (a count) may be given ``idle_interval_s``: each
round that finds nothing doubles the wait, up to that, and any round that does something
(or fails) brings it back to ``interval_s``. ``wake()`` (a notification, work queued in this
process) runs it at once and resets the wait. An idle process thus costs a query a minute
per loop, not one a second, and work queued while it sleeps is taken at once when someone
wakes it, or within ``idle_interval_s`` when no one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs ``work`` every ``interval_s`` (first right away if ``at_once``) until stopped. A
    failure is logged and left to the next tick: what the work had not done stays to be done.
    With ``idle_interval_s``, a round whose work returned nothing (0, None, False) waits twice
    as long as the last, up to it; ``wake()`` cuts a wait short."""

    def __init__(
        self,
        interval_s: float,
        work: Callable[[], Awaitable[object]],
        what: str,
        *,
        at_once: bool = False,
        idle_interval_s: float | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.idle_interval_s = idle_interval_s
        self._work = work
        self.what = what
        self._at_once = at_once
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.wait_s = interval_s  # the wait before the next round (grows while idle)

    def start(self) -> None:
        if self._task is None:
            self.wait_s = self.interval_s
            self._task = asyncio.create_task(self._run(), name=self.what)

    async def _run(self) -> None:
        first = True
        while True:
            if not (first and self._at_once):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.wait_s)
                if self._wake.is_set():
                    self.wait_s = self.interval_s
            first = False
            # Cleared before the work looks: a wake during the round runs another one.
            self._wake.clear()
            try:
                did = await self._work()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s failed, retrying next tick: %r", self.what, exc)
                self.wait_s = self.interval_s
                continue
            if self.idle_interval_s is None or did:
                self.wait_s = self.interval_s
            else:
                self.wait_s = min(max(self.wait_s, self.interval_s) * 2, max(self.idle_interval_s, self.interval_s))

    def wake(self) -> None:
        """Run the work now (there may be some), and at ``interval_s`` again after it."""
        self._wake.set()

    def wake_if_idle(self) -> None:
        """``wake`` a loop that has backed off (its next round later than ``interval_s``);
        one at its interval runs soon enough, and keeps gathering work between rounds."""
        if self.wait_s > self.interval_s:
            self._wake.set()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        """Cancels the loop; a tick in progress is cancelled with it."""
        task, self._task = self._task, None
        await cancel(task)


async def cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel a background loop and wait until it has ended."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
