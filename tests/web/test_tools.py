"""The usage, limits, billing, playground, API tester and quick start pages, served by a real
server (tests/web/conftest.py: the bundled model, real mail and SMS), through HTTP and in
Debian's chromium: each page in both languages and widths (screenshots in docs/screenshots/,
axe finds nothing serious), the playground streaming a real answer, the tester's call and
its "copy as curl" run for real, the usage page and the billing page showing what they cost.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.web.conftest import Member, WebSetup

pytestmark = pytest.mark.usefixtures("web")

PAGES = ["/", "/account/usage", "/account/limits", "/account/billing", "/playground", "/tester"]
SHOT_NAMES = {
    "/": "quickstart",
    "/account/usage": "usage",
    "/account/limits": "limits",
    "/account/billing": "billing",
    "/playground": "playground",
    "/tester": "tester",
}


def make_key(member: Member, name: str = "tools test") -> str:
    with member.http() as http:
        r = http.post("/keys", json={"name": name})
        assert r.status_code == 201, r.text
        return str(r.json()["secret"])


def chat(web: WebSetup, key: str, **extra: Any) -> httpx.Response:
    return httpx.post(
        web.url + "/v1/chat/completions",
        json={
            "model": "gpt-3.5-turbo",
            "messages": [{"role": "user", "content": "Say this is a test!"}],
            "max_tokens": 8,
            **extra,
        },
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )


def wait_for(check: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


# ----------------------------------------------------------------------------- over HTTP


def test_pages_need_a_session_and_render_for_one(web: WebSetup, member_session: Member) -> None:
    for path in PAGES:
        r = httpx.get(web.url + path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/signin?next="), path
    for language in ("en", "zh-CN"):
        for path in PAGES:
            cookies = {**member_session.cookies, "kh_lang": language}
            r = httpx.get(web.url + path, cookies=cookies)
            assert r.status_code == 200, (path, r.text[:2000])
            assert "content-security-policy" in r.headers
            assert "{{" not in r.text and "{%" not in r.text
            assert f'<html lang="{language}"' in r.text


def test_downloads_carry_this_servers_url(web: WebSetup) -> None:
    collection = httpx.get(web.url + "/tester/postman.json").json()
    assert {"key": "baseUrl", "value": web.url + "/v1", "type": "string"} in collection["variable"]
    document = httpx.get(web.url + "/tester/openapi.yaml")
    assert document.headers["content-type"].startswith("application/yaml")
    assert f'- url: "{web.url}/v1"' in document.text


def test_quick_start_has_the_seed_snippets_with_this_server(
    web: WebSetup, member_session: Member
) -> None:
    html = httpx.get(web.url + "/", cookies=member_session.cookies).text
    assert f'value="{web.url}/v1"' in html
    assert f"{web.url}/v1/chat/completions" in html and "curl --http1.1" in html
    assert f"openai.api_base = &#34;{web.url}/v1&#34;" in html or (
        f"openai.api_base = &quot;{web.url}/v1&quot;" in html
    )
    assert 'href="/account/api-keys/new"' in html


def test_usage_page_shows_the_calls_with_their_cost(web: WebSetup, member_session: Member) -> None:
    key = make_key(member_session)
    assert chat(web, key).status_code == 200
    with member_session.http() as http:
        wait_for(lambda: http.get("/usage").json()["total"]["requests"] >= 1)
        cost = http.get("/usage").json()["total"]["cost_micros"]
    html = httpx.get(web.url + "/account/usage?by=key", cookies=member_session.cookies).text
    assert "<svg" in html and 'class="s0"' in html
    assert "tools test" in html
    assert cost >= 0


def test_billing_redeems_a_code_and_refuses_a_bad_one(
    web: WebSetup, member_session: Member
) -> None:
    code = web.server.cli("codes", "create", "--amount", "2.5", "--count", "1").stdout.strip()
    with httpx.Client(base_url=web.url, cookies=member_session.cookies, timeout=30) as http:
        before = http.get("/account/billing").text
        r = http.post("/account/billing/redeem", data={"csrf": member_session.csrf, "code": code})
        assert (
            r.status_code == 303 and r.headers["location"] == "/account/billing?redeemed=1#redeem"
        )
        after = http.get("/account/billing?redeemed=1").text
        assert "Redeemed code" in after and before != after
        http.cookies.set("kh_lang", "zh-CN")
        again = http.post(
            "/account/billing/redeem", data={"csrf": member_session.csrf, "code": code}
        )
        assert again.status_code == 400 and 'aria-invalid="true"' in again.text
        no_token = http.post("/account/billing/redeem", data={"code": code})
        assert no_token.status_code == 403


# ----------------------------------------------------------------------------- in the browser


@pytest.fixture(scope="module")
def busy_member(web: WebSetup) -> Member:
    """A member with some history: two keys' calls on the chart, a redeemed code."""
    from tests.web.conftest import sign_up

    member = sign_up(web, name="Lin Wei")
    for name in ("notebook", "script"):
        key = make_key(member, name)
        assert chat(web, key).status_code == 200
    code = web.server.cli("codes", "create", "--amount", "5", "--count", "1").stdout.strip()
    with member.http() as http:
        assert http.post("/billing/redeem", json={"code": code}).status_code == 200
        wait_for(lambda: http.get("/usage").json()["total"]["requests"] >= 2)
    return member


BOTH = [
    pytest.param(width, language, id=f"{width}-{language}")
    for width in ("desktop", "phone")
    for language in ("en", "zh-CN")
]


def signed_in_page(browser_page: Any, member: Member, width: str, language: str) -> Any:
    page = browser_page(width, language)
    member.sign_in(page)
    page.context.add_cookies([{"name": "kh_lang", "value": language, "url": member.url}])
    return page


def top_and_shoot(page: Any, shoot: Any, name: str) -> None:
    page.evaluate("() => window.scrollTo(0, 0)")
    shoot(page, name)


@pytest.mark.parametrize(("width", "language"), BOTH)
def test_every_page_in_both_languages_and_widths(
    browser_page: Any, shoot: Any, axe: Any, busy_member: Member, width: str, language: str
) -> None:
    key = make_key(busy_member, f"tester {width} {language}")
    page = signed_in_page(browser_page, busy_member, width, language)
    for path in PAGES:
        if path == "/playground":
            continue  # shot with a reply in it, below
        page.goto(path)
        assert page.locator("html").get_attribute("lang") == language
        assert page.locator("h1").count() == 1
        if path == "/account/usage":
            assert page.locator("svg.chart rect").count() > 0, "an empty chart"
            page.locator("details.chart-table summary").first.click()
        if path == "/tester":  # shot with an answer in it
            page.locator("#f-key").fill(key)
            page.locator("#send").click()
            page.wait_for_function(
                "() => /^200/.test(document.getElementById('status').textContent)",
                timeout=60_000,
            )
            # No secret in a committed screenshot: the field emptied, the snippet follows.
            page.locator("#f-key").fill("")
            page.wait_for_function(
                "() => document.getElementById('snippet').textContent.includes('your_api_key')"
            )
        axe(page)
        top_and_shoot(page, shoot, SHOT_NAMES[path])


@pytest.mark.parametrize(("width", "language"), BOTH)
def test_playground_streams_an_answer_and_shows_its_cost(
    browser_page: Any, shoot: Any, axe: Any, busy_member: Member, width: str, language: str
) -> None:
    page = signed_in_page(browser_page, busy_member, width, language)
    page.goto("/playground")
    # the slider starts at the model's own default (the bundled model decodes greedily)
    assert float(page.locator("#f-temperature").input_value()) == 0.0
    page.locator("#f-system").fill("Answer in one short sentence.")
    page.locator("#f-max-tokens").fill("24")
    page.locator("#f-message").fill("Say this is a test!")
    assert page.locator("#transcript").get_attribute("aria-live") == "polite"
    page.locator("#f-message").press("Control+Enter")
    reply = page.locator(".message.assistant").last
    page.wait_for_function(
        "() => { const m = document.querySelector('.message.assistant .meta');"
        " return m && m.hasAttribute('data-cost-micros'); }",
        timeout=60_000,
    )
    assert reply.locator(".text").inner_text().strip()
    meta = reply.locator(".meta").inner_text()
    if language == "en":
        assert re.search(r"\d+ \+ \d+ tokens · Cost: \S", meta), meta
    else:
        assert re.search(r"\d+ \+ \d+ 个 Token · 费用：\S", meta), meta
    assert page.locator("#stop").is_disabled() and page.locator("#send").is_enabled()
    axe(page)
    top_and_shoot(page, shoot, "playground")


def test_playground_stop_ends_the_stream(browser_page: Any, busy_member: Member) -> None:
    page = signed_in_page(browser_page, busy_member, "desktop", "en")
    page.goto("/playground")
    page.locator("#f-max-tokens").fill("400")
    page.locator("#f-message").fill("Write a long story about a lighthouse keeper.")
    page.locator("#send").click()
    page.wait_for_function("() => !document.getElementById('stop').disabled")
    page.locator("#stop").click()
    page.wait_for_function(
        "() => { const m = document.querySelector('.message.assistant .meta');"
        " return m && m.textContent.startsWith('Stopped.'); }"
    )
    assert page.locator("#send").is_enabled()


def test_tester_sends_a_call_and_its_curl_runs(
    browser_page: Any, web: WebSetup, busy_member: Member
) -> None:
    key = make_key(busy_member, "tester")
    page = browser_page("desktop", "en")
    busy_member.sign_in(page)
    page.goto("/tester")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Send").click()
    page.wait_for_function(
        "() => /^200/.test(document.getElementById('status').textContent)", timeout=60_000
    )
    assert page.locator("tr.rate-limit th", has_text="x-ratelimit-limit-requests").count() == 1
    assert '"chat.completion"' in page.locator("#response-body").inner_text()
    assert re.search(r"\d+ ms", page.locator("#timing").inner_text())
    # Copy as curl: the command carries the key typed above, and runs.
    page.get_by_role("tab", name="curl").click()
    page.wait_for_function(
        "key => document.getElementById('snippet').textContent.includes(key)", arg=key
    )
    command = page.locator("#snippet").inner_text()
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and '"chat.completion"' in result.stdout, result.stderr
    # The other languages are one tab away (arrow keys move between tabs).
    page.get_by_role("tab", name="curl").press("ArrowRight")
    page.wait_for_function(
        "() => document.getElementById('snippet').textContent.includes('from openai import OpenAI')"
    )


def test_api_docs_render_offline(browser_page: Any, web: WebSetup) -> None:
    """Swagger UI at /api/docs draws the management API from Keyhouse alone: every request
    the page makes stays on this server, and the CSP holds (the fixture checks)."""
    page = browser_page("desktop", "en")
    elsewhere: list[str] = []
    page.on(
        "request",
        lambda request: (
            None
            if request.url.startswith(web.url) or request.url.startswith("data:")
            else elsewhere.append(request.url)
        ),
    )
    page.goto("/api/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
    assert "Keyhouse management API" in page.locator(".swagger-ui .info .title").inner_text()
    assert page.locator(".opblock-summary-path", has_text="/playground/chat/completions").count()
    assert not elsewhere, elsewhere


def test_snippets_endpoint_needs_the_session_and_its_token(
    web: WebSetup, member_session: Member
) -> None:
    asked = {"method": "GET", "path": "/v1/models", "body": None, "key": "sk-kh-typed"}
    assert httpx.post(web.url + "/tester/snippets", json=asked).status_code == 401
    with httpx.Client(base_url=web.url, cookies=member_session.cookies, timeout=30) as http:
        assert http.post("/tester/snippets", json=asked).status_code == 403
        made = http.post(
            "/tester/snippets", json=asked, headers={"X-CSRF-Token": member_session.csrf}
        )
        assert made.status_code == 200
        texts = made.json()
        assert set(texts) == {"curl", "python", "python-legacy", "javascript"}
        assert 'OPENAI_API_KEY="sk-kh-typed"' in texts["curl"]
        assert f"{web.url}/v1/models" in texts["curl"]
        bad = http.post(
            "/tester/snippets",
            json={**asked, "method": "POST", "body": "[1, 2"},
            headers={"X-CSRF-Token": member_session.csrf},
        )
        assert bad.status_code == 400


def test_the_dark_scheme_keeps_its_contrast(
    browser_page: Any, axe: Any, shoot: Any, busy_member: Member
) -> None:
    page = browser_page("desktop", "en", dark=True)
    busy_member.sign_in(page)
    for path in PAGES:
        page.goto(path)
        if path == "/account/usage":
            page.locator("details.chart-table summary").first.click()
        axe(page)
    page.goto("/account/usage")
    top_and_shoot(page, shoot, "usage-dark")


def test_the_tester_from_the_keyboard(
    browser_page: Any, web: WebSetup, busy_member: Member
) -> None:
    """Example, key and send without a pointer; the copy tabs move with the arrow keys."""
    key = make_key(busy_member, "keyboard")
    page = signed_in_page(browser_page, busy_member, "desktop", "en")
    page.goto("/tester")
    page.locator("#f-example").focus()
    page.keyboard.press("ArrowDown")  # chat, streamed
    assert '"stream": true' in page.locator("#f-body").input_value()
    page.locator("#f-key").focus()
    page.keyboard.type(key)
    page.keyboard.press("Enter")  # submits the form
    page.wait_for_function(
        "() => /^200/.test(document.getElementById('status').textContent)", timeout=60_000
    )
    page.wait_for_function(
        "() => document.getElementById('response-body').textContent.includes('[DONE]')",
        timeout=60_000,
    )
    page.locator("#tab-curl").focus()
    page.keyboard.press("End")
    assert page.locator("#tab-javascript").get_attribute("aria-selected") == "true"
    page.wait_for_function(
        "() => document.getElementById('snippet').textContent.includes('getReader')"
    )
