"""The ``/v1`` pipeline's routes, served ahead of Starlette.

Starlette's error middlewares, its router (which tries every route of the app in turn, web
pages included) and its per-route wrappers cost a cheap ``/v1`` request more than a quarter of
its CPU. ``Dispatch`` finds a pipeline route with one dict lookup (a few patterns for the
routes with a parameter), runs it, and renders its errors by ``api/errors``' one rule. Every
other request — ``/api``, ``/health``, the web app, an unknown ``/v1`` URL — goes to the
Starlette app unchanged, which answers it as before (404 "Invalid URL" included).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from starlette.convertors import Convertor
from starlette.requests import Request
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from keyhouse.api import errors
from keyhouse.api.pipeline import Endpoint, Handler, exchange, serve

log = logging.getLogger("keyhouse.api")

#: A path's handlers by method, and what its ``Allow`` header says.
Methods = dict[str, Handler]


class Pattern:
    """A route with path parameters, matched as Starlette matches it."""

    def __init__(self, path: str) -> None:
        self.regex: re.Pattern[str]
        self.regex, _, self.convertors = compile_path(path)
        self.methods: Methods = {}

    def match(self, path: str) -> dict[str, Any] | None:
        found = self.regex.match(path)
        if found is None:
            return None
        convertors: dict[str, Convertor[Any]] = self.convertors
        return {name: convertors[name].convert(value) for name, value in found.groupdict().items()}


def route_path(scope: Scope) -> str:
    """The path within the app (behind a proxy's ``root_path``), as Starlette's router sees it."""
    path: str = scope["path"]
    root = scope.get("root_path")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path


def allow(methods: Methods) -> dict[str, str]:
    return {"Allow": ", ".join(sorted(methods))}


class Dispatch:
    """Serves ``endpoints`` (the pipeline's table: ``api/v1``, ``api/media``, ``api/usage``);
    passes everything else to ``app``."""

    def __init__(self, endpoints: Iterable[Endpoint], app: ASGIApp) -> None:
        self.app = app
        self.exact: dict[str, Methods] = {}
        patterns: dict[str, Pattern] = {}
        for endpoint in endpoints:
            if "{" in endpoint.path:
                methods = patterns.setdefault(endpoint.path, Pattern(endpoint.path)).methods
            else:
                methods = self.exact.setdefault(endpoint.path, {})
            if endpoint.method in methods:
                raise ValueError(f"{endpoint.method} {endpoint.path} is declared twice")
            methods[endpoint.method] = endpoint.handler
            if endpoint.method == "GET":
                methods.setdefault("HEAD", endpoint.handler)  # as Starlette's routes do
        self.patterns = tuple(patterns.values())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = route_path(scope)
            methods = self.exact.get(path)
            if methods is not None:
                await self.serve(methods, scope, receive, send)
                return
            for pattern in self.patterns:
                params = pattern.match(path)
                if params is not None:
                    scope["path_params"] = params
                    await self.serve(pattern.methods, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def serve(self, methods: Methods, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        handler = methods.get(scope["method"])
        if handler is None:
            refusal = errors.invalid_method(request, allow(methods))
            await errors.error_response(refusal)(scope, receive, send)
            return
        ex = exchange(request)
        try:
            await serve(ex, handler, scope, receive, send)
        except Exception as exc:
            if ex.answering:  # nothing more can be sent: the server closes the connection
                log.exception("error while answering %s %s", request.method, request.url.path)
                raise
            await errors.response_for(request, exc)(scope, receive, send)
