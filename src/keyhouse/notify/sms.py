"""Text messages: a signed JSON webhook (your gateway turns it into an SMS), and a console
stand-in for development.

The webhook body is ``{"to": "+8613800138000", "text": "…"}``, sent with two headers::

    X-Keyhouse-Timestamp: 1767225600
    X-Keyhouse-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>

The timestamp is inside the MAC, so a receiver that refuses old timestamps (``verify_signature``
allows five minutes) cannot be made to resend a captured request later.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp

from keyhouse.config import SmsSettings
from keyhouse.notify import DeliveryFailed

log = logging.getLogger(__name__)

TIMESTAMP_HEADER = "X-Keyhouse-Timestamp"
SIGNATURE_HEADER = "X-Keyhouse-Signature"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Keyhouse-Signature`` value for this timestamp and raw body."""
    mac = hmac.new(secret.encode(), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    now: float | None = None,
    tolerance: float = 300,
) -> bool:
    """True if ``signature`` signs ``timestamp`` and ``body`` with ``secret``, and the timestamp
    is within ``tolerance`` seconds of ``now`` (either way: clocks drift)."""
    if not timestamp.isascii() or not timestamp.isdigit():
        return False
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > tolerance:
        return False
    expected = sign(secret, timestamp, body).encode("ascii")
    return hmac.compare_digest(expected, signature.strip().encode("utf-8", "replace"))


class WebhookSms:
    """POSTs each message, signed, to ``sms.webhook_url``; anything but a 2xx is a failure."""

    def __init__(self, settings: SmsSettings, *, clock: Callable[[], float] = time.time) -> None:
        if not (settings.webhook_url and settings.webhook_secret):
            raise ValueError("WebhookSms needs sms.webhook_url and sms.webhook_secret")
        self.url = settings.webhook_url
        self._secret = settings.webhook_secret
        self.timeout = settings.timeout
        self.clock = clock

    async def send(self, to: str, text: str) -> None:
        body = json.dumps({"to": to, "text": text}, ensure_ascii=False).encode("utf-8")
        timestamp = str(int(self.clock()))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        problem: str
        try:
            # One session per message: text messages are rare, and nothing is left to close.
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(self.url, data=body, headers=headers, allow_redirects=False) as r,
            ):
                if 200 <= r.status < 300:
                    return
                problem = f"HTTP {r.status}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            problem = type(exc).__name__
        # Neither the number nor the text (nor a password in the URL): the host, what went wrong.
        log.warning("text message not sent via %s: %s", urlsplit(self.url).hostname, problem)
        raise DeliveryFailed("sms")


class ConsoleSms:
    """No SMS provider configured (development): messages are printed to the terminal.

    Printed to stdout, not logged: the codes in them must never reach a log line.
    """

    def __init__(self) -> None:
        log.warning(
            "no SMS provider configured: text messages are printed to the terminal, not sent"
        )

    async def send(self, to: str, text: str) -> None:
        print(
            f"----- text message (not sent: no SMS provider configured) -----\n"
            f"To: {to}\n\n{text.rstrip()}\n"
            f"----- end of text message -----",
            flush=True,
        )
