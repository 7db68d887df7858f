"""Retrying with exponential backoff: one rule for every loop that tries again.

``Backoff`` is the schedule (first delay, doubling, a cap, optional jitter), usable on its
own where the delay is stored rather than slept (a mail's next attempt). ``Delays`` walks
it for a loop that resets after a success (the outbox relay, the supervisor). ``retry``
runs an awaitable until it succeeds, sleeping the schedule between failures.

Written here rather than taken from tenacity or stamina: the delays are also persisted
(notifications, completion re-checks) and walked by loops that are not one call to retry
(the relay and the supervisor reset on success), and a library's retry loop covers
neither; what remains is thirty lines.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    first_s: float
    max_s: float
    factor: float = 2.0
    # Spreads retries of a burst that failed together: a delay is drawn from
    # [d * (1 - jitter), d], so it never exceeds the cap.
    jitter: float = 0.0

    def delay(self, attempt: int, draw: float | None = None) -> float:
        """The pause after the ``attempt``-th failure (1-based); ``draw`` in [0, 1) replaces
        the random draw (tests, and callers that store their draw)."""
        base = min(self.first_s * self.factor ** max(attempt - 1, 0), self.max_s)
        if not self.jitter:
            return base
        u = random.random() if draw is None else draw
        return base * (1.0 - self.jitter * u)


class Delays:
    """A loop's walk along a ``Backoff``: ``next()`` after a failure, ``reset()`` after a success."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        return self.backoff.delay(self.failures)

    def reset(self) -> None:
        self.failures = 0


async def retry(
    attempt: Callable[[], Awaitable[T]],
    *,
    on: tuple[type[BaseException], ...],
    backoff: Backoff,
    attempts: int | None = None,
    what: str,
    after_failure: Callable[[], Awaitable[None]] | None = None,
) -> T:
    """Await ``attempt()`` until it returns, retrying on the exceptions ``on`` with the
    ``backoff`` schedule; after ``attempts`` tries (None: forever) the last error is raised.
    ``after_failure`` cleans up before the pause (it must not raise)."""
    failures = 0
    while True:
        try:
            return await attempt()
        except on as exc:
            failures += 1
            if attempts is not None and failures >= attempts:
                raise
            pause = backoff.delay(failures)
            log.info("%s failed (attempt %d): %r; retrying in %.2fs", what, failures, exc, pause)
            if after_failure is not None:
                await after_failure()
            await asyncio.sleep(pause)
