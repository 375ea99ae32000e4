"""The SMS webhook is signed so a receiver can trust it (and refuse a replay); a refusal or
an unreachable gateway is a DeliveryFailed that says nothing of the message."""

from __future__ import annotations

import logging
import time

import pytest

from keyhouse.i18n import t
from keyhouse.notify import DeliveryFailed
from keyhouse.notify.sms import ConsoleSms, WebhookSms, sign, verify_signature
from tests.notify.sms_receiver import SmsReceiver, sms_receiver_fixture  # noqa: F401
from tests.notify.smtp_server import free_port

PHONE = "+8613800138000"
CODE = "730164"


def text(language: str = "zh-CN") -> str:
    return t(language, "sms.verify_phone", code=CODE, minutes=10, site="Keyhouse")


async def test_a_signed_message_is_accepted(sms_receiver: SmsReceiver) -> None:
    await WebhookSms(sms_receiver.sms_settings()).send(PHONE, text())
    sms = await sms_receiver.wait_for(PHONE)
    assert sms.text == text() and CODE in sms.text
    assert sms_receiver.rejected == 0


async def test_a_wrong_secret_is_rejected(sms_receiver: SmsReceiver) -> None:
    sender = WebhookSms(sms_receiver.sms_settings(webhook_secret="not-the-secret"))
    with pytest.raises(DeliveryFailed):
        await sender.send(PHONE, text())
    assert sms_receiver.rejected == 1 and sms_receiver.received == []


async def test_an_old_timestamp_is_rejected(sms_receiver: SmsReceiver) -> None:
    # A request captured ten minutes ago and played again: well signed, but stale.
    sender = WebhookSms(sms_receiver.sms_settings(), clock=lambda: time.time() - 600)
    with pytest.raises(DeliveryFailed):
        await sender.send(PHONE, text())
    assert sms_receiver.rejected == 1 and sms_receiver.received == []


async def test_a_gateway_error_is_a_delivery_failure_that_leaks_nothing(
    sms_receiver: SmsReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sms_receiver.status = 500
    with pytest.raises(DeliveryFailed) as caught:
        await WebhookSms(sms_receiver.sms_settings()).send(PHONE, text())
    error = caught.value
    assert (error.status, error.code, error.channel) == (503, "delivery_failed", "sms")
    assert CODE not in str(error)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("keyhouse")]
    assert lines == ["text message not sent via 127.0.0.1: HTTP 500"]
    assert all(CODE not in r.getMessage() and PHONE not in r.getMessage() for r in caplog.records)


async def test_an_unreachable_gateway_is_a_delivery_failure() -> None:
    receiver = SmsReceiver()  # never started: nothing listens on its port
    receiver.port = free_port()
    with pytest.raises(DeliveryFailed):
        await WebhookSms(receiver.sms_settings(timeout=2)).send(PHONE, text())


def test_verify_signature() -> None:
    body = b'{"to": "+8613800138000", "text": "hi"}'
    now = 1_767_225_600
    good = sign("s3cret", str(now), body)
    assert good.startswith("sha256=") and len(good) == 7 + 64
    assert verify_signature("s3cret", str(now), body, good, now=now)
    assert verify_signature("s3cret", str(now), body, good, now=now + 299)
    assert verify_signature("s3cret", str(now), body, good, now=now - 299)  # clock drift
    assert not verify_signature("s3cret", str(now), body, good, now=now + 301)
    assert not verify_signature("other", str(now), body, good, now=now)
    assert not verify_signature("s3cret", str(now), body + b" ", good, now=now)
    assert not verify_signature("s3cret", str(now + 1), body, good, now=now)
    assert not verify_signature("s3cret", "", body, good, now=now)
    assert not verify_signature("s3cret", "12e3", body, good, now=now)
    assert not verify_signature("s3cret", str(now), body, "sha256=☃", now=now)
    assert not verify_signature("s3cret", str(now), body, good.upper(), now=now)


async def test_the_console_sender_prints_and_logs_nothing_of_the_message(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sender = ConsoleSms()
    await sender.send(PHONE, text())
    out = capsys.readouterr().out
    assert f"To: {PHONE}" in out and text() in out
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "no SMS provider configured: text messages are printed to the terminal, not sent"
    ]
