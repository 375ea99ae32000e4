"""Mail reaches a real SMTP server intact (Chinese too, over STARTTLS and TLS, with a login);
a failure is a DeliveryFailed whose log line and message hold no part of the mail."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from keyhouse.config import MailSettings, Settings, SmsSettings
from keyhouse.i18n import t
from keyhouse.notify import DeliveryFailed, build_notifier
from keyhouse.notify.mail import ConsoleMailer, SmtpMailer
from keyhouse.notify.sms import ConsoleSms, WebhookSms
from tests.notify.smtp_server import SmtpServer, code_in, free_port, smtp_server_fixture  # noqa: F401

CODE = "482913"


def chinese_mail() -> tuple[str, str]:
    params = {"code": CODE, "minutes": 10, "site": "Keyhouse"}
    return t("zh-CN", "mail.verify_email.subject", **params), t(
        "zh-CN", "mail.verify_email.body", **params
    )


async def test_a_chinese_mail_arrives_intact(smtp_server: SmtpServer) -> None:
    subject, body = chinese_mail()
    await SmtpMailer(smtp_server.mail_settings()).send("ada@example.com", subject, body)

    mail = await smtp_server.wait_for("ada@example.com")
    assert mail.subject == subject == "Keyhouse 邮箱验证码"
    assert mail.text == body
    assert code_in(mail) == CODE
    assert mail.mail_from == "keyhouse@example.test"
    assert mail["From"] == "Keyhouse <keyhouse@example.test>"
    assert mail["To"] == "ada@example.com"
    assert mail["Date"] is not None
    assert mail["Message-ID"].endswith("@example.test>")
    assert mail.message.get_content_type() == "text/plain"
    assert mail.message.get_content_charset() == "utf-8"
    # Encoded to 7 bits on the wire: any relay can carry it.
    assert mail.message["Content-Transfer-Encoding"] in ("base64", "quoted-printable")


async def test_wait_for_hands_out_each_mail_once(smtp_server: SmtpServer) -> None:
    mailer = SmtpMailer(smtp_server.mail_settings())
    await mailer.send("Bo@Example.com", "first", "code 111111")
    await mailer.send("bo@example.com", "second", "code 222222")
    assert code_in(await smtp_server.wait_for("bo@example.com")) == "111111"
    assert code_in(await smtp_server.wait_for("bo@example.com")) == "222222"
    with pytest.raises(AssertionError):
        await smtp_server.wait_for("bo@example.com", timeout=0.1)


@pytest.mark.parametrize("tls", ["starttls", "tls"])
async def test_tls_with_a_login(tls: str) -> None:
    with SmtpServer(tls=tls, auth=("keyhouse", "hunter2-mail")) as server:
        settings = server.mail_settings()
        assert settings.security == tls and settings.username == "keyhouse"
        mailer = SmtpMailer(settings, tls_context=server.client_tls_context())
        subject, body = chinese_mail()
        await mailer.send("ada@example.com", subject, body)
        mail = await server.wait_for("ada@example.com")
        assert (mail.subject, mail.text) == (subject, body)
        assert server.logins == ["keyhouse"]


async def test_an_untrusted_certificate_is_refused() -> None:
    with SmtpServer(tls="starttls") as server:
        # No tls_context: the system's CAs, which did not sign this certificate.
        with pytest.raises(DeliveryFailed):
            await SmtpMailer(server.mail_settings()).send("ada@example.com", "s", CODE)
        assert server.messages == []


async def test_a_wrong_password_is_a_delivery_failure() -> None:
    with SmtpServer(tls="starttls", auth=("keyhouse", "right")) as server:
        mailer = SmtpMailer(
            server.mail_settings(password="wrong"), tls_context=server.client_tls_context()
        )
        with pytest.raises(DeliveryFailed):
            await mailer.send("ada@example.com", "s", CODE)
        assert server.messages == []


async def test_nothing_listening_is_a_delivery_failure_that_leaks_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = MailSettings(host="127.0.0.1", port=free_port(), security="none", timeout=2)
    subject, body = chinese_mail()
    with pytest.raises(DeliveryFailed) as caught:
        await SmtpMailer(settings).send("secret-person@example.org", subject, body)

    error = caught.value
    assert (error.status, error.type, error.code) == (503, "server_error", "delivery_failed")
    assert error.channel == "mail"
    assert CODE not in str(error) and CODE not in repr(error.body())
    assert error.__cause__ is None and error.__suppress_context__

    warnings = [r for r in caplog.records if r.name == "keyhouse.notify.mail"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "example.org" in warnings[0].getMessage()
    for record in caplog.records:
        line = record.getMessage()
        assert CODE not in line and subject not in line and "secret-person" not in line


async def test_the_console_mailer_prints_and_logs_nothing_of_the_mail(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    mailer = ConsoleMailer()
    subject, body = chinese_mail()
    await mailer.send("ada@example.com", subject, body)

    out = capsys.readouterr().out
    assert "To: ada@example.com" in out and subject in out and CODE in out
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["no SMTP host configured: mails are printed to the terminal, not sent"]
    assert all(CODE not in m for m in messages)


def test_build_notifier_picks_the_providers() -> None:
    plain = Settings(home=Path("/nonexistent"), database_url="sqlite://")
    notifier = build_notifier(plain)
    assert isinstance(notifier.mail, ConsoleMailer) and isinstance(notifier.sms, ConsoleSms)

    configured = plain.with_(
        mail=MailSettings(host="smtp.example.com"),
        sms=SmsSettings(
            provider="webhook", webhook_url="https://sms.example/x", webhook_secret="s"
        ),
    )
    notifier = build_notifier(configured)
    assert isinstance(notifier.mail, SmtpMailer) and isinstance(notifier.sms, WebhookSms)


async def test_starttls_is_never_skipped(smtp_server: SmtpServer) -> None:
    # A server that offers no STARTTLS (or a man in the middle that strips it) gets nothing.
    with pytest.raises(DeliveryFailed):
        await SmtpMailer(smtp_server.mail_settings(security="starttls")).send("a@b.test", "s", "t")
    assert smtp_server.messages == []
