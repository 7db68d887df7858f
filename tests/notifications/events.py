"""Events as the producing services publish them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shared.events import CertificateIssued, CourseCompleted


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
