"""The OpenAI wire format: requests, responses and stream chunks, as pydantic models.

Requests keep fields OpenAI does not define (``extra="allow"``): the backend decides what to
do with them (the local model refuses them by name; upstreams pass them on). Validation is
strict, like OpenAI's: ``"temperature": "0.5"`` is a type error, not a number.
Serving logic lives elsewhere; this module only describes the shapes.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

Number = Annotated[float, Field(strict=True)]


class WireModel(BaseModel):
    # JSON has no NaN or Infinity; pydantic would accept them for floats.
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    # The request's JSON as the client sent it (``raw``) sits in a plain slot. As a pydantic
    # private attribute it was set up for every model made (four per chat request) and read
    # through ``__getattr__``: ~10 µs of a request's CPU.
    __slots__ = ("_json",)

    @property
    def unknown_fields(self) -> list[str]:
        return sorted(self.model_extra or {})

    @property
    def raw(self) -> dict[str, Any]:
        """The request's JSON as the client sent it, for backends that pass it on (upstreams);
        empty for a model built in code."""
        try:
            return self._json  # type: ignore[no-any-return]
        except AttributeError:
            return {}

    def keep_raw(self, document: dict[str, Any]) -> None:
        object.__setattr__(self, "_json", document)


# ----------------------------------------------------------------------------- requests


class StreamOptions(WireModel):
    include_usage: StrictBool | None = None
    include_obfuscation: StrictBool | None = None


class ContentPart(WireModel):
    """A part of a message's content; only ``text`` parts carry ``text``."""

    type: StrictStr
    text: StrictStr | None = None


class ChatMessage(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[ContentPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: StrictStr | None = None
    refusal: StrictStr | None = None

    def text(self) -> str:
        """The content as plain text: text parts joined (the backend refuses other parts)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type == "text")


class ResponseFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


# Bounds on what sizes a request's work, whatever the model (docs/limits.md, "Request
# bounds"). OpenAI's own: 4 stop sequences, n up to 128, 2,048 messages, 128 tools.
MAX_STOP = 4
MAX_STOP_CHARS = 1_000
MAX_MESSAGES = 2_048
MAX_TOOLS = 128
MAX_LOGIT_BIAS = 300

StopText = Annotated[StrictStr, Field(max_length=MAX_STOP_CHARS)]
Stop = StopText | Annotated[list[StopText], Field(max_length=MAX_STOP)] | None
LogitBias = Annotated[
    dict[str, Annotated[StrictInt, Field(ge=-100, le=100)]], Field(max_length=MAX_LOGIT_BIAS)
]
Tools = Annotated[list[dict[str, Any]], Field(max_length=MAX_TOOLS)]


class ChatCompletionRequest(WireModel):
    model: StrictStr
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Annotated[Number, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Number, Field(ge=0, le=1)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=128)] | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    stop: Stop = None
    seed: StrictInt | None = None
    presence_penalty: Annotated[Number, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[Number, Field(ge=-2, le=2)] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    logit_bias: LogitBias | None = None
    response_format: ResponseFormat | None = None
    user: StrictStr | None = None
    # Defined by OpenAI, passed through as given; backends decide whether they can honour them.
    tools: Tools | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    functions: Tools | None = None
    function_call: StrictStr | dict[str, Any] | None = None
    modalities: list[StrictStr] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    reasoning_effort: StrictStr | None = None
    verbosity: StrictStr | None = None
    web_search_options: dict[str, Any] | None = None
    store: StrictBool | None = None
    metadata: dict[str, StrictStr] | None = None
    service_tier: StrictStr | None = None
    prompt_cache_key: StrictStr | None = None
    safety_identifier: StrictStr | None = None

    @property
    def output_limit(self) -> int | None:
        """The client's cap on generated tokens (``max_completion_tokens`` wins)."""
        return self.max_completion_tokens or self.max_tokens


Prompt = (
    StrictStr
    | list[StrictStr]
    | Annotated[list[StrictInt], Field(min_length=1)]
    | list[Annotated[list[StrictInt], Field(min_length=1)]]
)


class CompletionRequest(WireModel):
    model: StrictStr
    prompt: Prompt
    suffix: StrictStr | None = None
    # OpenAI's documented default for the legacy endpoint.
    max_tokens: Annotated[StrictInt, Field(ge=0)] | None = 16
    temperature: Annotated[Number, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Number, Field(ge=0, le=1)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=128)] | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    logprobs: Annotated[StrictInt, Field(ge=0, le=5)] | None = None
    echo: StrictBool | None = None
    stop: Stop = None
    presence_penalty: Annotated[Number, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[Number, Field(ge=-2, le=2)] | None = None
    best_of: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    logit_bias: LogitBias | None = None
    seed: StrictInt | None = None
    user: StrictStr | None = None


EmbeddingInput = (
    StrictStr
    | Annotated[list[StrictStr], Field(min_length=1, max_length=2048)]
    | Annotated[list[StrictInt], Field(min_length=1)]
    | Annotated[list[Annotated[list[StrictInt], Field(min_length=1)]], Field(min_length=1)]
)


class EmbeddingRequest(WireModel):
    model: StrictStr
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[StrictInt, Field(ge=1)] | None = None
    user: StrictStr | None = None


class ResponseTextFormat(WireModel):
    """``text.format`` of the Responses API: ``json_schema`` carries its schema flat (name,
    schema, strict) where chat nests it under ``json_schema``."""

    type: Literal["text", "json_object", "json_schema"]
    name: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None
    description: StrictStr | None = None


class ResponseText(WireModel):
    format: ResponseTextFormat | None = None
    verbosity: StrictStr | None = None


#: An input item: a message (``role`` and ``content``) or, for upstreams that speak the
#: Responses API, any other item they take; ``api/responses`` reads them.
InputItem = dict[str, Any]


class ResponsesRequest(WireModel):
    """``POST /v1/responses``."""

    model: StrictStr
    input: StrictStr | Annotated[list[InputItem], Field(max_length=MAX_MESSAGES)] | None = None
    instructions: StrictStr | None = None
    # OpenAI's own floor: "Expected a value >= 16".
    max_output_tokens: Annotated[StrictInt, Field(ge=16)] | None = None
    temperature: Annotated[Number, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Number, Field(ge=0, le=1)] | None = None
    metadata: (
        Annotated[dict[str, Annotated[StrictStr, Field(max_length=512)]], Field(max_length=16)]
        | None
    ) = None
    previous_response_id: StrictStr | None = None
    store: StrictBool | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    text: ResponseText | None = None
    user: StrictStr | None = None
    # Passed through to upstreams that speak the Responses API; refused when translated.
    tools: Tools | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    reasoning: dict[str, Any] | None = None
    include: list[StrictStr] | None = None
    truncation: StrictStr | None = None
    background: StrictBool | None = None
    service_tier: StrictStr | None = None
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    max_tool_calls: StrictInt | None = None
    prompt_cache_key: StrictStr | None = None
    safety_identifier: StrictStr | None = None


# ----------------------------------------------------------------------------- responses


class Out(BaseModel):
    """A response shape. Every field appears on the wire (``null`` included) except those in
    ``omit_unless_set``, which appear only when given — as OpenAI omits them."""

    model_config = ConfigDict(extra="forbid")
    omit_unless_set: ClassVar[frozenset[str]] = frozenset()

    def model_post_init(self, context: Any, /) -> None:
        self.__pydantic_fields_set__.update(set(type(self).model_fields) - self.omit_unless_set)

    def wire(self) -> bytes:
        return self.__pydantic_serializer__.to_json(self, exclude_unset=True)


class TopLogprob(Out):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(Out):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(Out):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class PromptTokensDetails(Out):
    cached_tokens: int = 0


class CompletionTokensDetails(Out):
    reasoning_tokens: int = 0


class Usage(Out):
    omit_unless_set = frozenset({"prompt_tokens_details", "completion_tokens_details"})

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


class FunctionCall(Out):
    name: str
    arguments: str


class ToolCall(Out):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(Out):
    omit_unless_set = frozenset({"tool_calls"})

    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(Out):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "content_filter", "tool_calls"]


class ChatCompletion(Out):
    omit_unless_set = frozenset({"system_fingerprint"})

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage


class ChunkDelta(Out):
    omit_unless_set = frozenset({"role", "content", "refusal"})

    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None


class ChunkChoice(Out):
    index: int
    delta: ChunkDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "content_filter", "tool_calls"] | None = None


class ChatCompletionChunk(Out):
    omit_unless_set = frozenset({"usage", "system_fingerprint"})

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(Out):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(Out):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length", "content_filter"] | None


class Completion(Out):
    omit_unless_set = frozenset({"usage", "system_fingerprint"})

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage | None = None


class Embedding(Out):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(Out):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(Out):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelCard(Out):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(Out):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ----------------------------------------------------------------------------- the Responses API


class OutputText(Out):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


class OutputMessage(Out):
    id: str
    type: Literal["message"] = "message"
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class FunctionCallItem(Out):
    """A call of one of the request's functions, as an output item."""

    id: str
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"] = "completed"


OutputItem = OutputMessage | FunctionCallItem


class InputTokensDetails(Out):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(Out):
    reasoning_tokens: int = 0


class ResponseUsage(Out):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(Out):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseObject(Out):
    """The response object (``object: "response"``), as made by translation to chat."""

    # OpenAI's schema has ``user`` and ``usage`` never null: they appear only when known.
    omit_unless_set = frozenset({"user", "usage"})

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    completed_at: int | None = None
    error: dict[str, Any] | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: dict[str, Any] = Field(default_factory=lambda: {"effort": None, "summary": None})
    service_tier: str = "default"
    store: bool = True
    temperature: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    top_p: float | None = None
    truncation: str = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class ResponseDeleted(Out):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: bool = True
