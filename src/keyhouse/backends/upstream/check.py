"""``keyhouse upstreams check``: call every upstream deployment once and print a table.

For each: are its keys accepted and is its model listed (``GET /models``), does a short chat
answer (and how fast), does a stream start (and how soon) — in the deployment's own wire
format: OpenAI's chat, or Anthropic's Messages. Nothing is printed of the keys but their last
four characters.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from keyhouse.backends.upstream import http
from keyhouse.backends.upstream.client import MAX_BODY
from keyhouse.backends.upstream.kinds import UPSTREAMS
from keyhouse.config import LOCAL_KINDS, DeploymentSpec, ModelSpec, Settings
from keyhouse.errors import ConfigError, KeyhouseError

PROMPT = [{"role": "user", "content": "Say this is a test!"}]
#: The kinds checked here, and where each lists its models (None: it lists none at a
#: deployment's address, as Azure's).
CHECKED = {"openai": "/models", "azure": None, "anthropic": "/models"}


def short_chat(kind: str, model: str) -> tuple[str, dict[str, Any]]:
    """A short chat in the kind's own format: its path and body."""
    if kind == "anthropic":
        return "/messages", {"model": model, "max_tokens": 8, "messages": PROMPT}
    return "/chat/completions", {"model": model, "messages": PROMPT, "max_tokens": 8}


class _NoList(Exception):
    """This kind of server lists no models at the deployment's address."""


@dataclass
class Row:
    model: str
    deployment: str
    where: str
    models: str = "-"
    chat: str = "-"
    stream: str = "-"
    verdict: str = "?"


def _short(error: BaseException) -> str:
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    return text if len(text) <= 60 else text[:57] + "…"


async def check_one(spec: ModelSpec, deployment: DeploymentSpec, timeout: float) -> Row:
    row = Row(spec.name, deployment.name, "")
    try:
        backend = UPSTREAMS[deployment.backend](spec, deployment)
    except ConfigError as exc:
        row.verdict = f"FAIL config: {_short(exc)}"
        return row
    s = backend.settings
    row.where = s.base_url
    await backend.start()
    assert backend.http is not None
    failures = []
    try:
        # 1. keys and model list
        headers = dict(s.headers)
        if backend.keys is not None:
            picked = backend.keys.pick()
            if picked is not None:
                headers.update(backend.auth_headers(picked[1].secret))
        try:
            listing = CHECKED[deployment.backend]
            if listing is None:
                raise _NoList
            async with asyncio.timeout(timeout):
                response = await backend.http.request("GET", s.base_url + listing, headers)
                try:
                    body = await response.read(MAX_BODY)
                finally:
                    response.release()
            if response.status == 200:
                ids = [
                    m.get("id") for m in orjson.loads(body).get("data", []) if isinstance(m, dict)
                ]
                row.models = "listed" if s.model in ids else f"{len(ids)} models, not {s.model}"
            elif response.status in (401, 403):
                row.models = f"key refused ({response.status})"
                failures.append("key")
            else:
                row.models = f"HTTP {response.status}"
        except _NoList:
            pass
        except (TimeoutError, http.HTTPError, ValueError) as exc:
            row.models = f"unreachable: {type(exc).__name__}"
            failures.append("models")
        # 2. a short chat, and 3. a stream
        if "chat.completions" in deployment.endpoints:
            path, payload = short_chat(deployment.backend, s.model)
            try:
                started = time.perf_counter()
                async with asyncio.timeout(timeout):
                    response = await backend.post(path, orjson.dumps(payload))
                    try:
                        await response.read(MAX_BODY)
                    finally:
                        response.release()
                row.chat = f"{(time.perf_counter() - started) * 1000:.0f} ms"
            except (KeyhouseError, TimeoutError, http.HTTPError) as exc:
                row.chat = f"FAIL {_short(exc)}"
                failures.append("chat")
            try:
                started = time.perf_counter()
                async with asyncio.timeout(timeout):
                    response = await backend.post(path, orjson.dumps({**payload, "stream": True}))
                    await response.readline()
                    row.stream = f"first byte {(time.perf_counter() - started) * 1000:.0f} ms"
                    response.close()
            except (KeyhouseError, TimeoutError, http.HTTPError) as exc:
                row.stream = f"FAIL {_short(exc)}"
                failures.append("stream")
        row.verdict = "PASS" if not failures else "FAIL " + ", ".join(failures)
    finally:
        await backend.stop()
    return row


async def check_all(
    settings: Settings, *, only: str | None, timeout: float, echo: Callable[[str], Any]
) -> bool:
    rows: list[Row] = []
    targets = [
        (spec, deployment)
        for spec in settings.models
        if only is None or only in spec.names
        for deployment in spec.deployments
    ]
    for spec, deployment in targets:
        if deployment.backend in LOCAL_KINDS:
            rows.append(
                Row(spec.name, deployment.name, "local", verdict="local (see keyhouse check)")
            )
            continue
        if deployment.backend not in CHECKED:
            rows.append(Row(spec.name, deployment.name, deployment.backend, verdict="not checked"))
            continue
        rows.append(await check_one(spec, deployment, timeout))
    if not rows:
        echo("no deployments to check" + (f" for {only}" if only else ""))
        return False
    widths = {
        name: max(len(name), *(len(str(getattr(r, name))) for r in rows))
        for name in ("model", "deployment", "where", "models", "chat", "stream", "verdict")
    }
    echo("  ".join(name.upper().ljust(width) for name, width in widths.items()))
    for row in rows:
        echo("  ".join(str(getattr(row, name)).ljust(width) for name, width in widths.items()))
    return all(not r.verdict.startswith("FAIL") for r in rows)
