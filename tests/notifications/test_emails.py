"""Both emails as a learner receives them, over the real broker and a real SMTP server."""

from __future__ import annotations

import io
from email.message import EmailMessage
from email.utils import getaddresses, parsedate_to_datetime

import pypdf
from fastapi import FastAPI
from fastapi.responses import Response

from tests.helpers import eventually, served
from tests.notifications.conftest import FROM_ADDRESS, FROM_NAME, Publisher, ServiceFactory, wait_for
from tests.notifications.events import certificate, completed
from tests.notifications.smtp_server import MailServer


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


async def test_completion_email_has_content_headers_and_escaping(
    smtp: MailServer, notifications: ServiceFactory, publisher: Publisher
) -> None:
    # A name and a title typed by people: markup, quotes, non-ASCII, and a header injection try.
    event = completed(
        "ada",
        user_name='Zoë <script>alert("x")</script> & Co',
        course_title="Kafka <b>Deep</b> Dive\r\nBcc: attacker@evil.example",
    )
    async with notifications(smtp) as service:
        await publisher.publish(event)
        [received] = await wait_for(lambda: smtp.to("ada@learners.example"), what="completion email")

        message = received.message
        assert received.rcpt_tos == ["ada@learners.example"]
        assert received.mail_from == FROM_ADDRESS
        assert message["Subject"] == "Congratulations, you completed Kafka <b>Deep</b> Dive Bcc: attacker@evil.example"
        # The line break in the title did not start a header of its own.
        header_lines = received.raw.split(b"\r\n\r\n", 1)[0].decode("ascii").split("\r\n")
        assert "Bcc" not in message
        assert not any(line.lower().startswith("bcc:") for line in header_lines)
        assert getaddresses([str(message["From"])]) == [(FROM_NAME, FROM_ADDRESS)]
        [(to_name, to_addr)] = getaddresses([str(message["To"])])
        assert to_addr == "ada@learners.example"
        assert to_name == 'Zoë <script>alert("x")</script> & Co'
        # Non-ASCII display names travel RFC 2047-encoded (the header block decoded as ASCII above).
        assert any(line.startswith("To: =?utf-8?") for line in header_lines)
        assert message["Message-ID"] == f"<{event.event_id.hex}.completed@academy.example>"
        assert parsedate_to_datetime(str(message["Date"])).tzinfo is not None
        assert message.get_content_type() == "multipart/alternative"

        text, html = parts(message)
        assert 'Congratulations, Zoë <script>alert("x")</script> & Co!' in text
        assert "Kafka <b>Deep</b> Dive" in text
        assert "5 March 2025, 14:03 UTC" in text
        assert "What comes next" in text and "Your certificate is being prepared" in text
        assert "https://learn.example/courses/7" in text
        # HTML: everything the learner or instructor typed is escaped, nothing executes.
        assert "<script>" not in html and "<b>Deep</b>" not in html
        assert "Zo&#235; &lt;script&gt;" in html or "Zoë &lt;script&gt;" in html
        assert "Kafka &lt;b&gt;Deep&lt;/b&gt; Dive" in html
        assert "&amp; Co" in html
        assert 'href="https://learn.example/courses"' in html

        row = await eventually(lambda: service.sent(event.event_id), what="the mail recorded as sent")
        assert row["status"] == "sent" and row["kind"] == "course_completed"
        assert [a["outcome"] for a in await service.attempts(row["id"])] == ["sent"]


async def test_completion_email_without_certificate_says_nothing_about_one(
    smtp: MailServer, notifications: ServiceFactory, publisher: Publisher
) -> None:
    async with notifications(smtp):
        await publisher.publish(completed("bo", certificate_enabled=False))
        [received] = await wait_for(lambda: smtp.to("bo@learners.example"), what="completion email")
        text, html = parts(received.message)
        assert "certificate" not in text.lower() and "certificate" not in html.lower()
        assert "Find your next course" in text


async def test_certificate_email_links_and_attached_pdf(
    smtp: MailServer, notifications: ServiceFactory, publisher: Publisher
) -> None:
    writer = pypdf.PdfWriter()
    writer.add_blank_page(width=595, height=842)
    buffer = io.BytesIO()
    writer.write(buffer)
    pdf = buffer.getvalue()

    files = FastAPI()
    downloads: list[str] = []

    @files.get("/certificates/{name}")
    async def download(name: str) -> Response:
        downloads.append(name)
        return Response(pdf, media_type="application/pdf")

    async with served(files) as base, notifications(smtp, mail_attach_certificate=True) as service:
        event = certificate(
            "cy",
            certificate_url=f"{base}/certificates/cert-cy-7.pdf",
            verification_url="https://learn.example/certificates/verify/V7XCY",
            student_name="Cy & <Friends>",
            course_title="Ünicode & <Things>",
        )
        await publisher.publish(event)
        [received] = await wait_for(lambda: smtp.to("cy@learners.example"), what="certificate email")
        message = received.message
        assert message["Subject"] == "Your certificate for Ünicode & <Things> is ready"
        assert message["Message-ID"] == f"<{event.event_id.hex}.certificate@academy.example>"
        assert message.get_content_type() == "multipart/mixed"
        text, html = parts(message)
        assert f"Download your certificate (PDF): {base}/certificates/cert-cy-7.pdf" in text
        assert "https://learn.example/certificates/verify/V7XCY" in text
        assert "Verification code: V7XCY" in text and "It is also attached" in text
        assert f'href="{base}/certificates/cert-cy-7.pdf"' in html
        assert "Ünicode &amp; &lt;Things&gt;" in html and "Cy &amp; &lt;Friends&gt;" in html

        [attachment] = list(message.iter_attachments())
        assert attachment.get_content_type() == "application/pdf"
        assert attachment.get_filename() == "certificate-V7XCY.pdf"
        content = attachment.get_content()
        assert content == pdf
        assert len(pypdf.PdfReader(io.BytesIO(content)).pages) == 1
        assert downloads == ["cert-cy-7.pdf"]
        row = await eventually(lambda: service.sent(event.event_id), what="the mail recorded as sent")
        assert row["status"] == "sent" and row["kind"] == "certificate_ready"


async def test_certificate_email_without_attachment_by_default(
    smtp: MailServer, notifications: ServiceFactory, publisher: Publisher
) -> None:
    async with notifications(smtp):
        await publisher.publish(certificate("di"))
        [received] = await wait_for(lambda: smtp.to("di@learners.example"), what="certificate email")
        message = received.message
        assert message.get_content_type() == "multipart/alternative"
        assert list(message.iter_attachments()) == []
        text, _ = parts(message)
        assert "https://learn.example/certificates/cert-di-7.pdf" in text
        assert "attached" not in text
