"""Sending mail and text messages: the protocols the accounts code talks to, and the one
place that picks the providers from the settings.

Every message Keyhouse sends holds a code or a link, so no provider ever logs a message's text,
nor puts it in an exception: a failure says *that* delivery failed, never *what* was sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from keyhouse.config import Settings
from keyhouse.errors import KeyhouseError


def site_name(settings: Settings) -> str:
    """How mails name this installation."""
    return "Keyhouse"


class Mailer(Protocol):
    async def send(self, to: str, subject: str, text: str) -> None: ...


class SmsSender(Protocol):
    async def send(self, to: str, text: str) -> None: ...


class DeliveryFailed(KeyhouseError):
    """A mail or SMS could not be handed over; the member may try again later."""

    status = 503
    type = "server_error"
    code = "delivery_failed"

    def __init__(self, channel: Literal["mail", "sms"]) -> None:
        what = "The email" if channel == "mail" else "The text message"
        super().__init__(
            f"{what} could not be sent. Try again in a few minutes, or contact your Keyhouse "
            "administrator if this keeps happening."
        )
        self.channel = channel


@dataclass
class Notifier:
    mail: Mailer
    sms: SmsSender


def build_notifier(settings: Settings) -> Notifier:
    """SMTP if a host is configured, the SMS webhook if chosen; the console otherwise."""
    # Imported here: the provider modules import DeliveryFailed from this package.
    from keyhouse.notify.mail import ConsoleMailer, SmtpMailer
    from keyhouse.notify.sms import ConsoleSms, WebhookSms

    mail: Mailer = SmtpMailer(settings.mail) if settings.mail.host else ConsoleMailer()
    sms: SmsSender = (
        WebhookSms(settings.sms) if settings.sms.provider == "webhook" else ConsoleSms()
    )
    return Notifier(mail=mail, sms=sms)


__all__ = ["DeliveryFailed", "Mailer", "Notifier", "SmsSender", "build_notifier"]
