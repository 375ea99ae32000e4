"""The model host (``serve --workers N``): ModelHost in this process on a temporary Unix socket,
RemoteEngine talking to it, compared with the same LocalEngine called directly."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from keyhouse.backends.base import Embeddings, TextDelta, Usage
from keyhouse.backends.local.e5 import MAX_INPUT_TOKENS, E5Runner, EmbedJob
from keyhouse.backends.local.engine import LocalEngine, ModelThread
from keyhouse.backends.local.host import ModelHost, RemoteEngine
from keyhouse.backends.local.llama import GenerateJob, LlamaRunner
from keyhouse.errors import KeyhouseError, Overloaded
from tests.backends.conftest import CONTEXT, chat

pytestmark = pytest.mark.model

CHAT = "chat-model"
EMBED = "embedding-model"
NO_END = {0: -100.0, 2: -100.0, 4: -100.0}


@pytest.fixture(scope="module")
async def engine(llama: LlamaRunner, e5: E5Runner) -> AsyncIterator[LocalEngine]:
    """The session's loaded models, each on its own ModelThread, as the host process runs them."""
    local = LocalEngine(
        {
            CHAT: ModelThread(CHAT, lambda: llama, capacity=8, timeout=60),
            EMBED: ModelThread(EMBED, lambda: e5, capacity=8, timeout=60),
        }
    )
    await local.start()
    yield local
    await local.stop()


@pytest.fixture(scope="module")
async def remote(engine: LocalEngine) -> AsyncIterator[RemoteEngine]:
    folder = Path(tempfile.mkdtemp(prefix="kh-host-"))  # short: socket paths max ~107 bytes
    path = folder / "engine.sock"
    host = ModelHost(engine, path)
    server = await asyncio.start_unix_server(host.handle, path=str(path), limit=2**26)
    yield RemoteEngine(str(path))
    server.close()
    await server.wait_closed()
    shutil.rmtree(folder, ignore_errors=True)


async def events_of(stream: AsyncIterator[Any]) -> list[Any]:
    return [event async for event in stream]


async def test_generation_events_equal_the_local_engines(
    engine: LocalEngine, remote: RemoteEngine
) -> None:
    """Same KV-cache state before each run (the prefix both share with ``other``), so every
    event — text, log probabilities, usage with cached tokens — must match exactly."""
    job = chat("Name three colours.", temperature=0, max_tokens=12, logprobs=2)
    other = chat("Name three animals.", temperature=0, max_tokens=2)
    await events_of(engine.generate(CHAT, "m", other))
    local = await events_of(engine.generate(CHAT, "m", job))
    await events_of(engine.generate(CHAT, "m", other))
    over_the_wire = await events_of(remote.generate(CHAT, "m", job))
    assert over_the_wire == local
    assert isinstance(local[-1], Usage) and local[-1].cached_tokens > 0
    deltas = [e for e in local if isinstance(e, TextDelta)]
    assert deltas[-1].finish_reason in ("stop", "length")
    assert any(d.logprobs and d.logprobs[0].top for d in deltas)


async def test_logit_bias_reaches_the_host(engine: LocalEngine, remote: RemoteEngine) -> None:
    """Token ids are integer keys; JSON makes them strings, the host must read them back."""
    runner: LlamaRunner = engine.threads[CHAT].runner
    plain = chat("Say yes.", temperature=0, max_tokens=3, logprobs=0)
    first = next(e for e in await events_of(remote.generate(CHAT, "m", plain)) if e.logprobs)
    banned = bytes(first.logprobs[0].bytes)
    job = replace(plain, logit_bias={runner.pieces.index(banned): -100.0})
    local = await events_of(engine.generate(CHAT, "m", job))
    over_the_wire = await events_of(remote.generate(CHAT, "m", job))
    deltas = [e for e in over_the_wire if isinstance(e, TextDelta)]
    assert deltas == [e for e in local if isinstance(e, TextDelta)]
    assert bytes(deltas[0].logprobs[0].bytes) != banned  # type: ignore[index]


async def test_scored_prompts_travel_with_their_null_first_logprob(
    engine: LocalEngine, remote: RemoteEngine
) -> None:
    job = GenerateJob(
        prompts=["Once upon a time", [1, 2, 3]], echo=True, logprobs=1, temperature=0, max_tokens=2
    )
    local = await events_of(engine.generate(CHAT, "m", job))
    over_the_wire = await events_of(remote.generate(CHAT, "m", job))
    assert over_the_wire == local
    echoed = over_the_wire[0]
    assert isinstance(echoed, TextDelta) and echoed.logprobs is not None
    assert echoed.logprobs[0].logprob is None
    assert {e.index for e in over_the_wire if isinstance(e, TextDelta)} == {0, 1}


async def test_refusals_travel_with_status_and_code(remote: RemoteEngine) -> None:
    with pytest.raises(KeyhouseError) as refused:
        await events_of(remote.generate(CHAT, "m", chat("Hi", max_tokens=CONTEXT + 1)))
    error = refused.value
    assert (error.status, error.type) == (400, "invalid_request_error")
    assert (error.code, error.param) == ("context_length_exceeded", "messages")
    assert str(CONTEXT) in error.message

    with pytest.raises(KeyhouseError) as bad_token:
        await events_of(remote.generate(CHAT, "m", GenerateJob(prompts=[[10**7]], max_tokens=1)))
    assert (bad_token.value.status, bad_token.value.param) == (400, "prompt")

    with pytest.raises(KeyhouseError) as too_long:
        await remote.embed(EMBED, "m", EmbedJob(["word " * (MAX_INPUT_TOKENS + 5)]))
    assert (too_long.value.status, too_long.value.code) == (400, "context_length_exceeded")


async def test_an_unknown_model_is_a_server_error(remote: RemoteEngine) -> None:
    with pytest.raises(KeyhouseError) as failed:
        await events_of(remote.generate("no-such-model", "m", chat("Hi", max_tokens=1)))
    assert (failed.value.status, failed.value.type) == (500, "server_error")


async def test_a_missing_host_is_overloaded(tmp_path: Path) -> None:
    nowhere = RemoteEngine(str(tmp_path / "absent.sock"))
    with pytest.raises(Overloaded) as refused:
        await events_of(nowhere.generate(CHAT, "m", chat("Hi", max_tokens=1)))
    assert refused.value.status == 503
    with pytest.raises(Overloaded):
        await nowhere.embed(EMBED, "m", EmbedJob(["hi"]))


async def short_seconds(remote: RemoteEngine) -> float:
    """Seconds for a 3-token answer: what "the model is free" looks like on this machine now."""
    started = time.monotonic()
    short = await events_of(remote.generate(CHAT, "other", chat("Hi", max_tokens=3)))
    assert isinstance(short[-1], Usage)
    return time.monotonic() - started


def freed(elapsed: float, warm: float) -> bool:
    """Answered as if the model were free: within 12 s, or on a busy machine within 20 short
    answers' time (measured just before); a generation that ran on takes ~80 of them."""
    return elapsed < max(12.0, 20 * warm)


async def test_closing_the_connection_cancels_the_generation(
    engine: LocalEngine, remote: RemoteEngine
) -> None:
    """2000 tokens would hold the model thread for 25 s or more; closing must free it at once."""
    warm = await short_seconds(remote)
    long = chat("Write a long story.", temperature=0, max_tokens=2000, logit_bias=NO_END)
    stream = remote.generate(CHAT, "m", long)
    first = await anext(stream)
    second = await anext(stream)
    assert isinstance(first, TextDelta) and isinstance(second, TextDelta)
    await stream.aclose()

    elapsed = await short_seconds(remote)
    assert freed(elapsed, warm), f"the abandoned generation held the model for {elapsed:.1f}s"
    assert len(engine.threads[CHAT].queue) == 0


async def test_cancelling_the_worker_task_cancels_the_generation(
    engine: LocalEngine, remote: RemoteEngine
) -> None:
    """A worker whose HTTP client hung up cancels its task; the host must notice too."""
    warm = await short_seconds(remote)
    long = chat("Write a long poem.", temperature=0, max_tokens=2000, logit_bias=NO_END)
    two = asyncio.Event()

    async def consume() -> None:
        seen = 0
        async for _ in remote.generate(CHAT, "m", long):
            seen += 1
            if seen == 2:
                two.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(two.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    elapsed = await short_seconds(remote)
    assert freed(elapsed, warm), f"the abandoned generation held the model for {elapsed:.1f}s"


async def test_embeddings_travel_intact(engine: LocalEngine, remote: RemoteEngine) -> None:
    job = EmbedJob(["猫", "cat", "tax law"], input_type="passage")
    local = await engine.embed(EMBED, "m", job)
    over_the_wire = await remote.embed(EMBED, "m", job)
    assert isinstance(over_the_wire, Embeddings)
    assert over_the_wire.data == local.data  # bit for bit
    assert (over_the_wire.dim, over_the_wire.prompt_tokens) == (384, local.prompt_tokens)
    assert len(over_the_wire) == 3


async def test_a_host_that_hangs_up_is_a_server_error() -> None:
    """A host process that dies mid-request: a clean 500, not a decoding crash."""
    folder = Path(tempfile.mkdtemp(prefix="kh-dead-"))
    path = folder / "engine.sock"

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.close()

    server = await asyncio.start_unix_server(hang_up, path=str(path))
    try:
        dying = RemoteEngine(str(path))
        with pytest.raises(KeyhouseError) as generate_failed:
            await events_of(dying.generate(CHAT, "m", chat("Hi", max_tokens=1)))
        assert generate_failed.value.status == 500
        with pytest.raises(KeyhouseError) as embed_failed:
            await dying.embed(EMBED, "m", EmbedJob(["hi"]))
        assert embed_failed.value.status == 500
    finally:
        server.close()
        await server.wait_closed()
        shutil.rmtree(folder, ignore_errors=True)
