"""The quick start (``/``, home after sign-in): this server's base URL, "Create a key", the
seed's curl and Python snippets with this server's URL in place, and where to go next.
Visitors who are not signed in are sent to sign in (``web.base.viewer``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keyhouse.web.base import page, services, viewer
from keyhouse.web.snippets import Call, curl, python, python_legacy


async def quickstart(request: Request) -> Response:
    current = await viewer(request)
    base = services(request).settings.public_url.rstrip("/")
    call = Call()  # the seed's request
    return await page(
        request,
        "quickstart/index.html",
        {
            "base_url": base + "/v1",
            "curl": curl(base, call),
            "python": python(base, call),
            "python_legacy": python_legacy(base, call),
            "may_create": current.active,
        },
    )


routes = [Route("/", quickstart, methods=["GET"])]
