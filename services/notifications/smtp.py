"""One reusable SMTP connection (aiosmtplib), and what its errors mean for delivery.

Each sender worker owns one ``SmtpConnection``: it connects on first use, sends
message after message over the same session under a burst, and is closed after any
error (a session in an unknown state is not worth repairing) or after sitting idle.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from email.message import EmailMessage

import aiosmtplib

from services.notifications.domain import Failure, classify_smtp_code
from services.notifications.settings import NotificationsSettings


class DeliveryError(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.detail)
        self.failure = failure


def classify(exc: BaseException) -> Failure:
    """Map an aiosmtplib (or socket) error to a temporary or permanent failure."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refused = exc.recipients[0] if exc.recipients else None
        if refused is None:
            return Failure(True, "recipient refused")
        return Failure(classify_smtp_code(refused.code), f"{refused.code} {refused.message}", refused.code)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        # Our credentials, not the mail: fixing the settings must let it through later.
        return Failure(True, f"authentication failed: {exc.code} {exc.message}", exc.code)
    if isinstance(exc, (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPServerDisconnected)):
        return Failure(True, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return Failure(classify_smtp_code(exc.code), f"{exc.code} {exc.message}", exc.code)
    if isinstance(exc, (OSError, TimeoutError, aiosmtplib.SMTPException)):
        return Failure(True, f"{type(exc).__name__}: {exc}")
    return Failure(True, f"unexpected {type(exc).__name__}: {exc}")


class SmtpConnection:
    def __init__(self, settings: NotificationsSettings) -> None:
        self._settings = settings
        self._client: aiosmtplib.SMTP | None = None
        self._last_used = 0.0

    def _new_client(self) -> aiosmtplib.SMTP:
        s = self._settings
        tls_context: ssl.SSLContext | None = None
        if s.smtp_tls != "none" and s.smtp_ca_file:
            tls_context = ssl.create_default_context(cafile=s.smtp_ca_file)
        return aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username or None,
            password=s.smtp_password.get_secret_value() or None,
            use_tls=s.smtp_tls == "tls",
            # False, not None: with "none" never upgrade, even if the server offers it.
            start_tls=s.smtp_tls == "starttls",
            validate_certs=s.smtp_validate_certs,
            tls_context=tls_context,
            timeout=s.smtp_timeout_s,
        )

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    def idle_for(self) -> float:
        return time.monotonic() - self._last_used

    async def send(self, message: EmailMessage, sender: str, recipient: str) -> str:
        """Send one message; returns the server's reply, or raises ``DeliveryError``."""
        try:
            if not self.connected:
                await self.close()
                client = self._new_client()
                await client.connect()  # connect, EHLO, STARTTLS and login, as configured
                self._client = client
            assert self._client is not None
            _, reply = await self._client.send_message(message, sender=sender, recipients=[recipient])
        except Exception as exc:
            await self.close()
            raise DeliveryError(classify(exc)) from exc
        finally:
            self._last_used = time.monotonic()
        return reply

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        with contextlib.suppress(Exception):
            if client.is_connected:
                await client.quit(timeout=2)
        with contextlib.suppress(Exception):
            client.close()
