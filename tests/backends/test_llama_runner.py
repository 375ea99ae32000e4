"""LlamaRunner on the real bundled SmolLM2: our generation loop, not llama-cpp-python's.

Generations stay short (a 135M model on 2 shared cores); the model loads once per session.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace

import jsonschema
import pytest

from keyhouse.backends.base import TextDelta, Usage
from keyhouse.backends.local.llama import GenerateJob, LlamaRunner, StopMatcher
from keyhouse.errors import InvalidRequest
from tests.backends.conftest import CONTEXT, Result, chat, generate

pytestmark = pytest.mark.model

COUNT = "Count from one to ten."


@pytest.fixture(scope="module")
def tiny(llama: LlamaRunner) -> LlamaRunner:
    """The same model with a 64-token context and 16-token batches: cheap to fill."""
    return LlamaRunner(replace(llama.settings, context_length=64, batch=16))


# ----------------------------------------------------------------------------- StopMatcher


def test_stop_matcher_holds_back_a_possible_start() -> None:
    stopper = StopMatcher(["END"])
    assert stopper.feed("hello E") == ("hello ", False)
    assert stopper.feed("N") == ("", False)
    assert stopper.feed("x") == ("ENx", False)  # not a stop after all: released
    assert stopper.feed("a EN") == ("a ", False)
    assert stopper.feed("D and more") == ("", True)


def test_stop_matcher_earliest_of_several() -> None:
    stopper = StopMatcher(["world", "lo w"])
    assert stopper.feed("hello world") == ("hel", True)
    assert StopMatcher([]).feed("anything") == ("anything", False)
    assert StopMatcher([""]).feed("empty stops are ignored") == ("empty stops are ignored", False)


# ----------------------------------------------------------------------------- prompts


def test_chat_prompt_uses_the_models_template(llama: LlamaRunner) -> None:
    tokens = llama.chat_prompt([{"role": "user", "content": "hi"}])
    text = llama.llm.detokenize(tokens, special=True).decode()
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_template_sees_the_real_special_tokens(llama: LlamaRunner) -> None:
    """Templates that write ``{{ bos_token }}`` need its text, not an empty string."""
    assert llama.formatter.eos_token == "<|im_end|>"
    assert llama.formatter.bos_token == "<|im_start|>"


# ----------------------------------------------------------------------------- sampling


def test_temperature_zero_is_deterministic(llama: LlamaRunner) -> None:
    first = generate(llama, chat(COUNT, temperature=0, max_tokens=12))
    generate(llama, chat("Name a colour.", temperature=0, max_tokens=4))  # other KV state
    second = generate(llama, chat(COUNT, temperature=0, max_tokens=12))
    assert first.text() == second.text()
    assert first.text().strip()


def test_same_seed_same_text_other_seeds_differ(llama: LlamaRunner) -> None:
    def sample(seed: int) -> str:
        job = chat("Write a word.", temperature=1.2, seed=seed, max_tokens=8)
        return generate(llama, job).text()

    assert sample(7) == sample(7)
    texts = {sample(seed) for seed in range(1, 6)}
    assert len(texts) >= 2, texts


@pytest.mark.parametrize("seed", [-1, 0xFFFFFFFF])
def test_seeds_that_mean_random_to_llama_cpp_stay_reproducible(
    llama: LlamaRunner, seed: int
) -> None:
    """llama.cpp reads seed 0xFFFFFFFF as "random"; a client's seed must never mean that."""
    texts = {
        generate(llama, chat("Write a word.", temperature=1.5, seed=seed, max_tokens=6)).text()
        for _ in range(3)
    }
    assert len(texts) == 1, texts


def test_n_two_gives_indexes_zero_and_one(llama: LlamaRunner) -> None:
    result = generate(llama, chat("Say hi.", n=2, temperature=1.0, seed=3, max_tokens=6))
    assert result.indexes() == {0, 1}
    assert result.finish(0) in ("stop", "length")
    assert result.finish(1) in ("stop", "length")
    assert result.usage is not None
    # n choices share one prompt: counted once.
    assert result.usage.prompt_tokens == len(
        llama.chat_prompt([{"role": "user", "content": "Say hi."}])
    )
    per_choice = [sum(len(d.logprobs or []) for d in result.deltas if d.index == i) for i in (0, 1)]
    assert per_choice == [0, 0]  # no logprobs asked for, none sent
    assert isinstance(result.events[-1], Usage)  # usage comes last, once
    assert sum(isinstance(e, Usage) for e in result.events) == 1


def test_prompts_times_n_are_numbered_prompt_major(llama: LlamaRunner) -> None:
    """As OpenAI: choice ``p * n + j`` is prompt p's j-th sample (echo shows which prompt)."""
    job = GenerateJob(prompts=["One", "Two"], n=2, echo=True, temperature=0.8, seed=1, max_tokens=3)
    result = generate(llama, job)
    assert result.indexes() == {0, 1, 2, 3}
    for index, prompt in [(0, "One"), (1, "One"), (2, "Two"), (3, "Two")]:
        assert result.text(index).startswith(prompt)
        assert result.finish(index) in ("stop", "length")
    assert result.usage is not None
    assert result.usage.prompt_tokens == len(llama.tokenize("One")) + len(llama.tokenize("Two"))
    assert result.usage.completion_tokens <= 12


def test_stop_string_ends_the_text_before_it(llama: LlamaRunner) -> None:
    full = generate(llama, chat(COUNT, temperature=0, max_tokens=20)).text()
    assert "3" in full, full  # greedy SmolLM2 counts "1. 1\n2. 2\n3. 3…"
    cut = full.index("3")
    result = generate(llama, chat(COUNT, temperature=0, max_tokens=20, stop=["3"]))
    assert result.text() == full[:cut]
    assert result.finish() == "stop"
    assert result.usage is not None and result.usage.completion_tokens < 20


def test_a_stop_string_split_across_tokens(llama: LlamaRunner) -> None:
    full = generate(llama, chat(COUNT, temperature=0, max_tokens=20)).text()
    stop = "\n3."
    assert stop in full, full
    result = generate(llama, chat(COUNT, temperature=0, max_tokens=20, stop=["zzz", stop]))
    assert result.text() == full[: full.index(stop)]
    assert result.finish() == "stop"
    assert not any(stop in d.text for d in result.deltas)


def test_max_tokens_is_exact_with_finish_length(llama: LlamaRunner) -> None:
    no_end = {0: -100.0, 2: -100.0, 4: -100.0}
    job = chat(COUNT, temperature=0, max_tokens=7, logit_bias=no_end, logprobs=0)
    result = generate(llama, job)
    assert result.finish() == "length"
    assert result.usage is not None
    assert result.usage.completion_tokens == 7
    assert sum(len(d.logprobs or []) for d in result.deltas) == 7


def test_usage_counts_the_rendered_prompt(llama: LlamaRunner) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is two plus two?"},
    ]
    job = GenerateJob(messages=messages, temperature=0, max_tokens=5, logprobs=0)
    result = generate(llama, job)
    assert result.usage is not None
    assert result.usage.prompt_tokens == len(llama.chat_prompt(messages))
    generated = sum(len(d.logprobs or []) for d in result.deltas)
    assert result.usage.completion_tokens == generated
    assert result.usage.total_tokens == result.usage.prompt_tokens + generated


def test_a_shared_prefix_is_reported_as_cached(llama: LlamaRunner) -> None:
    system = {"role": "system", "content": "You answer questions about the sea, briefly. " * 4}
    first = [system, {"role": "user", "content": "Why is the sea salty?"}]
    second = [system, {"role": "user", "content": "Why is the sea blue?"}]
    generate(llama, GenerateJob(messages=first, temperature=0, max_tokens=2))
    result = generate(llama, GenerateJob(messages=second, temperature=0, max_tokens=2))
    assert result.usage is not None
    a, b = llama.chat_prompt(first), llama.chat_prompt(second)
    shared = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    assert result.usage.cached_tokens == shared
    assert 0 < result.usage.cached_tokens < result.usage.prompt_tokens
    # The very same prompt again: all but the last token (it is re-read for fresh logits).
    again = generate(llama, GenerateJob(messages=second, temperature=0, max_tokens=2))
    assert again.usage is not None
    assert again.usage.cached_tokens == len(b) - 1


def test_cached_prefix_does_not_change_the_answer(llama: LlamaRunner) -> None:
    job = chat("Name three fruits.", temperature=0, max_tokens=10)
    warm = generate(llama, job)
    llama.reset()  # nothing cached
    cold = generate(llama, job)
    assert cold.usage is not None and cold.usage.cached_tokens == 0
    assert warm.text() == cold.text()


# ----------------------------------------------------------------------------- JSON


def test_json_mode_output_parses(llama: LlamaRunner) -> None:
    prompts = ["Give me a JSON object describing a cat.", "Reply in JSON: what is 2+2?"]
    finished = 0
    for seed in (1, 2):
        for prompt in prompts:
            job = chat(prompt, temperature=0.8, seed=seed, max_tokens=32, json_mode=True)
            result = generate(llama, job)
            text = result.text()
            assert text.lstrip().startswith(("{", "[")), text
            if result.finish() == "stop":
                finished += 1
                json.loads(text)
    assert finished >= 2  # the grammar does end objects, not only cut them off


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer"},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_json_schema_output_validates(llama: LlamaRunner) -> None:
    for seed in range(2):
        job = chat(
            "Invent a person; answer in JSON with name and age.",
            temperature=0.8,
            seed=seed,
            max_tokens=40,
            json_schema=SCHEMA,
        )
        result = generate(llama, job)
        assert result.finish() == "stop", result.text()
        jsonschema.validate(json.loads(result.text()), SCHEMA)


def test_the_empty_schema_still_means_json(llama: LlamaRunner) -> None:
    """``{}`` allows any JSON value, but only JSON: unconstrained, SmolLM2 opens with a
    Markdown fence (```json) here."""
    job = chat(
        "Answer with one JSON number: what is 2+2?", temperature=0, max_tokens=30, json_schema={}
    )
    result = generate(llama, job)
    text = result.text().lstrip()
    assert text[:1] in set('{["-0123456789tfn'), text
    # A question with a short answer, greedy: the grammar must let the model finish, and what
    # it finished must parse (a check behind `if finish == "stop"` never ran: cut at length).
    assert result.finish() == "stop", text
    json.loads(text)


def test_an_invalid_schema_is_refused(llama: LlamaRunner) -> None:
    job = chat("json", json_schema={"type": "object", "$ref": "#/nowhere"}, max_tokens=5)
    with pytest.raises(InvalidRequest) as refused:
        generate(llama, job)
    assert refused.value.param == "response_format.json_schema.schema"


# ----------------------------------------------------------------------------- logprobs


def test_logprobs_of_generated_tokens(llama: LlamaRunner) -> None:
    result = generate(llama, chat(COUNT, temperature=0, max_tokens=8, logprobs=3))
    items = [lp for d in result.deltas for lp in (d.logprobs or [])]
    assert len(items) == result.usage.completion_tokens  # type: ignore[union-attr]
    text = "".join(d.text for d in result.deltas)
    assert b"".join(bytes(lp.bytes) for lp in items).decode() == text
    for lp in items:
        assert lp.logprob is not None and lp.logprob <= 0
        assert len(lp.top) == 3
        values = [t.logprob for t in lp.top]
        assert values == sorted(values, reverse=True)
        assert all(v <= 0 for v in values)
        # Greedy picks the most likely token: it leads the alternatives.
        assert lp.top[0].token == lp.token
        assert lp.top[0].logprob == pytest.approx(lp.logprob)


def test_logprobs_zero_alternatives(llama: LlamaRunner) -> None:
    result = generate(llama, chat("Hi", temperature=0, max_tokens=3, logprobs=0))
    items = [lp for d in result.deltas for lp in (d.logprobs or [])]
    assert items and all(lp.top == [] for lp in items)


def test_sampled_logprobs_stay_probabilities(llama: LlamaRunner) -> None:
    result = generate(llama, chat("Hi", temperature=1.5, seed=4, max_tokens=8, logprobs=2))
    items = [lp for d in result.deltas for lp in (d.logprobs or [])]
    assert items
    assert all(lp.logprob is not None and lp.logprob <= 0 for lp in items)
    assert all(lp.top[0].logprob >= lp.logprob - 1e-6 for lp in items)  # type: ignore[operator]


def test_echo_with_logprobs_scores_the_prompt(llama: LlamaRunner) -> None:
    prompt = "The capital of France is"
    tokens = llama.tokenize(prompt)
    job = GenerateJob(prompts=[prompt], echo=True, logprobs=2, temperature=0, max_tokens=1)
    result = generate(llama, job)
    echoed = result.deltas[0]
    assert echoed.text == prompt
    assert echoed.logprobs is not None and len(echoed.logprobs) == len(tokens)
    assert echoed.logprobs[0].logprob is None
    assert echoed.logprobs[0].top == []
    for lp in echoed.logprobs[1:]:
        assert lp.logprob is not None and math.isfinite(lp.logprob) and lp.logprob <= 0
        assert len(lp.top) == 2
    assert result.usage is not None
    assert result.usage.prompt_tokens == len(tokens)
    assert result.usage.completion_tokens == 1


def test_prompt_scores_agree_with_generation(llama: LlamaRunner) -> None:
    """Scoring ``prompt + g`` must give ``g`` the logprob generation gave it (no off-by-one)."""
    prompt = "One, two, three,"
    greedy = generate(llama, GenerateJob(prompts=[prompt], temperature=0, max_tokens=1, logprobs=1))
    [generated] = [lp for d in greedy.deltas for lp in (d.logprobs or [])]
    tokens = [*llama.tokenize(prompt), *llama.tokenize(generated.token, add_bos=False)]
    scored = generate(
        llama, GenerateJob(prompts=[tokens], echo=True, logprobs=1, temperature=0, max_tokens=1)
    )
    last = scored.deltas[0].logprobs[-1]  # type: ignore[index]
    assert last.token == generated.token
    assert last.logprob == pytest.approx(generated.logprob, abs=0.05)


def test_echo_without_logprobs_repeats_the_prompt(llama: LlamaRunner) -> None:
    job = GenerateJob(prompts=["Once upon a time"], echo=True, temperature=0, max_tokens=3)
    result = generate(llama, job)
    assert result.deltas[0].text == "Once upon a time"
    assert result.deltas[0].logprobs is None
    assert result.text().startswith("Once upon a time")


# ----------------------------------------------------------------------------- refusals


def test_context_length_exceeded_by_max_tokens(llama: LlamaRunner) -> None:
    with pytest.raises(InvalidRequest) as refused:
        generate(llama, chat("Hi", max_tokens=CONTEXT))
    assert refused.value.code == "context_length_exceeded"
    assert refused.value.param == "messages"
    assert str(CONTEXT) in refused.value.message


def test_context_length_exceeded_by_the_prompt(llama: LlamaRunner) -> None:
    with pytest.raises(InvalidRequest) as refused:
        generate(llama, GenerateJob(prompts=[[42] * (CONTEXT + 1)], max_tokens=None))
    assert refused.value.code == "context_length_exceeded"
    assert refused.value.param == "prompt"


def test_the_default_output_shrinks_to_fit(tiny: LlamaRunner) -> None:
    """No explicit max_tokens: the model's default is capped by the room left, not refused.

    A 64-token runner, so filling it costs nothing. (llama.cpp rounds the context up to 256
    tokens; the configured 64 is the limit all the same.)"""
    assert tiny.n_ctx == 64
    no_end = {0: -100.0, 2: -100.0, 4: -100.0}
    job = GenerateJob(
        prompts=[[42] * (tiny.n_ctx - 4)],
        default_max_tokens=512,
        temperature=0,
        logit_bias=no_end,
    )
    result = generate(tiny, job)
    assert result.usage is not None
    assert result.usage.completion_tokens == 4
    assert result.finish() == "length"
    with pytest.raises(InvalidRequest):
        generate(tiny, replace(job, max_tokens=5))
    generate(tiny, replace(job, max_tokens=4))  # exactly full is fine


@pytest.mark.parametrize("bad", [-1, 49152, 10**9])
def test_a_token_outside_the_vocabulary_is_refused(llama: LlamaRunner, bad: int) -> None:
    assert llama.n_vocab == 49152
    job = GenerateJob(prompts=[[1, 2, bad]], max_tokens=2)
    with pytest.raises(InvalidRequest) as refused:
        generate(llama, job)
    assert refused.value.param == "prompt"
    assert str(bad) in refused.value.message
    with pytest.raises(InvalidRequest) as second:
        generate(llama, GenerateJob(prompts=[[1, 2], [3, bad]], max_tokens=2))
    assert second.value.param == "prompt[1]"


# ----------------------------------------------------------------------------- cancellation


def test_cancel_after_three_tokens_stops_right_there(llama: LlamaRunner) -> None:
    events: list[TextDelta | Usage] = []

    def tokens_so_far() -> int:
        return sum(len(e.logprobs or []) for e in events if isinstance(e, TextDelta))

    no_end = {0: -100.0, 2: -100.0, 4: -100.0}
    job = chat(COUNT, temperature=0, max_tokens=200, logprobs=0, logit_bias=no_end)
    llama.run(job, events.append, lambda: tokens_so_far() >= 3)  # type: ignore[arg-type]
    assert tokens_so_far() == 3
    assert not any(isinstance(e, TextDelta) and e.finish_reason for e in events)
    # The runner is usable straight after.
    after = generate(llama, chat("Hi", temperature=0, max_tokens=2))
    assert after.finish() in ("stop", "length")


@pytest.mark.parametrize("echo", [False, True])
def test_cancel_during_a_long_prompt_stops_within_one_batch(tiny: LlamaRunner, echo: bool) -> None:
    """Long prompts take seconds per batch on 2 cores: a client who leaves while the prompt
    is read must not hold its slot until the whole prompt is done. (12-token chunks here.)"""
    prompt = list(range(1000, 1000 + 3 * tiny.chunk))  # three chunks
    tiny.reset()
    events: list[object] = []
    job = GenerateJob(prompts=[prompt], max_tokens=5, echo=echo, logprobs=1 if echo else None)
    tiny.run(job, events.append, lambda: tiny.cache_tokens() > 0)  # leaves after chunk one
    assert tiny.cache_tokens() == tiny.chunk
    assert [e for e in events if isinstance(e, TextDelta)] == []
    assert generate(tiny, chat("Hi", temperature=0, max_tokens=2)).finish() is not None


def test_cancel_before_the_first_choice_emits_nothing(llama: LlamaRunner) -> None:
    events: list[object] = []
    llama.run(chat("Hi", max_tokens=5), events.append, lambda: True)
    assert [e for e in events if isinstance(e, TextDelta)] == []


# ----------------------------------------------------------------------------- UTF-8


def test_chinese_streams_whole_characters(llama: LlamaRunner) -> None:
    """SmolLM2 splits CJK characters across byte tokens; no delta may carry half of one."""
    job = chat("用中文介绍一下北京。", temperature=0, max_tokens=24, logprobs=0)
    result = generate(llama, job)
    texts = [d.text for d in result.deltas]
    raw = b"".join(bytes(lp.bytes) for d in result.deltas for lp in (d.logprobs or []))
    # The model did split characters (else this test would prove nothing) …
    pieces = [bytes(lp.bytes) for d in result.deltas for lp in (d.logprobs or [])]
    assert any(not _valid_utf8(piece) for piece in pieces), "no split character generated"
    # … yet every delta is whole text, and together they are exactly the generated bytes.
    assert all("\ufffd" not in text for text in texts)
    joined = "".join(texts)
    assert joined == raw.decode("utf-8")
    assert any("\u4e00" <= ch <= "\u9fff" for ch in joined)
    # Streamed with logprobs or without, the text is the same.
    assert (
        generate(llama, chat("用中文介绍一下北京。", temperature=0, max_tokens=24)).text() == joined
    )


def test_a_chinese_stop_string(llama: LlamaRunner) -> None:
    full = generate(llama, chat("用中文介绍一下北京。", temperature=0, max_tokens=24)).text()
    assert "北京" in full, full
    result = generate(
        llama, chat("用中文介绍一下北京。", temperature=0, max_tokens=24, stop=["北京"])
    )
    assert result.text() == full[: full.index("北京")]
    assert result.finish() == "stop"


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_result_helper_sees_one_finish(llama: LlamaRunner) -> None:
    """Every choice ends with exactly one finish_reason delta, and it is the last of its choice."""
    result: Result = generate(llama, chat("Hi", n=2, temperature=1, seed=2, max_tokens=4))
    for index in (0, 1):
        mine = [d for d in result.deltas if d.index == index]
        assert mine[-1].finish_reason in ("stop", "length")
        assert all(d.finish_reason is None for d in mine[:-1])


# ----------------------------------------------------------------------------- crashes

CRASHERS = """
import json, sys
from keyhouse.backends.local.llama import GenerateJob, LlamaRunner, LlamaSettings
from keyhouse.config import bundled_gguf_path
from keyhouse.errors import KeyhouseError

runner = LlamaRunner(LlamaSettings(path=bundled_gguf_path(), context_length=128, threads=1))
jobs = {
    "empty prompt": GenerateJob(prompts=[""], max_tokens=2, temperature=0),
    "empty token list": GenerateJob(prompts=[[]], max_tokens=2, temperature=0),
    "empty prompt scored": GenerateJob(prompts=[""], echo=True, logprobs=1, max_tokens=1),
    "enum of nothing": GenerateJob(
        messages=[{"role": "user", "content": "json"}], max_tokens=2, json_schema={"enum": []}
    ),
    "anyOf nothing": GenerateJob(
        messages=[{"role": "user", "content": "json"}], max_tokens=2, json_schema={"anyOf": []}
    ),
}
out = {}
for name, job in jobs.items():
    events = []
    try:
        runner.run(job, events.append, lambda: False)
        out[name] = ["ok", events[-1].prompt_tokens, events[-1].completion_tokens]
    except KeyhouseError as exc:
        out[name] = ["refused", exc.status, exc.param]
print(json.dumps(out))
"""


def test_inputs_that_used_to_crash_the_process() -> None:
    """In a child process: a regression here aborts llama.cpp (SIGABRT/SIGSEGV), which would
    take the whole test session (or server) down with it."""
    result = subprocess.run(
        [sys.executable, "-c", CRASHERS], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"crashed ({result.returncode}):\n{result.stderr[-2000:]}"
    out = json.loads(result.stdout.strip().splitlines()[-1])
    # An empty prompt starts from the BOS token (one prompt token), as OpenAI's does.
    assert out["empty prompt"] == ["ok", 1, 2]
    assert out["empty token list"] == ["ok", 1, 2]
    assert out["empty prompt scored"] == ["ok", 1, 1]
    schema_param = "response_format.json_schema.schema"
    assert out["enum of nothing"] == ["refused", 400, schema_param]
    assert out["anyOf nothing"] == ["refused", 400, schema_param]
