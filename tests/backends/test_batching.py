"""Continuous batching on the real bundled SmolLM2: several generations in one llama context.

Nothing here measures time: a short job overtaking a long one is shown by the order of their
events, and batching's correctness by comparing each job's output with the same job alone.
The figures (latency, tokens/s) are ``bench/local_fairness.py``'s.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import jsonschema
import pytest

from keyhouse.backends.base import Event, TextDelta, Usage
from keyhouse.backends.local.engine import LocalEngine, ModelThread
from keyhouse.backends.local.llama import GenerateJob, LlamaRunner, Task, _without_complaint
from keyhouse.errors import InvalidRequest
from tests.backends.conftest import Result, chat, generate

pytestmark = pytest.mark.model

#: SmolLM2's end-of-generation tokens, banned so a long generation really runs long.
NO_END = {0: -100.0, 2: -100.0, 4: -100.0}
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


class Running:
    """A job admitted with ``begin``, its events, and a switch to cancel it."""

    def __init__(self, runner: LlamaRunner, job: GenerateJob) -> None:
        self.events: list[Event] = []
        self.cancel = False
        self.ended = False
        self.task: Task = runner.begin(job, self.events.append, lambda: self.cancel)

    @property
    def result(self) -> Result:
        return Result(self.events)

    def tokens(self) -> int:
        return sum(len(e.logprobs or []) for e in self.events if isinstance(e, TextDelta))


def step(runner: LlamaRunner, jobs: list[Running]) -> None:
    by_task = {job.task: job for job in jobs}
    for task, error in runner.step():
        assert error is None, error
        by_task[task].ended = True


def drive(runner: LlamaRunner, jobs: list[Running], until: Callable[[], bool]) -> None:
    for _ in range(2000):
        if until():
            return
        step(runner, jobs)
    raise AssertionError("the jobs never got there")


def together(runner: LlamaRunner, jobs: list[GenerateJob]) -> list[Result]:
    running = [Running(runner, job) for job in jobs]
    drive(runner, running, lambda: all(r.ended for r in running))
    return [r.result for r in running]


# ----------------------------------------------------------------------------- same results


def test_batched_greedy_answers_equal_each_alone(llama: LlamaRunner) -> None:
    jobs = [
        chat("Count from one to ten.", temperature=0, max_tokens=16),
        chat("Name three colours.", temperature=0, max_tokens=12),
        GenerateJob(prompts=["The capital of France is"], temperature=0, max_tokens=10),
    ]
    alone = [generate(llama, job).text() for job in jobs]
    assert all(text.strip() for text in alone)
    assert [r.text() for r in together(llama, jobs)] == alone


def test_each_batched_job_keeps_its_own_sampler(llama: LlamaRunner) -> None:
    """Each job has its own sampler chain (seed, temperature, penalties, logit_bias). With
    temperature above 0 a batched answer need not equal the same job alone: llama.cpp's
    batched kernels move the logits by rounding error, enough to flip a sampled token (the
    greedy test above holds)."""
    job = chat("Write a word.", temperature=1.1, seed=7, max_tokens=10, frequency_penalty=0.5)
    other_seed = chat("Write a word.", temperature=1.1, seed=8, max_tokens=10)
    endless = chat("Write a word.", temperature=1.1, seed=9, max_tokens=10, logit_bias=NO_END)
    results = together(llama, [job, other_seed, endless])
    assert len({r.text() for r in results}) >= 2
    assert results[2].usage is not None and results[2].usage.completion_tokens == 10


def test_grammar_logprobs_and_scoring_work_while_batched(llama: LlamaRunner) -> None:
    schema_job = chat(
        "Invent a person; answer in JSON.", temperature=0, max_tokens=40, json_schema=SCHEMA
    )
    logprob_job = chat("Say hello.", temperature=0, max_tokens=6, logprobs=3)
    scored = GenerateJob(
        prompts=["One two three"], echo=True, logprobs=2, max_tokens=3, temperature=0
    )
    long_job = chat("Tell a story.", temperature=0, max_tokens=60, logit_bias=NO_END)
    alone = [generate(llama, job) for job in (schema_job, logprob_job, scored)]
    results = together(llama, [long_job, schema_job, logprob_job, scored])
    data = json.loads(results[1].text())
    jsonschema.validate(data, SCHEMA)
    assert results[1].finish() == "stop"
    logprobs = [lp for d in results[2].deltas for lp in (d.logprobs or [])]
    assert len(logprobs) == results[2].usage.completion_tokens  # type: ignore[union-attr]
    assert all(len(lp.top) == 3 for lp in logprobs)
    # (Its text is not compared with alone[1]: greedy as it is, a near-tie between two tokens
    # can fall the other way in a shared batch — llama.cpp's batched kernels round otherwise.)
    echoed, echoed_alone = results[3].deltas[0].logprobs, alone[2].deltas[0].logprobs
    assert echoed is not None and echoed_alone is not None
    assert [lp.token for lp in echoed] == [lp.token for lp in echoed_alone]
    assert echoed[0].logprob is None
    for now, before in zip(echoed[1:], echoed_alone[1:], strict=True):
        assert now.logprob == pytest.approx(before.logprob, abs=0.05)
    assert results[0].usage is not None and results[0].usage.completion_tokens == 60


def test_n_choices_and_stop_strings_while_batched(llama: LlamaRunner) -> None:
    full = generate(llama, chat("Count from one to ten.", temperature=0, max_tokens=20)).text()
    cut = full.split()[2]
    job = chat("Count from one to ten.", temperature=0, max_tokens=20, stop=[cut], n=2)
    other = chat("Tell a story.", temperature=0, max_tokens=30, logit_bias=NO_END)
    result = together(llama, [other, job])[1]
    assert result.indexes() == {0, 1}
    for index in (0, 1):
        assert result.text(index) == full[: full.index(cut)]
        assert result.finish(index) == "stop"


# ----------------------------------------------------------------------------- fairness


def test_a_short_job_ends_while_a_long_one_streams(llama: LlamaRunner) -> None:
    long = Running(llama, chat("Tell a story.", temperature=0, max_tokens=400, logit_bias=NO_END))
    drive(llama, [long], lambda: long.result.text().strip() != "")
    short = Running(llama, chat("Hi", temperature=0, max_tokens=4))
    drive(llama, [long, short], lambda: short.ended)
    assert short.result.finish() in ("stop", "length")
    assert not long.ended and long.result.finish() is None
    before = len(long.result.deltas)
    drive(llama, [long], lambda: len(long.result.deltas) > before)  # and it streams on
    long.cancel = True
    drive(llama, [long], lambda: long.ended)


def test_a_long_prompt_is_read_between_the_running_jobs_tokens(llama: LlamaRunner) -> None:
    stream = Running(
        llama, chat("Tell a story.", temperature=0, max_tokens=400, logit_bias=NO_END, logprobs=0)
    )
    drive(llama, [stream], lambda: stream.tokens() > 0)
    chunks = 4
    prompt = [1000 + i % 500 for i in range(chunks * llama.chunk)]
    reader = Running(llama, GenerateJob(prompts=[prompt], max_tokens=2, logprobs=0))
    at_admission = stream.tokens()
    drive(llama, [stream, reader], lambda: reader.tokens() > 0)
    # One token of the stream per step, one chunk of the prompt per step: the stream was not
    # held while the prompt was read.
    assert stream.tokens() - at_admission >= chunks - 1
    stream.cancel = True
    drive(llama, [stream, reader], lambda: stream.ended and reader.ended)


def test_cancelling_frees_its_slot_and_reports_usage(llama: LlamaRunner) -> None:
    jobs = [
        Running(llama, chat(f"Story {i}.", temperature=0, max_tokens=300, logit_bias=NO_END))
        for i in range(llama.slots)
    ]
    drive(llama, jobs, lambda: all(job.tokens() or job.result.text() for job in jobs))
    assert llama.free_slots() == 0
    jobs[0].cancel = True
    drive(llama, jobs, lambda: jobs[0].ended)
    assert llama.free_slots() == 1
    usage = jobs[0].result.usage
    assert usage is not None and 0 < usage.completion_tokens < 300
    assert jobs[0].result.finish() is None
    for job in jobs[1:]:
        job.cancel = True
    drive(llama, jobs, lambda: all(job.ended for job in jobs))
    assert llama.free_slots() == llama.slots


def test_a_refused_grammar_leaves_the_terminal_alone(
    llama: LlamaRunner, capfd: pytest.CaptureFixture[str]
) -> None:
    """llama.cpp reports a grammar it cannot parse through its log; that must not be printed
    on the server's stderr (the client gets a 400)."""
    for grammar in ('root ::= "a" (', "root ::= nowhere"):
        job = chat("json", max_tokens=2, json_schema={"type": "string"}, grammar=grammar)
        with pytest.raises(InvalidRequest):
            generate(llama, job)
    captured = capfd.readouterr()
    assert "grammar" not in captured.err, captured.err
    assert captured.err == ""


def test_only_the_grammar_complaint_is_taken_out() -> None:
    """What else reached fd 2 during the probe (another thread's log line) is written back."""
    grammar = b'root ::= "a" ('
    output = (
        b"line one\nparse: error parsing grammar: expecting ')'\n\n" + grammar + b"\nline two\n"
    )
    assert _without_complaint(output, grammar) == b"line one\nline two\n"
    assert _without_complaint(b"nothing to see\n", grammar) == b"nothing to see\n"


# ----------------------------------------------------------------------------- the engine


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [event async for event in stream]


@pytest.fixture(scope="module")
async def engine(llama: LlamaRunner) -> AsyncIterator[LocalEngine]:
    local = LocalEngine({"chat": ModelThread("chat", lambda: llama, capacity=8, timeout=120)})
    await local.start()
    yield local
    await local.stop()


async def test_another_members_short_request_finishes_first(engine: LocalEngine) -> None:
    """Through the engine (queue, thread, slots): member b's 4-token request completes while
    member a's long stream is still open."""
    long_job = chat("Tell a story.", temperature=0, max_tokens=300, logit_bias=NO_END)
    stream = engine.generate("chat", "a", long_job)
    first = await anext(stream)
    assert isinstance(first, TextDelta)
    events: list[Any] = [
        e async for e in engine.generate("chat", "b", chat("Hi", temperature=0, max_tokens=4))
    ]
    assert isinstance(events[-1], Usage) and events[-1].completion_tokens >= 1
    after = await anext(stream)  # the long one is still going
    assert isinstance(after, TextDelta) and after.finish_reason is None
    await stream.aclose()  # type: ignore[attr-defined]
    # Its slot comes back: four more requests, all at once, all complete.
    jobs = [chat(f"Say {i}.", temperature=0, max_tokens=3) for i in range(4)]
    streams = [engine.generate("chat", m, j) for m, j in zip("abcd", jobs, strict=True)]
    outs = await asyncio.gather(*(collect(stream) for stream in streams))
    assert all(isinstance(out[-1], Usage) for out in outs)
