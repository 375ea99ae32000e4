"""The direct baseline: llama-cpp-python in its own process, driven over stdin/stdout.

Started by ``run.py``; loads the bundled GGUF with the server's thread count and context, then
answers one JSON line per request. Two ways of calling llama-cpp-python:

* ``bare``: its low-level API — ``Llama.eval`` and a greedy ``LlamaSampler`` — the ceiling any
  server built on it can reach;
* ``api``: its own ``create_chat_completion(stream=True)``.

Both reuse the prompt's KV cache across repetitions, as Keyhouse does. Timings are taken here,
in the process that generates, so they include no transport at all.
"""

from __future__ import annotations

import argparse
import codecs
import ctypes
import json
import sys
import time
from typing import Any

import llama_cpp
from llama_cpp import Llama
from llama_cpp._internals import LlamaSampler
from llama_cpp.llama_chat_format import Jinja2ChatFormatter


class Direct:
    def __init__(self, path: str, threads: int, context: int, batch: int) -> None:
        self.llm = Llama(
            model_path=path,
            n_ctx=context,
            n_batch=batch,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        model = self.llm._model

        def special(key: str) -> str:
            token = self.llm.metadata.get(key)
            return model.token_get_text(int(token)) if token else ""

        self.formatter = Jinja2ChatFormatter(
            template=self.llm.metadata["tokenizer.chat_template"],
            eos_token=special("tokenizer.ggml.eos_token_id"),
            bos_token=special("tokenizer.ggml.bos_token_id"),
        )

    def bare(self, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
        llm = self.llm
        started = time.perf_counter()
        prompt = self.formatter(messages=messages).prompt
        tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        keep = 0
        for a, b in zip(llm.input_ids[: llm.n_tokens].tolist(), tokens[:-1], strict=False):
            if a != b:
                break
            keep += 1
        llm.n_tokens = keep  # eval() drops the KV cache beyond n_tokens
        llm.eval(tokens[keep:])
        sampler = LlamaSampler()
        sampler.add_greedy()
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        vocab = llm._model.vocab
        buffer = ctypes.create_string_buffer(64)
        stamps: list[float] = []
        text: list[str] = []
        try:
            for i in range(max_tokens):
                token = sampler.sample(llm._ctx, -1)
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    break
                size = llama_cpp.llama_token_to_piece(vocab, token, buffer, 64, 0, False)
                piece = decoder.decode(buffer.raw[:size])
                stamps.append(time.perf_counter())
                text.append(piece)
                if i + 1 < max_tokens:
                    llm.eval([token])
        finally:
            sampler.close()
        return result(started, stamps, len(stamps), "".join(text))

    def api(self, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
        started = time.perf_counter()
        stamps: list[float] = []
        text: list[str] = []
        chunks = self.llm.create_chat_completion(
            messages=messages,  # type: ignore[arg-type]
            temperature=0,
            max_tokens=max_tokens,
            stream=True,
        )
        for chunk in chunks:
            content = chunk["choices"][0]["delta"].get("content")  # type: ignore[index]
            if content:
                stamps.append(time.perf_counter())
                text.append(content)
        return result(started, stamps, len(stamps), "".join(text))


def result(started: float, stamps: list[float], tokens: int, text: str) -> dict[str, Any]:
    return {
        "ttft": stamps[0] - started if stamps else None,
        "decode_seconds": stamps[-1] - stamps[0] if len(stamps) > 1 else None,
        "tokens": tokens,
        "text": text,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()
    direct = Direct(args.model, args.threads, args.context, args.batch)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        run = direct.bare if request["mode"] == "bare" else direct.api
        print(json.dumps(run(request["messages"], request["max_tokens"])), flush=True)


if __name__ == "__main__":
    main()
