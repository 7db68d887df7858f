"""The delivery loop: workers claim due deliveries from the queue, hand each to the sender of
its destination kind, and record the outcome. Any kind of destination goes through it.

Order of one attempt, and why (as for mail, ``sender.py``):
1. claim (one transaction): the row becomes ``sending`` under a lease of
   ``DELIVERY_LEASE_S`` and the attempt is logged as ``sending``, before anything is sent;
2. send: the kind's ``send`` (for a webhook, one signed POST) returns an ``Outcome``;
3. record (one transaction): the attempt's outcome, the delivery's next status (delivered,
   retried after the schedule's next wait, failed, or held), and whatever the kind does
   about it (``recorded``: a webhook endpoint's failure streak, disabling it, mailing its owner).
``FOR UPDATE SKIP LOCKED`` and the lease keep one delivery with one worker of one process at
a time; a process that dies between 2 and 3 leaves a ``sending`` row whose lease runs out,
and another worker sends it again with the same message id (receivers dedupe on it).

Adding a destination kind is one module with a class that has ``kind`` (the value of
``deliveries.destination_kind``), ``send`` and ``recorded``, given to ``DeliveryLoop`` in
``app.py``; its rows are queued with that kind, the destination's id (0 for a kind with one
configured destination) and the message's idempotency key as ``message_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

import asyncpg
from prometheus_client import Counter, Histogram

from services.notifications import domain, store
from services.notifications.settings import NotificationsSettings
from shared.db import Connection
from shared.retry import Backoff
from shared.workers import WakeableWorkers

log = logging.getLogger(__name__)

DELIVERY_ATTEMPTS = Counter(
    "lessonstream_delivery_attempts_total", "Delivery attempts by destination kind and outcome", ["kind", "outcome"]
)
DELIVERY_SECONDS = Histogram(
    "lessonstream_delivery_seconds", "Time for one delivery attempt", ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

# A failed bookkeeping write (database down) is retried: about 8 s in all, as for mail.
RECORD_RETRY = Backoff(first_s=0.25, max_s=5.0)
RECORD_ATTEMPTS = 6
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class DestinationKind(Protocol):
    """The sender of one kind of destination."""

    kind: str

    async def send(self, pool: asyncpg.Pool, delivery: store.ClaimedDelivery) -> domain.Outcome:
        """One attempt. Never raises for the destination's faults: they are an ``Outcome``."""
        ...

    async def recorded(
        self, conn: Connection, delivery: store.ClaimedDelivery, outcome: domain.Outcome,
        decision: domain.DeliveryDecision,
    ) -> None:
        """In the transaction that records the attempt (and only if this worker still held
        the delivery): what the outcome means for the destination."""
        ...

    async def close(self) -> None: ...


class DeliveryLoop:
    def __init__(self, settings: NotificationsSettings, kinds: list[DestinationKind]) -> None:
        self._settings = settings
        self._kinds = {k.kind: k for k in kinds}
        self._pool: asyncpg.Pool | None = None
        self._workers = WakeableWorkers("delivery")
        # The one idle worker that watches the clock for due deliveries (a retry coming due,
        # a lease running out); the other idle workers wait to be woken (by the watcher, a
        # notification, or the safety poll), so one query per wake, not one per worker.
        self._watcher: asyncio.Event | None = None

    @property
    def kinds(self) -> list[str]:
        return list(self._kinds)

    async def start(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._workers.start(self._settings.delivery_workers, self._worker)

    async def stop(self) -> None:
        # Attempts in flight finish and are recorded: one cut short is sent again later.
        await self._workers.stop(self._settings.request_timeout_s + 5)
        self._watcher = None
        for kind in self._kinds.values():
            await kind.close()

    def wake(self) -> None:
        """Deliveries may be due (queued in this process, or a ``delivery_due`` notification
        from any process's commit): workers look now rather than at the next safety poll."""
        self._workers.wake()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("delivery loop is not started")
        return self._pool

    async def _worker(self, wake: asyncio.Event) -> None:
        poll = self._settings.delivery_poll_interval_s
        while not self._workers.stopping:
            wake.clear()
            try:
                delivery = await store.claim_delivery(self.pool, self._settings.delivery_lease_s, list(self._kinds))
            except DB_ERRORS as exc:
                log.warning("cannot claim a delivery: %r", exc)
                await self._idle(wake, poll)
                continue
            except Exception:
                # A worker that ended would leave the queue to the others, or to nobody.
                log.exception("delivery worker failed; going on after a pause")
                await self._idle(wake, poll)
                continue
            if delivery is None:
                if self._watcher is None or self._watcher is wake:
                    self._watcher = wake
                    await self._idle(wake, await self._until_next_due())
                else:
                    # Woken by the watcher when it finds work, or by a notification.
                    await self._idle(wake, poll)
                continue
            if self._watcher is wake:
                # Busy now: the others look for more work, and one of them watches the clock.
                self._watcher = None
                self._workers.wake(but=wake)
            await self._deliver(delivery)

    async def _until_next_due(self) -> float:
        poll = self._settings.delivery_poll_interval_s
        try:
            due = await store.deliveries_due_in(self.pool, list(self._kinds))
        except DB_ERRORS:
            return poll
        return poll if due is None else min(max(due, 0.01), poll)

    async def _idle(self, wake: asyncio.Event, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout)

    async def _deliver(self, delivery: store.ClaimedDelivery) -> None:
        kind = self._kinds[delivery.kind]
        started = time.perf_counter()
        try:
            outcome = await kind.send(self.pool, delivery)
        except Exception as exc:
            log.exception("%s delivery %d: the sender failed", delivery.kind, delivery.id)
            outcome = domain.Outcome(delivered=False, error=f"the sender failed: {exc!r}")
        DELIVERY_SECONDS.labels(delivery.kind).observe(time.perf_counter() - started)
        decision = domain.after_attempt(outcome, delivery.tries, self._settings.delivery_retry_schedule_s)
        DELIVERY_ATTEMPTS.labels(delivery.kind, decision.status.value).inc()
        log.info(
            "%s delivery %d (%s) attempt %d: %s%s -> %s", delivery.kind, delivery.id, delivery.message_id,
            delivery.attempt, outcome.status_code or "-", f" ({outcome.error})" if outcome.error else "",
            decision.status.value,
        )
        await self._record(kind, delivery, outcome, decision)

    async def _record(
        self, kind: DestinationKind, delivery: store.ClaimedDelivery, outcome: domain.Outcome,
        decision: domain.DeliveryDecision,
    ) -> None:
        """Write the outcome, retrying through a short database outage: until it is written
        the lease is all that stops another worker from sending the delivery again."""
        for tried in range(1, RECORD_ATTEMPTS + 1):
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    if await store.record_delivery(conn, delivery, outcome, decision):
                        await kind.recorded(conn, delivery, outcome, decision)
                    else:
                        log.warning("delivery %d: lease lost before attempt %d was recorded",
                                    delivery.id, delivery.attempt)
                return
            except DB_ERRORS as exc:
                if tried == RECORD_ATTEMPTS or self._workers.stopping:
                    log.error("delivery %d: could not record attempt %d: %r", delivery.id, delivery.attempt, exc)
                    return
                await asyncio.sleep(RECORD_RETRY.delay(tried))
