"""Request and response bodies of the enrollment API (the Fluent Community shapes)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

from services.enrollment.domain import AppPassword, Course, CourseFields, CourseStatus, Enrollment, LessonKind
from services.enrollment.store import ManagedCourseRow, MyCourseRow, StudentRow
from shared.validation import STORABLE, BigId

T = TypeVar("T")

Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), STORABLE]
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+(?:-[a-z0-9]+)*$", max_length=120)]
Description = Annotated[str, StringConstraints(max_length=20_000), STORABLE]
UserId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), STORABLE]
Instructors = Annotated[list[UserId], Field(max_length=50)]
Duration = Annotated[int, Field(ge=0, le=7 * 24 * 3600)]
Order = Annotated[int, Field(ge=1, le=100_000)]  # a position among a course's lessons
# Days a certificate stays valid after issue (up to a century); strict: "30" is refused.
ValidityDays = Annotated[int, Field(ge=1, le=36_500, strict=True)]
# Coverage of a video's duration that completes it, in (0, 1]; strict: "0.9" and true are refused.
Threshold = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False, strict=True)]
# Days after completion a course is reset for recertification (up to a century); strict too.
RecertifyDays = Annotated[int, Field(ge=1, le=36_500, strict=True)]


class _Patch(BaseModel):
    """A partial update: absent fields stay as they are; null only where a field may be empty."""

    model_config = ConfigDict(extra="forbid")
    NULLABLE: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="before")
    @classmethod
    def _no_nulls(cls, value: Any, info: ValidationInfo) -> Any:
        # Runs only for fields present in the body: absent means "leave as is".
        if value is None and info.field_name not in cls.NULLABLE:
            raise ValueError("may not be null")
        return value

    def changes(self, exclude: set[str] | None = None) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.model_fields_set if k not in (exclude or set())}


class CourseCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Title
    slug: Slug | None = None
    description: Description = ""
    requires_sequential_progress: bool = False
    certificate_enabled: bool = True
    certificate_validity_days: ValidityDays | None = None  # null: certificates never expire
    video_completion_threshold: Threshold | None = None  # null: learners complete lessons themselves
    recertify_after_days: RecertifyDays | None = None  # null: completions are never reset
    instructor_ids: Instructors = Field(default_factory=list)


class CourseUpdate(_Patch):
    # null clears them: no expiry, manual completion, no recertification
    NULLABLE: ClassVar[frozenset[str]] = frozenset(
        {"certificate_validity_days", "video_completion_threshold", "recertify_after_days"}
    )

    title: Title | None = None
    slug: Slug | None = None
    description: Description | None = None
    requires_sequential_progress: bool | None = None
    certificate_enabled: bool | None = None
    certificate_validity_days: ValidityDays | None = None
    video_completion_threshold: Threshold | None = None
    recertify_after_days: RecertifyDays | None = None
    instructor_ids: Instructors | None = None
    status: CourseStatus | None = None


class LessonCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Title
    order: Order | None = None  # 1-based position; absent means last
    is_required: bool = True
    duration_seconds: Duration | None = None
    kind: LessonKind = "video"
    video_completion_threshold: Threshold | None = None  # null: the course's rule


class LessonUpdate(_Patch):
    NULLABLE: ClassVar[frozenset[str]] = frozenset({"duration_seconds", "video_completion_threshold"})

    title: Title | None = None
    order: Order | None = None
    is_required: bool | None = None
    duration_seconds: Duration | None = None
    kind: LessonKind | None = None
    video_completion_threshold: Threshold | None = None


class LessonOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lesson_ids: Annotated[list[BigId], Field(min_length=1, max_length=1000)]


class LessonOut(BaseModel):
    id: int
    title: str
    order: int
    is_required: bool
    duration_seconds: int | None
    kind: str
    video_completion_threshold: float | None


class CourseOut(CourseFields):
    total_lessons: int
    created_at: datetime
    updated_at: datetime
    lessons: list[LessonOut]

    @classmethod
    def of(cls, course: Course) -> CourseOut:
        return cls(
            **course.model_dump(include=set(cls.model_fields) - {"lessons", "total_lessons"}),
            total_lessons=len(course.lessons),
            lessons=[LessonOut(**lesson.model_dump(include=set(LessonOut.model_fields))) for lesson in course.lessons],
        )


class EnrollmentOut(BaseModel):
    enrollment_id: int
    course_id: int
    user_id: str
    enrolled_at: datetime
    status: str
    attempt: int
    progress_percentage: int
    completed_at: datetime | None
    resumed: bool = False

    @classmethod
    def of(cls, enrollment: Enrollment, resumed: bool = False) -> EnrollmentOut:
        return cls(
            enrollment_id=enrollment.id, course_id=enrollment.course_id, user_id=enrollment.user_id,
            enrolled_at=enrollment.enrolled_at, status=enrollment.status, attempt=enrollment.attempt,
            progress_percentage=enrollment.progress_percentage, completed_at=enrollment.completed_at,
            resumed=resumed,
        )


class Data(BaseModel, Generic[T]):
    data: T


class Message(BaseModel, Generic[T]):
    message: str
    data: T


class PageMeta(BaseModel):
    total: int
    per_page: int
    current_page: int


class StudentList(BaseModel):
    data: list[StudentRow]
    meta: PageMeta


class ManagedCourseList(BaseModel):
    data: list[ManagedCourseRow]
    meta: PageMeta


class MyCourseList(BaseModel):
    data: list[MyCourseRow]
    meta: PageMeta


# --- application passwords ------------------------------------------------------------------

Role = Literal["learner", "instructor", "admin"]


class AppPasswordCreate(BaseModel):
    """An application password for ``user_id``: the profile its bearer tokens carry (the
    learner's display name and address, their roles) and its own ``label``."""

    model_config = ConfigDict(extra="forbid")

    user_id: UserId
    name: Annotated[str, StringConstraints(strip_whitespace=True, max_length=1000), STORABLE] = ""
    email: Annotated[str, StringConstraints(strip_whitespace=True, max_length=320), STORABLE] = ""
    roles: Annotated[list[Role], Field(min_length=1, max_length=3)] = Field(
        default_factory=lambda: list[Role](["learner"])
    )
    label: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200), STORABLE] = ""


class AppPasswordOut(AppPassword):
    """An application password as the API shows it: the stored one, never its hash."""

    @classmethod
    def of(cls, password: AppPassword) -> AppPasswordOut:
        return cls(**password.model_dump())


class AppPasswordCreated(AppPasswordOut):
    password: str = Field(description="Shown once: only its hash is kept")
    credentials: str = Field(description="USER:PASSWORD, as `curl -u` takes it")


class DevTokenRequest(BaseModel):
    """Who the development token is for (any id; the demo people are listed at ``/api/dev/people``)."""

    model_config = ConfigDict(extra="forbid")

    user_id: UserId
    name: Annotated[str, StringConstraints(strip_whitespace=True, max_length=1000), STORABLE] = ""
    email: Annotated[str, StringConstraints(strip_whitespace=True, max_length=320), STORABLE] = ""
    role: Role = "learner"


class DevToken(BaseModel):
    token: str = Field(description="A bearer token (HS256, the development secret)")
    expires_at: int = Field(description="Unix seconds")


class DevPerson(BaseModel):
    user_id: str
    name: str
    email: str
    role: Role
