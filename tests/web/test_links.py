"""Every link Keyhouse sends out opens a working page: the ``{public_url}/…`` addresses in the
source (error messages, redirects), the links in the mails the server really sent (the
invitation), and the page OpenID Connect returns to.

The links are collected, not listed by hand, so a new one is covered the day it is written.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from keyhouse import web as web_package
from tests.web.conftest import new_email

SRC = Path(web_package.__file__).parents[1]
#: ``{public_url}/path``, ``{self.public_url}/path``, ``{settings.public_url.rstrip('/')}/path``.
LINK = re.compile(r"\{[\w.]*public_url[^}]*\}(/[\w\-/?=.&]*)")


def source_links() -> set[str]:
    """Paths that Keyhouse's own messages and redirects point people to."""
    found: set[str] = set()
    for path in SRC.rglob("*.py"):
        if "web" in path.relative_to(SRC).parts:
            continue  # the pages themselves
        for match in LINK.finditer(path.read_text()):
            link = match.group(1).rstrip(".")
            if link.startswith("/api/"):
                continue  # API endpoints (the OIDC callback), not pages
            found.add(link)
    return found


def test_the_collection_finds_the_known_links() -> None:
    links = source_links()
    for expected in (
        "/account/api-keys",
        "/account/usage",
        "/account/limits",
        "/account",
        "/signup?invitation=",
        "/signup/continue?next=/",
    ):
        assert expected in links, sorted(links)


def opens(http: httpx.Client, path: str) -> httpx.Response:
    response = http.get(path, follow_redirects=True)
    assert response.status_code == 200, f"{path}: {response.status_code} {response.text[:200]}"
    assert response.headers["content-type"].startswith("text/html"), path
    return response


@pytest.mark.parametrize("signed_in", [False, True])
def test_every_link_in_the_source_opens_a_page(web, member_session, signed_in) -> None:
    cookies = member_session.cookies if signed_in else {}
    with httpx.Client(base_url=web.url, cookies=cookies, timeout=30) as http:
        for link in sorted(source_links()):
            final = opens(http, link)
            if not signed_in:
                # A page for members sends a stranger to sign in first, and back afterwards.
                assert urlsplit(str(final.url)).path in ("/signin", "/signup"), link


def test_the_invitation_mail_opens_the_sign_up_page(web) -> None:
    email = new_email()
    created = web.admin.post("/admin/invitations", json={"email": email})
    assert created.status_code == 201, created.text
    mail = web.next_mail(email)
    urls = re.findall(r"https?://\S+", mail)
    assert urls and urls[0] == created.json()["url"]
    for url in urls:
        assert url.startswith(web.url)
        with httpx.Client(timeout=30) as http:
            page = opens(http, url)
        token = urlsplit(url).query.removeprefix("invitation=")
        assert f'name="invitation" value="{token}"' in page.text
