"""A real SMTP server (aiosmtpd) on loopback that keeps what it receives, for any test that
sends mail.

Use the ``smtp_server`` fixture (``from tests.notify.smtp_server import smtp_server_fixture``
in your test module or conftest: the fixture is named ``smtp_server``), or the plain class::

    with SmtpServer() as server:
        settings = settings.with_(mail=server.mail_settings())
        ...                                   # something sends a mail
        mail = await server.wait_for("ada@example.com")
        code = code_in(mail)

It runs in a thread of its own (aiosmtpd's ``Controller``), so a Keyhouse server in another
process, or a test that blocks, can still deliver to it. ``tls="starttls"`` or ``"tls"`` serves
a self-signed certificate made on the spot; ``server.client_tls_context()`` trusts it.
"""

from __future__ import annotations

import asyncio
import datetime
import email
import email.policy
import ipaddress
import re
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from keyhouse.config import MailSettings

_CODE = re.compile(r"(?<!\d)(\d{6})(?!\d)")


@dataclass(frozen=True)
class ReceivedMail:
    """One mail as delivered: envelope, decoded headers and decoded text body."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    subject: str
    text: str
    message: EmailMessage

    def __getitem__(self, header: str) -> Any:
        return self.message[header]


def code_in(message: ReceivedMail | str) -> str:
    """The 6-digit code in a mail (or any text); AssertionError if there is none."""
    text = message if isinstance(message, str) else f"{message.subject}\n{message.text}"
    found = _CODE.search(text)
    assert found, f"no 6-digit code in: {text!r}"
    return found.group(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key (PEM files in ``directory``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_DATA(self, smtp: Any, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        body = message.get_body(("plain",))
        self.server.messages.append(
            ReceivedMail(
                mail_from=str(envelope.mail_from),
                rcpt_tos=tuple(envelope.rcpt_tos),
                subject=str(message["Subject"] or ""),
                # Text travels with CRLF line ends (MIME canonical form); read as Python text.
                text=body.get_content().replace("\r\n", "\n") if body is not None else "",
                message=message,
            )
        )
        return "250 Message accepted for delivery"


class SmtpServer:
    """An aiosmtpd server on 127.0.0.1 and a free port; ``messages`` holds what it received.

    ``tls``: None (plain), "starttls" or "tls" (implicit). ``auth``: the (username, password)
    it accepts, over TLS only (so give ``tls`` too); required with STARTTLS.
    """

    def __init__(self, *, tls: str | None = None, auth: tuple[str, str] | None = None) -> None:
        assert tls in (None, "starttls", "tls")
        self.tls = tls
        self.auth = auth
        self.messages: list[ReceivedMail] = []
        #: Usernames that logged in successfully.
        self.logins: list[str] = []
        self.port = free_port()
        #: Indexes of the messages wait_for has already returned.
        self._handed: set[int] = set()
        self._lock = threading.Lock()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.cert_path: Path | None = None
        self.controller: Controller | None = None

    # ------------------------------------------------------------------ life

    def start(self) -> SmtpServer:
        kwargs: dict[str, Any] = {}
        if self.tls:
            self._tmp = tempfile.TemporaryDirectory(prefix="keyhouse-smtp-")
            self.cert_path, key_path = self_signed_certificate(Path(self._tmp.name))
            server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_context.load_cert_chain(self.cert_path, key_path)
            if self.tls == "starttls":
                kwargs.update(tls_context=server_context, require_starttls=True)
            else:
                # aiosmtpd only counts STARTTLS as TLS when it decides whether to offer
                # AUTH; with implicit TLS the whole connection is encrypted anyway.
                kwargs.update(ssl_context=server_context, auth_require_tls=False)
        if self.auth:
            # Required where aiosmtpd allows it without a warning; ``logins`` shows it happened.
            kwargs.update(authenticator=self._authenticate, auth_required=self.tls == "starttls")
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _authenticate(
        self, server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and self.auth is not None
            and (data.login.decode(), data.password.decode()) == self.auth
        )
        if ok:
            self.logins.append(data.login.decode())
        # handled=False: aiosmtpd answers "535 credentials invalid" itself.
        return AuthResult(success=ok, handled=False)

    # ------------------------------------------------------------------ for the client side

    def mail_settings(self, **overrides: Any) -> MailSettings:
        """Settings that send to this server (security as served, login if required)."""
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "security": self.tls or "none",
            "sender": "Keyhouse <keyhouse@example.test>",
            "timeout": 5.0,
        }
        if self.auth:
            values.update(username=self.auth[0], password=self.auth[1])
        values.update(overrides)
        return MailSettings(**values)

    def client_tls_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's self-signed certificate."""
        assert self.cert_path is not None, "this server does not speak TLS"
        return ssl.create_default_context(cafile=str(self.cert_path))

    # ------------------------------------------------------------------ for the test

    def to(self, address: str) -> list[ReceivedMail]:
        """Every mail received for ``address`` so far, oldest first."""
        address = address.lower()
        return [m for m in self.messages if address in (r.lower() for r in m.rcpt_tos)]

    async def wait_for(self, to: str, timeout: float = 5.0) -> ReceivedMail:
        """The oldest mail for ``to`` that no earlier ``wait_for`` returned, waiting for it.

        So "send twice, wait twice" returns both mails, in order.
        """
        address = to.lower()
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                for index, mail in enumerate(self.messages):
                    recipients = (r.lower() for r in mail.rcpt_tos)
                    if index not in self._handed and address in recipients:
                        self._handed.add(index)
                        return mail
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no new mail for {to} within {timeout}s ({len(self.messages)} received in all)"
                )
            await asyncio.sleep(0.02)


@pytest.fixture(name="smtp_server")
def smtp_server_fixture() -> Iterator[SmtpServer]:
    """A plain (no TLS, no AUTH) SMTP server for this test."""
    with SmtpServer() as server:
        yield server
