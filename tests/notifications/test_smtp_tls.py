"""STARTTLS and implicit TLS with authentication, against a real TLS-speaking SMTP server."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.notifications.conftest import Publisher, ServiceFactory, wait_for
from tests.notifications.events import completed
from tests.notifications.smtp_server import MailServer


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp.crt", directory / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
async def tls_files(tmp_path: Path) -> AsyncIterator[tuple[Path, ssl.SSLContext]]:
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    yield cert, context


# The test server warns about AUTH without STARTTLS; its implicit-TLS session is encrypted.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
@pytest.mark.parametrize("mode", ["starttls", "tls"])
async def test_mail_goes_over_tls_with_login(
    mode: Literal["starttls", "tls"],
    tls_files: tuple[Path, ssl.SSLContext],
    notifications: ServiceFactory,
    publisher: Publisher,
) -> None:
    cert, context = tls_files
    server = MailServer(tls_context=context, implicit_tls=mode == "tls", credentials=("mailer", "s3cret"))
    await server.astart()
    try:
        async with notifications(
            server, smtp_tls=mode, smtp_ca_file=str(cert), smtp_username="mailer", smtp_password="s3cret"
        ) as service:
            await publisher.publish(completed("tls"))
            [received] = await wait_for(lambda: server.to("tls@learners.example"), what="mail over TLS")
            assert received.message["Subject"].startswith("Congratulations")
            assert "mailer" in server.handler.logins
            assert (await service.mail())[0]["attempts"] == 1
    finally:
        await server.astop()

