"""``/api/docs``: Swagger UI served by Keyhouse itself (vendored under
``static/vendor/swagger-ui``), so the API's documentation works offline and under the same
Content-Security-Policy as the pages — no CDN, no inline script."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse

from keyhouse.web.base import SECURITY_HEADERS

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Keyhouse management API</title>
<link rel="stylesheet" href="/static/vendor/swagger-ui/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-url="/api/openapi.json"></div>
<script src="/static/vendor/swagger-ui/swagger-ui-bundle.js"></script>
<script src="/static/js/api-docs.js"></script>
</body>
</html>
"""


async def api_docs(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE, headers=SECURITY_HEADERS)
