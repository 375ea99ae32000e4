"""``/api/docs``: Swagger UI for the management API, served entirely by Keyhouse.

FastAPI's own page loads Swagger UI from a CDN (blank offline) with an inline script (refused
by a strict CSP). This page loads the vendored ``swagger-ui-dist`` (``web/static/vendor/
swagger-ui``, with its licence) and a small start-up script from ``/api/docs/assets``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, HTMLResponse, Response

STATIC = Path(__file__).resolve().parents[1] / "web" / "static"
#: What the page may load, by the name it uses: nothing else under the folder is served here.
ASSETS = {
    "swagger-ui.css": STATIC / "vendor" / "swagger-ui" / "swagger-ui.css",
    "swagger-ui-bundle.js": STATIC / "vendor" / "swagger-ui" / "swagger-ui-bundle.js",
    "api-docs.js": STATIC / "js" / "api-docs.js",
    "LICENSE": STATIC / "vendor" / "swagger-ui" / "LICENSE",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - API docs</title>
<link rel="stylesheet" href="{root}/docs/assets/swagger-ui.css">
</head>
<body>
<main id="swagger-ui" data-openapi="{root}/openapi.json"></main>
<script src="{root}/docs/assets/swagger-ui-bundle.js"></script>
<script src="{root}/docs/assets/api-docs.js"></script>
</body>
</html>
"""
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-cache",
}


def install(api: FastAPI) -> None:
    """Add ``/docs`` and its assets to the ``/api`` app (built with ``docs_url=None``)."""
    from html import escape

    async def docs(request: Request) -> Response:
        root = escape(request.scope.get("root_path", "").rstrip("/"))
        return HTMLResponse(PAGE.format(title=escape(api.title), root=root), headers=HEADERS)

    async def asset(name: str) -> Response:
        path = ASSETS.get(name)
        if path is None:
            raise HTTPException(404)
        media = "text/plain; charset=utf-8" if name == "LICENSE" else None
        return FileResponse(
            path,
            media_type=media,
            headers={"cache-control": "public, max-age=86400", "x-content-type-options": "nosniff"},
        )

    api.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)
    api.add_api_route("/docs/assets/{name}", asset, methods=["GET"], include_in_schema=False)
