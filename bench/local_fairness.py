"""Does one member's long generation hold up another member's short one? (issue #15)

Runs the bundled SmolLM2 in this process, through the real engine (fair queue, model thread,
continuous batching), and prints, each as a ratio to the same run's baseline:

* a short request's latency alone, and while another member's long request streams;
* total generated tokens/s with 1 stream, and with ``--parallel`` streams at once.

    PYTHONPATH=src python bench/local_fairness.py [--parallel 4] [--long 500] [--short 8]

``--parallel 1`` shows the engine as it was (one generation at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from keyhouse.backends.base import Usage
from keyhouse.backends.local.backend import default_threads
from keyhouse.backends.local.engine import LocalEngine, ModelThread
from keyhouse.backends.local.llama import GenerateJob, LlamaRunner, LlamaSettings
from keyhouse.config import bundled_gguf_path

NO_END = {0: -100.0, 2: -100.0, 4: -100.0}


def chat(content: str, tokens: int, **options: Any) -> GenerateJob:
    return GenerateJob(
        messages=[{"role": "user", "content": content}],
        max_tokens=tokens,
        temperature=0,
        **options,
    )


async def generated(engine: LocalEngine, member: str, job: GenerateJob) -> int:
    count = 0
    async for event in engine.generate("chat", member, job):
        if isinstance(event, Usage):
            count = event.completion_tokens
    return count


async def short_latency(engine: LocalEngine, tokens: int, rounds: int) -> float:
    times = []
    for i in range(rounds):
        started = time.perf_counter()
        await generated(engine, "b", chat(f"Say hi number {i}.", tokens, logit_bias=NO_END))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def throughput(engine: LocalEngine, streams: int, tokens: int) -> float:
    jobs = [chat(f"Tell story {i}.", tokens, logit_bias=NO_END) for i in range(streams)]
    started = time.perf_counter()
    counts = await asyncio.gather(*(generated(engine, f"m{i}", job) for i, job in enumerate(jobs)))
    return sum(counts) / (time.perf_counter() - started)


async def main(args: argparse.Namespace) -> None:
    path = bundled_gguf_path()
    assert path is not None, "the bundled GGUF is not installed"
    settings = LlamaSettings(
        path=path, context_length=2048, threads=default_threads(), parallel=args.parallel
    )
    runner = LlamaRunner(settings)
    engine = LocalEngine({"chat": ModelThread("chat", lambda: runner, capacity=64, timeout=600)})
    await engine.start()
    try:
        await short_latency(engine, args.short, 1)  # warm up
        alone = await short_latency(engine, args.short, args.rounds)
        long_job = chat("Tell me a very long story.", args.long, logit_bias=NO_END)
        stream = engine.generate("chat", "a", long_job)
        await anext(stream)  # the long generation is running
        busy = await short_latency(engine, args.short, args.rounds)
        await stream.aclose()  # type: ignore[attr-defined]
        one = await throughput(engine, 1, args.tokens)
        many = await throughput(engine, args.parallel, args.tokens)
    finally:
        await engine.stop()
    print(f"slots: {args.parallel}, threads: {settings.threads}")
    print(f"short request ({args.short} tokens) alone:        {alone:6.2f} s  (baseline 1.00)")
    print(
        f"short request while a {args.long}-token one runs: {busy:6.2f} s  "
        f"({busy / alone:.2f}x baseline)"
    )
    print(f"tokens/s, 1 stream:                {one:7.1f}  (baseline 1.00)")
    print(
        f"tokens/s, {args.parallel} streams at once:      {many:7.1f}  ({many / one:.2f}x baseline)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--long", type=int, default=500)
    parser.add_argument("--short", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64, help="tokens per throughput stream")
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
