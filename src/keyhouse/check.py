"""``keyhouse check``: test a key against any OpenAI-compatible server, step by step.

The seed's users tested a fresh key with curl and a Python snippet and read the result off a
screenshot; this prints a verdict per step instead: key valid, models visible, a chat call
with its latency, a streamed call with its time to first token.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from keyhouse.logs import redact

PROMPT = [{"role": "user", "content": "Say this is a test!"}]
NOT_CHAT = (
    "embed",
    "whisper",
    "tts",
    "dall-e",
    "moderation",
    "davinci",
    "babbage",
    "image",
    "audio",
)
PREFERRED = ("gpt-4o-mini", "gpt-3.5-turbo")


@dataclass
class Step:
    name: str
    ok: bool | None  # None: skipped
    detail: str

    def line(self) -> str:
        mark = {True: "PASS", False: "FAIL", None: "SKIP"}[self.ok]
        return f"[{mark}] {self.name:<14} {self.detail}"


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        code = f" ({error.get('code')})" if error.get("code") else ""
        return f"HTTP {response.status_code}{code}: {error.get('message')}"
    except Exception:
        return f"HTTP {response.status_code}: {response.text[:200]}"


def pick_model(ids: list[str]) -> str | None:
    for preferred in PREFERRED:
        if preferred in ids:
            return preferred
    for model_id in ids:
        if not any(word in model_id.lower() for word in NOT_CHAT):
            return model_id
    return None


def run_check(
    base_url: str,
    key: str,
    *,
    model: str | None = None,
    timeout: float = 60.0,
    echo: Callable[[str], Any] = print,
) -> bool:
    base = base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {key}"}
    steps: list[Step] = []

    def report(step: Step) -> Step:
        steps.append(step)
        echo(redact(step.line()))
        return step

    echo(f"Checking {base} with key {redact(key) if len(key) > 12 else '***'}")
    with httpx.Client(timeout=timeout, headers=headers) as client:
        # 1. key valid? 2. which models?
        try:
            started = time.perf_counter()
            response = client.get(f"{base}/models")
            elapsed = (time.perf_counter() - started) * 1000
        except httpx.HTTPError as exc:
            report(Step("key", False, f"cannot reach the server: {exc}"))
            report(Step("models", None, "skipped"))
            report(Step("chat", None, "skipped"))
            report(Step("stream", None, "skipped"))
            return False
        if response.status_code == 200:
            report(Step("key", True, f"accepted ({elapsed:.0f} ms)"))
            try:
                ids = [m["id"] for m in response.json()["data"]]
            except (ValueError, KeyError, TypeError):
                ids = []
            shown = ", ".join(ids[:8]) + (f" … (+{len(ids) - 8})" if len(ids) > 8 else "")
            report(
                Step("models", bool(ids), f"{len(ids)} visible: {shown}" if ids else "none visible")
            )
        elif response.status_code in (401, 403):
            report(Step("key", False, _error_text(response)))
            ids = []
            report(Step("models", None, "skipped"))
        else:
            report(Step("key", None, f"could not tell: {_error_text(response)}"))
            ids = []
            report(Step("models", False, _error_text(response)))

        chosen = model or pick_model(ids)
        if chosen is None:
            report(Step("chat", None, "no chat model to call (use --model)"))
            report(Step("stream", None, "skipped"))
            return all(s.ok is not False for s in steps)

        # 3. a chat call
        payload = {"model": chosen, "messages": PROMPT, "max_tokens": 32}
        try:
            started = time.perf_counter()
            response = client.post(f"{base}/chat/completions", json=payload)
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code == 200:
                body = response.json()
                text = (
                    (body["choices"][0]["message"].get("content") or "").strip().replace("\n", " ")
                )
                usage = body.get("usage") or {}
                report(
                    Step(
                        "chat",
                        True,
                        f"{body.get('model', chosen)} answered in {elapsed:.0f} ms "
                        f"({usage.get('prompt_tokens', '?')}+"
                        f"{usage.get('completion_tokens', '?')} tokens): "
                        f"{text[:80]!r}",
                    )
                )
            else:
                report(Step("chat", False, _error_text(response)))
        except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
            report(Step("chat", False, f"{type(exc).__name__}: {exc}"))

        # 4. a streamed call
        try:
            started = time.perf_counter()
            first: float | None = None
            chunks = 0
            done = False
            text_parts: list[str] = []
            with client.stream(
                "POST", f"{base}/chat/completions", json={**payload, "stream": True}
            ) as response:
                if response.status_code != 200:
                    response.read()
                    report(Step("stream", False, _error_text(response)))
                else:
                    for line in response.iter_lines():
                        if not line.startswith("data: "):
                            continue
                        data = line[6:]
                        if data == "[DONE]":
                            done = True
                            break
                        event = json.loads(data)
                        if "error" in event:
                            raise ValueError(event["error"].get("message"))
                        chunks += 1
                        for choice in event.get("choices", []):
                            content = (choice.get("delta") or {}).get("content")
                            if content:
                                if first is None:
                                    first = (time.perf_counter() - started) * 1000
                                text_parts.append(content)
                    total = (time.perf_counter() - started) * 1000
                    ok = done and chunks > 0
                    report(
                        Step(
                            "stream",
                            ok,
                            (
                                f"first token after {first:.0f} ms, "
                                if first is not None
                                else "no content, "
                            )
                            + f"{chunks} chunks in {total:.0f} ms"
                            + ("" if done else ", no [DONE] at the end"),
                        )
                    )
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            report(Step("stream", False, f"{type(exc).__name__}: {exc}"))

    failed = [s.name for s in steps if s.ok is False]
    echo("Verdict: " + ("all good." if not failed else f"failed: {', '.join(failed)}."))
    return not failed
