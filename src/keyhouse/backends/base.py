"""What every backend speaks: a ``Call`` in, an async stream of ``TextDelta`` and one ``Usage`` out.

Backends know nothing of HTTP or money. They raise ``KeyhouseError`` for what they refuse; a
refusal raised before the first event becomes an ordinary HTTP error, one raised later ends
the stream with an error event (see ``api/render``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from keyhouse.config import ModelSpec
from keyhouse.errors import InvalidRequest

if TYPE_CHECKING:  # annotations only: what imports this for ``Usage`` (the billing writer
    # process, the ledger) need not load the wire models
    from keyhouse.wire.openai import (
        ChatCompletionRequest,
        CompletionRequest,
        EmbeddingRequest,
        ResponseFormat,
    )


def format_schema(fmt: ResponseFormat) -> dict[str, Any]:
    """The schema of a ``json_schema`` response format, or OpenAI's 400 when it has none: the
    first check of every backend that makes its answer follow one."""
    schema = (fmt.json_schema or {}).get("schema")
    if not isinstance(schema, dict):
        raise InvalidRequest(
            "Missing required parameter: 'response_format.json_schema.schema'.",
            param="response_format.json_schema.schema",
            code="missing_required_parameter",
        )
    return schema


class Meter:
    """Where a request's true usage goes, exactly once, whatever happens.

    The usage a backend reports in its events is noted (``report``) and settled when the meter
    closes: the pipeline closes it once the answer is written, so the settlement (limits
    corrected, the charge and its usage row) is off the client's wait. A backend that must
    learn the usage after the client has gone (an upstream still streaming) calls ``defer()``
    and later ``settle()`` itself. ``close()`` settles with a fallback only if nobody reported
    the usage, settled it, or will.
    """

    __slots__ = (
        "_on_settle",
        "deferred",
        "deployment",
        "first_at",
        "reported",
        "settled",
        "status",
    )

    def __init__(self, on_settle: Callable[[Usage | None], None] | None = None) -> None:
        self._on_settle = on_settle
        self.settled = False
        self.deferred = False
        #: The usage the backend reported, settled when the meter closes.
        self.reported: Usage | None = None
        #: For the usage record: which deployment answered, when the first token came, how
        #: it ended (an HTTP status; 499 when the client left).
        self.deployment: str | None = None
        self.first_at: float | None = None
        self.status = 200

    def settle(self, usage: Usage | None) -> None:
        if self.settled:
            return
        self.settled = True
        on_settle, self._on_settle = self._on_settle, None
        if on_settle is not None:
            # Let go of it first: it is the request's own (the pipeline's exchange, which holds
            # this meter), a cycle the garbage collector would otherwise have to find and free,
            # with all the request hangs on it, after every request.
            on_settle(usage)

    def report(self, usage: Usage) -> None:
        """The true usage, settled at ``close`` (the first report counts, as ``settle``)."""
        if self.reported is None:
            self.reported = usage

    def defer(self) -> None:
        self.deferred = True

    def close(self, fallback: Usage | None) -> None:
        if self.reported is not None:
            self.settle(self.reported)
        elif not self.deferred:
            self.settle(fallback)


@dataclass(frozen=True, slots=True)
class Call:
    """The request's context beyond its body."""

    request_id: str
    member_id: str
    model: ModelSpec
    meter: Meter = field(default_factory=Meter)
    #: The output a backend may produce at most (what the held credit pays for); None: as asked.
    max_output: int | None = None


@dataclass(frozen=True, slots=True)
class TopToken:
    token: str
    logprob: float
    bytes: list[int]


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One token's log probability (``None`` for the very first prompt token, as OpenAI)."""

    token: str
    logprob: float | None
    bytes: list[int]
    top: list[TopToken] = field(default_factory=list)


@dataclass(slots=True)
class TextDelta:
    """New text for choice ``index``; ``finish_reason`` set on its last delta."""

    index: int
    text: str = ""
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None


@dataclass(slots=True)
class ToolCallDelta:
    """Part of a tool call of choice ``index``: its first delta names the call (``id``,
    ``name``), later ones carry fragments of its JSON ``arguments``. ``call`` numbers the
    calls of one choice from 0. The choice's own ``finish_reason`` comes on a ``TextDelta``."""

    index: int
    call: int
    id: str | None
    name: str | None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    #: True when counted by Keyhouse rather than reported by the model's server.
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Relayed:
    """An upstream's own bytes, passed on as they came: one stream chunk's JSON, or (not
    streaming) the whole response body. Keeps what Keyhouse does not model — a provider's
    extra fields — intact.

    A stream's chunks that arrived together travel as one event: ``data`` and then ``more``,
    in order. Each layer then handles them once a read rather than once a chunk (a stream of
    small chunks spent most of its time passing single chunks from layer to layer)."""

    data: bytes
    more: tuple[bytes, ...] = ()

    def chunks(self) -> tuple[bytes, ...]:
        """Every chunk this event carries, in order."""
        return (self.data, *self.more) if self.more else (self.data,)


Event = TextDelta | ToolCallDelta | Usage | Relayed


@dataclass(frozen=True, slots=True)
class Embeddings:
    """Row-major little-endian float32 vectors (cheap to move between processes)."""

    data: bytes
    dim: int
    prompt_tokens: int

    def __len__(self) -> int:
        return len(self.data) // (4 * self.dim)

    def row(self, i: int) -> bytes:
        size = 4 * self.dim
        return self.data[i * size : (i + 1) * size]


class Backend(Protocol):
    """One kind of model server. Methods a backend cannot serve raise ``InvalidRequest``."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def chat(self, request: ChatCompletionRequest, call: Call) -> AsyncIterator[Event]: ...

    def complete(self, request: CompletionRequest, call: Call) -> AsyncIterator[Event]: ...

    async def embed(self, request: EmbeddingRequest, call: Call) -> Embeddings | Relayed: ...
