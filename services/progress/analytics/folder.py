"""The background task that folds pending analytics deltas into the cohort histograms.

Reports are exact whether or not it has run (they add the pending deltas themselves); it
keeps them fast by keeping the pending set small, and keeps the cost of the histograms'
upserts off the progress writes. One replica folds at a time (an advisory lock); the
others find the lock taken and wait for their next tick.
"""

from __future__ import annotations

import asyncpg
from prometheus_client import Counter

from services.progress.analytics import store
from shared.periodic import Periodic

FOLDED = Counter("lessonstream_analytics_deltas_folded_total", "Analytics deltas folded into the histograms")


class AnalyticsFolder:
    def __init__(
        self, pool: asyncpg.Pool, interval_s: float, batch: int = 20_000, *, idle_interval_s: float | None = None
    ) -> None:
        self._pool = pool
        self.interval_s = interval_s
        self.batch = batch
        # A failed fold leaves its deltas pending; reports stay exact. While there is nothing
        # to fold it looks ever less often, up to idle_interval_s: reports do not wait for it.
        self._loop = Periodic(interval_s, self.fold, "analytics fold", idle_interval_s=idle_interval_s)

    async def fold(self) -> int:
        """Fold everything pending now, a batch per transaction; how many deltas it folded."""
        total = 0
        async with self._pool.acquire() as conn:
            while True:
                folded = await store.fold(conn, self.batch)
                if folded is None:  # another replica is folding
                    return total
                total += folded
                FOLDED.inc(folded)
                if folded < self.batch:
                    return total

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
