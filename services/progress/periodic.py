"""The loop of the service's background tasks (heartbeat flushes, analytics folds)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def every(interval_s: float, work: Callable[[], Awaitable[object]], what: str) -> None:
    """Run ``work`` every ``interval_s`` until cancelled. A failure is logged and left to the
    next tick: what the work had not done stays to be done."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s failed, retrying next tick: %r", what, exc)
