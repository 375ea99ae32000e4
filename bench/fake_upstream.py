"""A fast fake OpenAI-compatible upstream for the proxy bench: fixed answers, no work.

python bench/fake_upstream.py --port 9100 [--chunks 200]
"""

from __future__ import annotations

import argparse

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

USAGE = {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "This is a test!", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
)


def app(chunks: int) -> Starlette:
    head = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "bench-model",
    }
    piece = (
        b"data: "
        + orjson.dumps(
            {
                **head,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"content": "tok "},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
                "usage": None,
            }
        )
        + b"\n\n"
    )
    last = (
        b"data: " + orjson.dumps({**head, "choices": [], "usage": USAGE}) + b"\n\ndata: [DONE]\n\n"
    )

    async def chat(request: Request) -> Response:
        body = orjson.loads(await request.body())
        if not body.get("stream"):
            return Response(ANSWER, media_type="application/json")

        async def stream():  # type: ignore[no-untyped-def]
            for _ in range(chunks):
                yield piece
            yield last

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def health(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/health", health)]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=200)
    args = parser.parse_args()
    uvicorn.run(
        app(args.chunks), host="127.0.0.1", port=args.port, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
