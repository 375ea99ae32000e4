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


async def on_keyhouse_error(request: Request, exc: Exception) -> Response:
    """A /v1 error already carries the rate-limit headers as they stand (``api/pipeline``
    adds them on its way out)."""
    assert isinstance(exc, KeyhouseError)
    return error_response(exc)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        error: KeyhouseError = NotFound(f"Invalid URL ({where})")
    elif exc.status_code == 405:
        error = KeyhouseError(
            f"Invalid method for URL ({where})",
            status=405,
            type="invalid_request_error",
            code="method_not_allowed",
            headers=dict(exc.headers or {}),
        )
    else:
        error = KeyhouseError(str(exc.detail), status=exc.status_code, type="invalid_request_error")
    return error_response(error)


async def on_client_gone(request: Request, exc: Exception) -> Response:
    """The client left (mid-upload, or before its answer): one line, no traceback."""
    log.info(
        "client went away during %s %s (%s)",
        request.method,
        request.url.path,
        request_id(request),
    )
    return Response(status_code=499)  # nobody is listening; closes the exchange


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    # Starlette answers these from its outermost middleware, outside ``RequestIds``: the
    # response carries the request's id itself.
    return error_response(ServerError(headers={"x-request-id": request_id(request)}))


def install(app: Starlette) -> None:
    app.add_exception_handler(KeyhouseError, on_keyhouse_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(ClientGone, on_client_gone)
    app.add_exception_handler(ClientDisconnect, on_client_gone)
    app.add_exception_handler(Exception, on_unexpected)
