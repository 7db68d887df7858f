"""The enrollment service's rules: who may do what, course states, lesson order,
enrollment states, and which progress facts are newer. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from shared.domain import DomainError, User
from shared.events import CatalogLesson, CourseCatalogEntry, EnrollmentChanged, RecertificationScheduled

CourseStatus = Literal["draft", "published", "archived"]
EnrollmentStatus = Literal["active", "completed", "unenrolled"]
LessonKind = Literal["video", "text", "audio", "quiz"]

MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 20


class Lesson(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    course_id: int
    title: str
    order: int
    is_required: bool
    duration_seconds: int | None
    kind: str
    video_completion_threshold: float | None = None  # null: the course's rule


class CourseFields(BaseModel):
    """What a course says of itself: stored with it, and answered by the API."""

    model_config = ConfigDict(frozen=True)

    id: int
    title: str
    slug: str
    description: str
    status: CourseStatus
    requires_sequential_progress: bool
    certificate_enabled: bool
    certificate_validity_days: int | None = None  # null: certificates never expire
    # Coverage (0, 1] a video lesson needs to complete itself; null: learners complete lessons.
    video_completion_threshold: float | None = None
    recertify_after_days: int | None = None  # null: completions are never reset
    instructor_ids: list[str]
    revision: int


class Course(CourseFields):
    created_at: datetime
    updated_at: datetime
    last_event_id: UUID
    last_event_at: datetime
    lessons: list[Lesson] = []


class Enrollment(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    user_id: str
    course_id: int
    status: EnrollmentStatus
    attempt: int = 1  # grows by one on each reset (by staff or for recertification)
    revision: int
    enrolled_at: datetime
    unenrolled_at: datetime | None
    username: str
    display_name: str
    email: str
    avatar: str | None
    progress_percentage: int
    completed_lessons: int
    total_lessons: int
    progress_at: datetime | None
    progress_seq: datetime | None
    last_accessed: datetime | None
    completed_at: datetime | None
    certificate_id: str | None
    certificate_url: str | None
    certificate_issued_at: datetime | None
    certificate_revoked_at: datetime | None = None
    certificate_revocation_reason: str | None = None
    certificate_status_changed_at: datetime | None = None  # when the revoked/reinstated status was set
    last_event_id: UUID
    last_event_at: datetime


# --- refusals (answered over HTTP as mapped in api.ERRORS) ------------------------------


class CourseNotFound(DomainError):
    default_message = "Course not found"


class LessonNotFound(DomainError):
    default_message = "Lesson not found in this course"


class NotCourseManager(DomainError):
    default_message = "Only this course's instructors and administrators may do this"


class InstructorsByAdminsOnly(DomainError):
    default_message = "Only administrators may change a course's instructors"


class NoReturnToDraft(DomainError):
    def __init__(self, current: CourseStatus) -> None:
        super().__init__(f"A {current} course cannot go back to draft", status_from=current)


class CourseHasNoLessons(DomainError):
    default_message = "A course needs at least one lesson to be published"


class LastLessonOfPublishedCourse(DomainError):
    default_message = "A published course needs a lesson: this is its last one (add another, or archive the course)"


class InvalidLessonOrder(DomainError):
    """A reorder that is not a permutation of the course's lessons; ``data`` says why."""


class SlugTaken(DomainError):
    def __init__(self, slug: str) -> None:
        super().__init__("Another course already uses this slug", params={"slug": slug})


class AlreadyEnrolled(DomainError):
    def __init__(self) -> None:
        super().__init__("You are already enrolled in this course")


class NotEnrolled(DomainError):
    """A learner acting on a course they are not (or no longer) enrolled in."""

    default_message = "You must be enrolled in this course"


class NoCurrentEnrollment(DomainError):
    """Another service asking for a learner's current enrollment, and there is none."""

    default_message = "No current enrollment of this learner in this course"


class EnrollmentEventNotFound(DomainError):
    """Another service asking for an enrollment-changed event this service never published."""

    default_message = "No such enrollment event"


class ErasureNotFound(DomainError):
    """No erasure was requested for this learner (or, internally, under this event id)."""

    default_message = "No erasure was requested for this learner"


class RecertificationNotFound(DomainError):
    """Another service asking for a recertification notice this service never published."""

    default_message = "No such recertification notice"


class AppPasswordNotFound(DomainError):
    default_message = "No such application password"


class InvalidAppPasswordUser(DomainError):
    """A user id HTTP Basic cannot carry (it splits the user from the password at the first colon)."""

    def __init__(self) -> None:
        super().__init__("A user id with a colon cannot sign in with HTTP Basic", params={"user_id": "contains ':'"})


class InvalidCredentials(DomainError):
    """Malformed Basic credentials, an unknown user, a wrong or revoked password: one answer."""

    default_message = "Invalid username or application password"


class TooManyAttempts(DomainError):
    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"Too many failed sign-in attempts; try again in {retry_after} seconds", retry_after=retry_after
        )


class BasicOverPlainHttp(DomainError):
    default_message = "HTTP Basic credentials are accepted over HTTPS only"


class DevTokensDisabled(DomainError):
    default_message = "Development tokens are not issued here: sign in through the platform's identity provider"


# --- who may do what -------------------------------------------------------------------


def can_manage(user: User, course: Course) -> bool:
    """Admins manage every course; a course's listed instructors manage that course."""
    return user.is_admin or user.id in course.instructor_ids


def ensure_can_manage(user: User, course: Course) -> None:
    if not can_manage(user, course):
        raise NotCourseManager()


def ensure_can_set_instructors(user: User) -> None:
    # Instructors edit their courses but do not decide who teaches them.
    if not user.is_admin:
        raise InstructorsByAdminsOnly()


# --- courses ---------------------------------------------------------------------------


def slugify(title: str) -> str:
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_title.lower()).strip("-")
    return slug[:120] or "course"


def check_transition(current: CourseStatus, target: CourseStatus, lesson_count: int) -> bool:
    """Whether moving ``current`` to ``target`` is a change; raises if it is not allowed.

    draft -> published/archived, published -> archived, archived -> published. A course
    goes back to draft never (learners may be enrolled). Publishing needs a lesson.
    """
    if current == target:
        return False
    if target == "draft":
        raise NoReturnToDraft(current)
    if target == "published" and lesson_count == 0:
        raise CourseHasNoLessons()
    return True


def check_archive_lesson(status: CourseStatus, live_lessons: int) -> None:
    """Archiving a lesson; a published course keeps at least one (as publishing needs one)."""
    if status == "published" and live_lessons <= 1:
        raise LastLessonOfPublishedCourse()


def place_lesson(order_now: list[int], lesson_id: int, position: int | None) -> list[int]:
    """The course's lesson ids after putting ``lesson_id`` at 1-based ``position``.

    ``order_now`` may or may not contain ``lesson_id`` (new lessons do not); ``None``
    or a position past the end means last. Positions stay contiguous from 1.
    """
    rest = [i for i in order_now if i != lesson_id]
    index = len(rest) if position is None else max(0, min(position - 1, len(rest)))
    return [*rest[:index], lesson_id, *rest[index:]]


def check_reorder(order_now: list[int], wanted: list[int]) -> None:
    if len(wanted) != len(set(wanted)):
        raise InvalidLessonOrder("lesson_ids lists a lesson twice", params={"lesson_ids": "duplicate"})
    if sorted(wanted) != sorted(order_now):
        missing = sorted(set(order_now) - set(wanted))
        unknown = sorted(set(wanted) - set(order_now))
        raise InvalidLessonOrder(
            "lesson_ids must list every lesson of the course exactly once",
            params={"lesson_ids": "not a permutation of the course's lessons"},
            missing=missing,
            unknown=unknown,
        )


def catalog_entry(course: Course) -> CourseCatalogEntry:
    """The whole course as published on course-catalog (and answered internally)."""
    return CourseCatalogEntry(
        event_id=course.last_event_id,
        occurred_at=course.last_event_at,
        course_id=course.id,
        revision=course.revision,
        title=course.title,
        slug=course.slug,
        description=course.description,
        status=course.status,
        requires_sequential_progress=course.requires_sequential_progress,
        certificate_enabled=course.certificate_enabled,
        certificate_validity_days=course.certificate_validity_days,
        video_completion_threshold=course.video_completion_threshold,
        recertify_after_days=course.recertify_after_days,
        instructor_ids=list(course.instructor_ids),
        lessons=[
            CatalogLesson(
                id=lesson.id, title=lesson.title, order=lesson.order, is_required=lesson.is_required,
                duration_seconds=lesson.duration_seconds, kind=lesson.kind,
                video_completion_threshold=lesson.video_completion_threshold,
            )
            for lesson in sorted(course.lessons, key=lambda lesson: lesson.order)
        ],
    )


def ensure_enrollable(course: Course | None) -> Course:
    if course is None or course.status != "published":
        raise CourseNotFound()
    return course


# --- enrollments -----------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    username: str
    display_name: str
    email: str
    avatar: str | None


def profile_of(user: User) -> Profile:
    username = user.username or (user.email.split("@")[0] if user.email else user.id)
    return Profile(
        username=username,
        display_name=user.name or username,
        email=user.email,
        avatar=user.avatar,
    )


def is_enrolled(enrollment: Enrollment | None) -> bool:
    return enrollment is not None and enrollment.status != "unenrolled"


def resumed_status(enrollment: Enrollment) -> EnrollmentStatus:
    """Status on enrolling again: progress was kept, so a completed course stays completed."""
    return "completed" if enrollment.completed_at is not None else "active"


def enrollment_event(enrollment: Enrollment) -> EnrollmentChanged:
    return EnrollmentChanged(
        event_id=enrollment.last_event_id,
        occurred_at=enrollment.last_event_at,
        user_id=enrollment.user_id,
        course_id=enrollment.course_id,
        enrollment_id=enrollment.id,
        status=enrollment.status,
        revision=enrollment.revision,
        enrolled_at=enrollment.enrolled_at,
        username=enrollment.username,
        display_name=enrollment.display_name,
        email=enrollment.email,
        avatar=enrollment.avatar,
        attempt=enrollment.attempt,
    )


def ensure_resettable(enrollment: Enrollment | None) -> Enrollment:
    """A reset starts a new attempt of a current enrollment (active or completed)."""
    if enrollment is None or not is_enrolled(enrollment):
        raise NoCurrentEnrollment()
    return enrollment


# --- progress, as reported by events ---------------------------------------------------


def is_past_attempt(enrollment: Enrollment, attempt: int) -> bool:
    """Whether a progress or completion fact belongs to an attempt since reset: it changes
    nothing (the new attempt starts from zero whatever the old one does later)."""
    return attempt < enrollment.attempt


def is_newer_progress(enrollment: Enrollment, at: datetime, seq: datetime) -> bool:
    """Whether a progress fact stamped (``at``, ``seq``) is newer than what is stored.

    ``at`` is the event's own timestamp (when the lesson was completed or reopened) and
    ``seq`` its occurred_at, which breaks ties between facts of the same instant.
    """
    if enrollment.progress_at is None or enrollment.progress_seq is None:
        return True
    return (at, seq) > (enrollment.progress_at, enrollment.progress_seq)


@dataclass(frozen=True)
class CompletionChange:
    status: EnrollmentStatus
    completed_at: datetime
    status_changed: bool
    progress_to_full: bool


def apply_completion(enrollment: Enrollment, completed_at: datetime, seq: datetime) -> CompletionChange:
    """A course completion, as the enrollment keeps it.

    Completion is sticky: the first completion time is kept, and reopening a lesson later
    lowers the percentage but does not undo it. An unenrolled learner stays unenrolled
    (enrolling again resumes as completed). Progress goes to 100 unless a newer progress
    fact is already stored.
    """
    first = completed_at if enrollment.completed_at is None else min(enrollment.completed_at, completed_at)
    status: EnrollmentStatus = "completed" if enrollment.status == "active" else enrollment.status
    return CompletionChange(
        status=status,
        completed_at=first,
        status_changed=status != enrollment.status,
        progress_to_full=is_newer_progress(enrollment, completed_at, seq),
    )


def is_newer_certificate(enrollment: Enrollment, issued_at: datetime) -> bool:
    return enrollment.certificate_issued_at is None or issued_at > enrollment.certificate_issued_at


def is_newer_certificate_status(enrollment: Enrollment, changed_at: datetime) -> bool:
    """Whether a revocation or reinstatement made at ``changed_at`` is newer than the one stored."""
    stored = enrollment.certificate_status_changed_at
    return stored is None or changed_at > stored


# --- recertification -------------------------------------------------------------------


class DueCompletion(BaseModel):
    """A completed enrollment of a course that recertifies, due for its notice."""

    model_config = ConfigDict(frozen=True)

    enrollment_id: int
    user_id: str
    course_id: int
    attempt: int
    completed_at: datetime
    display_name: str
    email: str
    course_title: str
    recertify_after_days: int


def reset_time(completed_at: datetime, recertify_after_days: int, now: datetime, notice_days: int) -> datetime:
    """When a completion noticed at ``now`` is reset: when it falls due, but never sooner than
    ``notice_days`` after the learner was told (a notice found late, e.g. after the course
    started recertifying or the job was down, moves the reset, not the notice)."""
    return max(completed_at + timedelta(days=recertify_after_days), now + timedelta(days=notice_days))


def recertification_notice(due: DueCompletion, now: datetime, notice_days: int) -> RecertificationScheduled:
    return RecertificationScheduled(
        occurred_at=now,
        user_id=due.user_id,
        course_id=due.course_id,
        enrollment_id=due.enrollment_id,
        attempt=due.attempt,
        completed_at=due.completed_at,
        reset_at=reset_time(due.completed_at, due.recertify_after_days, now, notice_days),
        course_title=due.course_title,
        user_name=due.display_name,
        user_email=due.email,
    )


# --- lists -----------------------------------------------------------------------------

StudentOrderBy = Literal["enrolled_at", "last_accessed", "progress_percentage", "display_name"]
SortOrder = Literal["asc", "desc"]
MyCoursesStatus = Literal["active", "completed", "all"]


def page_size(per_page: int) -> int:
    """per_page is capped, not refused, above the maximum."""
    return min(per_page, MAX_PER_PAGE)


def statuses_for(filter_: MyCoursesStatus) -> list[str]:
    return ["active", "completed"] if filter_ == "all" else [filter_]


# --- application passwords (HTTP Basic) ------------------------------------------------

# WordPress's shape: 24 letters and digits, shown in groups of four; spaces are ignored
# when checking, so either form works.
APP_PASSWORD_LENGTH = 24
APP_PASSWORD_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# Longer credentials are refused before anything is hashed or looked up.
MAX_BASIC_USERNAME = 255
MAX_BASIC_PASSWORD = 256


class AppPassword(BaseModel):
    """An application password as stored, without its hash."""

    model_config = ConfigDict(frozen=True)

    id: int
    user_id: str
    label: str
    name: str
    email: str
    roles: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str  # spaces removed


def check_app_password_user(user_id: str) -> None:
    if ":" in user_id:
        raise InvalidAppPasswordUser()


def normalize_password(password: str) -> str:
    return password.replace(" ", "")


def grouped(password: str) -> str:
    """The password as WordPress shows it: groups of four separated by spaces."""
    return " ".join(password[i:i + 4] for i in range(0, len(password), 4))


def parse_basic(authorization: str) -> Credentials:
    """The user and password of an ``Authorization: Basic ...`` header (RFC 7617, UTF-8)."""
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise InvalidCredentials()
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidCredentials() from exc
    username, colon, password = decoded.partition(":")
    password = normalize_password(password)
    if (not colon or not username or not password or len(username) > MAX_BASIC_USERNAME
            or len(password) > MAX_BASIC_PASSWORD or "\x00" in decoded):
        raise InvalidCredentials()
    return Credentials(username, password)


def could_be_app_password(password: str) -> bool:
    """Whether a (normalized) password has the shape of one this service makes: anything
    else is wrong without hashing it."""
    return len(password) == APP_PASSWORD_LENGTH and all(c in APP_PASSWORD_ALPHABET for c in password)


AttemptScope = Literal["user", "address"]


@dataclass(frozen=True)
class AttemptWindow:
    """Failed sign-ins counted for one user or one client address since ``window_start``."""

    scope: AttemptScope
    key: str
    window_start: datetime
    failures: int


@dataclass(frozen=True)
class AttemptLimits:
    per_user: int
    per_address: int
    window: timedelta

    def limit(self, scope: AttemptScope) -> int:
        return self.per_user if scope == "user" else self.per_address


def is_current(window: AttemptWindow, now: datetime, limits: AttemptLimits) -> bool:
    return window.window_start > now - limits.window


def attempt_refusal(windows: list[AttemptWindow], now: datetime, limits: AttemptLimits) -> int | None:
    """Seconds until another attempt may be made, if a user or address has used up its
    failures in its current window; None if the attempt may go ahead."""
    waits = [
        (w.window_start + limits.window - now).total_seconds()
        for w in windows
        if is_current(w, now, limits) and w.failures >= limits.limit(w.scope)
    ]
    return max(1, math.ceil(max(waits))) if waits else None


def counted(window: AttemptWindow, now: datetime, limits: AttemptLimits) -> AttemptWindow:
    """The window with one more attempt counted (a new window if the last one is over)."""
    if is_current(window, now, limits):
        return AttemptWindow(window.scope, window.key, window.window_start, window.failures + 1)
    return AttemptWindow(window.scope, window.key, now, 1)


def reaches_limit(window: AttemptWindow, limits: AttemptLimits) -> bool:
    return window.failures >= limits.limit(window.scope)


# --- erasure (GDPR) ----------------------------------------------------------------------

# The services that hold a learner's data besides enrollment, which erases its own at once.
ERASING_SERVICES = ("progress", "certificates", "notifications")


class ServiceErasure(BaseModel):
    """One service's part of an erasure: ``done`` (with when and what it erased),
    ``pending`` (it has not erased the learner yet) or ``unavailable`` (it could not be asked)."""

    model_config = ConfigDict(frozen=True)

    status: Literal["done", "pending", "unavailable"]
    erased_at: datetime | None = None
    erased: dict[str, int] = Field(default_factory=dict)


class ErasureStatus(BaseModel):
    """An erasure request and where every service stands; ``done`` once all are."""

    model_config = ConfigDict(frozen=True)

    erasure_id: UUID
    requested_at: datetime
    completed_at: datetime | None
    done: bool
    services: dict[str, ServiceErasure]


def erasure_done(services: dict[str, ServiceErasure]) -> bool:
    return all(part.status == "done" for part in services.values())
