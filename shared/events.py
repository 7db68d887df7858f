"""The single event contract: every topic and every event, as versioned pydantic models.

Each event carries the envelope ``event_id``, ``type``, ``version`` and ``occurred_at``
followed by its payload. Learner events are keyed ``"{user_id}:{course_id}"`` so that
one learner's events for one course stay in order on one partition; the catalog is
keyed by course id.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import ClassVar, Literal
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(UTC)


class Topic(StrEnum):
    COURSE_CATALOG = "course-catalog"
    ENROLLMENT_CHANGED = "enrollment-changed"
    LESSON_COMPLETED = "lesson-completed"
    LESSON_REOPENED = "lesson-reopened"
    COURSE_COMPLETED = "course-completed"
    CERTIFICATE_ISSUED = "certificate-issued"
    CERTIFICATE_REQUESTED = "certificate-requested"
    CERTIFICATE_REVOKED = "certificate-revoked"
    PROGRESS_RECALCULATED = "progress-recalculated"
    RECERTIFICATION_SCHEDULED = "recertification-scheduled"
    VIDEO_SESSIONS = "video-sessions"
    LEARNER_ERASED = "learner-erased"
    DEAD_LETTER = "dead-letter"


# Partition counts are final: the embedded broker cannot add partitions later.
# Learner topics get enough partitions for the certificate workers to scale out.
TOPIC_PARTITIONS: dict[Topic, int] = {
    Topic.COURSE_CATALOG: 4,
    Topic.ENROLLMENT_CHANGED: 12,
    Topic.LESSON_COMPLETED: 12,
    Topic.LESSON_REOPENED: 12,
    Topic.COURSE_COMPLETED: 12,
    Topic.CERTIFICATE_ISSUED: 12,
    Topic.CERTIFICATE_REQUESTED: 12,
    Topic.CERTIFICATE_REVOKED: 12,
    Topic.PROGRESS_RECALCULATED: 4,
    Topic.RECERTIFICATION_SCHEDULED: 12,
    Topic.VIDEO_SESSIONS: 12,
    Topic.LEARNER_ERASED: 4,
    Topic.DEAD_LETTER: 1,
}

# course-catalog carries the full course each time: compaction keeps the latest per course.
COMPACTED_TOPICS: frozenset[Topic] = frozenset({Topic.COURSE_CATALOG})


def learner_key(user_id: str, course_id: int) -> str:
    return f"{user_id}:{course_id}"


class Event(BaseModel):
    """Envelope shared by every event."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    topic: ClassVar[Topic]
    # What ``key()`` returns, for the event documents (AsyncAPI).
    key_format: ClassVar[str] = ""

    event_id: UUID = Field(default_factory=uuid4)
    type: str
    version: int = 1
    occurred_at: datetime = Field(default_factory=utcnow)

    def key(self) -> str:
        raise NotImplementedError


class LearnerEvent(Event):
    key_format: ClassVar[str] = "{user_id}:{course_id}"
    user_id: str
    course_id: int

    def key(self) -> str:
        return learner_key(self.user_id, self.course_id)


class CatalogLesson(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    title: str
    order: int
    is_required: bool = True
    duration_seconds: int | None = None
    kind: str = "video"
    # Coverage of duration_seconds a video lesson needs to complete itself, overriding the
    # course's; None: the course's rule applies.
    video_completion_threshold: float | None = None


class CourseCatalogEntry(Event):
    """The whole course as it is now; a replica can be rebuilt from these alone."""

    topic: ClassVar[Topic] = Topic.COURSE_CATALOG
    key_format: ClassVar[str] = "{course_id}"
    type: Literal["course-catalog"] = "course-catalog"

    course_id: int
    revision: int  # grows with every change; replicas ignore older revisions
    title: str
    slug: str
    description: str = ""
    status: Literal["draft", "published", "archived"]
    requires_sequential_progress: bool = False
    certificate_enabled: bool = True
    # How long a certificate of this course stays valid after issue; None: it never expires.
    certificate_validity_days: int | None = None
    instructor_ids: list[str] = Field(default_factory=list)
    # Coverage (0, 1] a video lesson needs to complete itself; None: learners complete
    # lessons themselves (POST .../complete). A lesson's own threshold overrides it.
    video_completion_threshold: float | None = None
    # Completions older than this are reset for a new attempt; None: never.
    recertify_after_days: int | None = None
    # The lessons that count, in order; archived lessons are not listed (their records stay).
    lessons: list[CatalogLesson] = Field(default_factory=list)

    def key(self) -> str:
        return str(self.course_id)


class EnrollmentChanged(LearnerEvent):
    topic: ClassVar[Topic] = Topic.ENROLLMENT_CHANGED
    type: Literal["enrollment-changed"] = "enrollment-changed"

    enrollment_id: int
    status: Literal["active", "completed", "unenrolled"]
    revision: int  # grows with every change of this enrollment
    enrolled_at: datetime
    username: str = ""
    display_name: str = ""
    email: str = ""
    avatar: str | None = None
    attempt: int = 1  # grows when the learner's course is reset (recertification); 1 for the first


class LessonStanding(LearnerEvent):
    """A lesson that changed state, with the course progress it left behind."""

    lesson_id: int
    progress_percentage: int
    completed_lessons: int
    total_lessons: int
    attempt: int = 1  # the enrollment's attempt the lesson belongs to


class LessonCompleted(LessonStanding):
    topic: ClassVar[Topic] = Topic.LESSON_COMPLETED
    type: Literal["lesson-completed"] = "lesson-completed"

    completed_at: datetime


class LessonReopened(LessonStanding):
    topic: ClassVar[Topic] = Topic.LESSON_REOPENED
    type: Literal["lesson-reopened"] = "lesson-reopened"

    reopened_at: datetime


class CourseCompleted(LearnerEvent):
    """Carries what certificates and notifications need, so neither looks anything up."""

    topic: ClassVar[Topic] = Topic.COURSE_COMPLETED
    type: Literal["course-completed"] = "course-completed"

    completed_at: datetime
    user_name: str
    user_email: str
    course_title: str
    certificate_enabled: bool
    enrolled_at: datetime | None = None
    instructor_ids: list[str] = Field(default_factory=list)
    # The course's certificate validity when the completion was decided (None: no expiry).
    certificate_validity_days: int | None = None
    attempt: int = 1  # one completion, and one certificate, per (learner, course, attempt)
    course_revision: int = 0  # the catalog revision the completion was decided on


class CertificateRecord(BaseModel):
    """What an issued certificate says: carried by ``certificate-issued`` and by the
    certificates service's internal answer about one certificate."""

    certificate_id: str
    verification_code: str
    certificate_url: str
    verification_url: str
    issued_at: datetime
    course_title: str
    student_name: str
    student_email: str
    # The signed Open Badges 3.0 credential beside the PDF (empty from before credentials).
    credential_url: str = ""


class CertificateIssued(LearnerEvent, CertificateRecord):
    topic: ClassVar[Topic] = Topic.CERTIFICATE_ISSUED
    type: Literal["certificate-issued"] = "certificate-issued"

    attempt: int = 1  # the learner's attempt at the course the certificate was issued for


class CertificateRequested(LearnerEvent):
    """Work for the certificate workers that did not come from ``course-completed``.

    ``issue``: the certificates API learned of a completion (from progress) before the
    event arrived, and hands the completion to the workers. ``regenerate``: re-render an
    issued certificate with the course's current template. Only the certificates service
    publishes and consumes it.
    """

    topic: ClassVar[Topic] = Topic.CERTIFICATE_REQUESTED
    type: Literal["certificate-requested"] = "certificate-requested"

    reason: Literal["issue", "regenerate"]
    completion: CourseCompleted | None = None  # for "issue"
    regeneration_id: int | None = None  # for "regenerate"
    attempt: int = 1  # "regenerate": the attempt whose certificate is rendered again


class CertificateRevoked(LearnerEvent):
    """A certificate's status changed: ``revoked`` (with why) or ``reinstated``.

    ``changed_at`` is when the certificates service made the change: consumers order the
    changes of one certificate by it, so a change that arrives late never undoes a newer
    one. Carries what the learner's mail needs (name, address, title, verification link).
    """

    topic: ClassVar[Topic] = Topic.CERTIFICATE_REVOKED
    type: Literal["certificate-revoked"] = "certificate-revoked"

    certificate_id: str
    verification_code: str
    status: Literal["revoked", "reinstated"]
    reason: str
    changed_at: datetime
    course_title: str
    student_name: str
    student_email: str
    verification_url: str


class LearnerProgress(BaseModel):
    """One learner's course progress as recalculated after a catalog change."""

    model_config = ConfigDict(frozen=True)

    user_id: str
    attempt: int = 1
    progress_percentage: int
    completed_lessons: int
    total_lessons: int


class ProgressRecalculated(Event):
    """A batch of learners' progress recalculated after a catalog change altered the
    course's required lessons (revision ``revision``). Keyed by course: batches of one
    course stay in order. ``recalculated_at`` orders it against the learners' other
    progress facts (lesson-completed, lesson-reopened)."""

    topic: ClassVar[Topic] = Topic.PROGRESS_RECALCULATED
    key_format: ClassVar[str] = "{course_id}"
    type: Literal["progress-recalculated"] = "progress-recalculated"

    course_id: int
    revision: int
    recalculated_at: datetime
    learners: list[LearnerProgress]

    def key(self) -> str:
        return str(self.course_id)


class RecertificationScheduled(LearnerEvent):
    """A completed enrollment will be reset for recertification at ``reset_at``: the
    learner is told beforehand. Published once per (enrollment, attempt)."""

    topic: ClassVar[Topic] = Topic.RECERTIFICATION_SCHEDULED
    type: Literal["recertification-scheduled"] = "recertification-scheduled"

    enrollment_id: int
    attempt: int  # the attempt that will end
    completed_at: datetime
    reset_at: datetime
    course_title: str
    user_name: str
    user_email: str


class VideoSessionEnded(LearnerEvent):
    """One viewing session of a video lesson, closed once the learner stopped sending
    heartbeats for it (or moved to another lesson): where it started and ended, what was
    played in it, and how much of the video the learner has watched in all. Published by
    progress once per session; an xAPI Video Profile session (initialized, played, paused)."""

    topic: ClassVar[Topic] = Topic.VIDEO_SESSIONS
    type: Literal["video-session-ended"] = "video-session-ended"

    session_id: UUID
    lesson_id: int
    attempt: int = 1
    started_at: datetime
    ended_at: datetime
    start_position: float  # seconds into the video
    end_position: float
    # [start, end] seconds played in this session, merged and ordered.
    played_segments: list[tuple[float, float]] = Field(default_factory=list)
    video_length: float | None = None  # seconds; None while unknown
    progress: float  # 0..1, the share of the video watched over all sessions
    completed: bool = False  # the lesson was completed by watching during this session


class LearnerErased(Event):
    """An administrator asked for a learner's personal data to be erased (GDPR, right to
    erasure). Published by enrollment, which has already erased its own data in the same
    transaction; every other service erases or pseudonymises what it holds on ``user_id``
    once enrollment confirms the request (``GET /internal/erasures/{event_id}``, which
    answers the request's subject hash, never the id itself). Carries the id alone: no name
    or address travels further. Keyed by the user id."""

    topic: ClassVar[Topic] = Topic.LEARNER_ERASED
    key_format: ClassVar[str] = "{user_id}"
    type: Literal["learner-erased"] = "learner-erased"

    user_id: str
    requested_at: datetime

    def key(self) -> str:
        return self.user_id


class DeadLetter(Event):
    """A message a consumer gave up on, with why; the consumer moved on."""

    topic: ClassVar[Topic] = Topic.DEAD_LETTER
    key_format: ClassVar[str] = "the failed message's key, else {source_topic}:{partition}"
    type: Literal["dead-letter"] = "dead-letter"

    source_topic: str
    partition: int
    offset: int
    consumer_group: str
    message_key: str | None = None
    value: str  # the original bytes, decoded as UTF-8 with replacement
    error: str
    attempts: int

    def key(self) -> str:
        # The failed message's key may hold what made it fail (a NUL character, which no
        # PostgreSQL text column stores): the dead letter must still be writable.
        return (self.message_key or f"{self.source_topic}:{self.partition}").replace("\x00", "\ufffd")


EVENT_TYPES: dict[Topic, type[Event]] = {
    Topic.COURSE_CATALOG: CourseCatalogEntry,
    Topic.ENROLLMENT_CHANGED: EnrollmentChanged,
    Topic.LESSON_COMPLETED: LessonCompleted,
    Topic.LESSON_REOPENED: LessonReopened,
    Topic.COURSE_COMPLETED: CourseCompleted,
    Topic.CERTIFICATE_ISSUED: CertificateIssued,
    Topic.CERTIFICATE_REQUESTED: CertificateRequested,
    Topic.CERTIFICATE_REVOKED: CertificateRevoked,
    Topic.PROGRESS_RECALCULATED: ProgressRecalculated,
    Topic.RECERTIFICATION_SCHEDULED: RecertificationScheduled,
    Topic.VIDEO_SESSIONS: VideoSessionEnded,
    Topic.LEARNER_ERASED: LearnerErased,
    Topic.DEAD_LETTER: DeadLetter,
}
