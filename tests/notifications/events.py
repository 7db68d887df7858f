"""Events as the producing services publish them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from shared.events import CertificateIssued, CertificateRevoked, CourseCompleted, RecertificationScheduled


def completed(user: str, course_id: int = 7, **overrides: Any) -> CourseCompleted:
    values: dict[str, Any] = {
        "user_id": user,
        "course_id": course_id,
        "completed_at": datetime(2025, 3, 5, 14, 3, tzinfo=UTC),
        "user_name": f"Learner {user}",
        "user_email": f"{user}@learners.example",
        "course_title": "Practical Kafka",
        "certificate_enabled": True,
    }
    values.update(overrides)
    return CourseCompleted(**values)


def certificate(user: str, course_id: int = 7, **overrides: Any) -> CertificateIssued:
    values: dict[str, Any] = {
        "user_id": user,
        "course_id": course_id,
        "certificate_id": f"cert-{user}-{course_id}",
        "verification_code": f"V{course_id}X{user.upper()}",
        "certificate_url": f"https://learn.example/certificates/cert-{user}-{course_id}.pdf",
        "verification_url": f"https://learn.example/certificates/verify/V{course_id}X{user.upper()}",
        "issued_at": datetime(2025, 3, 5, 14, 5, tzinfo=UTC),
        "course_title": "Practical Kafka",
        "student_name": f"Learner {user}",
        "student_email": f"{user}@learners.example",
    }
    values.update(overrides)
    return CertificateIssued(**values)


def status_change(
    issued: CertificateIssued, status: Literal["revoked", "reinstated"], changed_at: datetime, reason: str = "",
    **overrides: Any,
) -> CertificateRevoked:
    """A revocation or reinstatement of ``issued``, as the certificates service announces it."""
    values: dict[str, Any] = {
        "user_id": issued.user_id,
        "course_id": issued.course_id,
        "certificate_id": issued.certificate_id,
        "verification_code": issued.verification_code,
        "status": status,
        "reason": reason,
        "changed_at": changed_at,
        "course_title": issued.course_title,
        "student_name": issued.student_name,
        "student_email": issued.student_email,
        "verification_url": issued.verification_url,
    }
    values.update(overrides)
    return CertificateRevoked(**values)


def recertification(user: str, course_id: int = 7, **overrides: Any) -> RecertificationScheduled:
    """A completion to be reset for recertification, as the enrollment service announces it."""
    values: dict[str, Any] = {
        "user_id": user,
        "course_id": course_id,
        "enrollment_id": 40 + course_id,
        "attempt": 1,
        "completed_at": datetime(2025, 3, 5, 14, 3, tzinfo=UTC),
        "reset_at": datetime(2026, 3, 5, 14, 3, tzinfo=UTC),
        "course_title": "Practical Kafka",
        "user_name": f"Learner {user}",
        "user_email": f"{user}@learners.example",
    }
    values.update(overrides)
    return RecertificationScheduled(**values)
