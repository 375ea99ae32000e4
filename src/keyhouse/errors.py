"""One error family, shaped like OpenAI's: raised anywhere, rendered in one place (``api/errors``).

Messages never carry a secret: callers pass redacted forms only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ConfigError(Exception):
    """The configuration cannot be used; raised at start-up, shown to the operator."""


class KeyhouseError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(KeyhouseError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(KeyhouseError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(KeyhouseError):
    status = 403
    type = "invalid_request_error"
    code = "insufficient_permissions"


class NotFound(KeyhouseError):
    status = 404
    type = "invalid_request_error"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist or you do not have access to it.", param="model"
        )


class MethodNotAllowed(KeyhouseError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTooLarge(KeyhouseError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class Retryable(KeyhouseError):
    """This deployment could not answer, another one may: the one failure the router
    (``backends/router``) moves on from, before the first byte reaches the client. A client's
    own mistake is never one."""

    status = 502
    type = "server_error"
    code = "upstream_unavailable"


class Overloaded(Retryable):
    status = 503
    type = "server_error"
    code = "overloaded"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"That model ({model}) is currently overloaded with other requests. You can retry "
            "your request, or contact your Keyhouse administrator if the error persists."
        )


class ServerError(KeyhouseError):
    status = 500
    type = "server_error"

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        super().__init__(
            message
            or "The server had an error while processing your request. Sorry about that! "
            "You can retry your request, or contact your Keyhouse administrator if the error "
            "persists.",
            **kwargs,
        )
