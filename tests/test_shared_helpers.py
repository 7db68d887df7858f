"""The helpers every service shares: the backoff schedule, retrying, background loops, and
domain errors answered in the error shape through a service's own map."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI

from shared.domain import DomainError
from shared.errors import HttpError, install_error_handlers
from shared.internal import PeerUnavailable
from shared.periodic import Periodic
from shared.retry import Backoff, Delays, retry
from tests.helpers import eventually


def test_the_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(first_s=0.5, max_s=4.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


@pytest.mark.parametrize("draw", [0.0, 0.25, 0.5, 0.999999])
def test_jitter_spreads_delays_below_the_cap_never_above(draw: float) -> None:
    backoff = Backoff(first_s=1.0, max_s=10.0, jitter=0.4)
    for attempt in range(1, 12):
        plain = min(2.0 ** (attempt - 1), 10.0)
        delay = backoff.delay(attempt, draw)
        assert plain * 0.6 - 1e-9 <= delay <= plain <= 10.0


def test_delays_walk_the_schedule_and_start_over_after_a_success() -> None:
    delays = Delays(Backoff(first_s=0.1, max_s=1.0))
    assert [delays.next() for _ in range(3)] == [0.1, 0.2, 0.4]
    delays.reset()
    assert delays.next() == 0.1


async def test_retry_tries_again_on_the_named_errors_only_and_gives_up_after_its_attempts() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("not yet")
        return "done"

    fast = Backoff(first_s=0.001, max_s=0.001)
    assert await retry(flaky, on=(ConnectionError,), backoff=fast, what="flaky") == "done"
    assert len(calls) == 3

    async def broken() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError):  # not in ``on``: raised at once
        await retry(broken, on=(ConnectionError,), backoff=fast, what="broken")

    calls.clear()
    cleaned: list[int] = []

    async def away() -> None:
        calls.append(1)
        raise ConnectionError("away")

    async def clean() -> None:
        cleaned.append(1)

    with pytest.raises(ConnectionError):
        await retry(away, on=(ConnectionError,), backoff=fast, attempts=4, what="away", after_failure=clean)
    assert len(calls) == 4 and len(cleaned) == 3  # no clean-up after the last, raised, failure


async def test_a_periodic_loop_survives_a_failing_tick_and_stops_when_asked() -> None:
    ticks: list[int] = []

    async def work() -> None:
        ticks.append(1)
        if len(ticks) == 2:
            raise RuntimeError("one bad tick")

    loop = Periodic(0.01, work, "test loop", at_once=True)
    loop.start()
    async def ticked_past_the_failure() -> bool:
        return len(ticks) >= 4

    await eventually(ticked_past_the_failure, timeout=5, what="ticks after a failure")
    assert loop.running
    await loop.stop()  # returns once the loop's task has ended: nothing ticks after it
    assert not loop.running
    await loop.stop()  # stopping twice is harmless


async def test_an_idle_periodic_loop_looks_ever_less_often_and_a_wake_runs_it_at_once() -> None:
    """Rounds that find nothing double the wait up to the idle interval; a round with work,
    or a wake, brings it back to the short interval."""
    at: list[float] = []
    work_left = 0

    async def work() -> int:
        nonlocal work_left
        at.append(asyncio.get_running_loop().time())
        done, work_left = work_left, 0
        return done

    loop = Periodic(0.02, work, "idle loop", at_once=True, idle_interval_s=0.32)
    loop.start()
    try:
        async def idle_for_a_while() -> bool:
            return len(at) >= 6

        await eventually(idle_for_a_while, timeout=10, what="idle rounds")
        waits = [b - a for a, b in itertools.pairwise(at)]
        # 0.04, 0.08, 0.16, 0.32, 0.32: growing, capped (a loaded machine only adds to them).
        assert waits[0] < waits[2] < waits[3]
        assert waits[3] >= 0.3 and waits[4] >= 0.3
        assert waits[4] < 0.6  # not doubled past the cap
        # A wake runs it at once, and rounds that find work stay at the short interval.
        woken_at = asyncio.get_running_loop().time()
        seen = len(at)
        work_left = 1
        loop.wake()

        async def ran_after_the_wake() -> bool:
            return len(at) > seen

        await eventually(ran_after_the_wake, timeout=5, what="the round the wake asked for")
        assert at[seen] - woken_at < 0.25
    finally:
        await loop.stop()


class NotEnrolled(DomainError):
    pass


class Unmapped(DomainError):
    pass


def _app() -> FastAPI:
    router = APIRouter()

    @router.get("/refused")
    async def refused() -> None:
        raise NotEnrolled("You must be enrolled in this course", course_id=3)

    @router.get("/peer")
    async def peer() -> None:
        raise PeerUnavailable("progress", "connection refused")

    @router.get("/unmapped")
    async def unmapped() -> None:
        raise Unmapped("nobody mapped me")

    app = FastAPI()
    install_error_handlers(app, {
        NotEnrolled: HttpError(403, "not_enrolled"),
        PeerUnavailable: HttpError(503, "progress_unavailable", "Course progress cannot be checked right now"),
    })
    app.include_router(router)
    return app


async def test_domain_errors_are_answered_through_the_services_map() -> None:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        refused = await client.get("/refused")
        assert refused.status_code == 403
        assert refused.json() == {
            "code": "not_enrolled", "message": "You must be enrolled in this course",
            "data": {"status": 403, "course_id": 3},
        }
        peer = await client.get("/peer")
        assert peer.status_code == 503 and peer.headers["retry-after"] == "1"
        body: dict[str, Any] = peer.json()
        assert body == {
            "code": "progress_unavailable", "message": "Course progress cannot be checked right now",
            "data": {"status": 503},
        }
        # A refusal no service mapped is a bug: a 500 in the error shape, nothing leaked.
        unmapped = await client.get("/unmapped")
        assert unmapped.status_code == 500 and unmapped.json()["code"] == "internal_error"


async def test_wake_if_idle_wakes_only_a_loop_that_has_backed_off() -> None:
    rounds: list[float] = []

    async def nothing() -> int:
        rounds.append(asyncio.get_running_loop().time())
        return 0

    idle = Periodic(0.05, nothing, "idle loop", at_once=True, idle_interval_s=30)
    idle.start()
    try:
        async def backed_off() -> bool:
            return idle.wait_s >= 1

        await eventually(backed_off, timeout=10, what="the loop backing off")
        seen = len(rounds)
        woken_at = asyncio.get_running_loop().time()
        idle.wake_if_idle()

        async def ran() -> bool:
            return len(rounds) > seen

        await eventually(ran, timeout=5, what="the woken round")
        assert rounds[seen] - woken_at < 0.5  # not at the end of its wait
    finally:
        await idle.stop()

    busy_rounds = 0

    async def something() -> int:
        nonlocal busy_rounds
        busy_rounds += 1
        return 1

    busy = Periodic(5.0, something, "busy loop", at_once=True, idle_interval_s=30)
    busy.start()
    try:
        async def first_round() -> bool:
            return busy_rounds == 1

        await eventually(first_round, timeout=5, what="the first round")
        busy.wake_if_idle()  # at its interval: left to its next round
        await asyncio.sleep(0.3)
        assert busy_rounds == 1
    finally:
        await busy.stop()
