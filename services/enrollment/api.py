"""HTTP routes of the enrollment service: catalog admin, course, enrollments, internal API."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from services.enrollment import domain, usecases
from services.enrollment.domain import MyCoursesStatus, SortOrder, StudentOrderBy
from services.enrollment.schemas import (
    AppPasswordCreate,
    AppPasswordCreated,
    AppPasswordOut,
    CourseCreate,
    CourseOut,
    CourseUpdate,
    Data,
    DevPerson,
    DevToken,
    DevTokenRequest,
    EnrollmentOut,
    LessonCreate,
    LessonOrder,
    LessonUpdate,
    ManagedCourseList,
    Message,
    MyCourseList,
    PageMeta,
    StudentList,
)
from services.enrollment.settings import EnrollmentSettings
from services.enrollment.usecases import EnrollmentState
from shared import dead_letters_api
from shared.auth import AdminUser, CurrentUser, InternalCaller
from shared.errors import ErrorMap, HttpError
from shared.internal import PeerUnavailable
from shared.openapi import errors
from shared.service import DbPool, state_of
from shared.validation import MAX_BIGINT, MAX_PAGE

CourseId = Annotated[int, Path(ge=1, le=MAX_BIGINT)]
LessonId = Annotated[int, Path(ge=1, le=MAX_BIGINT)]
LearnerId = Annotated[str, Path(min_length=1, max_length=255)]
Page = Annotated[int, Query(ge=1, le=MAX_PAGE)]
PerPage = Annotated[int, Query(ge=1, description="capped at 100")]
AppPasswordId = Annotated[int, Path(ge=1, le=MAX_BIGINT)]


def _state(request: Request) -> EnrollmentState:
    return state_of(request, EnrollmentState)


State = Annotated[EnrollmentState, Depends(_state)]


def _settings(request: Request) -> EnrollmentSettings:
    settings: EnrollmentSettings = request.app.state.settings
    return settings


Settings = Annotated[EnrollmentSettings, Depends(_settings)]

admin = APIRouter(prefix="/api/admin/courses", tags=["catalog admin"])
public = APIRouter(prefix="/api/courses", tags=["courses and enrollments"])
internal = APIRouter(prefix="/internal", tags=["internal"], include_in_schema=False)
app_passwords = APIRouter(prefix="/api/admin/app-passwords", tags=["application passwords"])
erasures = APIRouter(prefix="/api/admin/erasures", tags=["erasure and export"])
exports = APIRouter(prefix="/api/admin/exports", tags=["erasure and export"])
dev = APIRouter(prefix="/api/dev", tags=["development sign-in"])


# --- catalog admin ---------------------------------------------------------------------


@admin.post("", status_code=201, responses=errors((409, "slug_taken")))
async def create_course(body: CourseCreate, user: AdminUser, pool: DbPool) -> Message[CourseOut]:
    course = await usecases.create_course(pool, body.model_dump())
    return Message(message="Course created", data=CourseOut.of(course))


@admin.get("")
async def managed_courses(
    user: CurrentUser, pool: DbPool, page: Page = 1, per_page: PerPage = domain.DEFAULT_PER_PAGE
) -> ManagedCourseList:
    """The courses the caller manages, newest first: every course for an administrator,
    the courses listing them as instructor for anyone else, with their learner counts."""
    total, size, rows = await usecases.managed_courses(pool, user, page=page, per_page=per_page)
    return ManagedCourseList(data=rows, meta=PageMeta(total=total, per_page=size, current_page=page))


@admin.get("/{course_id}", responses=errors((403, "forbidden"), (404, "course_not_found")))
async def get_any_course(course_id: CourseId, user: CurrentUser, pool: DbPool) -> Data[CourseOut]:
    """Any status (drafts too), for the course's instructors and administrators."""
    return Data(data=CourseOut.of(await usecases.manageable_course(pool, user, course_id)))


@admin.patch("/{course_id}", responses=errors(
    (400, "invalid_status"), (403, "forbidden"), (404, "course_not_found"), (409, "slug_taken")))
async def update_course(
    course_id: CourseId, body: CourseUpdate, user: CurrentUser, pool: DbPool
) -> Message[CourseOut]:
    course = await usecases.update_course(pool, user, course_id, body.changes())
    return Message(message="Course updated", data=CourseOut.of(course))


@admin.post("/{course_id}/publish", responses=errors(
    (400, "course_has_no_lessons"), (400, "invalid_status"), (403, "forbidden"), (404, "course_not_found")))
async def publish_course(course_id: CourseId, user: CurrentUser, pool: DbPool) -> Message[CourseOut]:
    course = await usecases.set_course_status(pool, user, course_id, "published")
    return Message(message="Course published", data=CourseOut.of(course))


@admin.post("/{course_id}/archive", responses=errors(
    (400, "invalid_status"), (403, "forbidden"), (404, "course_not_found")))
async def archive_course(course_id: CourseId, user: CurrentUser, pool: DbPool) -> Message[CourseOut]:
    course = await usecases.set_course_status(pool, user, course_id, "archived")
    return Message(message="Course archived", data=CourseOut.of(course))


@admin.post("/{course_id}/lessons", status_code=201, responses=errors(
    (400, "invalid_request"), (403, "forbidden"), (404, "course_not_found")))
async def add_lesson(
    course_id: CourseId, body: LessonCreate, user: CurrentUser, pool: DbPool
) -> Message[dict[str, Any]]:
    fields = body.model_dump(exclude={"order"})
    course, lesson_id = await usecases.add_lesson(pool, user, course_id, fields, body.order)
    out = CourseOut.of(course)
    lesson = next(lesson for lesson in out.lessons if lesson.id == lesson_id)
    return Message(message="Lesson added", data={"lesson": lesson, "course": out})


@admin.put("/{course_id}/lessons/order", responses=errors(
    (400, "invalid_request"), (403, "forbidden"), (404, "course_not_found")))
async def reorder_lessons(
    course_id: CourseId, body: LessonOrder, user: CurrentUser, pool: DbPool
) -> Message[CourseOut]:
    course = await usecases.reorder_lessons(pool, user, course_id, body.lesson_ids)
    return Message(message="Lessons reordered", data=CourseOut.of(course))


@admin.patch("/{course_id}/lessons/{lesson_id}", responses=errors(
    (400, "invalid_request"), (403, "forbidden"), (404, "course_not_found"), (404, "lesson_not_found")))
async def update_lesson(
    course_id: CourseId, lesson_id: LessonId, body: LessonUpdate, user: CurrentUser, pool: DbPool
) -> Message[dict[str, Any]]:
    order = body.order if "order" in body.model_fields_set else None
    course = await usecases.update_lesson(pool, user, course_id, lesson_id, body.changes(exclude={"order"}), order)
    out = CourseOut.of(course)
    lesson = next(lesson for lesson in out.lessons if lesson.id == lesson_id)
    return Message(message="Lesson updated", data={"lesson": lesson, "course": out})


@admin.post("/{course_id}/learners/{user_id}/reset", responses=errors(
    (403, "forbidden"), (404, "course_not_found"), (404, "not_enrolled")))
async def reset_learner(
    course_id: CourseId, user_id: LearnerId, user: CurrentUser, pool: DbPool
) -> Message[EnrollmentOut]:
    """Start the learner's next attempt at 0 % (earlier attempts stay as history)."""
    enrollment = await usecases.reset_learner(pool, user, course_id, user_id)
    return Message(message="Learner's course reset", data=EnrollmentOut.of(enrollment))


@admin.delete("/{course_id}/lessons/{lesson_id}", responses=errors(
    (400, "course_needs_a_lesson"), (403, "forbidden"), (404, "course_not_found"), (404, "lesson_not_found")))
async def archive_lesson(
    course_id: CourseId, lesson_id: LessonId, user: CurrentUser, pool: DbPool
) -> Message[CourseOut]:
    """Archive the lesson: it leaves the course and no longer counts; learners' records of it stay."""
    course = await usecases.archive_lesson(pool, user, course_id, lesson_id)
    return Message(message="Lesson archived", data=CourseOut.of(course))


# --- learners --------------------------------------------------------------------------
# my-courses comes before /{course_id}: the literal path must win over the parameter.


@public.get("/my-courses")
async def my_courses(
    user: CurrentUser,
    pool: DbPool,
    status: MyCoursesStatus = "all",
    page: Page = 1,
    per_page: PerPage = domain.DEFAULT_PER_PAGE,
) -> MyCourseList:
    total, size, rows = await usecases.my_courses(pool, user, status, page=page, per_page=per_page)
    return MyCourseList(data=rows, meta=PageMeta(total=total, per_page=size, current_page=page))


@public.get("/{course_id}", responses=errors((404, "course_not_found")))
async def get_course(course_id: CourseId, user: CurrentUser, pool: DbPool) -> Data[CourseOut]:
    return Data(data=CourseOut.of(await usecases.published_course(pool, course_id)))


@public.post("/{course_id}/enroll", responses=errors((400, "already_enrolled"), (404, "course_not_found")))
async def enroll(course_id: CourseId, user: CurrentUser, pool: DbPool) -> Message[EnrollmentOut]:
    result = await usecases.enroll(pool, user, course_id)
    return Message(
        message="Successfully enrolled in course", data=EnrollmentOut.of(result.enrollment, result.resumed)
    )


@public.post("/{course_id}/unenroll", responses=errors(
    (403, "not_enrolled"), (404, "course_not_found"), (404, "not_enrolled")))
async def unenroll(course_id: CourseId, user: CurrentUser, pool: DbPool) -> Message[EnrollmentOut]:
    enrollment = await usecases.unenroll(pool, user, course_id)
    return Message(message="Successfully unenrolled from course", data=EnrollmentOut.of(enrollment))


@public.get("/{course_id}/students", responses=errors((403, "forbidden"), (404, "course_not_found")))
async def students(
    course_id: CourseId,
    user: CurrentUser,
    pool: DbPool,
    page: Page = 1,
    per_page: PerPage = domain.DEFAULT_PER_PAGE,
    orderby: StudentOrderBy = "enrolled_at",
    order: SortOrder = "desc",
) -> StudentList:
    total, size, rows = await usecases.students(
        pool, user, course_id, page=page, per_page=per_page, orderby=orderby, order=order
    )
    return StudentList(data=rows, meta=PageMeta(total=total, per_page=size, current_page=page))


# --- application passwords (admin API) ---------------------------------------------------

_ERROR = {"description": "Refused, in the error shape"}


@app_passwords.post("", status_code=201, responses={400: _ERROR, 401: _ERROR, 403: _ERROR})
async def create_app_password(
    body: AppPasswordCreate, user: AdminUser, pool: DbPool, state: State
) -> Message[AppPasswordCreated]:
    """A new application password; the answer shows it once (``password``, and
    ``credentials`` for ``curl -u``): only its argon2id hash is kept."""
    created = await usecases.create_app_password(
        pool, state.basic.hasher, user_id=body.user_id, name=body.name, email=body.email, roles=list(body.roles),
        label=body.label,
    )
    out = AppPasswordOut.of(created.app_password)
    return Message(
        message="Application password created",
        data=AppPasswordCreated(
            **out.model_dump(), password=created.password, credentials=f"{out.user_id}:{created.password}"
        ),
    )


@app_passwords.get("", responses={400: _ERROR, 401: _ERROR, 403: _ERROR})
async def list_app_passwords(
    user: AdminUser, pool: DbPool, user_id: Annotated[str | None, Query(min_length=1, max_length=255)] = None
) -> Data[list[AppPasswordOut]]:
    """Every application password (revoked ones with ``revoked_at``), or one user's; never a secret."""
    return Data(data=[AppPasswordOut.of(p) for p in await usecases.app_passwords(pool, user_id)])


@app_passwords.delete("/{password_id}", status_code=204, responses={401: _ERROR, 403: _ERROR, 404: _ERROR})
async def revoke_app_password(password_id: AppPasswordId, user: AdminUser, pool: DbPool, state: State) -> Response:
    """Revoke it: refused from now on by this process, by every process within ``APP_PASSWORD_CACHE_S``."""
    await usecases.revoke_app_password(pool, password_id, state.basic.memory)
    return Response(status_code=204)


# --- development sign-in (the reference web app at /app/) --------------------------------

_DEV_REFUSED = errors((403, "dev_tokens_disabled"))


@dev.get("/people", responses=_DEV_REFUSED)
async def dev_people(settings: Settings) -> Data[list[DevPerson]]:
    """The demo people of ``lessonstream seed-demo``, for a development sign-in page.
    Refused (403) in production and wherever tokens come from an identity provider."""
    people = usecases.dev_people(settings)
    return Data(data=[DevPerson(user_id=p.user_id, name=p.name, email=p.email, role=p.role) for p in people])


@dev.post("/token", responses=_DEV_REFUSED)
async def dev_token(body: DevTokenRequest, settings: Settings) -> Data[DevToken]:
    """A development bearer token for anyone, without credentials: development and test
    stacks only. Refused (403) in production and wherever tokens come from an identity
    provider, where the host platform hands the web app its token."""
    token, expires = usecases.dev_token(
        settings, user_id=body.user_id, name=body.name, email=body.email, role=body.role
    )
    return Data(data=DevToken(token=token, expires_at=expires))


# --- erasure and export (GDPR; admin API) ------------------------------------------------


@erasures.post("/{user_id}", status_code=202, responses=errors((403, "forbidden")))
async def request_erasure(
    user_id: LearnerId, user: AdminUser, pool: DbPool, state: State
) -> Message[domain.ErasureStatus]:
    """Erase the learner from every service: enrollment deletes its data at once and tells
    the others (``learner-erased``); ``data`` shows where each service stands (see
    ``GET``). Asking again for the same learner changes nothing and answers the same request."""
    requested = await usecases.erase_learner(pool, user_id, state.basic.memory)
    status = await usecases.erasure_status(pool, state, user_id)
    message = "Erasure requested" if requested.created else "Erasure was already requested"
    return Message(message=message, data=status)


@erasures.get("/{user_id}", responses=errors((403, "forbidden"), (404, "erasure_not_found")))
async def erasure_status(user_id: LearnerId, user: AdminUser, pool: DbPool, state: State) -> Data[domain.ErasureStatus]:
    """The learner's erasure in every service: ``done``, ``pending`` or ``unavailable`` each."""
    return Data(data=await usecases.erasure_status(pool, state, user_id))


@exports.get("/{user_id}", responses=errors((403, "forbidden"), (503, "service_unavailable")))
async def export_learner(user_id: LearnerId, user: AdminUser, pool: DbPool, state: State) -> Data[dict[str, Any]]:
    """Everything every service holds on the learner, in one JSON document (``services``, by
    service and table); 503 when a service cannot be asked (an export is whole or not given)."""
    return Data(data=await usecases.export_learner(pool, state, user_id))


# --- internal (read-your-writes for other services; never routed by the gateway) --------


@internal.get("/auth/basic")
async def exchange_basic(request: Request, _: InternalCaller, state: State) -> Response:
    """For the gateway's ``forward_auth``, on every request with ``Authorization: Basic``:
    200 with ``Authorization: Bearer <token>`` (which the gateway puts on the request in
    place of the credentials), or the refusal (401, 429, 403) it hands to the client as is.
    The client address and scheme are the gateway's ``X-Forwarded-For`` and ``X-Forwarded-Proto``."""
    forwarded_for = request.headers.get("x-forwarded-for", "")
    address = forwarded_for.split(",")[0].strip() or (request.client.host if request.client else "")
    scheme = request.headers.get("x-forwarded-proto") or request.url.scheme
    token = await state.basic.exchange(request.headers.get("authorization", ""), address[:100], scheme)
    return Response(status_code=200, headers={"Authorization": f"Bearer {token}", "Cache-Control": "no-store"})



@internal.get("/courses/{course_id}")
async def internal_course(course_id: CourseId, _: InternalCaller, pool: DbPool) -> JSONResponse:
    course = await usecases.any_course(pool, course_id)
    return JSONResponse(domain.catalog_entry(course).model_dump(mode="json"))


@internal.get("/courses/{course_id}/enrollments/{user_id}")
async def internal_enrollment(course_id: CourseId, user_id: str, _: InternalCaller, pool: DbPool) -> JSONResponse:
    enrollment = await usecases.current_enrollment(pool, user_id, course_id)
    return JSONResponse(domain.enrollment_event(enrollment).model_dump(mode="json"))


@internal.get("/courses/{course_id}/confirmation")
async def internal_confirmation(
    course_id: CourseId,
    _: InternalCaller,
    pool: DbPool,
    user_id: Annotated[str, Query(min_length=1)],
    revision: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
) -> JSONResponse:
    """For progress, before it decides a completion: the course's current revision and status,
    the whole course if newer than ``revision`` (the one the caller holds), and the learner's
    current enrollment in any status (null if they never enrolled)."""
    found = await usecases.confirmation(pool, course_id, user_id, revision)
    return JSONResponse(found.model_dump(mode="json"))


@internal.get("/recertifications/{event_id}")
async def internal_recertification(event_id: UUID, _: InternalCaller, pool: DbPool) -> JSONResponse:
    """For notifications, before it mails a learner: the recertification-scheduled event as
    this service published it (404 if it never did)."""
    notice = await usecases.recertification_notice(pool, event_id)
    return JSONResponse(notice.model_dump(mode="json"))


@internal.get("/enrollment-events/{event_id}")
async def internal_enrollment_event(event_id: UUID, _: InternalCaller, pool: DbPool) -> JSONResponse:
    """For notifications, before it sends a webhook: the enrollment-changed event as this
    service published it (404 if it never did)."""
    event = await usecases.enrollment_change(pool, event_id)
    return JSONResponse(event.model_dump(mode="json"))


@internal.get("/erasures/{event_id}")
async def internal_erasure(event_id: UUID, _: InternalCaller, pool: DbPool) -> JSONResponse:
    """For the other services, before they erase a learner: the request behind a
    learner-erased event (its subject is the id's hash; 404 if there is no such request)."""
    found = await usecases.erasure_request(pool, event_id)
    return JSONResponse(found.model_dump(mode="json"))


@internal.get("/learners/{user_id}/export")
async def internal_export(user_id: str, _: InternalCaller, pool: DbPool) -> JSONResponse:
    """What enrollment holds on the learner (its part of an export)."""
    return JSONResponse(await usecases.own_export(pool, user_id))


# The service's dead letters: the admin routes every service has (shared.dead_letters_api).
ROUTERS = [admin, public, app_passwords, erasures, exports, dev, internal, dead_letters_api.router("enrollment")]

# How a client is asked for Basic credentials again (RFC 7617).
_BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="Lessonstream", charset="UTF-8"'}

# The one place the enrollment's refusals become HTTP answers (message: the refusal's own).
ERRORS: ErrorMap = {
    domain.CourseNotFound: HttpError(404, "course_not_found"),
    domain.LessonNotFound: HttpError(404, "lesson_not_found"),
    domain.NotCourseManager: HttpError(403, "forbidden"),
    domain.InstructorsByAdminsOnly: HttpError(403, "forbidden"),
    domain.NoReturnToDraft: HttpError(400, "invalid_status"),
    domain.CourseHasNoLessons: HttpError(400, "course_has_no_lessons"),
    domain.LastLessonOfPublishedCourse: HttpError(400, "course_needs_a_lesson"),
    domain.InvalidLessonOrder: HttpError(400, "invalid_request"),
    domain.SlugTaken: HttpError(409, "slug_taken"),
    domain.AlreadyEnrolled: HttpError(400, "already_enrolled"),
    domain.NotEnrolled: HttpError(403, "not_enrolled"),
    domain.NoCurrentEnrollment: HttpError(404, "not_enrolled"),
    domain.RecertificationNotFound: HttpError(404, "recertification_not_found"),
    domain.ErasureNotFound: HttpError(404, "erasure_not_found"),
    PeerUnavailable: HttpError(503, "service_unavailable", "A service cannot be asked right now, try again"),
    domain.EnrollmentEventNotFound: HttpError(404, "enrollment_event_not_found"),
    domain.AppPasswordNotFound: HttpError(404, "app_password_not_found"),
    domain.InvalidAppPasswordUser: HttpError(400, "invalid_request"),
    domain.InvalidCredentials: HttpError(401, "unauthorized", headers=_BASIC_CHALLENGE),
    domain.TooManyAttempts: HttpError(429, "too_many_attempts"),  # Retry-After from its retry_after
    domain.BasicOverPlainHttp: HttpError(403, "https_required"),
    domain.DevTokensDisabled: HttpError(403, "dev_tokens_disabled"),
}
