"""Idle loops sleep long and are woken by notifications: a deferred completion written by
any process (here, a row committed on a connection of its own) is re-checked at once, not
at the loop's next idle poll (``IDLE_POLL_S`` is set far beyond the test)."""

from __future__ import annotations

import time
from typing import Any

import asyncpg

from services.progress.usecases import ProgressState
from tests.helpers import TestEnv, app_client, eventually, served
from tests.progress.conftest import EnrollmentStandIn, start_stack

IDLE_FOR_S = 8.0  # the re-check loop waits at least this long before its next look
PROMPTLY_S = 3.0


async def test_a_deferred_completion_written_elsewhere_wakes_the_idle_recheck(test_env: TestEnv) -> None:
    stand_in = EnrollmentStandIn()
    async with served(stand_in.app()) as url:
        settings, app = await start_stack(test_env, stand_in, url, idle_poll_s=600.0,
                                          completion_recheck_interval_s=1.0)
        async with app_client(app):
            runtime: Any = app.state.runtime
            state = runtime.state
            assert isinstance(state, ProgressState)

            async def backed_off() -> bool:
                return state.rechecks.wait_s >= IDLE_FOR_S

            await eventually(backed_off, timeout=30, what="the idle re-check backing off")
            conn = await asyncpg.connect(settings.database_url)
            try:
                await conn.execute(
                    "INSERT INTO pending_confirmations (user_id, course_id) VALUES ('woken', 4242)"
                )
            finally:
                await conn.close()
            written = time.monotonic()

            async def claimed() -> bool:
                attempts = await runtime.pool.fetchval(
                    "SELECT attempts FROM pending_confirmations WHERE user_id = 'woken'"
                )
                # Claimed (attempts counted) or already settled and deleted.
                return attempts is None or attempts > 0

            await eventually(claimed, timeout=PROMPTLY_S + 2, what="the re-check of the new row")
            assert time.monotonic() - written < PROMPTLY_S
