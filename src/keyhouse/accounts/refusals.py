"""Refusals of the accounts surface: a machine-readable ``code`` and a message translated at
the edge into the caller's language (``keyhouse.i18n``, keys ``error.<code>``).

Raised anywhere in ``accounts/`` with the code and its parameters; ``api/manage`` renders it in
the member's language, or the one the browser asks for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keyhouse.errors import KeyhouseError


class Refused(KeyhouseError):
    status = 400
    type = "invalid_request_error"

    def __init__(
        self,
        code: str,
        *,
        status: int | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        **params: Any,
    ) -> None:
        self.params = params
        super().__init__(
            self.render("en", code, params),
            param=param,
            code=code,
            status=status,
            headers=headers,
        )

    @staticmethod
    def render(language: str, code: str, params: Mapping[str, Any]) -> str:
        from keyhouse.i18n import t

        return t(language, f"error.{code}", **params)

    def translated(self, language: str) -> dict[str, Any]:
        body = self.body()
        assert self.code is not None
        body["error"]["message"] = self.render(language, self.code, self.params)
        return body


class TooMany(Refused):
    """A throttle said no: 429 with ``retry-after``."""

    status = 429
    type = "requests"

    def __init__(self, code: str, seconds: int, **params: Any) -> None:
        seconds = max(1, int(seconds))
        super().__init__(code, headers={"retry-after": str(seconds)}, seconds=seconds, **params)
