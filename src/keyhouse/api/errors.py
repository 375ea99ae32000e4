"""The one place errors become HTTP responses, always shaped like OpenAI's.

Never FastAPI's 422 body, never a stack trace, never a key in full.
"""

from __future__ import annotations

import json
import logging

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from keyhouse.api.http import ClientGone, request_id
from keyhouse.errors import KeyhouseError, NotFound, ServerError

log = logging.getLogger("keyhouse.api")


def error_body(exc: KeyhouseError) -> bytes:
    """The error as JSON. A message that echoes the client's text may hold a lone surrogate,
    which orjson refuses: Python's encoder writes it as an escape instead."""
    try:
        return orjson.dumps(exc.body())
    except TypeError:
        return json.dumps(exc.body()).encode()


def error_response(exc: KeyhouseError, headers: dict[str, str] | None = None) -> Response:
    return Response(
        error_body(exc),
        status_code=exc.status,
        media_type="application/json",
        headers={**(headers or {}), **exc.headers} or None,
    )


def invalid_url(request: Request) -> KeyhouseError:
    return NotFound(f"Invalid URL ({request.method} {request.url.path})")


def invalid_method(request: Request, headers: dict[str, str]) -> KeyhouseError:
    """A known URL asked with a method it does not take; ``headers`` carry its ``Allow``."""
    return KeyhouseError(
        f"Invalid method for URL ({request.method} {request.url.path})",
        status=405,
        type="invalid_request_error",
        code="method_not_allowed",
        headers=headers,
    )


def client_gone(request: Request) -> Response:
    """The client left (mid-upload, or before its answer): one line, no traceback."""
    log.info(
        "client went away during %s %s (%s)",
        request.method,
        request.url.path,
        request_id(request),
    )
    return Response(status_code=499)  # nobody is listening; closes the exchange


def unexpected(request: Request, exc: BaseException) -> Response:
    """A bug: the operator gets the traceback, the client OpenAI's 500 and nothing of it (its
    ``x-request-id`` comes from the edge, ``api/access``, which wraps even Starlette's
    outermost middleware)."""
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(ServerError())


def response_for(request: Request, exc: Exception) -> Response:
    """What the client is told of an error that ended its request before the answer began:
    the one rule, for Starlette's handlers below and for ``api/dispatch``'s own."""
    if isinstance(exc, KeyhouseError):
        # A /v1 error already carries the rate-limit headers as they stand (``api/pipeline``
        # adds them on its way out).
        return error_response(exc)
    if isinstance(exc, ClientGone | ClientDisconnect):
        return client_gone(request)
    return unexpected(request, exc)


async def on_error(request: Request, exc: Exception) -> Response:
    return response_for(request, exc)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = invalid_url(request)
    elif exc.status_code == 405:
        error = invalid_method(request, dict(exc.headers or {}))
    else:
        error = KeyhouseError(str(exc.detail), status=exc.status_code, type="invalid_request_error")
    return error_response(error)


def install(app: Starlette) -> None:
    app.add_exception_handler(KeyhouseError, on_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(ClientGone, on_error)
    app.add_exception_handler(ClientDisconnect, on_error)
    app.add_exception_handler(Exception, on_error)
