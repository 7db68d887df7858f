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


async def every(
    interval_s: float,
    work: Callable[[], Awaitable[object]],
    what: str,
    *,
    at_once: bool = False,
    idle_interval_s: float | None = None,
    wake: asyncio.Event | None = None,
) -> None:
    """Run ``work`` every ``interval_s`` (first right away if ``at_once``) until cancelled. A
    failure is logged and left to the next tick: what the work had not done stays to be done.
    With ``idle_interval_s``, a round whose work returned nothing (0, None, False) waits
    twice as long as the last, up to it; ``wake`` set cuts a wait short."""
    wake = wake if wake is not None else asyncio.Event()
    wait = interval_s
    first = True
    while True:
        if not (first and at_once):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), wait)
            if wake.is_set():
                wait = interval_s
        first = False
        # Cleared before the work looks: a wake during the round runs another one.
        wake.clear()
        try:
            did = await work()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s failed, retrying next tick: %r", what, exc)
            wait = interval_s
            continue
        if idle_interval_s is None or did:
            wait = interval_s
        else:
            wait = min(max(wait, interval_s) * 2, max(idle_interval_s, interval_s))


class Periodic:
    """``every`` as a task with a start, a stop and a wake."""

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

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(
                every(self.interval_s, self._work, self.what, at_once=self._at_once,
                      idle_interval_s=self.idle_interval_s, wake=self._wake),
                name=self.what,
            )

    def wake(self) -> None:
        """Run the work now (there may be some), and at ``interval_s`` again after it."""
        self._wake.set()

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
