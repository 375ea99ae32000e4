"""``api/dispatch`` serves the ``/v1`` pipeline's routes ahead of Starlette; what a client sees
must be what Starlette's router and ``api/errors`` gave: OpenAI's 404 and 405 (with ``Allow``),
errors rendered by the one rule, an ``x-request-id`` on every answer, the access line.

The app is ``create_app()``'s own, run in process; a test that needs a failing handler adds
one to its table before the first request (no route of the real server fails on purpose).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from keyhouse.api.dispatch import Dispatch
from keyhouse.api.http import ClientGone
from keyhouse.api.pipeline import Exchange, route
from keyhouse.app import App
from keyhouse.errors import InvalidRequest
from tests.billing.meter_support import Keyhouse, keyhouse

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def kh(tmp_path: Path) -> AsyncIterator[Keyhouse]:
    async with keyhouse(tmp_path, "sqlite") as running:
        yield running


def app_of(kh: Keyhouse) -> App:
    assert isinstance(kh.app, App)
    return kh.app


def error_of(response: httpx.Response, status: int) -> dict[str, str]:
    assert response.status_code == status, response.text
    assert re.fullmatch(r"req_[0-9A-Za-z]{24}", response.headers["x-request-id"])
    assert len(response.headers.get_list("x-request-id")) == 1
    error: dict[str, str] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/embeddings", "POST"),
        ("DELETE", "/v1/models", "GET, HEAD"),
        ("POST", "/v1/models/gpt-4o-mini", "GET, HEAD"),
        ("POST", "/v1/responses/resp_123", "DELETE, GET, HEAD"),
    ],
)
async def test_a_known_url_with_the_wrong_method(
    kh: Keyhouse, method: str, path: str, allowed: str
) -> None:
    response = await kh.http.request(method, path)
    error = error_of(response, 405)
    assert error["message"] == f"Invalid method for URL ({method} {path})"
    assert error["code"] == "method_not_allowed"
    assert error["type"] == "invalid_request_error"
    assert response.headers["allow"] == allowed


@pytest.mark.parametrize(
    "path",
    ["/v1/chat/completions/", "/v1/nothing", "/v1/responses/a/b", "/v1", "/v1/responses/"],
)
async def test_an_unknown_url_is_starlettes_404(kh: Keyhouse, path: str) -> None:
    for method in ("GET", "POST"):
        error = error_of(await kh.http.request(method, path), 404)
        assert error["message"] == f"Invalid URL ({method} {path})"


async def test_path_parameters_reach_the_handler(kh: Keyhouse) -> None:
    _, key = await kh.member(10_000_000)
    auth = {"Authorization": f"Bearer {key}"}
    found = await kh.http.get("/v1/models/gpt-4o-mini", headers=auth)
    assert found.status_code == 200, found.text
    assert found.json()["id"] == "gpt-4o-mini"
    gone = error_of(await kh.http.delete("/v1/responses/resp_nope", headers=auth), 404)
    assert gone["message"] == "Response with id 'resp_nope' not found."


async def test_a_refusal_keeps_its_headers_and_gets_the_limit_headers(kh: Keyhouse) -> None:
    """The pipeline's errors carry the limit headers as they stand once the key is known."""
    _, key = await kh.member(10_000_000)
    response = await kh.http.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "no-such-model", "messages": HI},
    )
    error = error_of(response, 404)
    assert error["code"] == "model_not_found"
    assert any(name.startswith("x-ratelimit-") for name in response.headers)


async def boom(ex: Exchange) -> Response:
    raise RuntimeError("password=hunter2")


async def gone(ex: Exchange) -> Response:
    raise ClientGone


async def disconnected(ex: Exchange) -> Response:
    raise ClientDisconnect


async def refused(ex: Exchange) -> Response:
    raise InvalidRequest("no", param="x", code="bad", headers={"retry-after": "1"})


@pytest.fixture
def failing(kh: Keyhouse) -> Keyhouse:
    app = app_of(kh)
    assert app.middleware_stack is None, "the table is read when the first request comes"
    app.endpoints += [
        route("/v1/boom", boom, "POST"),
        route("/v1/gone", gone, "POST"),
        route("/v1/disconnected", disconnected, "POST"),
        route("/v1/refused", refused, "POST"),
    ]
    app.access_log = True
    return kh


async def test_an_unexpected_error_is_a_500_with_a_request_id(
    failing: Keyhouse, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        response = await failing.http.post("/v1/boom")
    error = error_of(response, 500)
    assert error["type"] == "server_error"
    assert "hunter2" not in response.text
    logged = [r for r in caplog.records if r.name == "keyhouse.api"]
    assert len(logged) == 1 and logged[0].exc_info is not None  # the operator's traceback
    assert "unexpected error on POST /v1/boom" in logged[0].getMessage()
    lines = [r.getMessage() for r in caplog.records if r.name == "keyhouse.access"]
    assert len(lines) == 1 and re.fullmatch(r"POST /v1/boom 500 \d+ ms", lines[0])


@pytest.mark.parametrize("path", ["/v1/gone", "/v1/disconnected"])
async def test_a_client_gone_is_one_line_and_a_499(
    failing: Keyhouse, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    with caplog.at_level(logging.INFO):
        response = await failing.http.post(path)
    assert response.status_code == 499
    request_id = response.headers["x-request-id"]
    logged = [r for r in caplog.records if r.name == "keyhouse.api"]
    assert [r.getMessage() for r in logged] == [
        f"client went away during POST {path} ({request_id})"
    ]
    assert logged[0].exc_info is None
    lines = [r.getMessage() for r in caplog.records if r.name == "keyhouse.access"]
    assert len(lines) == 1 and lines[0].startswith(f"POST {path} 499 ")


async def test_a_refusal_is_openais_shape_with_its_headers(failing: Keyhouse) -> None:
    response = await failing.http.post("/v1/refused")
    error = error_of(response, 400)
    assert error == {"message": "no", "type": "invalid_request_error", "param": "x", "code": "bad"}
    assert response.headers["retry-after"] == "1"


def test_a_route_declared_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        Dispatch([route("/v1/x", boom, "POST"), route("/v1/x", gone, "POST")], boom)  # type: ignore[arg-type]


async def test_head_and_a_proxys_root_path_as_starlette_had_them(kh: Keyhouse) -> None:
    """A GET route answers HEAD; behind a proxy's ``root_path`` the path within the app
    decides."""
    _, key = await kh.member(10_000_000)
    auth = {"Authorization": f"Bearer {key}"}
    assert (await kh.http.head("/v1/models", headers=auth)).status_code == 200
    transport = httpx.ASGITransport(app=kh.app, root_path="/gateway")
    async with httpx.AsyncClient(transport=transport, base_url="http://keyhouse") as http:
        listed = await http.get("/gateway/v1/models", headers=auth)
        assert listed.status_code == 200, listed.text
        assert listed.json()["object"] == "list"
        wrong = await http.put("/gateway/v1/models", headers=auth)
        assert error_of(wrong, 405)["message"] == "Invalid method for URL (PUT /gateway/v1/models)"
