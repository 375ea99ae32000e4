"""Text generation with llama.cpp (through llama-cpp-python), several requests at once.

Continuous batching: the context holds one KV-cache sequence per slot; each job is a generator
that asks for its next evaluation (a prompt chunk, or the token it just sampled), and ``step``
puts every running job's request into one ``llama_decode``, then lets each sample from its own
logits row with its own sampler chain. The engine (``engine.py``) admits jobs into free slots.

Everything here is synchronous and runs on the engine's own thread (``engine.py``); nothing
here knows about asyncio, HTTP or members. The loop is ours rather than llama-cpp-python's
``create_completion`` so that we count tokens exactly, stop the moment a client goes away,
reuse the KV cache across requests that share a prefix (reported as cached tokens), and read
log probabilities from the last position's logits — which llama.cpp computes anyway — instead
of building the model with ``logits_all=True``, which would slow every request. Only the rare
``echo`` + ``logprobs`` request (scoring a prompt) asks llama.cpp for logits at every prompt
position, for that one evaluation.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import hashlib
import logging
import os
import secrets
import sys
import tempfile
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from keyhouse.backends.base import Event, TextDelta, TokenLogprob, TopToken, Usage
from keyhouse.backends.local.grammar import Refusal, convert
from keyhouse.backends.local.schema_bounds import check_schema
from keyhouse.backends.local.tools import plain_messages, template_speaks_tools
from keyhouse.errors import InvalidRequest, ServerError

log = logging.getLogger("keyhouse.local")

#: Compiled grammars kept per runner, by schema: a client repeating its schema compiles it once.
GRAMMAR_CACHE = 64
#: The llama-cpp-python context the tokenizer needs (generation has its own; see __init__).
PROBE_CONTEXT = 64
#: Prompt tokens evaluated per step at most, between the running generations' tokens.
PREFILL_CHUNK = 128


@dataclass
class GenerateJob:
    """One chat or completion request, in plain data (it may cross a process boundary)."""

    #: Chat: ``[{"role": …, "content": …}]`` (assistant messages may carry ``tool_calls``, tool
    #: messages ``tool_call_id``). Completions: ``prompts`` instead.
    messages: list[dict[str, Any]] | None = None
    #: The request's tools, for the prompt (None: none described, ``tool_choice`` "none").
    tools: list[dict[str, Any]] | None = None
    prompts: list[str | list[int]] | None = None
    n: int = 1
    #: The client's explicit output cap, or None for the model's default.
    max_tokens: int | None = None
    default_max_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logit_bias: dict[int, float] = field(default_factory=dict)
    #: Chat: ``logprobs`` true → 0..20 alternatives; completions: 0..5. None: no logprobs.
    logprobs: int | None = None
    echo: bool = False
    json_mode: bool = False
    json_schema: dict[str, Any] | None = None
    #: The schema compiled to GBNF (by the backend, off the model's thread), when there is one.
    grammar: str | None = None
    #: ``tool_choice`` "auto" left to the model (``tools.with_text``): once the output's first
    #: character shows a text answer (not ``{``), generation goes on without the grammar —
    #: which would only accept anything, at the price of checking every token of the
    #: vocabulary against it at every step (measured: several times slower).
    grammar_until_text: bool = False


@dataclass(eq=False)
class Eval:
    """What a job asks of the next batch: evaluate ``tokens`` next on its sequence, with
    logits at the last position (or at ``every`` one, to score a prompt). The batch answers
    with the rows of those logits; None: not evaluated (the job was cancelled meanwhile)."""

    tokens: list[int]
    every: bool = False
    rows: list[int] | None = None


@dataclass(eq=False)
class Slot:
    """One sequence of the KV cache, and the tokens it holds (a later prompt that starts the
    same way reuses them: cached tokens)."""

    seq: int
    tokens: list[int] = field(default_factory=list)
    busy: bool = False


@dataclass(eq=False)
class Task:
    """A job running in a slot: its generation loop, paused at its next request."""

    slot: Slot
    gen: Generator[Eval, None, None]
    pending: Eval | None = None
    cancelled: Callable[[], bool] = lambda: False


@dataclass(frozen=True)
class LlamaSettings:
    path: Path
    context_length: int = 8192
    threads: int = 2
    batch: int = 512
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    #: Generations run at once (continuous batching); each has ``context_length`` of its own.
    parallel: int = 4


class StopMatcher:
    """Finds stop sequences in streamed text, holding back what might begin one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Text safe to release now, and whether a stop sequence ended the output."""
        if not self.stops:
            return text, False
        buffer = self.held + text
        hits = [i for i in (buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return buffer[: min(hits)], True
        keep = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(buffer)), keep, -1):
                if buffer.endswith(stop[:size]):
                    keep = size
                    break
        self.held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


def keep_stdout_stderr() -> None:
    """Stop llama-cpp-python from pointing the process's stdout and stderr (file descriptors 1
    and 2) at /dev/null while it loads a model: the model loads in a thread, and every log line
    the server writes meanwhile — from any task — was lost. Its log callback already drops
    llama.cpp's messages below ERROR when ``verbose=False``, so nothing gets noisier."""
    from llama_cpp import _internals, llama, llama_chat_format

    def keep(disable: bool = True) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()

    for module in (_internals, llama, llama_chat_format):
        module.suppress_stdout_stderr = keep  # type: ignore[attr-defined,assignment]


#: llama.cpp's log levels (ggml_log_level: 1 debug, 2 info, 3 warn, 4 error) as logging's;
#: 5 continues the previous message.
_LLAMA_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_llama_log = logging.getLogger("keyhouse.llama")
_log_callback: Any = None


def route_llama_log() -> None:
    """llama.cpp's messages go to our log, not straight to the terminal. llama-cpp-python's
    own callback prints every error to stderr — among them the parse errors of grammars that
    clients' schemas compile to, which are answered with a 400 and are no operator's concern
    (they are logged at debug level); other errors are logged as errors, the rest at debug."""
    global _log_callback
    if _log_callback is not None:
        return
    import llama_cpp

    previous = [logging.DEBUG, False]  # level, and whether it was about a grammar

    @llama_cpp.llama_log_callback  # type: ignore[misc]
    def callback(level: int, text: bytes, user_data: Any) -> None:
        message = text.decode("utf-8", "replace")
        if level != 5:
            previous[:] = [_LLAMA_LEVELS.get(level, logging.DEBUG), "grammar" in message]
        severity, grammar = previous
        if grammar or severity < logging.ERROR:
            severity = logging.DEBUG
        if message.strip() and _llama_log.isEnabledFor(severity):  # type: ignore[arg-type]
            _llama_log.log(severity, "llama.cpp: %s", message.rstrip())  # type: ignore[arg-type]

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    _log_callback = callback  # ctypes calls it from C: it must stay alive


class LlamaRunner:
    """A loaded GGUF model and the generation loop. Not thread-safe: one thread drives it."""

    def __init__(self, settings: LlamaSettings) -> None:
        import llama_cpp
        from llama_cpp import Llama, _internals
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._lib = llama_cpp
        self.settings = settings
        keep_stdout_stderr()
        route_llama_log()
        # llama-cpp-python's own context cannot hold several sequences (it has no n_seq_max):
        # the Llama object keeps a token-sized one for the tokenizer and metadata, and the
        # generations run in ours, with room for ``context_length`` tokens per slot.
        self.llm = Llama(
            model_path=str(settings.path),
            n_ctx=PROBE_CONTEXT,
            n_batch=PROBE_CONTEXT,
            n_threads=settings.threads,
            n_threads_batch=settings.threads,
            logits_all=False,
            verbose=False,
        )
        self.slots = settings.parallel
        self.n_batch = settings.batch
        params = self.llm.context_params
        params.n_ctx = settings.context_length * self.slots
        params.n_batch = params.n_ubatch = settings.batch
        params.n_seq_max = self.slots
        # One cache shared by the slots (measured: split into one stream per slot, 4 streams
        # ran at 0.4x the tokens/s of one; shared, 1.8x). It holds ``context_length`` for every
        # slot at once, and the budget keeps each request within ``context_length``.
        params.kv_unified = True
        self.ctx = _internals.LlamaContext(model=self.llm._model, params=params, verbose=False)
        self._memory = llama_cpp.llama_get_memory(self.ctx.ctx)
        self._batch = llama_cpp.llama_batch_init(settings.batch, 0, 1)
        self.ctx._exit_stack.callback(llama_cpp.llama_batch_free, self._batch)
        # llama.cpp rounds the context up (to 256s); the operator's limit is the one asked for.
        per_slot = llama_cpp.llama_n_ctx(self.ctx.ctx) // self.slots
        self.n_ctx = min(per_slot, settings.context_length)
        #: Prompt tokens evaluated per step, at most: a long prompt is read a chunk at a time
        #: between the running generations' steps, so it never stalls them for long.
        self.chunk = max(1, min(PREFILL_CHUNK, settings.batch - self.slots))
        self._slots = [Slot(seq) for seq in range(self.slots)]
        self.active: list[Task] = []
        self._turn = 0
        self.n_vocab = self.llm.n_vocab()
        self._vocab = self.llm._model.vocab
        self.pieces = [self._piece(token) for token in range(self.n_vocab)]
        self._grammars: dict[str, Any] = {}
        self.add_bos = bool(self.llm._model.add_bos_token())
        bos = self.llm.token_bos()
        self.start_token = bos if bos >= 0 else self.llm.token_eos()
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"{settings.path.name} carries no chat template")

        def token_text(token_id_key: str) -> str:
            # Rendered as special tokens: ``self.pieces`` holds them as b"" (never shown).
            token_id = self.llm.metadata.get(token_id_key)
            if not token_id:
                return ""
            return self._piece(int(token_id), special=True).decode("utf-8", "replace")

        self.speaks_tools = template_speaks_tools(template)
        self.formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=token_text("tokenizer.ggml.eos_token_id"),
            bos_token=token_text("tokenizer.ggml.bos_token_id"),
        )
        digest = hashlib.sha256(
            f"{settings.path.name}:{settings.path.stat().st_size}:{llama_cpp.__version__}".encode()
        ).hexdigest()
        self.fingerprint = "fp_" + digest[:10]

    def _piece(self, token: int, special: bool = False) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        size = self._lib.llama_token_to_piece(self._vocab, token, buffer, 64, 0, special)
        return buffer.raw[: max(size, 0)]

    def is_eog(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    # ------------------------------------------------------------------ prompts

    def tokenize(
        self, text: str, *, special: bool = False, add_bos: bool | None = None
    ) -> list[int]:
        bos = self.add_bos if add_bos is None else add_bos
        return self.llm.tokenize(text.encode("utf-8"), add_bos=bos, special=special)

    def chat_prompt(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        """The conversation through the model's template: with the tools, where the template
        has a tool format; else with them described in plain text (``tools.plain_messages``)."""
        try:
            if self.speaks_tools:
                rendered = self.formatter(messages=messages, tools=tools)
            else:
                rendered = self.formatter(messages=plain_messages(messages, tools))
        except Exception as exc:  # the model's template refused the conversation
            raise InvalidRequest(f"Invalid 'messages': {exc}", param="messages") from None
        return self.tokenize(rendered.prompt, special=True, add_bos=not rendered.added_special)

    def prompt_tokens(self, job: GenerateJob) -> list[list[int]]:
        if job.messages is not None:
            return [self.chat_prompt(job.messages, job.tools)]
        prompts: list[list[int]] = []
        for i, prompt in enumerate(job.prompts or []):
            if isinstance(prompt, str):
                prompts.append(self.tokenize(prompt))
                continue
            bad = [t for t in prompt if not 0 <= t < self.n_vocab]
            if bad:
                raise InvalidRequest(
                    f"Invalid 'prompt': token {bad[0]} is outside this model's vocabulary "
                    f"(0 to {self.n_vocab - 1}).",
                    param=f"prompt[{i}]" if job.prompts and len(job.prompts) > 1 else "prompt",
                )
            prompts.append(list(prompt))
        # An empty prompt leaves llama.cpp no logits to sample from: it aborts the whole
        # process. Start from the BOS token instead, as OpenAI starts from <|endoftext|>.
        return [tokens or [self.start_token] for tokens in prompts]

    def check_logit_bias(self, job: GenerateJob) -> None:
        """Ids outside the vocabulary are refused: llama.cpp would carry them through every
        sampling step (100,000 of them made each token take seconds)."""
        bad = [t for t in job.logit_bias if not 0 <= t < self.n_vocab]
        if bad:
            raise InvalidRequest(
                f"Invalid 'logit_bias': token {bad[0]} is outside this model's vocabulary "
                f"(0 to {self.n_vocab - 1}).",
                param="logit_bias",
                code="invalid_value",
            )

    def output_budget(self, job: GenerateJob, prompts: list[list[int]]) -> int:
        """How many tokens each choice may generate; a 400 when the request can't fit."""
        longest = max((len(p) for p in prompts), default=0)
        room = self.n_ctx - longest
        wanted = job.max_tokens if job.max_tokens is not None else job.default_max_tokens
        param = "messages" if job.messages is not None else "prompt"
        if room <= 0 or (job.max_tokens is not None and wanted > room):
            ask = longest + (wanted if job.max_tokens is not None else 0)
            raise InvalidRequest(
                f"This model's maximum context length is {self.n_ctx} tokens. However, you "
                f"requested {ask} tokens ({longest} in the {param}, "
                f"{wanted if job.max_tokens is not None else 0} in the completion). Please "
                f"reduce the length of the {param} or completion.",
                param=param,
                code="context_length_exceeded",
            )
        return min(wanted, room)

    # ------------------------------------------------------------------ scheduling

    def run(
        self, job: GenerateJob, emit: Callable[[Event], None], cancelled: Callable[[], bool]
    ) -> None:
        """Generate every choice of ``job`` now, alone: ``begin`` and step until it ends."""
        task = self.begin(job, emit, cancelled)
        while True:
            for done, error in self.step():
                if done is task:
                    if error is not None:
                        raise error
                    return

    def free_slots(self) -> int:
        return sum(not slot.busy for slot in self._slots)

    def begin(
        self, job: GenerateJob, emit: Callable[[Event], None], cancelled: Callable[[], bool]
    ) -> Task:
        """Admit ``job`` to a free slot; ``step`` then drives it. The refusals (a 400) come
        from here, before anything is evaluated. The job emits deltas and then one ``Usage`` —
        also when cancelled (a client that left is charged for what was generated, no more)."""
        self.check_logit_bias(job)
        prompts = self.prompt_tokens(job)
        budget = self.output_budget(job, prompts)
        grammar = self._grammar(job)
        free = [slot for slot in self._slots if not slot.busy]
        if not free:
            raise RuntimeError("begin() with every slot busy")
        # The slot whose cache shares the longest prefix with the prompt (its cached tokens).
        slot = max(free, key=lambda s: _shared(s.tokens, prompts[0]))
        slot.busy = True
        base_seed = job.seed if job.seed is not None else secrets.randbits(31)
        work = self._work(job, prompts, budget, grammar, base_seed, slot, emit, cancelled)
        task = Task(slot, work, cancelled=cancelled)
        self.active.append(task)
        return task

    def drop(self, task: Task) -> None:
        """Stop a task at once (the engine failed): its generator closes, its slot is freed."""
        task.gen.close()
        self._finish(task)

    def _finish(self, task: Task) -> None:
        task.slot.busy = False
        if task in self.active:
            self.active.remove(task)

    def _advance(self, task: Task) -> BaseException | bool | None:
        """Resume a task until it asks for its next evaluation: False while it runs on, else
        None (it ended) or the exception it raised."""
        try:
            task.pending = next(task.gen)
        except StopIteration:
            return None
        except Exception as exc:
            return exc
        return False

    def step(self) -> list[tuple[Task, BaseException | None]]:
        """One ``llama_decode`` for all running tasks: the next token of every generating
        sequence, plus prompt chunks of newly admitted ones (at most ``chunk`` tokens, the
        tasks taking turns). Each task then samples from its own logits row. Returns the
        tasks that ended, with the exception of those that failed."""
        ended: list[tuple[Task, BaseException | None]] = []

        def resume(task: Task) -> None:
            outcome = self._advance(task)
            if outcome is not False:
                self._finish(task)
                ended.append((task, outcome))  # type: ignore[arg-type]

        for task in list(self.active):
            if task.pending is None:
                resume(task)
            elif task.cancelled():  # waiting for a turn: let it see the cancel now
                task.pending.rows = None
                resume(task)
        chosen = [t for t in self.active if len(t.pending.tokens) == 1 and not t.pending.every]
        prompts = [t for t in self.active if t not in chosen]
        if prompts:
            self._turn = (self._turn + 1) % len(prompts)
            prompts = prompts[self._turn :] + prompts[: self._turn]
        room = self.chunk
        for task in prompts:
            size = len(task.pending.tokens)
            if size <= room:
                chosen.append(task)
                room -= size
        if not chosen:
            return ended
        error = self._decode(chosen)
        for task in chosen:
            if error is not None:
                task.gen.close()
                self._forget(task.slot)
                self._finish(task)
                ended.append((task, error))
            else:
                resume(task)
        return ended

    def _decode(self, tasks: list[Task]) -> BaseException | None:
        batch = self._batch
        n = 0
        for task in tasks:
            request = task.pending
            slot = task.slot
            start = len(slot.tokens)
            last = len(request.tokens) - 1
            rows = []
            for offset, token in enumerate(request.tokens):
                batch.token[n] = token
                batch.pos[n] = start + offset
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = slot.seq
                wanted = request.every or offset == last
                batch.logits[n] = wanted
                if wanted:
                    rows.append(n)
                n += 1
            request.rows = rows
        batch.n_tokens = n
        code = self._lib.llama_decode(self.ctx.ctx, batch)
        if code != 0:
            log.error("llama_decode failed (%d) for a batch of %d tokens", code, n)
            return ServerError()
        for task in tasks:
            task.slot.tokens.extend(task.pending.tokens)
        return None

    def cache_tokens(self) -> int:
        """Tokens held in the KV cache, over all slots."""
        return sum(len(slot.tokens) for slot in self._slots)

    def reset(self) -> None:
        """Empty every idle slot's cache (the next prompts are evaluated from scratch)."""
        for slot in self._slots:
            if not slot.busy:
                self._forget(slot)

    def _forget(self, slot: Slot) -> None:
        self._lib.llama_memory_seq_rm(self._memory, slot.seq, 0, -1)
        slot.tokens = []

    # ------------------------------------------------------------------ one job

    def _work(
        self,
        job: GenerateJob,
        prompts: list[list[int]],
        budget: int,
        grammar: Any,
        base_seed: int,
        slot: Slot,
        emit: Callable[[Event], None],
        cancelled: Callable[[], bool],
    ) -> Iterator[Eval]:
        prompt_total = completion_total = cached_total = 0
        for p, tokens in enumerate(prompts):
            if cancelled():
                break
            prompt_total += len(tokens)
            for j in range(job.n):
                if cancelled():
                    break
                index = p * job.n + j
                generated, cached = yield from self._choice(
                    job, slot, tokens, index, budget, base_seed + j, grammar, emit, cancelled
                )
                completion_total += generated
                if j == 0:
                    cached_total += cached
        emit(Usage(prompt_total, completion_total, cached_total))

    def _grammar(self, job: GenerateJob) -> Any:
        """The job's grammar. The backend compiled its schema to GBNF off this thread
        (``grammar.GrammarCache``); llama.cpp's parse of it is cached here by its text."""
        if not job.json_mode and job.json_schema is None and job.grammar is None:
            return None
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        text = job.grammar
        if text is None and job.json_schema is not None:  # a job built without the backend
            converted = convert(check_schema(job.json_schema))
            if isinstance(converted, Refusal):
                raise converted.error()
            text = converted
        if text is None:
            return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        parsed = self._grammars.pop(text, None)
        if parsed is None:
            grammar = LlamaGrammar.from_string(text, verbose=False)
            parsed = grammar if self._parses(grammar) else Refusal("llama.cpp cannot compile it")
        self._grammars[text] = parsed  # the most recent last
        while len(self._grammars) > GRAMMAR_CACHE:
            self._grammars.pop(next(iter(self._grammars)))
        if isinstance(parsed, Refusal):
            raise parsed.error()
        return parsed

    def _parses(self, grammar: Any) -> bool:
        """Whether llama.cpp accepts the grammar: a refused one (``{"enum": []}`` converts to an
        empty rule) would be added to the sampler chain as NULL and crash the process. Its
        parser writes its complaint, with the whole grammar, straight to file descriptor 2 (not
        through the log callback): the probe runs with fd 2 caught, and all but that complaint
        is written back (another thread's line, written meanwhile, is delayed, never lost)."""
        text = grammar._grammar.encode("utf-8")
        with _fd2_caught() as caught:
            probe = self._lib.llama_sampler_init_grammar(
                self._vocab, text, grammar._root.encode("utf-8")
            )
        rest = _without_complaint(bytes(caught), text)
        if rest:
            os.write(2, rest)
        if not probe:
            return False
        self._lib.llama_sampler_free(probe)
        return True

    def _sampler(self, job: GenerateJob, seed: int, grammar: Any) -> Any:
        from llama_cpp._internals import LlamaSampler

        s = self.settings
        sampler = LlamaSampler()
        if job.logit_bias:
            sampler.add_logit_bias(self.n_vocab, job.logit_bias)
        if job.presence_penalty or job.frequency_penalty or s.repeat_penalty != 1.0:
            sampler.add_penalties(
                self.n_vocab, 64, s.repeat_penalty, job.frequency_penalty, job.presence_penalty
            )
        if grammar is not None:
            sampler.add_grammar(self.llm._model, grammar)
        if job.temperature == 0:
            sampler.add_greedy()
        else:
            if s.top_k > 0:
                sampler.add_top_k(s.top_k)
            if job.top_p < 1.0:
                sampler.add_top_p(job.top_p, 1)
            if s.min_p > 0:
                sampler.add_min_p(s.min_p, 1)
            sampler.add_temp(job.temperature)
            # 0xFFFFFFFF is llama.cpp's "pick a random seed": seed=-1 must stay reproducible.
            sampler.add_dist(seed % 0xFFFFFFFF)
        return sampler

    def _reuse_prefix(self, slot: Slot, tokens: list[int]) -> int:
        """Keep the slot's KV cache for the longest prefix shared with the prompt."""
        shared = min(_shared(slot.tokens, tokens), len(tokens) - 1)  # ≥ 1 token for logits
        if shared > 0 and self._lib.llama_memory_seq_rm(self._memory, slot.seq, shared, -1):
            del slot.tokens[shared:]
            return shared
        self._forget(slot)
        return 0

    def _evaluate(
        self, tokens: list[int], cancelled: Callable[[], bool]
    ) -> Generator[Eval, None, int | None]:
        """Evaluate a prompt a chunk at a time (a client who leaves during a long prompt frees
        its slot within one chunk); the batch row of the last token's logits, None if
        cancelled."""
        row = None
        for start in range(0, len(tokens), self.chunk):
            request = Eval(tokens[start : start + self.chunk])
            yield request
            if cancelled() or request.rows is None:
                return None
            row = request.rows[-1]
        return row

    def _choice(
        self,
        job: GenerateJob,
        slot: Slot,
        tokens: list[int],
        index: int,
        budget: int,
        seed: int,
        grammar: Any,
        emit: Callable[[Event], None],
        cancelled: Callable[[], bool],
    ) -> Generator[Eval, None, tuple[int, int]]:
        scoring = job.echo and job.logprobs is not None
        prompt_logprobs = None
        if scoring:
            cached = 0
            self._forget(slot)
            row, prompt_logprobs = yield from self._prompt_logprobs(
                tokens, job.logprobs or 0, cancelled
            )
        else:
            cached = self._reuse_prefix(slot, tokens)
            row = yield from self._evaluate(tokens[len(slot.tokens) :], cancelled)
        if row is None or cancelled():  # during the prompt: a long one takes many seconds
            return 0, cached
        if job.echo:
            echoed = b"".join(self.pieces[t] for t in tokens).decode("utf-8", "replace")
            emit(TextDelta(index, echoed, prompt_logprobs))
        sampler = self._sampler(job, seed, grammar)
        deciding = job.grammar_until_text and grammar is not None
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        stopper = StopMatcher(job.stop)
        generated = 0
        finish = "length"
        stopped = False
        try:
            while generated < budget:
                if cancelled():
                    return generated, cached
                token = sampler.sample(self.ctx, row)
                if self.is_eog(token):
                    finish = "stop"
                    break
                generated += 1
                logprobs = (
                    [self._logprob(token, job.logprobs, row)] if job.logprobs is not None else None
                )
                text, stopped = stopper.feed(decoder.decode(self.pieces[token]))
                if deciding and (text or "").strip():
                    deciding = False
                    if not text.lstrip().startswith("{"):
                        sampler.close()
                        sampler = self._sampler(job, seed, None)
                if text or logprobs:
                    emit(TextDelta(index, text, logprobs))
                if stopped:
                    finish = "stop"
                    break
                if generated < budget:
                    request = Eval([token])
                    yield request
                    if request.rows is None:
                        return generated, cached
                    row = request.rows[-1]
        finally:
            sampler.close()
        if not stopped:
            # Release what the decoder and the stop matcher were still holding.
            rest, stopped = stopper.feed(decoder.decode(b"", final=True))
            if stopped:
                finish = "stop"
            else:
                rest += stopper.flush()
            if rest:
                emit(TextDelta(index, rest))
        emit(TextDelta(index, "", None, finish))
        return generated, cached

    # ------------------------------------------------------------------ log probabilities

    def _row(self, row: int) -> np.ndarray:
        pointer = self._lib.llama_get_logits_ith(self.ctx.ctx, row)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    def _logsoftmax_row(self, row: np.ndarray) -> tuple[np.ndarray, float]:
        top = float(row.max())
        return row, top + float(np.log(np.exp(row - top).sum()))

    def _top(self, row: np.ndarray, norm: float, count: int) -> list[TopToken]:
        if count <= 0:
            return []
        best = np.argpartition(-row, count)[:count]
        best = best[np.argsort(-row[best])]
        return [
            TopToken(
                self.pieces[i].decode("utf-8", "replace"),
                float(row[i] - norm),
                list(self.pieces[i]),
            )
            for i in best.tolist()
        ]

    def _logprob(self, token: int, top: int, at: int) -> TokenLogprob:
        row, norm = self._logsoftmax_row(self._row(at))
        piece = self.pieces[token]
        return TokenLogprob(
            piece.decode("utf-8", "replace"),
            float(row[token] - norm),
            list(piece),
            self._top(row, norm, top),
        )

    def _prompt_logprobs(
        self, tokens: list[int], top: int, cancelled: Callable[[], bool]
    ) -> Generator[Eval, None, tuple[int | None, list[TokenLogprob]]]:
        """Evaluate the prompt with logits at every position (for echo + logprobs); the row of
        the last position's logits (None if cancelled) and each token's log probability."""
        out: list[TokenLogprob] = []
        first = self.pieces[tokens[0]]
        out.append(TokenLogprob(first.decode("utf-8", "replace"), None, list(first)))
        row = None
        for start in range(0, len(tokens), self.chunk):
            request = Eval(tokens[start : start + self.chunk], every=True)
            yield request
            if cancelled() or request.rows is None:
                return None, out
            for offset, at in enumerate(request.rows):
                position = start + offset + 1
                if position >= len(tokens):
                    break
                logits, norm = self._logsoftmax_row(self._row(at))
                token = tokens[position]
                piece = self.pieces[token]
                out.append(
                    TokenLogprob(
                        piece.decode("utf-8", "replace"),
                        float(logits[token] - norm),
                        list(piece),
                        self._top(logits, norm, top),
                    )
                )
            row = request.rows[-1]
        return row, out


@contextlib.contextmanager
def _fd2_caught() -> Iterator[bytearray]:
    """File descriptor 2 into a temporary file, for a moment; what was written, after."""
    caught = bytearray()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield caught
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            caught.extend(sink.read())


def _without_complaint(output: bytes, grammar: bytes) -> bytes:
    """``output`` less llama.cpp's "error parsing grammar" message (which ends with the
    grammar's text), logged at debug level: the client's 400 says it."""
    marker = output.find(b"error parsing grammar")
    if marker < 0:
        return output
    start = output.rfind(b"\n", 0, marker) + 1
    end = output.find(grammar, marker)
    end = len(output) if end < 0 else end + len(grammar)
    if output[end : end + 1] == b"\n":
        end += 1
    shown = output[start : marker + 200].decode(errors="replace")
    log.debug("llama.cpp refused a grammar: %s", shown)
    return output[:start] + output[end:]


def _shared(cached: list[int], tokens: list[int]) -> int:
    """How many leading tokens two sequences share."""
    shared = 0
    for a, b in zip(cached, tokens, strict=False):
        if a != b:
            break
        shared += 1
    return shared
