"""An OpenAI-compatible server as a backend: the request passes through as the client wrote it,
the answer comes back as the server wrote it.

What Keyhouse changes on the way: the model name (the upstream's own), fields the deployment
drops or refuses, and ``stream_options.include_usage`` (always asked for, so that the meter
learns the truth; stripped again when the client did not ask). Where the server reports no
usage, tokens are counted offline and marked as estimates. If the client goes away mid-stream,
the server is read to the end — briefly, bounded — to learn the usage.

Failures are sorted for the router: ``UpstreamFailure`` (a ``Retryable``) means "this deployment
could not answer" (connection, timeout, 5xx, 429, our keys refused) and may go to another
deployment; anything else is the client's own error and is passed back as the server said it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import orjson

from keyhouse.backends.base import Call, Event, Relayed, Usage
from keyhouse.backends.upstream import http, tokens
from keyhouse.backends.upstream.keys import KeyPool, read_secret
from keyhouse.config import DeploymentSpec, ModelSpec
from keyhouse.errors import ConfigError, InvalidRequest, KeyhouseError, Retryable
from keyhouse.logs import redact
from keyhouse.wire.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ResponsesRequest,
    WireModel,
)

log = logging.getLogger("keyhouse.upstream")

MAX_BODY = 64 * 1024 * 1024


class UpstreamFailure(Retryable):
    """The deployment could not answer; another one may. Counts against its breaker."""


# ----------------------------------------------------------------------------- settings

_KEYS = {
    "base_url",
    "api_key",
    "api_keys",
    "model",
    "headers",
    "timeouts",
    "cost",
    "drop_fields",
    "refuse_fields",
    "tokenizer",
    "endpoints",
    "key_cooldown",
    "auth_cooldown",
    "breaker",
    "max_connections",
    "max_tokens_field",
    "responses_api",
    "vision",
}
#: The fields an upstream may take the output allowance in (servers that know only one).
_MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens")
#: connect; first_byte (the wait for the answer to start, and for each chunk after);
#: total (the whole answer); drain (reading on after the client left, for the usage).
_TIMEOUTS = {"connect": 5.0, "first_byte": 60.0, "total": 600.0, "drain": 30.0}


@dataclass(frozen=True)
class UpstreamSettings:
    base_url: str
    model: str
    keys: tuple[str, ...] = field(default=(), repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    connect: float = 5.0
    first_byte: float = 60.0
    total: float = 600.0
    drain: float = 30.0
    drop_fields: frozenset[str] = frozenset()
    refuse_fields: frozenset[str] = frozenset()
    tokenizer: str | None = None
    #: What the provider charges per 1M tokens, for margin reports (members pay the model's price).
    cost: dict[str, Decimal] = field(default_factory=dict)
    key_cooldown: float = 60.0
    auth_cooldown: float = 600.0
    breaker: dict[str, float] = field(default_factory=dict)
    max_connections: int = 256
    #: Where chat requests carry their output allowance (completions: always ``max_tokens``).
    max_tokens_field: str = "max_tokens"


def upstream_settings(
    spec: ModelSpec,
    deployment: DeploymentSpec,
    extra_keys: frozenset[str] = frozenset(),
    base_url: str | None = None,
) -> UpstreamSettings:
    """Validate an upstream deployment's settings and read its keys (never from the TOML).
    Other kinds (``azure``, ``anthropic``) take ``extra_keys`` of their own, and may give the
    ``base_url`` they build from them."""
    where = f"deployment {deployment.name}"
    raw = dict(deployment.settings)
    unknown = set(raw) - _KEYS - extra_keys
    if unknown:
        raise ConfigError(f"{where}: unknown settings {sorted(unknown)}")
    if not isinstance(raw.get("vision", False), bool):
        raise ConfigError(f"{where}: vision must be true or false")
    if base_url is not None:
        raw["base_url"] = base_url
    base_url = raw.get("base_url")
    if not isinstance(base_url, str) or urlsplit(base_url).scheme not in ("http", "https"):
        raise ConfigError(
            f"{where}: base_url must be an http(s) URL, e.g. https://api.openai.com/v1"
        )
    if "@" in urlsplit(base_url).netloc:
        # A secret in the URL would be in every log line and error that names it.
        raise ConfigError(
            f"{where}: base_url may not carry a user name or password; give the key as "
            'api_key = "env:NAME" (or a header in headers)'
        )
    references = raw.get("api_keys", [])
    if "api_key" in raw:
        references = [raw["api_key"], *references]
    if isinstance(references, str) or not isinstance(references, list):
        raise ConfigError(f"{where}: api_keys must be a list of env:NAME or file:/path")
    keys = tuple(read_secret(str(ref), where) for ref in references)
    timeouts = dict(_TIMEOUTS)
    for name, value in (raw.get("timeouts") or {}).items():
        if name not in _TIMEOUTS:
            raise ConfigError(f"{where}: unknown timeout {name!r} (use {', '.join(_TIMEOUTS)})")
        if not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{where}: timeouts.{name} must be a positive number of seconds")
        timeouts[name] = float(value)
    headers = raw.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ConfigError(f"{where}: headers must be a table of strings")
    cost = {}
    for name, value in (raw.get("cost") or {}).items():
        if name not in ("input", "cached_input", "output"):
            raise ConfigError(f"{where}: cost takes input, cached_input and output")
        cost[name] = Decimal(repr(value) if isinstance(value, float) else str(value))
    max_tokens_field = str(raw.get("max_tokens_field", "max_tokens"))
    if max_tokens_field not in _MAX_TOKENS_FIELDS:
        raise ConfigError(
            f"{where}: max_tokens_field must be one of {', '.join(_MAX_TOKENS_FIELDS)}"
        )
    if not isinstance(raw.get("responses_api", False), bool):
        raise ConfigError(f"{where}: responses_api must be true or false")
    tokenizer = raw.get("tokenizer")
    if tokenizer is not None:
        # Checked now: an unknown name would otherwise fail each answer that lacks usage.
        try:
            tokens.encoding_for("", str(tokenizer))
        except Exception:
            raise ConfigError(
                f"{where}: unknown tokenizer {tokenizer!r} (quicktok knows e.g. cl100k_base, "
                "o200k_base, llama3, qwen3)"
            ) from None
    return UpstreamSettings(
        base_url=base_url.rstrip("/"),
        model=str(raw.get("model") or spec.name),
        keys=keys,
        headers={str(k): v for k, v in headers.items()},
        drop_fields=frozenset(raw.get("drop_fields") or ()),
        refuse_fields=frozenset(raw.get("refuse_fields") or ()),
        tokenizer=str(tokenizer) if tokenizer is not None else None,
        cost=cost,
        key_cooldown=float(raw.get("key_cooldown", 60)),
        auth_cooldown=float(raw.get("auth_cooldown", 600)),
        breaker={k: float(v) for k, v in (raw.get("breaker") or {}).items()},
        max_connections=int(raw.get("max_connections", 256)),
        max_tokens_field=max_tokens_field,
        **timeouts,
    )


# ----------------------------------------------------------------------------- the backend


@dataclass
class _Seen:
    """What a relayed answer said, for the meter — and how far each choice has gone, to cut a
    stream that goes past its allowance."""

    usage: Usage | None = None
    text: list[str] = field(default_factory=list)
    #: The output allowance of each choice (None: no cut), the choices asked for, and the
    #: endpoint's shape (chat or legacy completions).
    limit: int | None = None
    choices: int = 1
    chat: bool = True
    #: Chunks that carried generated output, per choice: every one holds at least one token.
    chunks: dict[int, int] = field(default_factory=dict)
    texts: dict[int, list[str]] = field(default_factory=dict)
    #: Choices finished (by the upstream, or cut here); those cut here.
    done: set[int] = field(default_factory=set)
    cut: set[int] = field(default_factory=set)
    #: A chunk came; the first one's id, object, created, model and fingerprint (for the
    #: chunks made here).
    started: bool = False
    base: dict[str, Any] = field(default_factory=dict)

    @property
    def stopped(self) -> bool:
        """Cut here, and every choice done: nothing more is wanted from the upstream."""
        return bool(self.cut) and len(self.done) >= self.choices


_GENERATED = ("content", "refusal", "reasoning_content", "reasoning", "tool_calls", "function_call")


def _generated(choice: dict[str, Any], chat: bool) -> bool:
    """Does this chunk's choice carry output (and so at least one token)?"""
    if not chat:
        return bool(choice.get("text"))
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return False
    if delta.get("content"):  # nearly every chunk: decided without the loop
        return True
    return any(delta.get(name) for name in _GENERATED)


def _usage(
    raw: Any, prompt: str = "prompt_tokens", completion: str = "completion_tokens"
) -> Usage | None:
    """Chat's usage object, or (with the Responses API's field names) its twin."""
    if not isinstance(raw, dict) or prompt not in raw:
        return None
    details = raw.get(f"{prompt}_details") or {}
    return Usage(
        int(raw.get(prompt) or 0),
        int(raw.get(completion) or 0),
        int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0,
    )


@dataclass
class _Heard:
    """What a passed-through Responses stream said, for the meter: its output text so far,
    and the usage of its finished response."""

    usage: Usage | None = None
    text: list[str] = field(default_factory=list)

    def hear(self, data: bytes) -> None:
        event = _loads(data)
        kind = event.get("type")
        if kind == "error":
            raise upstream_stream_error(event)
        if kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
            self.text.append(event["delta"])
        finished = event.get("response")
        if isinstance(finished, dict) and finished.get("usage"):
            self.usage = _responses_usage(finished["usage"]) or self.usage


def _output_texts(answer: dict[str, Any]) -> list[str]:
    """The output text of a Responses API body (its message items' text parts)."""
    out = []
    for item in answer.get("output") or ():
        for part in (item.get("content") or ()) if isinstance(item, dict) else ():
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])
    return out


def _responses_usage(raw: Any) -> Usage | None:
    """The Responses API's usage (``input_tokens``, ``output_tokens``)."""
    return _usage(raw, "input_tokens", "output_tokens")


def _retry_after(headers: Any) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            with contextlib.suppress(ValueError):
                return max(0.0, float(value) * scale)
    return None


class UpstreamBackend:
    """One deployment on an OpenAI-compatible server."""

    def __init__(self, spec: ModelSpec, deployment: DeploymentSpec) -> None:
        self.spec = spec
        self.deployment = deployment
        self.settings = self.read_settings(spec, deployment)
        self.keys = KeyPool(list(self.settings.keys)) if self.settings.keys else None
        self.http: http.HTTPClient | None = None
        self.system_fingerprint = None
        self._drains: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.deployment.name} → {self.settings.base_url})"

    def read_settings(self, spec: ModelSpec, deployment: DeploymentSpec) -> UpstreamSettings:
        return upstream_settings(spec, deployment)

    async def start(self) -> None:
        s = self.settings
        # first_byte: the wait for the response, and then between chunks. No cookie jar: an
        # upstream's cookies are nobody's (one jar would hand one member's to the next).
        self.http = http.HTTPClient(
            max_connections=s.max_connections,
            connect=s.connect,
            first_byte=s.first_byte,
            total=s.total,
        )

    async def stop(self) -> None:
        drains = list(self._drains)
        for task in drains:
            task.cancel()
        # A drain cancelled before it ran never reaches its ``finally``: its done-callback
        # settles the meter. Wait for them, so every meter is settled when stop() returns.
        await asyncio.gather(*drains, return_exceptions=True)
        if self.http is not None:
            self.http.close()
            self.http = None

    # ------------------------------------------------------------------ requests

    def payload(self, request: WireModel, stream: bool, max_output: int | None = None) -> bytes:
        body = dict(request.raw)
        if max_output is not None:
            # The allowance the hold pays for (never more than the client asked), in the one
            # field this deployment takes: a server given no cap could write without end.
            field_name = (
                self.settings.max_tokens_field
                if isinstance(request, ChatCompletionRequest)
                else "max_tokens"
            )
            for name in _MAX_TOKENS_FIELDS:
                body.pop(name, None)
            body[field_name] = max_output
        for name in self.settings.refuse_fields:
            if name in body:
                raise InvalidRequest(
                    f"Unsupported parameter: '{name}' is not supported with this model.",
                    param=name,
                    code="unsupported_parameter",
                )
        for name in self.settings.drop_fields:
            body.pop(name, None)
        body["model"] = self.settings.model
        self.apply_model_defaults(request, body)
        if stream:
            options = body.get("stream_options")
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
        return orjson.dumps(body)

    def apply_model_defaults(self, request: WireModel, body: dict[str, Any]) -> None:
        """The model's default system prompt (chat) and temperature, where the request has
        none; embeddings have neither."""
        if isinstance(request, ChatCompletionRequest):
            added = self.spec.added_system_prompt(m.role for m in request.messages)
            if added is not None and isinstance(body.get("messages"), list):
                body["messages"] = [{"role": "system", "content": added}, *body["messages"]]
        elif not isinstance(request, CompletionRequest):
            return
        if self.spec.default_temperature is not None and body.get("temperature") is None:
            body["temperature"] = self.spec.default_temperature

    def url(self, path: str) -> str:
        """Where an endpoint (``/chat/completions``, ``/embeddings`` …) of this deployment is."""
        return self.settings.base_url + path

    def auth_headers(self, secret: str) -> dict[str, str]:
        """How this kind of server takes a key."""
        return {"Authorization": f"Bearer {secret}"}

    async def post(
        self, path: str, body: bytes, content_type: str = "application/json"
    ) -> http.Response:
        """POST with the next usable key; keys refused (401/403) or throttled (429) are benched
        and the next one tried. Raises UpstreamFailure when the deployment cannot answer."""
        assert self.http is not None, "backend not started"
        url = self.url(path)
        tried: set[int] = set()
        while True:
            headers = {"Content-Type": content_type, **self.settings.headers}
            index = None
            if self.keys is not None:
                picked = self.keys.pick(tried)
                if picked is None:
                    raise UpstreamFailure(
                        f"Every API key of the upstream deployment {self.deployment.name} is "
                        "resting after being refused or throttled; try again shortly.",
                        status=503,
                    )
                index, key = picked
                headers.update(self.auth_headers(key.secret))
            try:
                response = await self.http.request("POST", url, headers, body)
            except http.ConnectTimeout:
                raise UpstreamFailure(
                    f"Could not connect to the upstream deployment {self.deployment.name} "
                    f"within {self.settings.connect:g} s.",
                    status=504,
                    code="upstream_timeout",
                ) from None
            except TimeoutError:  # no answer within first_byte (or total)
                raise UpstreamFailure(
                    f"The upstream deployment {self.deployment.name} did not answer within "
                    f"{self.settings.first_byte:g} s.",
                    status=504,
                    code="upstream_timeout",
                ) from None
            except http.HTTPError as exc:
                raise UpstreamFailure(
                    f"Could not reach the upstream deployment {self.deployment.name}: "
                    f"{type(exc).__name__}.",
                    status=502,
                ) from None
            if response.status == 200:
                return response
            data = await self._read(response)
            status = response.status
            if status in (401, 403) and index is not None and self.keys is not None:
                self.keys.bench(index, self.settings.auth_cooldown)
                log.warning(
                    "%s: %s refused (%s); benched",
                    self.deployment.name,
                    self.keys.keys[index].label,
                    status,
                )
                tried.add(index)
                continue
            if status == 429:
                if index is not None and self.keys is not None:
                    rest = _retry_after(response.headers)
                    if rest is None:
                        rest = self.settings.key_cooldown
                    self.keys.bench(index, rest)
                    tried.add(index)
                    continue
                raise UpstreamFailure(
                    f"The upstream deployment {self.deployment.name} is throttling requests.",
                    status=503,
                    code="upstream_overloaded",
                )
            if status >= 500 or status in (401, 403):
                raise UpstreamFailure(
                    f"The upstream deployment {self.deployment.name} failed (HTTP {status}).",
                    status=502,
                )
            raise self.client_error(status, data)

    def client_error(self, status: int, data: bytes) -> KeyhouseError:
        """The server's refusal of the client's request, as the client gets it."""
        return client_error(status, data)

    # ------------------------------------------------------------------ endpoints

    def chat(self, request: ChatCompletionRequest, call: Call) -> AsyncIterator[Event]:
        body = self.payload(request, bool(request.stream), call.max_output)
        return self._generate("/chat/completions", body, request, call)

    def complete(self, request: CompletionRequest, call: Call) -> AsyncIterator[Event]:
        body = self.payload(request, bool(request.stream), call.max_output)
        return self._generate("/completions", body, request, call)

    async def respond(self, request: ResponsesRequest, call: Call) -> AsyncIterator[Event]:
        """The Responses API passed through (``responses_api = true``): the body as the
        client wrote it, with this deployment's model name and the output allowance; the
        answer relayed as it comes — whole, or event by event — and its usage metered."""
        body = dict(request.raw)
        body["model"] = self.settings.model
        if call.max_output is not None:
            body["max_output_tokens"] = call.max_output
        for name in self.settings.drop_fields:
            body.pop(name, None)
        response = await self.post("/responses", orjson.dumps(body))
        if not request.stream:
            data = await self._read(response)
            answer = _loads(data)
            yield Relayed(data)
            yield _responses_usage(answer.get("usage")) or self._respond_estimate(
                request, _output_texts(answer)
            )
            return
        seen = _Heard()
        lines = _sse(response)
        left_early = False  # the client went away before the upstream was done
        try:
            async for data in lines:
                seen.hear(data)
                yield Relayed(data)
            yield seen.usage or self._respond_estimate(request, seen.text)
        except (http.HTTPError, TimeoutError) as exc:
            raise self._broke_off(exc) from None
        except (GeneratorExit, asyncio.CancelledError):
            left_early = True
            raise
        finally:
            if left_early and seen.usage is None:
                # As for chat: read on (bounded by ``drain``) to learn the true usage.
                call.meter.defer()
                with contextlib.suppress(Exception):
                    await lines.aclose()
                self._read_on(
                    _sse(response),
                    response,
                    seen.hear,
                    lambda: seen.usage is not None,
                    lambda: call.meter.settle(
                        seen.usage or self._respond_estimate(request, seen.text)
                    ),
                )
            else:
                await lines.aclose()
                response.release()

    def _respond_estimate(self, request: ResponsesRequest, text: list[str] | None = None) -> Usage:
        """No usage from the server: the input, and the output text seen, counted here."""
        model, tokenizer = self.settings.model, self.settings.tokenizer
        raw = request.raw
        prompt = tokens.prompt(orjson.dumps(raw.get("input")).decode(), model, tokenizer)
        if isinstance(raw.get("instructions"), str):
            prompt += tokens.count(raw["instructions"], model, tokenizer)
        return Usage(prompt, tokens.count("".join(text or ()), model, tokenizer), estimated=True)

    @staticmethod
    def _choices(request: ChatCompletionRequest | CompletionRequest) -> int:
        n = request.n or 1
        if isinstance(request, ChatCompletionRequest):
            return n
        prompt = request.prompt
        many = isinstance(prompt, list) and bool(prompt) and not isinstance(prompt[0], int)
        return n * (len(prompt) if many else 1)

    async def _read(self, response: http.Response) -> bytes:
        """A whole (non-streamed) body; a connection that breaks off is the deployment's fault."""
        try:
            return await response.read(MAX_BODY)
        except http.BodyTooLarge:
            raise UpstreamFailure(
                f"The upstream deployment {self.deployment.name} answered with more than "
                f"{MAX_BODY // (1024 * 1024)} MiB."
            ) from None
        except (http.HTTPError, TimeoutError) as exc:
            raise UpstreamFailure(
                f"The upstream deployment {self.deployment.name} broke off: {type(exc).__name__}."
            ) from None
        finally:
            response.release()

    async def media(self, path: str, body: bytes, content_type: str) -> tuple[bytes, str]:
        """A media endpoint (``/images/generations``, ``/audio/…``) passed through: the body
        as given (the caller has put this deployment's model name in it), the answer's bytes
        and content type as they came."""
        response = await self.post(path, body, content_type)
        kind = response.headers.get("Content-Type", "application/octet-stream")
        return await self._read(response), kind

    async def embed(self, request: EmbeddingRequest, call: Call) -> Relayed:
        body = self.payload(request, stream=False)
        response = await self.post("/embeddings", body)
        data = await self._read(response)
        usage = _usage(_loads(data).get("usage"))
        if usage is None:
            count = tokens.prompt(
                request.raw.get("input"), self.settings.model, self.settings.tokenizer
            )
            usage = Usage(count, 0, estimated=True)
        call.meter.settle(usage)
        return Relayed(data)

    async def _generate(
        self, path: str, body: bytes, request: ChatCompletionRequest | CompletionRequest, call: Call
    ) -> AsyncIterator[Event]:
        response = await self.post(path, body)
        if not request.stream:
            data = await self._read(response)
            answer = _loads(data)
            yield Relayed(data)
            yield _usage(answer.get("usage")) or self.estimate(request, _texts(answer))
            return
        wanted = bool(request.stream_options and request.stream_options.include_usage)
        seen = _Seen(
            limit=call.max_output,
            choices=self._choices(request),
            chat=isinstance(request, ChatCompletionRequest),
        )
        reader = _Events(response)
        batches = reader.batches()
        left_early = False  # the client went away before the upstream was done
        try:
            try:
                first = await anext(batches)
            except StopAsyncIteration:
                first = None
            except http.ReadTimeout:
                raise UpstreamFailure(
                    f"The upstream deployment {self.deployment.name} sent nothing within "
                    f"{self.settings.first_byte:g} s.",
                    status=504,
                    code="upstream_timeout",
                ) from None
            if first is not None:
                # The chunks of one read go on together, as one event (see ``Relayed``); an
                # error event among them ends the stream after the chunks before it.
                out, failure = self._relay_all(first, seen, wanted)
                if out is not None:
                    yield out
                if failure is not None:
                    raise failure
                if not seen.stopped:
                    async for batch in batches:
                        out, failure = self._relay_all(batch, seen, wanted)
                        if out is not None:
                            yield out
                        if failure is not None:
                            raise failure
                        if seen.stopped:
                            break
            if seen.stopped:
                # Cut at the allowance: the connection is dropped (the server stops writing)
                # and the answer is billed for what the client was sent, at most its allowance.
                response.close()
                usage = self.cut_usage(request, seen)
                if wanted:
                    yield Relayed(
                        orjson.dumps({**seen.base, "choices": [], "usage": _usage_out(usage)})
                    )
                yield usage
                return
            yield seen.usage or self.estimate(request, seen.text)
        except (http.HTTPError, TimeoutError) as exc:
            self._broken(request, call, seen)
            raise self._broke_off(exc) from None
        except KeyhouseError:
            self._broken(request, call, seen)
            raise
        except (GeneratorExit, asyncio.CancelledError):
            left_early = True
            raise
        finally:
            if left_early and seen.usage is None:
                # The client went away mid-stream: read on (bounded) to learn the true usage.
                call.meter.defer()
                # A client that hangs up cancels us mid-read, which ends ``batches`` too; the
                # reader keeps any partial event, so the drain continues exactly where it
                # stopped.
                with contextlib.suppress(Exception):
                    await batches.aclose()  # type: ignore[attr-defined]
                self._read_on(
                    reader.events(),
                    response,
                    lambda data: self._relay(data, seen, wanted=False),
                    lambda: seen.usage is not None,
                    lambda: call.meter.settle(seen.usage or self.estimate(request, seen.text)),
                )
            else:
                if left_early:  # gone after the usage chunk, before the Usage event
                    call.meter.settle(seen.usage)
                await batches.aclose()  # type: ignore[attr-defined]
                response.release()

    def _broke_off(self, exc: BaseException) -> UpstreamFailure:
        """A stream that ended mid-way on the network (retried elsewhere before the first byte)."""
        return UpstreamFailure(
            f"The upstream deployment {self.deployment.name} broke off the stream: "
            f"{type(exc).__name__}."
        )

    def _relay_all(
        self, batch: list[bytes], seen: _Seen, wanted: bool
    ) -> tuple[Relayed | None, KeyhouseError | None]:
        """The chunks of one read → one event for the client (None: nothing to send), up to
        where the allowance cuts the stream; and the failure a chunk reported, if one did."""
        out: list[bytes] = []
        failure: KeyhouseError | None = None
        for data in batch:
            try:
                relayed = self._relay(data, seen, wanted)
            except KeyhouseError as exc:
                failure = exc
                break
            for event in relayed:
                out.append(event.data)  # type: ignore[union-attr]
            if seen.stopped:
                break
        if not out:
            return None, failure
        return Relayed(out[0], tuple(out[1:])), failure

    def _relay(self, data: bytes, seen: _Seen, wanted: bool) -> list[Event]:
        """One upstream chunk → what the client gets (and what the meter learns)."""
        chunk = _loads(data)
        if "error" in chunk and not chunk.get("choices"):
            raise upstream_stream_error(chunk["error"])
        raw_usage = chunk.get("usage")
        usage = _usage(raw_usage) if raw_usage else None
        if usage is not None:
            seen.usage = usage
        if not seen.started:
            seen.started = True
            seen.base = {k: chunk[k] for k in _BASE if k in chunk}
        changed = False
        kept: list[Any] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                kept.append(choice)
                continue
            index = choice.get("index")
            if not isinstance(index, int):
                index = 0
            if index in seen.cut:  # cut here already: nothing more of it goes out
                changed = True
                continue
            if seen.limit is not None and _generated(choice, seen.chat):
                count = seen.chunks[index] = seen.chunks.get(index, 0) + 1
                if count > seen.limit:  # past its allowance: end it here, as "length"
                    seen.cut.add(index)
                    seen.done.add(index)
                    kept.append(self._cut_choice(index, seen.chat))
                    changed = True
                    continue
            if choice.get("finish_reason"):
                seen.done.add(index)
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if isinstance(text, str):
                seen.text.append(text)
                seen.texts.setdefault(index, []).append(text)
            if isinstance(delta, dict) and "tool_calls" in delta:  # output too
                for part in _call_texts(delta["tool_calls"]):
                    seen.text.append(part)
                    seen.texts.setdefault(index, []).append(part)
            kept.append(choice)
        if changed:
            chunk["choices"] = kept
            if "usage" in chunk and not wanted:
                del chunk["usage"]
            return [Relayed(orjson.dumps(chunk))] if kept else []
        if wanted:
            return [Relayed(data)]
        if usage is not None and not chunk.get("choices"):
            return []  # the usage chunk the client did not ask for
        if "usage" in chunk:
            if chunk["usage"] is None and data.endswith(_NULL_USAGE):  # the usual shape
                return [Relayed(data[: -len(_NULL_USAGE)] + b"}")]
            del chunk["usage"]
            return [Relayed(orjson.dumps(chunk))]
        return [Relayed(data)]

    def _read_on(
        self,
        lines: AsyncIterator[bytes],
        response: http.Response,
        hear: Callable[[bytes], object],
        done: Callable[[], bool],
        settle: Callable[[], None],
    ) -> None:
        """The client left before the usage came: read the server's events on in the
        background (bounded by ``drain``) until ``done``, then ``settle`` the meter — also if
        the task is cancelled before it runs (``stop``), hence a done-callback."""
        task = asyncio.create_task(self._drain(lines, response, hear, done))
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)
        task.add_done_callback(lambda _: settle())

    async def _drain(
        self,
        lines: AsyncIterator[bytes],
        response: http.Response,
        hear: Callable[[bytes], object],
        done: Callable[[], bool],
    ) -> None:
        try:
            async with asyncio.timeout(self.settings.drain):
                async for data in lines:
                    with contextlib.suppress(KeyhouseError, ValueError):
                        hear(data)
                    if done():
                        break
        except (TimeoutError, http.HTTPError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await lines.aclose()  # type: ignore[attr-defined]
            response.release()

    def _broken(self, request: WireModel, call: Call, seen: _Seen) -> None:
        """A stream that failed after it began (no other deployment may answer now) is billed
        for what it sent: nothing, if no output came; its prompt and output if some did."""
        if not seen.started:
            return  # failed before its first chunk: the router may try another deployment
        if seen.chunks or "".join(seen.text):
            call.meter.settle(self.estimate(request, seen.text))
        else:
            call.meter.settle(Usage(0, 0, estimated=True))

    @staticmethod
    def _cut_choice(index: int, chat: bool) -> dict[str, Any]:
        if chat:
            return {"index": index, "delta": {}, "logprobs": None, "finish_reason": "length"}
        return {"index": index, "text": "", "logprobs": None, "finish_reason": "length"}

    def cut_usage(self, request: WireModel, seen: _Seen) -> Usage:
        """A stream cut at its allowance: the prompt counted here, and each choice's output as
        its tokens (or chunks, if more), never more than the allowance."""
        limit = seen.limit or 0
        completion = 0
        for index in set(seen.chunks) | set(seen.texts):
            text = "".join(seen.texts.get(index, ()))
            counted = tokens.count(text, self.settings.model, self.settings.tokenizer)
            completion += min(limit, max(seen.chunks.get(index, 0), counted))
        prompt = self.estimate(request, []).prompt_tokens
        return Usage(prompt, completion, estimated=True)

    def estimate(self, request: WireModel, outputs: list[str]) -> Usage:
        model, tokenizer = self.settings.model, self.settings.tokenizer
        raw = request.raw
        if "messages" in raw:
            prompt = tokens.chat_prompt(raw.get("messages") or [], model, tokenizer)
        else:
            prompt = tokens.prompt(raw.get("prompt"), model, tokenizer)
        return Usage(prompt, tokens.count("".join(outputs), model, tokenizer), estimated=True)


# ----------------------------------------------------------------------------- helpers


async def _sse(response: http.Response) -> AsyncIterator[bytes]:
    """The ``data:`` payloads of a server-sent-event stream, up to ``[DONE]``."""
    buffer: list[bytes] = []
    async for raw in response.lines():
        line = raw.rstrip(b"\r\n")
        if not line:
            if buffer:
                data = b"\n".join(buffer)
                buffer = []
                if data == b"[DONE]":
                    return
                yield data
            continue
        if line.startswith(b"data:"):
            buffer.append(line[5:].lstrip(b" "))
    if buffer and (data := b"\n".join(buffer)) != b"[DONE]":
        yield data


class _Events:
    """The ``data:`` payloads of a server-sent-event stream, up to ``[DONE]``, in batches:
    those complete after each read of the connection. It keeps a partial line and event
    between reads, so a fresh ``events()`` or ``batches()`` goes on exactly where the last
    one stopped (the drain after a client left)."""

    def __init__(self, response: http.Response) -> None:
        self.response = response
        self._partial = b""
        self._lines: list[bytes] = []
        self.done = False

    def feed(self, raw: bytes) -> list[bytes]:
        """The events that ``raw`` completes."""
        if self._partial:
            raw = self._partial + raw
        lines = raw.split(b"\n")
        self._partial = lines.pop()
        return self._parse(lines)

    def _parse(self, lines: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        buffer = self._lines
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if buffer:
                    data = buffer[0] if len(buffer) == 1 else b"\n".join(buffer)
                    buffer.clear()
                    if data == b"[DONE]":
                        self.done = True
                        return out
                    out.append(data)
                continue
            if line.startswith(b"data:"):
                buffer.append(line[5:].lstrip(b" "))
        return out

    def end(self) -> list[bytes]:
        """What is left when the connection ends: a last event without its blank line."""
        if self.done:
            return []
        lines, self._partial = [self._partial, b""], b""
        out = self._parse(lines)
        self.done = True
        return out

    async def batches(self) -> AsyncIterator[list[bytes]]:
        if self.done:
            return
        async for raw in self.response.chunks():
            out = self.feed(raw)
            if out:
                yield out
            if self.done:
                return
        out = self.end()
        if out:
            yield out

    async def events(self) -> AsyncIterator[bytes]:
        async for batch in self.batches():
            for data in batch:
                yield data


_NULL_USAGE = b',"usage":null}'
_BASE = ("id", "object", "created", "model", "system_fingerprint")


def _usage_out(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def _loads(data: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamFailure(
            "The upstream deployment answered with something that is not JSON."
        ) from None
    return value if isinstance(value, dict) else {}


def _texts(answer: dict[str, Any]) -> list[str]:
    out = []
    for choice in answer.get("choices") or ():
        if isinstance(choice, dict):
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else choice.get("text")
            if isinstance(text, str):
                out.append(text)
            if isinstance(message, dict):
                out.extend(_call_texts(message.get("tool_calls")))
    return out


def _call_texts(calls: Any) -> list[str]:
    """The names and arguments of tool calls (whole, or a stream's fragments): output the
    model wrote, counted when the upstream reports no usage."""
    out: list[str] = []
    for call in calls if isinstance(calls, list) else ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            out.extend(
                part for part in (fn.get("name"), fn.get("arguments")) if isinstance(part, str)
            )
    return out


def client_error(status: int, data: bytes) -> KeyhouseError:
    """The upstream's own refusal of the client's request, passed on (redacted)."""
    try:
        error = orjson.loads(data).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        error = None
    if not isinstance(error, dict):
        return KeyhouseError(
            f"The upstream server refused the request (HTTP {status}).",
            status=status,
            type="invalid_request_error",
        )
    return KeyhouseError(
        redact(str(error.get("message") or f"HTTP {status}")),
        status=status,
        type=str(error.get("type") or "invalid_request_error"),
        code=error.get("code") if isinstance(error.get("code"), str) else None,
        param=error.get("param") if isinstance(error.get("param"), str) else None,
    )


def upstream_stream_error(error: Any) -> KeyhouseError:
    """An ``{"error": …}`` event in an upstream's stream. A failure of the deployment: before
    the first byte another deployment may answer; after it, the client's stream ends with it."""
    message = error.get("message") if isinstance(error, dict) else str(error)
    return UpstreamFailure(
        redact(str(message or "The upstream server failed mid-stream.")),
        status=502,
        type=(error.get("type") if isinstance(error, dict) else None) or "server_error",
        code=error.get("code")
        if isinstance(error, dict) and isinstance(error.get("code"), str)
        else None,
    )
