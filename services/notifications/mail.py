"""Turning an event into an email: Jinja2 templates (HTML and plain text), headers, attachment.

Two template environments: the HTML one autoescapes everything a learner or an
instructor typed (name, course title), the text one does not (plain text needs no
escaping). Header values go through ``domain.header_safe`` and the ``email`` package's
SMTP policy, which encodes non-ASCII text (RFC 2047) and refuses raw line breaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from services.notifications.domain import MailKind, Notice, WebhookDisabled, header_safe, recipient_of, subject
from services.notifications.settings import NotificationsSettings
from shared.events import CertificateRevoked, CourseCompleted, RecertificationScheduled

TEMPLATES = Path(__file__).parent / "templates"


def _when(value: datetime) -> str:
    # Unambiguous in every locale: "5 March 2025, 14:03 UTC".
    return value.strftime("%-d %B %Y, %H:%M UTC") if value.tzinfo else value.strftime("%-d %B %Y, %H:%M")


def _environment(autoescape: bool) -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]) if autoescape else False,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["when"] = _when
    return env


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    maintype: str = "application"
    subtype: str = "pdf"


class MailComposer:
    def __init__(self, settings: NotificationsSettings) -> None:
        self._settings = settings
        self._html = _environment(autoescape=True)
        self._text = _environment(autoescape=False)
        self._from = Address(
            display_name=header_safe(settings.mail_from_name, 100), addr_spec=settings.mail_from_address
        )

    def context(self, kind: MailKind, event: Notice) -> dict[str, Any]:
        s = self._settings
        if isinstance(event, WebhookDisabled):
            return {
                "platform": s.mail_from_name,
                "owner_name": event.owner_name or "there",
                "url": event.url,
                "description": event.description,
                "reason": event.reason,
                "disabled_at": event.occurred_at,
                "failing_since": event.failing_since,
                "last_error": event.last_error,
                "endpoint_id": event.endpoint_id,
                "manage_url": event.manage_url,
            }
        # What every mail says: to whom, about which course, and where to go next.
        common: dict[str, Any] = {
            "course_title": event.course_title,
            "catalog_url": f"{s.site_url}/courses",
            "platform": s.mail_from_name,
        }
        if isinstance(event, CourseCompleted):
            return {
                **common,
                "learner_name": event.user_name or "there",
                "completed_at": event.completed_at,
                "certificate_enabled": event.certificate_enabled,
                "course_url": f"{s.site_url}/courses/{event.course_id}",
            }
        if isinstance(event, RecertificationScheduled):
            return {
                **common,
                "learner_name": event.user_name or "there",
                "completed_at": event.completed_at,
                "reset_at": event.reset_at,
                "course_url": f"{s.site_url}/courses/{event.course_id}",
            }
        certificate = {
            **common,
            "learner_name": event.student_name or "there",
            "verification_url": event.verification_url,
            "verification_code": event.verification_code,
            "certificate_id": event.certificate_id,
        }
        if isinstance(event, CertificateRevoked):
            return {**certificate, "changed_at": event.changed_at, "reason": event.reason}
        return {
            **certificate,
            "issued_at": event.issued_at,
            "certificate_url": event.certificate_url,
            "credential_url": event.credential_url,
            "attached": s.mail_attach_certificate,
        }

    def compose(
        self,
        kind: MailKind,
        event: Notice,
        *,
        message_id: str,
        date: datetime,
        attachment: Attachment | None = None,
    ) -> EmailMessage:
        context = self.context(kind, event)
        text = self._text.get_template(f"{kind.value}.txt").render(context)
        html = self._html.get_template(f"{kind.value}.html").render(context)

        name, address = recipient_of(event)
        msg = EmailMessage(policy=SMTP)
        about = event.url if isinstance(event, WebhookDisabled) else event.course_title
        msg["Subject"] = subject(kind, about)
        msg["From"] = self._from
        msg["To"] = Address(display_name=header_safe(name, 100), addr_spec=address.strip())
        msg["Message-ID"] = message_id
        # The first time the mail was queued: a resend is byte-for-byte the same message.
        msg["Date"] = format_datetime(date)
        msg["Auto-Submitted"] = "auto-generated"
        msg["X-Lessonstream-Event-Id"] = str(event.event_id)
        msg["X-Lessonstream-Kind"] = kind.value
        msg.set_content(text, subtype="plain", charset="utf-8")
        msg.add_alternative(html, subtype="html", charset="utf-8")
        if attachment is not None:
            # multipart/mixed around the alternative: readers show the body and list the PDF.
            msg.add_attachment(
                attachment.content,
                maintype=attachment.maintype,
                subtype=attachment.subtype,
                filename=attachment.filename,
            )
        return msg

    @property
    def sender(self) -> str:
        return self._settings.mail_from_address
