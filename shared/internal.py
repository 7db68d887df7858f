"""Client for the services' internal APIs (read-your-writes fallbacks, confirmations).

Internal routes live under ``/internal/...`` on each service, require the shared
``X-Internal-Token`` header, and are never routed by the gateway.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Literal, TypeVar
from urllib.parse import quote
from uuid import UUID

import httpx
from pydantic import BaseModel, ConfigDict

from shared.events import (
    CertificateIssued,
    CertificateRecord,
    CertificateRevoked,
    CourseCatalogEntry,
    CourseCompleted,
    EnrollmentChanged,
    RecertificationScheduled,
    VideoSessionEnded,
)
from shared.inbox import RejectedEvent, TransientError
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)

INTERNAL_PREFIX = "/internal"


def internal_client(settings: ServiceSettings, base_url: str, timeout: float = 3.0) -> httpx.AsyncClient:
    """A pooled client for one peer service; create once per process and close on shutdown."""
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"X-Internal-Token": settings.internal_token},
        timeout=httpx.Timeout(timeout, connect=1.0),
        limits=httpx.Limits(max_connections=50, max_keepalive_connections=20),
    )


class PeerUnavailable(TransientError):
    """A peer service could not be asked: unreachable, timed out, or an answer other than
    200 or 404. Transient for an event handler (the message comes back); each service maps
    it to its 503 (``ServiceSpec.errors``)."""

    def __init__(self, peer: str, detail: str) -> None:
        super().__init__(f"{peer} cannot be asked right now: {detail}")
        self.peer = peer


async def get_internal(client: httpx.AsyncClient, path: str, peer: str) -> bytes | None:
    """GET an internal route of ``peer``: the body of a 200, None for a 404, and
    ``PeerUnavailable`` for anything else."""
    try:
        response = await client.get(path)
    except httpx.HTTPError as exc:
        log.warning("%s internal API unreachable for %s: %r", peer, path, exc)
        raise PeerUnavailable(peer, repr(exc)) from exc
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        log.warning("%s internal API answered %s to %s", peer, response.status_code, path)
        raise PeerUnavailable(peer, f"answered {response.status_code} to {path}")
    return response.content


class CourseConfirmation(BaseModel):
    """The owner's answer to "is my copy of this course current, and is this learner still
    enrolled?" (enrollment's ``GET /internal/courses/{id}/confirmation``).

    ``revision`` and ``status`` are the course's current ones; ``course`` is the whole
    current entry only when it is newer than the revision the caller said it holds;
    ``enrollment`` is the learner's current enrollment in any status (``unenrolled``
    included), or null if they never enrolled.
    """

    model_config = ConfigDict(frozen=True)

    course_id: int
    revision: int
    status: str
    course: CourseCatalogEntry | None = None
    enrollment: EnrollmentChanged | None = None


# -- confirming an event with the service that owns its data ---------------------------------
#
# An irreversible act (a certificate, an email) is taken on the owner's word, not on a
# message anyone able to write to the topic could have produced: the consumer fetches the
# owner's copy of the event and compares what matters. Unknown or different: rejected
# (dead-lettered with the reason). Owner unreachable: transient (the message comes back).

# What a forged course-completed could change to make a certificate or mail go astray.
COMPLETION_FIELDS = ("user_id", "course_id", "attempt", "user_email", "user_name", "course_title")
# What a forged recertification-scheduled could change to mail someone else, or another date.
RECERTIFICATION_FIELDS = (
    "user_id", "course_id", "enrollment_id", "attempt", "completed_at", "reset_at", "user_email", "user_name",
    "course_title",
)
# What a forged enrollment-changed could change to tell another system something untrue.
ENROLLMENT_FIELDS = (
    "user_id", "course_id", "enrollment_id", "status", "revision", "attempt", "enrolled_at", "username",
    "display_name", "email",
)
# Everything a video-session-ended states becomes an xAPI statement: all of it is compared.
VIDEO_SESSION_FIELDS = (
    "user_id", "course_id", "lesson_id", "attempt", "session_id", "started_at", "ended_at", "start_position",
    "end_position", "played_segments", "video_length", "progress", "completed",
)
# The links are not compared but taken from the owner: they derive from its configuration
# (PUBLIC_BASE_URL), and a mismatch there must not dead-letter genuine mail.
CERTIFICATE_FIELDS = (
    "user_id", "course_id", "certificate_id", "verification_code", "student_email", "student_name", "course_title",
)


class IssuedCertificate(CertificateRecord):
    """The certificates service's internal answer for one certificate.

    ``status`` is the certificate's current one. ``revoked_at`` and ``revocation_reason``
    describe the current revocation (null while valid). ``status_changed_at`` is the time
    of the latest revocation or reinstatement (null if the status never changed): the
    ``changed_at`` of the latest ``certificate-revoked`` event, by which a claim about an
    older change is recognised as superseded.
    """

    user_id: str
    course_id: int
    issued_event_id: UUID | None = None
    status: Literal["valid", "revoked"] = "valid"
    revoked_at: datetime | None = None
    revocation_reason: str | None = None
    status_changed_at: datetime | None = None


# What the record says about the certificate's status, not about what certificate-issued said.
_STATUS_FIELDS = frozenset({"issued_event_id", "status", "revoked_at", "revocation_reason", "status_changed_at"})


def _differences(claimed: BaseModel, owned: BaseModel, fields: tuple[str, ...]) -> list[str]:
    return [name for name in fields if getattr(claimed, name) != getattr(owned, name)]


E = TypeVar("E", CourseCompleted, RecertificationScheduled, EnrollmentChanged, VideoSessionEnded)


async def _owners_copy(client: httpx.AsyncClient, peer: str, path: str, claimed: E, fields: tuple[str, ...]) -> E:
    """The owner's stored copy of the event ``claimed`` (GET ``path``): ``RejectedEvent`` when
    the owner published no such event or its copy differs in ``fields`` (a forged or altered
    message), ``TransientError`` when the owner cannot answer. The copy is the one to act on."""
    body = await get_internal(client, f"{INTERNAL_PREFIX}/{path}/{claimed.event_id}", peer)
    if body is None:
        raise RejectedEvent(f"{peer} published no {claimed.type} with event_id {claimed.event_id}")
    owned = type(claimed).model_validate_json(body)
    if different := _differences(claimed, owned, fields):
        raise RejectedEvent(f"{claimed.type} {claimed.event_id} differs from {peer}'s copy in {', '.join(different)}")
    return owned


async def confirm_completion(progress: httpx.AsyncClient, claimed: CourseCompleted) -> CourseCompleted:
    """Progress's own copy of a course-completed event (``GET /internal/completions/{id}``),
    compared in who completed what and which attempt (see ``_owners_copy``)."""
    return await _owners_copy(progress, "progress", "completions", claimed, COMPLETION_FIELDS)


async def confirm_video_session(progress: httpx.AsyncClient, claimed: VideoSessionEnded) -> VideoSessionEnded:
    """Progress's own copy of a video-session-ended event (``GET /internal/video-sessions/{id}``),
    compared in everything it states (see ``_owners_copy``)."""
    return await _owners_copy(progress, "progress", "video-sessions", claimed, VIDEO_SESSION_FIELDS)


async def confirm_recertification(
    enrollment: httpx.AsyncClient, claimed: RecertificationScheduled
) -> RecertificationScheduled:
    """Enrollment's own copy of a recertification-scheduled event
    (``GET /internal/recertifications/{id}``), compared in who is reset when (see ``_owners_copy``)."""
    return await _owners_copy(enrollment, "enrollment", "recertifications", claimed, RECERTIFICATION_FIELDS)


async def confirm_enrollment_change(enrollment: httpx.AsyncClient, claimed: EnrollmentChanged) -> EnrollmentChanged:
    """Enrollment's own copy of an enrollment-changed event (``GET /internal/enrollment-events/{id}``),
    compared in whose enrollment changed to what (see ``_owners_copy``)."""
    return await _owners_copy(enrollment, "enrollment", "enrollment-events", claimed, ENROLLMENT_FIELDS)


async def confirm_certificate(certificates: httpx.AsyncClient, claimed: CertificateIssued) -> CertificateIssued:
    """The certificates service's record behind a certificate-issued event.

    ``GET /internal/certificates/{certificate_id}``: rejected when no such certificate was
    issued, when the record differs, or when the record names another issuing event (a
    copy of a real event under a new id, which would otherwise mail the learner again).
    """
    path = f"{INTERNAL_PREFIX}/certificates/{quote(claimed.certificate_id, safe='')}"
    body = await get_internal(certificates, path, "certificates")
    if body is None:
        raise RejectedEvent(f"certificates issued no certificate {claimed.certificate_id!r}")
    record = IssuedCertificate.model_validate_json(body)
    owned = claimed.model_copy(update=record.model_dump(exclude=set(_STATUS_FIELDS)))
    different = _differences(claimed, owned, CERTIFICATE_FIELDS)
    if record.issued_event_id is not None and record.issued_event_id != claimed.event_id:
        different.append("event_id")
    if different:
        raise RejectedEvent(
            f"certificate-issued {claimed.event_id} differs from the certificates service's record in "
            + ", ".join(different)
        )
    return owned


async def _certificate_record(certificates: httpx.AsyncClient, certificate_id: str) -> IssuedCertificate | None:
    path = f"{INTERNAL_PREFIX}/certificates/{quote(certificate_id, safe='')}"
    body = await get_internal(certificates, path, "certificates")
    return IssuedCertificate.model_validate_json(body) if body is not None else None


async def confirm_revocation(
    certificates: httpx.AsyncClient, claimed: CertificateRevoked
) -> CertificateRevoked | None:
    """The certificates service's word on a certificate-revoked event (revoked or reinstated).

    ``GET /internal/certificates/{certificate_id}``, then, in this order:

    - no such certificate, or one whose learner, course, code, name, address or title differ
      from the claim: ``RejectedEvent``;
    - the claim is older than the owner's latest status change (``claimed.changed_at`` before
      ``status_changed_at``, or before ``revoked_at`` when the owner gives no
      ``status_changed_at``): ``None``, superseded. The certificate changed again since;
      the newer change has its own event, so this one is acknowledged and has no effect
      (whether it was genuine cannot be told any more, and it does not matter);
    - the owner's current status is not the claimed one (``revoked`` claimed while the owner
      says ``valid``, or ``reinstated`` while it says ``revoked``): ``RejectedEvent``;
    - the claim is newer than the owner's latest change (a change the owner does not know
      of): ``RejectedEvent``.

    Otherwise the event to act on: the claim with the owner's links and, for a revocation,
    the owner's reason. ``TransientError`` when the owner cannot answer.
    """
    record = await _certificate_record(certificates, claimed.certificate_id)
    what = f"certificate-revoked {claimed.event_id}"
    if record is None:
        raise RejectedEvent(f"certificates issued no certificate {claimed.certificate_id!r}")
    if different := _differences(claimed, record, CERTIFICATE_FIELDS):
        raise RejectedEvent(f"{what} differs from the certificates service's record in {', '.join(different)}")
    latest = record.status_changed_at or (record.revoked_at if record.status == "revoked" else None)
    if latest is not None and claimed.changed_at < latest:
        log.info("%s (%s at %s) superseded by the owner's change at %s", what, claimed.status,
                 claimed.changed_at, latest)
        return None
    expected = "revoked" if claimed.status == "revoked" else "valid"
    if record.status != expected:
        raise RejectedEvent(f"{what} says {claimed.status} but the certificates service says {record.status}")
    if latest is not None and claimed.changed_at > latest:
        raise RejectedEvent(f"{what} claims a change at {claimed.changed_at}, the owner's latest is at {latest}")
    update: dict[str, object] = {"verification_url": record.verification_url}
    if claimed.status == "revoked" and record.revocation_reason is not None:
        update["reason"] = record.revocation_reason
    return claimed.model_copy(update=update)
