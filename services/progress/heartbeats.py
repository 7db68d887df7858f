"""Heartbeat coalescing: the write path of ``POST /api/progress`` for playback positions.

Each learner-lesson this process has seen lately lives in memory as an ``Entry``: the
record as last known plus what heartbeats have changed since the last flush. A heartbeat
merges into its entry (no database work once the entry exists) and is answered from it.
Every ``flush_interval_s`` the changed entries go to PostgreSQL as one multi-row upsert,
which merges them with what other replicas wrote (newest position, union of credited
wall-clock intervals: see domain.credit) and returns the records, which refresh the entries.

Completions never wait for a flush: they are written at once, in their own transaction,
together with the entry's pending playback (see usecases).

What a crash can lose: positions and time spent of heartbeats accepted in the last
flush interval (plus the duration of a flush that was running), never a completion,
never a row. A failed flush keeps its changes in memory and retries on the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import asyncpg

from services.progress import domain, store
from shared import db
from shared.periodic import Periodic

Key = tuple[str, int]  # (user_id, lesson_id): the upsert key of the progress API


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _dt(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


@dataclass(slots=True)
class Entry(store.LessonRecord):
    """A learner-lesson in this process: the record as last read or written (``stored_*``,
    the credited intervals with it), the newest position known here, and the wall-clock
    intervals credited by heartbeats here that no flush has confirmed yet (``pending``)."""

    created_at: datetime
    updated_at: datetime
    playback: domain.Playback
    stored_time: float
    stored_credited: domain.Intervals
    stored_until: float | None
    pending: domain.Intervals = ()
    version: int = 0  # accepted heartbeats so far: a flush confirms the position of the version it wrote
    dirty: bool = False
    unlocked: bool = False  # sequential courses: passed the lock check while cached
    touched: float = 0.0  # monotonic time of last use, for eviction
    stored_watched: domain.Intervals = ()  # watched media ranges as last read or written
    watched_pending: domain.Intervals = ()  # watched here since the last flush (like ``pending``)
    attempt: int = 1  # the learner's attempt at the course this record belongs to
    # The first heartbeat accepted since the last flush (server time, and the position it
    # reported): where this batch of playback begins, for the viewing session.
    batch_seen: float | None = None
    batch_position: float = 0.0

    @classmethod
    def of(cls, row: store.ProgressRow) -> Entry:
        seen = _ts(row.position_seen_at)
        if seen is None:
            # Never played (or written before migration 006): time spent counts from the last
            # write, on this clock at the latest, so that a database clock ahead of ours does
            # not make the first heartbeat look older than the position.
            seen = min(row.updated_at.timestamp(), time.time())
        return cls(
            row.id, row.user_id, row.course_id, row.lesson_id, row.completed, row.completed_at,
            row.created_at, row.updated_at,
            domain.Playback(row.video_progress, row.last_position, _ts(row.position_at), seen),
            row.time_spent_seconds, row.credited, row.credited_until,
            touched=time.monotonic(), stored_watched=row.watched, attempt=row.attempt,
        )

    def _begin(self, row: store.ProgressRow) -> None:
        """The record of a later attempt replaces this one whole: what was buffered here
        belonged to the attempt that ended."""
        fresh = Entry.of(row)
        for name in Entry.__dataclass_fields__:
            setattr(self, name, getattr(fresh, name))

    def refresh(self, row: store.ProgressRow) -> None:
        """Take what the database holds, where it is not older than what this entry knows:
        the stored time spent and intervals (they never shrink), and the position if it is
        newer by the ordering rule. Pending intervals stay: they are not in ``row`` yet, or,
        if they are, the union counts them once. A row of a later attempt replaces it all."""
        if row.attempt != self.attempt:
            if row.attempt > self.attempt:
                self._begin(row)
            return
        if row.time_spent_seconds >= self.stored_time:
            self.stored_time = row.time_spent_seconds
            self.stored_credited = row.credited
            self.stored_until = row.credited_until
        p = self.playback
        seen = _ts(row.position_seen_at)
        if seen is not None and (seen, _ts(row.position_at)) != (p.seen_at, p.position_at) and \
                domain.position_newer(_ts(row.position_at), seen, p.position_at, p.seen_at):
            p.video_progress = row.video_progress
            p.last_position = row.last_position
            p.position_at = _ts(row.position_at)
            p.seen_at = seen
        # The union never loses a range another replica stored (nor one of ours).
        self.stored_watched = domain.watched_union(self.stored_watched, row.watched)
        self.updated_at = max(self.updated_at, row.updated_at)

    def adopt(self, row: store.ProgressRow) -> None:
        """Take completion state (and anything newer) from a row just written."""
        self.completed = row.completed
        self.completed_at = row.completed_at
        self.refresh(row)

    def flush_row(self) -> store.FlushRow:
        p = self.playback
        assert p.seen_at is not None
        return store.FlushRow(
            self.user_id, self.course_id, self.lesson_id, p.video_progress, p.last_position, _dt(p.position_at),
            datetime.fromtimestamp(p.seen_at, UTC), self.pending, self.updated_at, self.watched_pending,
            self.attempt,
        )

    def session_row(self, written: store.FlushRow) -> store.SessionRow | None:
        """This batch's playback for the viewing session (None: no heartbeat was accepted)."""
        if self.batch_seen is None:
            return None
        return store.SessionRow(
            self.user_id, self.course_id, self.lesson_id, self.attempt, datetime.fromtimestamp(self.batch_seen, UTC),
            self.batch_position, written.position_seen_at, written.last_position, written.watched,
        )

    def confirmed(self, written: store.FlushRow, version: int) -> None:
        """``written`` is in the database: its intervals leave ``pending`` (what heartbeats
        added meanwhile stays), and the entry is clean unless a heartbeat came since."""
        self.pending = domain.difference(self.pending, written.credited)
        self.watched_pending = domain.difference(self.watched_pending, written.watched)
        self.dirty = self.version != version or bool(self.pending) or bool(self.watched_pending)
        if self.version == version:
            self.batch_seen = None

    def time_spent(self) -> float:
        """The stored time plus what the pending intervals will add to it."""
        if not self.pending:
            return self.stored_time
        return self.stored_time + domain.uncovered(self.stored_credited, self.stored_until, self.pending)

    def watched(self) -> domain.Intervals:
        """The stored watched ranges with the pending ones."""
        if not self.watched_pending:
            return self.stored_watched
        return domain.watched_union(self.stored_watched, self.watched_pending)

    def watched_seconds(self) -> float:
        return domain.length(self.watched())

    def as_json(self, duration: float | None = None) -> dict[str, Any]:
        p = self.playback
        return domain.progress_record(
            self.id, self.user_id, self.course_id, self.lesson_id, self.completed, self.completed_at,
            p.video_progress, p.last_position, self.time_spent(), self.created_at, self.updated_at,
            self.watched_seconds(), duration,
        )


class HeartbeatBuffer:
    def __init__(
        self, pool: asyncpg.Pool, flush_interval_s: float, idle_evict_s: float = 300.0, session_idle_s: float = 120.0,
        mark_interval_s: float = 0.0,
    ) -> None:
        self._pool = pool
        self.flush_interval_s = flush_interval_s
        # With nothing buffered, the flushed-through mark is written at most this often (the
        # session closer looks no more often than that); a stale mark only delays closing.
        self.mark_interval_s = mark_interval_s
        self._marked_at = float("-inf")  # monotonic time of the last mark written
        self.session_idle_s = session_idle_s
        self._idle_evict_s = idle_evict_s
        self.entries: dict[Key, Entry] = {}
        # Each flush records, under this id, the moment its process has flushed through: the
        # session closer never ends a session a heartbeat still waiting here would extend.
        self.process_id = uuid4()
        # A failed flush keeps its changes for the next tick. With nothing buffered the loop
        # backs off to the mark interval (it still writes the mark that often); the first
        # heartbeat after that wakes it (``heartbeat``).
        self.flushing = Periodic(flush_interval_s, self._tick, "heartbeat flush",
                                 idle_interval_s=max(mark_interval_s, flush_interval_s))
        self._flush_lock = asyncio.Lock()
        self.flushed_rows = 0
        self.flushes = 0
        # Records a flush returned not completed and with watched ranges: their coverage may
        # have reached a threshold (here or through another replica's flush); the tracker
        # takes them (usecases.Tracker.complete_watched).
        self.watch_candidates: dict[Key, store.ProgressRow] = {}
        # Called when a flush adds candidates (the tracker's loop waits for them).
        self.on_watch_candidates: Callable[[], None] = lambda: None

    # ------------------------------------------------------------ request side
    async def entry(self, user_id: str, course_id: int, lesson_id: int) -> Entry:
        key = (user_id, lesson_id)
        found = self.entries.get(key)
        if found is None:
            row = await store.ensure_progress(self._pool, user_id, course_id, lesson_id)
            # Another request for the same key may have loaded it while we awaited.
            found = self.entries.setdefault(key, Entry.of(row))
        return found

    def peek(self, user_id: str, lesson_id: int) -> Entry | None:
        return self.entries.get((user_id, lesson_id))

    def drop(self, user_id: str, lesson_id: int) -> None:
        """Forget an entry of an attempt that ended (its playback is not written anywhere)."""
        self.entries.pop((user_id, lesson_id), None)

    async def heartbeat(
        self,
        user_id: str,
        course_id: int,
        lesson_id: int,
        video_progress: float | None,
        last_position: float | None,
        client_at: float | None,
        played: domain.Intervals | None = None,
        duration: float | None = None,
    ) -> Entry:
        """``played``: the media ranges the player reports as played (they are the coverage
        this heartbeat adds); without them coverage is inferred from the positions.
        ``duration``: the lesson's, which bounds the ranges when known."""
        entry = await self.entry(user_id, course_id, lesson_id)
        now = datetime.now(UTC)
        at = now.timestamp()
        step = domain.play(entry.playback, video_progress, last_position, client_at, at)
        if step is not None:  # accepted
            if step.added > 0:
                entry.pending = domain.add_pending(entry.pending, domain.credited_interval(step.added, at))
            entry.version += 1
            entry.updated_at = now
            entry.dirty = True
            if entry.batch_seen is None:
                entry.batch_seen = at
                entry.batch_position = last_position if last_position is not None else entry.playback.last_position
        # A late heartbeat's played ranges were still played: the union takes them in any order.
        watched = played if played is not None else ((step.watched,) if step and step.watched else ())
        watched = domain.clip_media(watched, duration)
        if watched:
            entry.watched_pending = domain.watched_union(entry.watched_pending, watched)
            entry.dirty = True
        entry.touched = time.monotonic()
        if entry.dirty:
            # A backed-off flush loop flushes at once, then every flush interval again.
            self.flushing.wake_if_idle()
        return entry

    def take_pending(self, user_id: str, lesson_id: int) -> store.FlushRow | None:
        """An entry's unflushed playback, for a writer that stores it right away. It stays
        pending here as well: writing it twice changes nothing (the position by its ordering
        keys, the intervals by the union), and a writer that fails loses none of it."""
        entry = self.entries.get((user_id, lesson_id))
        if entry is None or not entry.dirty:
            return None
        return entry.flush_row()

    def give_back(self, row: store.FlushRow | None) -> None:
        """The writer failed: nothing to do, the playback it took is still pending here."""

    def relock(self, user_id: str, course_id: int) -> None:
        """A lesson of the course was reopened: sequential checks must run again."""
        for entry in self.entries.values():
            if entry.user_id == user_id and entry.course_id == course_id:
                entry.unlocked = False

    # ------------------------------------------------------------ flushing
    async def start(self) -> None:
        """Registered before the first heartbeat is accepted: from then on no session this
        process could extend is ended before its flush."""
        await store.mark_flushed(self._pool, self.process_id, datetime.now(UTC))
        self.flushing.start()

    async def stop(self) -> None:
        await self.flushing.stop()
        # Graceful shutdown loses nothing: one last flush, after which this process holds
        # no session open.
        with contextlib.suppress(Exception):
            await self.flush()
            await store.forget_flusher(self._pool, self.process_id)

    async def _tick(self) -> int:
        flushed = await self.flush()
        self._evict_idle()
        return flushed

    async def flush(self) -> int:
        async with self._flush_lock:
            # Taken with no await before the rows are: a heartbeat takes its arrival time and
            # changes its entry without an await between, so every one that arrived before
            # this moment is in the rows.
            through = datetime.now(UTC)
            dirty = [e for e in self.entries.values() if e.dirty]
            if not dirty:
                # Nothing waits here, so the mark could say "now"; written only now and then:
                # an idle process would otherwise write it twice a second. Leaving it older
                # can only make the closer wait longer, never end a session early.
                if time.monotonic() - self._marked_at >= self.mark_interval_s:
                    marked_at = time.monotonic()
                    await store.mark_flushed(self._pool, self.process_id, through)
                    self._marked_at = marked_at
                return 0
            # Same lock order in every flusher: by key.
            dirty.sort(key=lambda e: (e.user_id, e.lesson_id))
            rows = [e.flush_row() for e in dirty]
            versions = [e.version for e in dirty]
            # Until it commits the entries keep their pending intervals (reads and answers count
            # them, and a failed flush loses nothing); heartbeats meanwhile add to them.
            # The statement's analytics trigger locks learner rows, which completions lock
            # too: should PostgreSQL abort it as a deadlock, it rolled back whole.
            stored = await db.retrying(lambda: self._write(dirty, rows, through))
            self._marked_at = time.monotonic()
            for entry, row, version in zip(dirty, rows, versions, strict=True):
                entry.confirmed(row, version)
            # The records as they are now, merged with what other replicas wrote: entries
            # answer from them until the next read or flush.
            written = set()
            for record in stored:
                written.add((record.user_id, record.lesson_id))
                found = self.entries.get((record.user_id, record.lesson_id))
                if found is not None:
                    found.refresh(record)
                if not record.completed and record.watched:
                    self.watch_candidates[(record.user_id, record.lesson_id)] = record
            if self.watch_candidates:
                self.on_watch_candidates()
            # A row the statement did not write belongs to an attempt that ended (FLUSH_SQL):
            # its entry goes, and the next heartbeat starts from the current attempt's record.
            for entry in dirty:
                key = (entry.user_id, entry.lesson_id)
                if key not in written and self.entries.get(key) is entry:
                    del self.entries[key]
            self.flushes += 1
            self.flushed_rows += len(rows)
            return len(rows)

    async def _write(
        self, dirty: list[Entry], rows: list[store.FlushRow], through: datetime
    ) -> list[store.ProgressRow]:
        """The batch, the viewing sessions it extends and how far this process has flushed,
        in one transaction: a session never holds playback the records lack, nor the other
        way round. Sessions only for the rows the flush wrote (a row of an attempt that ended
        is written nowhere)."""
        async with self._pool.acquire() as conn, conn.transaction():
            stored = await store.flush_heartbeats(conn, rows)
            written = {(r.user_id, r.lesson_id) for r in stored}
            sessions = [
                session for entry, row in zip(dirty, rows, strict=True)
                if (entry.user_id, entry.lesson_id) in written and (session := entry.session_row(row)) is not None
            ]
            await store.keep_sessions(conn, sessions, self.session_idle_s)
            await store.mark_flushed(conn, self.process_id, through)
            return stored

    def _evict_idle(self) -> None:
        limit = time.monotonic() - self._idle_evict_s
        stale = [k for k, e in self.entries.items() if not e.dirty and e.touched < limit]
        for key in stale:
            del self.entries[key]
