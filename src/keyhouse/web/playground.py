"""The playground page (``/playground``): chat with any chat model the member may use.

The page is a form; its script sends each turn to ``POST /api/playground/chat/completions``
(the session and its CSRF token, no key in the browser — see ``api/playground``), streams the
tokens into an ``aria-live`` region as they arrive, stops on request, and reads each reply's
tokens and cost from ``/api/usage/requests/{id}``. Every string the script shows is rendered
here, in the page's language (``data-*`` attributes and ``<template>``).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keyhouse.api.playground import chat_models, find_playground_key
from keyhouse.web import i18n
from keyhouse.web.base import page, services, viewer


async def playground_page(request: Request) -> Response:
    current = await viewer(request)
    svc = services(request)
    async with svc.db.session() as session:
        key = await find_playground_key(session, current.member_id, svc.clock.now())
    allow = frozenset(key.models) if key is not None and key.models is not None else None
    models = chat_models(svc, allow)
    chosen = request.query_params.get("model")
    if chosen not in {m.id for m in models}:
        chosen = models[0].id if models else None
    default_max = next((m.default_max_tokens for m in models if m.id == chosen), 256)
    temperature = next((m.default_temperature for m in models if m.id == chosen), 1.0)
    return await page(
        request,
        "playground/index.html",
        {
            "models": models,
            "chosen": chosen,
            "max_tokens": min(default_max, 256),
            "temperature": temperature,
            "currency": svc.settings.currency,
            "locale": i18n.locale().language
            + ("-" + i18n.locale().territory if i18n.locale().territory else ""),
            "key": key,
            "may_chat": current.active,
        },
    )


routes = [Route("/playground", playground_page, methods=["GET"])]
