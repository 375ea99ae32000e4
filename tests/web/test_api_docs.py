"""``/api/docs`` works offline: Swagger UI comes from this server (vendored), every request the
page makes stays on it, and nothing breaks the Content-Security-Policy."""

from __future__ import annotations

from urllib.parse import urlsplit


def test_the_api_docs_load_from_this_server_alone(web, browser_page, shoot) -> None:
    page = browser_page("desktop", "en")
    elsewhere: list[str] = []
    here = urlsplit(web.url).netloc

    def only_here(route, request) -> None:
        if urlsplit(request.url).netloc != here:
            elsewhere.append(request.url)
            route.abort()
        else:
            route.continue_()

    page.route("**/*", only_here)
    page.goto("/api/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "Keyhouse management API" in page.locator(".swagger-ui .info .title").inner_text()
    page.wait_for_selector(".opblock-tag")
    assert not elsewhere, elsewhere
    shoot(page, "api-docs", full_page=False)
