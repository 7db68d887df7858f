"""Use cases of the enrollment service, one transaction each: lock what changes, decide
(domain), write (store), and queue the resulting event in the same transaction (outbox).

Routes call them with the pool; event handlers call the ``record_*`` ones with
the connection of the inbox transaction (``ctx.transaction()``), so a redelivery changes
nothing. Those lock the enrollment row and compare the event's own timestamps with what
is stored, so an older event never overwrites newer state whatever the order of arrival
across topics. Refusals are the domain's errors (``api.ERRORS`` answers them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx

from services.enrollment import domain, store
from services.enrollment.domain import AppPassword, Course, Enrollment
from services.enrollment.passwords import CredentialMemory, Hasher, generate_password
from services.enrollment.settings import EnrollmentSettings
from shared import erasure, outbox
from shared.auth import User, issue_token
from shared.db import Connection
from shared.demo import DEMO_PEOPLE, DemoPerson
from shared.events import (
    CertificateIssued,
    CertificateRevoked,
    CourseCompleted,
    EnrollmentChanged,
    LearnerErased,
    LessonCompleted,
    LessonReopened,
    ProgressRecalculated,
    RecertificationScheduled,
    utcnow,
)
from shared.internal import CourseConfirmation, PeerUnavailable, internal_client
from shared.periodic import Periodic

log = logging.getLogger(__name__)


async def _announce(conn: Connection, enrollment: Enrollment) -> None:
    """Publish the enrollment's change (outbox) and keep the event as published, in the
    caller's transaction: a consumer confirms it by id before acting on it."""
    event = domain.enrollment_event(enrollment)
    await outbox.add(conn, event)
    await store.keep_enrollment_event(conn, event)


# --- catalog ---------------------------------------------------------------------------


async def _publish_course(conn: Connection, course_id: int) -> Course:
    course = await store.get_course(conn, course_id)
    assert course is not None
    # The course row is locked, so revisions follow one another; the outbox publishes
    # events of one key (the course) in commit order, so revision order too.
    await outbox.add(conn, domain.catalog_entry(course))
    return course


async def _commit_change(conn: Connection, course_id: int, changes: dict[str, Any], now: datetime) -> Course:
    try:
        await store.bump_course(conn, course_id, changes, now, uuid4())
    except store.SlugTaken as exc:
        raise domain.SlugTaken(str(changes.get("slug"))) from exc
    return await _publish_course(conn, course_id)


async def _locked_course(conn: Connection, user: User, course_id: int) -> Course:
    course = await store.get_course(conn, course_id, lock=True)
    if course is None:
        raise domain.CourseNotFound()
    domain.ensure_can_manage(user, course)
    return course


async def create_course(pool: asyncpg.Pool, fields: dict[str, Any]) -> Course:
    now = utcnow()
    fields = dict(fields)
    fields["instructor_ids"] = list(dict.fromkeys(fields.get("instructor_ids", [])))
    async with pool.acquire() as conn, conn.transaction():
        if not fields.get("slug"):
            base = domain.slugify(fields["title"])
            slug, n = base, 1
            while await store.slug_exists(conn, slug):
                n += 1
                slug = f"{base}-{n}"
            fields["slug"] = slug
        try:
            course_id = await store.insert_course(conn, fields, now, uuid4())
        except store.SlugTaken as exc:
            raise domain.SlugTaken(fields["slug"]) from exc
        return await _publish_course(conn, course_id)


async def manageable_course(pool: asyncpg.Pool, user: User, course_id: int) -> Course:
    async with pool.acquire() as conn:
        course = await store.get_course(conn, course_id)
    if course is None:
        raise domain.CourseNotFound()
    domain.ensure_can_manage(user, course)
    return course


async def update_course(pool: asyncpg.Pool, user: User, course_id: int, fields: dict[str, Any]) -> Course:
    now = utcnow()
    async with pool.acquire() as conn, conn.transaction():
        course = await _locked_course(conn, user, course_id)
        if "instructor_ids" in fields:
            fields = {**fields, "instructor_ids": list(dict.fromkeys(fields["instructor_ids"]))}
        changes = {k: v for k, v in fields.items() if getattr(course, k) != v}
        if "instructor_ids" in changes:
            domain.ensure_can_set_instructors(user)
        if "status" in changes:
            domain.check_transition(course.status, changes["status"], len(course.lessons))
        if not changes:
            return course
        return await _commit_change(conn, course_id, changes, now)


async def set_course_status(pool: asyncpg.Pool, user: User, course_id: int, target: domain.CourseStatus) -> Course:
    now = utcnow()
    async with pool.acquire() as conn, conn.transaction():
        course = await _locked_course(conn, user, course_id)
        if not domain.check_transition(course.status, target, len(course.lessons)):
            return course  # already there: nothing changes, nothing is published
        return await _commit_change(conn, course_id, {"status": target}, now)


async def add_lesson(
    pool: asyncpg.Pool, user: User, course_id: int, fields: dict[str, Any], order: int | None
) -> tuple[Course, int]:
    now = utcnow()
    async with pool.acquire() as conn, conn.transaction():
        course = await _locked_course(conn, user, course_id)
        ids = [lesson.id for lesson in course.lessons]
        lesson_id = await store.insert_lesson(conn, course_id, fields, position=len(ids) + 1)
        await store.set_lesson_order(conn, course_id, domain.place_lesson(ids, lesson_id, order))
        return await _commit_change(conn, course_id, {}, now), lesson_id


async def update_lesson(
    pool: asyncpg.Pool, user: User, course_id: int, lesson_id: int, fields: dict[str, Any], order: int | None
) -> Course:
    now = utcnow()
    async with pool.acquire() as conn, conn.transaction():
        course = await _locked_course(conn, user, course_id)
        lesson = next((lesson for lesson in course.lessons if lesson.id == lesson_id), None)
        if lesson is None:
            raise domain.LessonNotFound()
        changes = {k: v for k, v in fields.items() if getattr(lesson, k) != v}
        ids = [item.id for item in course.lessons]
        new_order = ids if order is None else domain.place_lesson(ids, lesson_id, order)
        if not changes and new_order == ids:
            return course
        await store.update_lesson(conn, lesson_id, changes)
        await store.set_lesson_order(conn, course_id, new_order)
        return await _commit_change(conn, course_id, {}, now)


async def archive_lesson(pool: asyncpg.Pool, user: User, course_id: int, lesson_id: int) -> Course:
    """The lesson leaves the course (a new revision without it); learners' records of it stay
    in progress, where it no longer counts."""
    now = utcnow()
    async with pool.acquire() as conn, conn.transaction():
        course = await _locked_course(conn, user, course_id)
        ids = [lesson.id for lesson in course.lessons]
        if lesson_id not in ids:
            raise domain.LessonNotFound()
        domain.check_archive_lesson(course.status, len(ids))
        await store.archive_lesson(conn, lesson_id, now)
        await store.set_lesson_order(conn, course_id, [i for i in ids if i != lesson_id])
        return await _commit_change(conn, course_id, {}, now)


async def reorder_lessons(pool: asyncpg.Pool, user: User, course_id: int, lesson_ids: list[int]) -> Course:
    now = utcnow()
    async with pool.acquire() as conn, conn.transaction():
        course = await _locked_course(conn, user, course_id)
        ids = [lesson.id for lesson in course.lessons]
        domain.check_reorder(ids, lesson_ids)
        if lesson_ids == ids:
            return course
        await store.set_lesson_order(conn, course_id, lesson_ids)
        return await _commit_change(conn, course_id, {}, now)


async def published_course(pool: asyncpg.Pool, course_id: int) -> Course:
    async with pool.acquire() as conn:
        course = await store.get_course(conn, course_id)
    if course is None or course.status != "published":
        raise domain.CourseNotFound()
    return course


# --- enrollments -----------------------------------------------------------------------


@dataclass(frozen=True)
class EnrollResult:
    enrollment: Enrollment
    resumed: bool


async def enroll(pool: asyncpg.Pool, user: User, course_id: int) -> EnrollResult:
    now = utcnow()
    profile = domain.profile_of(user)
    async with pool.acquire() as conn, conn.transaction():
        domain.ensure_enrollable(await store.get_course(conn, course_id))
        # The row lock makes concurrent enroll/unenroll of one learner take turns.
        existing = await store.get_enrollment(conn, user.id, course_id, lock=True)
        if existing is not None:
            if domain.is_enrolled(existing):
                raise domain.AlreadyEnrolled()
            enrollment = await store.change_enrollment(
                conn, existing.id, domain.resumed_status(existing), now, uuid4(), profile=profile
            )
            resumed = True
        else:
            created = await store.insert_enrollment(conn, user.id, course_id, profile, now, uuid4())
            if created is None:  # a concurrent request enrolled this learner first
                raise domain.AlreadyEnrolled()
            enrollment, resumed = created, False
        await _announce(conn, enrollment)
        return EnrollResult(enrollment, resumed)


async def unenroll(pool: asyncpg.Pool, user: User, course_id: int) -> Enrollment:
    now = utcnow()
    async with pool.acquire() as conn, conn.transaction():
        if await store.get_course(conn, course_id) is None:
            raise domain.CourseNotFound()
        existing = await store.get_enrollment(conn, user.id, course_id, lock=True)
        if existing is None or not domain.is_enrolled(existing):
            raise domain.NotEnrolled()
        enrollment = await store.change_enrollment(conn, existing.id, "unenrolled", now, uuid4())
        await _announce(conn, enrollment)
        return enrollment


async def reset_learner(pool: asyncpg.Pool, user: User, course_id: int, user_id: str) -> Enrollment:
    """Start a new attempt of the learner's course (see ``store.start_attempt``), published on
    enrollment-changed; the earlier attempt's records stay with their owners as history."""
    now = utcnow()
    async with pool.acquire() as conn, conn.transaction():
        course = await store.get_course(conn, course_id)
        if course is None:
            raise domain.CourseNotFound()
        domain.ensure_can_manage(user, course)
        existing = domain.ensure_resettable(await store.get_enrollment(conn, user_id, course_id, lock=True))
        enrollment = await store.start_attempt(conn, existing.id, existing.attempt, now, uuid4())
        assert enrollment is not None  # the row is locked at that attempt
        await _announce(conn, enrollment)
        return enrollment


async def students(
    pool: asyncpg.Pool,
    user: User,
    course_id: int,
    *,
    page: int,
    per_page: int,
    orderby: domain.StudentOrderBy,
    order: domain.SortOrder,
) -> tuple[int, int, list[store.StudentRow]]:
    await manageable_course(pool, user, course_id)
    size = domain.page_size(per_page)
    total, rows = await store.list_students(pool, course_id, orderby, order, size, (page - 1) * size)
    return total, size, rows


async def managed_courses(
    pool: asyncpg.Pool, user: User, *, page: int, per_page: int
) -> tuple[int, int, list[store.ManagedCourseRow]]:
    """The courses the user manages (``domain.can_manage``): every one for an admin, the
    ones listing them for anyone else (none for a plain learner)."""
    size = domain.page_size(per_page)
    total, rows = await store.list_managed_courses(
        pool, None if user.is_admin else user.id, size, (page - 1) * size
    )
    return total, size, rows


async def my_courses(
    pool: asyncpg.Pool, user: User, status: domain.MyCoursesStatus, *, page: int, per_page: int
) -> tuple[int, int, list[store.MyCourseRow]]:
    """The learner's enrollments in ``status``: (total, page size, this page's rows)."""
    size = domain.page_size(per_page)
    total, rows = await store.my_courses(pool, user.id, domain.statuses_for(status), size, (page - 1) * size)
    return total, size, rows


# --- internal API (read-your-writes for other services) ---------------------------------


async def current_enrollment(pool: asyncpg.Pool, user_id: str, course_id: int) -> Enrollment:
    async with pool.acquire() as conn:
        enrollment = await store.get_enrollment(conn, user_id, course_id)
    if enrollment is None or not domain.is_enrolled(enrollment):
        raise domain.NoCurrentEnrollment()
    return enrollment


async def any_course(pool: asyncpg.Pool, course_id: int) -> Course:
    """The course in any status (drafts too)."""
    async with pool.acquire() as conn:
        course = await store.get_course(conn, course_id)
    if course is None:
        raise domain.CourseNotFound()
    return course


async def confirmation(pool: asyncpg.Pool, course_id: int, user_id: str, known_revision: int) -> CourseConfirmation:
    """What another service needs to decide an irreversible act on current data: the course's
    current revision (the whole course only if newer than ``known_revision``) and the
    learner's current enrollment in any status, read in one snapshot."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        head = await store.course_head(conn, course_id)
        if head is None:
            raise domain.CourseNotFound()
        revision, status = head
        course = await store.get_course(conn, course_id) if revision > known_revision else None
        enrollment = await store.get_enrollment(conn, user_id, course_id)
    return CourseConfirmation(
        course_id=course_id, revision=revision, status=status,
        course=domain.catalog_entry(course) if course is not None else None,
        enrollment=domain.enrollment_event(enrollment) if enrollment is not None else None,
    )


async def recertification_notice(pool: asyncpg.Pool, event_id: UUID) -> RecertificationScheduled:
    """The recertification-scheduled event as published, for a consumer confirming it."""
    async with pool.acquire() as conn:
        notice = await store.get_notice(conn, event_id)
    if notice is None:
        raise domain.RecertificationNotFound()
    return notice


async def enrollment_change(pool: asyncpg.Pool, event_id: UUID) -> EnrollmentChanged:
    """The enrollment-changed event as published, for a consumer confirming it."""
    async with pool.acquire() as conn:
        event = await store.get_enrollment_event(conn, event_id)
    if event is None:
        raise domain.EnrollmentEventNotFound()
    return event


# --- recertification (the daily job) ----------------------------------------------------

# Enrollments handled per transaction: locks stay short, and a large course goes in steps.
RECERTIFY_BATCH = 500


@dataclass(frozen=True)
class RecertificationRun:
    noticed: int  # recertification-scheduled events published
    reset: int  # attempts reset


async def recertify(
    pool: asyncpg.Pool, now: datetime, *, notice_days: int, batch: int = RECERTIFY_BATCH
) -> RecertificationRun:
    """The recertification job as of ``now``.

    First the notices: every completed enrollment of a course with ``recertify_after_days``,
    completed ``recertify_after_days - notice_days`` days or more before ``now``, gets one
    notice for its current attempt (the (enrollment, attempt) key of
    ``recertification_notices``), to be reset at ``domain.reset_time``, and
    ``recertification-scheduled`` is queued in the same transaction. Then the resets: every
    pending notice whose time has come, whose enrollment is still completed at that
    attempt, starts the next attempt (``store.start_attempt``, conditional on the attempt)
    and publishes ``enrollment-changed``. A reset always follows its notice by at least
    ``notice_days``. Processes running it together skip each other's locked rows, and the
    keys and conditions make each notice and each reset happen once.
    """
    noticed = reset = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            due = await store.completions_due_for_notice(conn, now, notice_days, batch)
            for completion in due:
                event = domain.recertification_notice(completion, now, notice_days)
                if await store.insert_notice(conn, event, now):
                    await outbox.add(conn, event)
                    noticed += 1
        if len(due) < batch:
            break
    while True:
        async with pool.acquire() as conn, conn.transaction():
            notices = await store.notices_due_for_reset(conn, now, batch)
            for enrollment_id, attempt in notices:
                enrollment = await store.start_attempt(
                    conn, enrollment_id, attempt, now, uuid4(), only_completed=True
                )
                if enrollment is not None:  # always, with the row locked at that attempt
                    await _announce(conn, enrollment)
                    await store.settle_notice(conn, enrollment_id, attempt, now)
                    reset += 1
        if len(notices) < batch:
            break
    async with pool.acquire() as conn:
        await store.settle_overtaken_notices(conn, now)
    if noticed or reset:
        log.info("recertification: %d notices, %d resets", noticed, reset)
    return RecertificationRun(noticed, reset)


# --- application passwords (HTTP Basic) -------------------------------------------------


@dataclass(frozen=True)
class CreatedAppPassword:
    app_password: AppPassword
    password: str  # shown once: only its hash is kept


async def create_app_password(
    pool: asyncpg.Pool, hasher: Hasher, *, user_id: str, name: str, email: str, roles: list[str], label: str
) -> CreatedAppPassword:
    domain.check_app_password_user(user_id)
    password = generate_password()
    password_hash = await hasher.hash(password)  # in a thread
    async with pool.acquire() as conn:
        stored = await store.insert_app_password(
            conn, user_id=user_id, label=label, name=name, email=email, roles=list(dict.fromkeys(roles)),
            password_hash=password_hash, now=utcnow(),
        )
    return CreatedAppPassword(stored, password)


# --- development sign-in (the reference web app) -----------------------------------------

DEV_TOKEN_TTL_S = 12 * 3600


def dev_people(settings: EnrollmentSettings) -> tuple[DemoPerson, ...]:
    """The demo people a development sign-in offers (``lessonstream seed-demo`` makes their data)."""
    _ensure_dev_tokens(settings)
    return DEMO_PEOPLE


def dev_token(settings: EnrollmentSettings, *, user_id: str, name: str, email: str, role: str) -> tuple[str, int]:
    """A development token for anyone, signed with the development secret, and its expiry
    (unix seconds). Never where real identities are: production, or tokens from a JWKS."""
    _ensure_dev_tokens(settings)
    expires = int(time.time()) + DEV_TOKEN_TTL_S
    token = issue_token(settings, user_id=user_id, name=name, email=email, roles=[role], ttl_seconds=DEV_TOKEN_TTL_S)
    return token, expires


def _ensure_dev_tokens(settings: EnrollmentSettings) -> None:
    if settings.env == "production" or settings.jwt_jwks_url:
        raise domain.DevTokensDisabled()


async def app_passwords(pool: asyncpg.Pool, user_id: str | None) -> list[AppPassword]:
    async with pool.acquire() as conn:
        return await store.list_app_passwords(conn, user_id)


async def revoke_app_password(pool: asyncpg.Pool, password_id: int, memory: CredentialMemory | None = None) -> None:
    """Revoked at once in the database and in this process's memory; other processes stop
    honouring it within ``APP_PASSWORD_CACHE_S`` (when they look at its row again)."""
    async with pool.acquire() as conn:
        found = await store.revoke_app_password(conn, password_id, utcnow())
    if not found:
        raise domain.AppPasswordNotFound()
    if memory is not None:
        memory.forget_password(password_id)


# How stale ``last_used_at`` may be for a password used from memory: one write an hour at
# most, not one per look at the row.
LAST_USED_PRECISION = timedelta(hours=1)


@dataclass
class BasicAuth:
    """The exchange of HTTP Basic credentials for a bearer token (the gateway asks, see
    ``exchange``), with what this process remembers of them."""

    pool: asyncpg.Pool
    settings: EnrollmentSettings
    hasher: Hasher
    memory: CredentialMemory
    limits: domain.AttemptLimits
    # One check at a time per (credentials, address): a client's burst costs one hash and
    # counts one attempt.
    _checking: dict[tuple[bytes, str], asyncio.Task[AppPassword]] = field(default_factory=dict)

    @classmethod
    def open(cls, pool: asyncpg.Pool, settings: EnrollmentSettings) -> BasicAuth:
        limits = domain.AttemptLimits(
            settings.app_password_max_failures_per_user, settings.app_password_max_failures_per_address,
            timedelta(seconds=settings.app_password_failure_window_s),
        )
        return cls(pool, settings, Hasher(settings.app_password_hash_threads), CredentialMemory(settings), limits)

    async def exchange(self, authorization: str, address: str, scheme: str) -> str:
        """The bearer token for ``Authorization: Basic ...`` sent from ``address`` over
        ``scheme`` (as the gateway saw them).

        A credential this process verified is answered from memory (its row looked at again
        every ``APP_PASSWORD_CACHE_S``); otherwise the attempt is counted for the user and
        the address first (429 once either has used up its failures), the password checked
        against the user's live ones (argon2id, in a thread), and the count taken back if
        it was right.
        """
        if (self.settings.env == "production" and scheme.lower() != "https"
                and not self.settings.allow_basic_over_http):
            raise domain.BasicOverPlainHttp()
        credentials = domain.parse_basic(authorization)
        key = self.memory.key(credentials)
        known = self.memory.known(key)
        if known is not None and not self.memory.locked(credentials.username, address):
            if self.memory.fresh(known):
                return self.memory.token(known.password)
            async with self.pool.acquire() as conn:
                live, last_used = await store.live_app_password_use(conn, known.password.id)
                now = utcnow()
                if live and (last_used is None or now - last_used > LAST_USED_PRECISION):
                    await store.touch_app_password(conn, known.password.id, now)
            if live:
                self.memory.remember(key, known.password)
                return self.memory.token(known.password)
            self.memory.forget_password(known.password.id)
        checking = self._checking.get((key, address))
        if checking is None:
            checking = asyncio.create_task(self._check(credentials, key, address))
            self._checking[(key, address)] = checking
            checking.add_done_callback(lambda _: self._checking.pop((key, address), None))
        # Shielded: a caller that goes away does not cancel the check others wait for.
        password = await asyncio.shield(checking)
        return self.memory.token(password)

    async def _check(self, credentials: domain.Credentials, key: bytes, address: str) -> AppPassword:
        now = utcnow()
        keys = [("address", address), ("user", credentials.username)]
        candidates: list[tuple[AppPassword, str]] = []
        async with self.pool.acquire() as conn, conn.transaction():
            windows = await store.lock_attempt_windows(conn, keys, now)
            wait = domain.attempt_refusal(windows, now, self.limits)
            if wait is not None:
                self._remember_lockouts(windows, now)
                raise domain.TooManyAttempts(wait)
            windows = [domain.counted(w, now, self.limits) for w in windows]
            await store.save_attempt_windows(conn, windows)
            if domain.could_be_app_password(credentials.password):
                candidates = await store.live_app_passwords(conn, credentials.username)
        # The attempt is counted (committed) before the slow check, outside the row locks.
        matched = None
        if domain.could_be_app_password(credentials.password):
            matched_id = await self.hasher.match([(p.id, h) for p, h in candidates], credentials.password)
            matched = next((p for p, _ in candidates if p.id == matched_id), None)
        if matched is None:
            self._remember_lockouts(windows, now)
            raise domain.InvalidCredentials()
        async with self.pool.acquire() as conn, conn.transaction():
            await store.uncount_attempts(conn, windows)
            await store.touch_app_password(conn, matched.id, now)
        self.memory.remember(key, matched)
        return matched

    def _remember_lockouts(self, windows: list[domain.AttemptWindow], now: datetime) -> None:
        for window in windows:
            if domain.is_current(window, now, self.limits) and domain.reaches_limit(window, self.limits):
                ends = window.window_start + self.limits.window
                self.memory.lock(window.scope, window.key, (ends - now).total_seconds())

    async def prune(self) -> int:
        """Forget failure windows long over (they no longer count)."""
        async with self.pool.acquire() as conn:
            return await store.prune_attempts(conn, utcnow() - self.limits.window)


@dataclass
class EnrollmentState:
    """What one enrollment process runs on besides the pool: the recertification job, and
    the exchange of application passwords with its pruning of failure windows."""

    recertification: Periodic
    basic: BasicAuth
    pruning: Periodic
    # Clients of the other services' internal APIs, by name: their erasure receipts and
    # exports (``domain.ERASING_SERVICES``).
    peers: dict[str, httpx.AsyncClient] = field(default_factory=dict)
    # Completes erasure requests every service has done (``complete_erasures``).
    erasures: Periodic | None = None

    @classmethod
    def open(cls, pool: asyncpg.Pool, settings: EnrollmentSettings) -> EnrollmentState:
        async def run() -> RecertificationRun:
            return await recertify(pool, utcnow(), notice_days=settings.recertification_notice_days)

        job = Periodic(settings.recertification_interval_s, run, "recertification", at_once=True)
        job.start()
        basic = BasicAuth.open(pool, settings)
        pruning = Periodic(3600, basic.prune, "sign-in failure pruning", at_once=True)
        pruning.start()
        peers = {
            "progress": internal_client(settings, settings.progress_internal_url),
            "certificates": internal_client(settings, settings.certificates_internal_url),
            "notifications": internal_client(settings, settings.notifications_internal_url),
        }
        state = cls(job, basic, pruning, peers)

        async def complete() -> int:
            return await complete_erasures(pool, state)

        state.erasures = Periodic(settings.erasure_check_interval_s, complete, "erasure completion", at_once=True)
        state.erasures.start()
        return state

    async def close(self) -> None:
        if self.erasures is not None:
            await self.erasures.stop()
        await self.pruning.stop()
        await self.recertification.stop()
        for client in self.peers.values():
            await client.aclose()


# --- progress and certificates, as events report them -----------------------------------


class UnknownEnrollment(Exception):
    """The owner of enrollments has no enrollment for this event: retried, then dead-lettered."""


async def _enrollment(conn: Connection, user_id: str, course_id: int) -> Enrollment:
    enrollment = await store.get_enrollment(conn, user_id, course_id, lock=True)
    if enrollment is None:
        # Progress only accepts work from enrolled learners, and this service commits an
        # enrollment before anyone can learn of it: this is not a replica lag to wait out.
        raise UnknownEnrollment(f"no enrollment of user {user_id!r} in course {course_id}")
    return enrollment


async def record_progress(conn: Connection, event: LessonCompleted | LessonReopened, at: datetime) -> None:
    """A lesson completed or reopened at ``at``: last access moves on, and the progress
    figures are replaced unless newer ones are stored."""
    enrollment = await _enrollment(conn, event.user_id, event.course_id)
    if domain.is_past_attempt(enrollment, event.attempt):
        log.info("ignoring progress of %s: attempt %d was reset", event.event_id, event.attempt)
        return
    await store.touch_last_accessed(conn, enrollment.id, at)
    if domain.is_newer_progress(enrollment, at, event.occurred_at):
        await store.set_progress(
            conn, enrollment.id, percentage=event.progress_percentage, completed_lessons=event.completed_lessons,
            total_lessons=event.total_lessons, at=at, seq=event.occurred_at,
        )
    else:
        log.info("ignoring progress of %s older than what is stored", event.event_id)


async def record_recalculation(conn: Connection, event: ProgressRecalculated) -> None:
    """A batch of learners' progress recalculated after the course's required lessons changed:
    each learner's figures are replaced unless a newer progress fact is stored or they are of
    an attempt reset since. Completion
    and status are not touched (a change never revokes a completion)."""
    learners = [
        (learner.user_id, learner.progress_percentage, learner.completed_lessons, learner.total_lessons,
         learner.attempt)
        for learner in event.learners
    ]
    changed = await store.set_progress_batch(
        conn, event.course_id, learners, at=event.recalculated_at, seq=event.occurred_at
    )
    log.info("progress of %s of %s learners of course %s recalculated (revision %s)", changed, len(learners),
             event.course_id, event.revision)


async def record_completion(conn: Connection, event: CourseCompleted) -> None:
    """A course completed (see ``domain.apply_completion``); a change of status is published."""
    enrollment = await _enrollment(conn, event.user_id, event.course_id)
    if domain.is_past_attempt(enrollment, event.attempt):
        log.info("ignoring completion %s: attempt %d was reset", event.event_id, event.attempt)
        return
    change = domain.apply_completion(enrollment, event.completed_at, event.occurred_at)
    await store.set_completion(
        conn, enrollment.id, completed_at=change.completed_at, progress_to_full=change.progress_to_full,
        seq=event.occurred_at,
    )
    await store.touch_last_accessed(conn, enrollment.id, event.completed_at)
    if change.status_changed:
        updated = await store.change_enrollment(conn, enrollment.id, change.status, utcnow(), uuid4())
        await _announce(conn, updated)


async def record_certificate(conn: Connection, event: CertificateIssued) -> None:
    """A certificate issued: kept unless a newer one is stored."""
    enrollment = await _enrollment(conn, event.user_id, event.course_id)
    if domain.is_newer_certificate(enrollment, event.issued_at):
        await store.set_certificate(
            conn, enrollment.id, certificate_id=event.certificate_id, url=event.certificate_url,
            issued_at=event.issued_at,
        )


async def record_certificate_status(conn: Connection, event: CertificateRevoked) -> None:
    """A certificate revoked (its time and reason kept) or reinstated (both cleared), unless
    a later change of its status is already stored."""
    enrollment = await _enrollment(conn, event.user_id, event.course_id)
    if not domain.is_newer_certificate_status(enrollment, event.changed_at):
        log.info("ignoring certificate status of %s older than what is stored", event.event_id)
        return
    revoked = event.status == "revoked"
    await store.set_certificate_status(
        conn, enrollment.id, revoked_at=event.changed_at if revoked else None,
        reason=event.reason if revoked else None, changed_at=event.changed_at,
    )


# --- erasure and export (GDPR) ------------------------------------------------------------


@dataclass(frozen=True)
class ErasureRequested:
    request: erasure.ErasureRequest
    created: bool  # False: the learner's erasure had been requested before, nothing changed


async def erase_learner(pool: asyncpg.Pool, user_id: str, memory: CredentialMemory | None = None) -> ErasureRequested:
    """Record the erasure of ``user_id``, delete what this service holds on them, purge its
    outbox of them, and queue ``learner-erased``: one transaction, so the other services are
    told exactly when enrollment's data is gone. A learner asked for again gets the first
    request back and nothing changes (the record keeps the id's hash, never the id)."""
    subject = erasure.subject_of(user_id)
    async with pool.acquire() as conn, conn.transaction():
        await store.lock_erasure_subject(conn, subject)
        found = await store.get_erasure(conn, subject=subject)
        if found is not None:
            return ErasureRequested(found, created=False)
        personal = await store.personal_data(conn, user_id)
        passwords = await store.app_password_ids(conn, user_id)
        summary = await store.erase_learner(conn, user_id)
        # Before the event is queued: the purge must not take the event itself.
        summary["outbox"] = await erasure.purge_outbox(conn, user_id, personal)
        summary["dead_letters"] = await erasure.purge_dead_letters(conn, user_id, personal)
        event = LearnerErased(user_id=user_id, requested_at=utcnow())
        await store.insert_erasure(conn, event, subject, summary)
        await outbox.add(conn, event)
    log.info("erasure %s requested: enrollment erased %s", event.event_id, summary)
    # Refused at once by this process; others look at the (deleted) row within APP_PASSWORD_CACHE_S.
    if memory is not None:
        for password_id in passwords:
            memory.forget_password(password_id)
    return ErasureRequested(
        erasure.ErasureRequest(event_id=event.event_id, subject=subject, requested_at=event.requested_at),
        created=True,
    )


async def erasure_request(pool: asyncpg.Pool, event_id: UUID) -> erasure.ErasureRequest:
    """The request behind a learner-erased event, for a service confirming it."""
    found = await store.get_erasure(pool, event_id=event_id)
    if found is None:
        raise domain.ErasureNotFound("No such erasure request")
    return found


async def _service_part(client: httpx.AsyncClient, name: str, event_id: UUID) -> domain.ServiceErasure:
    try:
        receipt = await erasure.erasure_receipt(client, name, event_id)
    except PeerUnavailable:
        return domain.ServiceErasure(status="unavailable")
    if receipt is None:
        return domain.ServiceErasure(status="pending")
    return domain.ServiceErasure(status="done", erased_at=receipt.erased_at, erased=receipt.summary)


async def erasure_status(pool: asyncpg.Pool, state: EnrollmentState, user_id: str) -> domain.ErasureStatus:
    """Where the learner's erasure stands in every service (each asked at once)."""
    request = await store.get_erasure(pool, subject=erasure.subject_of(user_id))
    if request is None:
        raise domain.ErasureNotFound()
    return await _erasure_status(pool, state, request)


async def _erasure_status(
    pool: asyncpg.Pool, state: EnrollmentState, request: erasure.ErasureRequest
) -> domain.ErasureStatus:
    """The first time every service is done, the request is marked complete and its
    published learner-erased row leaves the outbox: nothing here holds the id any more."""
    own = await erasure.receipt(pool, request.event_id)
    parts = await asyncio.gather(*(
        _service_part(state.peers[name], name, request.event_id) for name in domain.ERASING_SERVICES
    ))
    services = {"enrollment": domain.ServiceErasure(
        status="done", erased_at=own.erased_at if own else None, erased=own.summary if own else {},
    )}
    services.update(zip(domain.ERASING_SERVICES, parts, strict=True))
    completed_at = request.completed_at
    if completed_at is None and domain.erasure_done(services):
        now = utcnow()
        async with pool.acquire() as conn, conn.transaction():
            if await store.complete_erasure(conn, request.event_id, now):
                completed_at = now
    return domain.ErasureStatus(
        erasure_id=request.event_id, requested_at=request.requested_at, completed_at=completed_at,
        done=domain.erasure_done(services), services=services,
    )


async def complete_erasures(pool: asyncpg.Pool, state: EnrollmentState) -> int:
    """Look at every incomplete erasure request (none is asked about otherwise when nobody
    reads its status) and complete those every service has done; returns how many."""
    completed = 0
    for request in await store.incomplete_erasures(pool):
        status = await _erasure_status(pool, state, request)
        completed += status.completed_at is not None
    return completed


async def own_export(pool: asyncpg.Pool, user_id: str) -> dict[str, Any]:
    """What this service holds on the learner: every row naming them (no password hash)."""
    async with pool.acquire() as conn:
        return await erasure.export_rows(conn, store.EXPORT_TABLES, user_id, store.EXPORT_OMIT)


async def export_learner(pool: asyncpg.Pool, state: EnrollmentState, user_id: str) -> dict[str, Any]:
    """Everything every service holds on the learner, as one document (each service asked at
    once); ``PeerUnavailable`` when one cannot be asked: an export is whole or not given."""
    own, *others = await asyncio.gather(
        own_export(pool, user_id),
        *(erasure.learner_export(state.peers[name], name, user_id) for name in domain.ERASING_SERVICES),
    )
    return {
        "user_id": user_id,
        "generated_at": utcnow().isoformat(),
        "services": {"enrollment": own, **dict(zip(domain.ERASING_SERVICES, others, strict=True))},
    }
