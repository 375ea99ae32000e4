"""The member web app: server-rendered pages at ``/`` over the same services as ``/api``.

``routes()`` is every page plus ``/static``; ``app.create_app`` puts them after ``/v1``,
``/api`` and ``/health`` so nothing of the API is shadowed, and calls ``install`` for the
pages' own exception handlers (sign-in redirects, expired forms).
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from keyhouse.web import (
    auth,
    billing,
    i18n,
    keys,
    playground,
    quickstart,
    settings,
    tester,
    usage,
)
from keyhouse.web.base import install

#: One module per area; each has a ``routes`` list.
AREAS = (auth, keys, settings, quickstart, usage, billing, playground, tester)


def routes() -> list[BaseRoute]:
    i18n.load_all()
    found: list[BaseRoute] = []
    for area in AREAS:
        found.extend(area.routes)
    found.append(
        Mount("/static", StaticFiles(packages=[("keyhouse.web", "static")]), name="static")
    )
    return found


__all__ = ["install", "routes"]
