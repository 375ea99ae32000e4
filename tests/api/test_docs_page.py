"""``/api/docs`` works offline: Swagger UI and its start-up script are served by Keyhouse,
the page names no other site, and its CSP allows no inline script."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser

import httpx

from keyhouse.api.manage import build_api


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for name in ("src", "href"):
            if found.get(name):
                self.urls.append(str(found[name]))
        if any(name.startswith("on") for name in found):
            self.inline_scripts += 1
        self._in_script = tag == "script" and "src" not in found
        if self._in_script:
            self.inline_scripts += 1


def fetch_all() -> tuple[httpx.Response, dict[str, httpx.Response]]:
    async def run() -> tuple[httpx.Response, dict[str, httpx.Response]]:
        transport = httpx.ASGITransport(app=build_api(), root_path="/api")
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            page = await http.get("/api/docs")
            links = Links()
            links.feed(page.text)
            assets = {url: await http.get(url) for url in links.urls}
            assets["/api/docs/assets/LICENSE"] = await http.get("/api/docs/assets/LICENSE")
            assets["/api/docs/assets/x.js"] = await http.get("/api/docs/assets/x.js")
            return page, assets

    # In a thread of its own: the browser tests' Playwright may run a loop in this one.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def test_the_docs_page_loads_only_what_keyhouse_serves() -> None:
    page, assets = fetch_all()
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.search(r"(https?:)?//", page.text), "the page names another site"
    links = Links()
    links.feed(page.text)
    assert links.inline_scripts == 0
    assert sorted(links.urls) == [
        "/api/docs/assets/api-docs.js",
        "/api/docs/assets/swagger-ui-bundle.js",
        "/api/docs/assets/swagger-ui.css",
    ]
    csp = page.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp.split("script-src")[1][:20]
    assert "frame-ancestors 'none'" in csp
    for url in links.urls:
        assert assets[url].status_code == 200, url
    assert "SwaggerUIBundle" in assets["/api/docs/assets/swagger-ui-bundle.js"].text
    start = assets["/api/docs/assets/api-docs.js"].text
    assert "validatorUrl: null" in start and not re.search(r"https?://", start)
    assert 'data-openapi="/api/openapi.json"' in page.text
    assert "Apache License" in assets["/api/docs/assets/LICENSE"].text
    assert assets["/api/docs/assets/x.js"].status_code == 404


def test_the_openapi_document_lists_the_session_tools() -> None:
    paths = build_api().openapi()["paths"]
    assert "/playground/chat/completions" in paths and "/usage/requests/{request_id}" in paths
    assert "/docs" not in paths
