"""The log filter: a second line of defence that redacts anything shaped like a secret key."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from keyhouse.keys import tokens
from keyhouse.logs import RedactSecrets, redact, setup_logging


@dataclass
class Captured:
    logger: logging.Logger
    stream: io.StringIO

    def text(self) -> str:
        return self.stream.getvalue()


@pytest.fixture
def captured() -> Iterator[Captured]:
    """A logger whose one handler carries the filter, as ``setup_logging`` wires it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactSecrets())
    logger = logging.getLogger(f"keyhouse.test.{id(stream)}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield Captured(logger, stream)
    logger.handlers = []


def test_key_in_message(captured: Captured) -> None:
    key = tokens.mint()
    captured.logger.info(f"made {key} for bob")
    assert key not in captured.text()
    assert key[6:] not in captured.text()
    assert "made sk-kh-*** for bob" in captured.text()


def test_key_in_args(captured: Captured) -> None:
    key = tokens.mint()
    captured.logger.warning("refused %s from %s", key, "10.0.0.1")
    captured.logger.warning("refused %(key)s", {"key": key})
    text = captured.text()
    assert key not in text
    assert "refused sk-kh-*** from 10.0.0.1" in text
    assert text.count("sk-kh-***") == 2


def test_bearer_header(captured: Captured) -> None:
    key = tokens.mint()
    captured.logger.info("headers: Authorization: Bearer %s", key)
    captured.logger.info("%r", {"authorization": f"bearer {key}"})
    captured.logger.info("Bearer   opaque-upstream-token-123")
    text = captured.text()
    assert key not in text
    assert "opaque-upstream-token-123" not in text
    assert "Authorization: Bearer ***" in text


def test_other_providers_keys(captured: Captured) -> None:
    """Upstream provider keys (``sk-proj-…``, ``sk-…``) are redacted the same way."""
    upstream = "sk-proj-" + "Ab3_-x" * 8
    legacy = "sk-" + "Z9" * 24
    captured.logger.error("upstream said no to %s and %s", upstream, legacy)
    assert upstream not in captured.text()
    assert legacy not in captured.text()


def test_exception_text(captured: Captured) -> None:
    key = tokens.mint()
    try:
        try:
            raise KeyError(key)
        except KeyError as inner:
            raise RuntimeError(f"lookup failed for {key}") from inner
    except RuntimeError:
        captured.logger.exception("request failed")
    text = captured.text()
    assert "Traceback" in text
    assert "RuntimeError: lookup failed for sk-kh-***" in text
    assert "KeyError" in text
    assert key not in text


def test_exception_text_with_the_default_formatter(captured: Captured) -> None:
    """A formatter that caches exc_text must not get an unredacted copy first."""
    key = tokens.mint()
    captured.logger.handlers[0].setFormatter(logging.Formatter())
    try:
        raise ValueError(f"Bearer {key}")
    except ValueError:
        captured.logger.error("boom", exc_info=True)
    assert key not in captured.text()
    assert "ValueError: Bearer ***" in captured.text()


def test_clean_messages_are_left_alone(captured: Captured) -> None:
    captured.logger.info("served %d tokens for %s in %.1fs", 12, "key_abc", 0.25)
    captured.logger.info("short ids like sk-short or key_abc stay")
    assert "served 12 tokens for key_abc in 0.2s" in captured.text()
    assert "short ids like sk-short or key_abc stay" in captured.text()


def test_malformed_call_does_not_raise_and_is_still_redacted(captured: Captured) -> None:
    """Logging never raises into the caller; a bad format string must not change that."""
    key = tokens.mint()
    captured.logger.info("%s and %s", key)
    assert key not in captured.text()
    assert "sk-kh-***" in captured.text()


def test_redact_function() -> None:
    key = tokens.mint()
    assert redact(f"x {key} y {key}") == "x sk-kh-*** y sk-kh-***"
    assert redact(f"BEARER {key}") == "BEARER ***"
    assert redact("nothing here") == "nothing here"


def test_setup_logging_installs_the_filter(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        setup_logging("info")
        assert any(isinstance(f, RedactSecrets) for h in root.handlers for f in h.filters)
        key = tokens.mint()
        logging.getLogger("uvicorn.access").info('"GET /v1/models?key=%s HTTP/1.1" 200', key)
        err = capsys.readouterr().err
        assert "GET /v1/models?key=sk-kh-***" in err
        assert key not in err
    finally:
        root.handlers, _ = saved
        root.setLevel(saved[1])
