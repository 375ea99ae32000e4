"""Mail over SMTP (aiosmtplib), and a console stand-in for development.

A mail holds a code or a link: its text goes to the SMTP server or to the terminal, never to
a log line or an exception. A failure logs the recipient's domain and the error's class only.
"""

from __future__ import annotations

import email.policy
import logging
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr

import aiosmtplib

from keyhouse.config import MailSettings
from keyhouse.notify import DeliveryFailed

log = logging.getLogger(__name__)

#: CRLF line ends, and bodies encoded to 7-bit (quoted-printable or base64, whichever is
#: shorter) so that Chinese text reaches even a relay that does not speak 8BITMIME.
_POLICY = email.policy.SMTP.clone(cte_type="7bit")


def build_message(sender: str, to: str, subject: str, text: str) -> EmailMessage:
    """A plain-text UTF-8 mail with the headers spam filters look for (Date, Message-ID)."""
    message = EmailMessage(policy=_POLICY)
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime.now(UTC))
    domain = parseaddr(sender)[1].rpartition("@")[2] or "keyhouse.localhost"
    message["Message-ID"] = make_msgid(domain=domain)
    message.set_content(text, charset="utf-8")
    return message


def _domain(address: str) -> str:
    return address.rpartition("@")[2] or "?"


class SmtpMailer:
    """Sends through the configured SMTP server; one connection per mail (mails are rare)."""

    def __init__(self, settings: MailSettings, *, tls_context: ssl.SSLContext | None = None):
        if not settings.host:
            raise ValueError("SmtpMailer needs mail.host")
        self.settings = settings
        #: For a server whose certificate a private CA signed (and for the tests).
        self.tls_context = tls_context

    async def send(self, to: str, subject: str, text: str) -> None:
        s = self.settings
        try:
            message = build_message(s.sender, to, subject, text)
            await aiosmtplib.send(
                message,
                hostname=s.host,
                port=s.port,
                username=s.username or None,
                password=s.password if s.username else None,
                use_tls=s.security == "tls",
                start_tls=s.security == "starttls",
                tls_context=self.tls_context,
                timeout=s.timeout,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError, ValueError) as exc:
            log.warning(
                "mail to a recipient at %s was not sent (%s via %s:%s): %s",
                _domain(to),
                s.security,
                s.host,
                s.port,
                type(exc).__name__,
            )
            raise DeliveryFailed("mail") from None


class ConsoleMailer:
    """No SMTP server configured (development): mails are printed to the terminal.

    Printed to stdout, not logged: the codes in them must never reach a log line.
    """

    def __init__(self) -> None:
        log.warning("no SMTP host configured: mails are printed to the terminal, not sent")

    async def send(self, to: str, subject: str, text: str) -> None:
        print(
            f"----- mail (not sent: no SMTP host configured) -----\n"
            f"To: {to}\nSubject: {subject}\n\n{text.rstrip()}\n"
            f"----- end of mail -----",
            flush=True,
        )
