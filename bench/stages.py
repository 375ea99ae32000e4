"""Where a request's CPU goes, by stage, from a py-spy profile of a loaded server.

    py-spy record --format raw --threads --nonblocking -r 200 -d 8 -o profile.txt --pid PID
    python bench/stages.py profile.txt --us-per-request 700

Each sample of the server's main thread is given to the innermost frame that names a stage
(auth, limits, hold/settle, route, relay, render and answer, …); work the meter does in the
background (its flushes) and the key poll are counted apart, whatever they call. With
``--us-per-request`` (the server's CPU time per request, as ``targets.py`` prints it), the
shares are turned into microseconds.
"""

from __future__ import annotations

import argparse
import collections

#: Background work, recognised anywhere in the stack.
BACKGROUND = [
    ("Wallet._loop", "meter: background flush (billing)"),
    ("Authenticator._loop", "auth: background key poll"),
    ("Limiter._flush_soon", "limits"),
]
#: (part of a frame, stage); the innermost frame that matches decides. py-spy names a frame
#: ``function (path/of/file.py:line)``, the path from the package: ``keyhouse/api/v1.py``.
FRAMEWORK = "framework (Starlette, api/dispatch)"
MARKS = [
    ("Corked", "answer: render, headers, write"),
    ("RequestResponseCycle.send", "answer: render, headers, write"),
    ("api/render.py", "answer: render, headers, write"),
    ("Response.__call__", "answer: render, headers, write"),
    ("Response.__init__", "answer: render, headers, write"),
    ("Response.init_headers", "answer: render, headers, write"),
    ("EventStream", "answer: render, headers, write"),
    ("answer (keyhouse/api/pipeline.py", "answer: render, headers, write"),
    ("Limiter.", "limits"),
    ("RuleBook", "limits"),
    ("keyhouse/limits/", "limits"),
    ("admit (keyhouse/api/pipeline.py", "limits"),
    ("limit_headers", "limits"),
    ("Wallet.", "meter: hold/settle (billing)"),
    ("Meter.", "meter: hold/settle (billing)"),
    ("Exchange.settle", "meter: hold/settle (billing)"),
    ("Exchange.close", "meter: hold/settle (billing)"),
    ("price (keyhouse/api/pipeline.py", "meter: hold/settle (billing)"),
    ("keyhouse/billing/", "meter: hold/settle (billing)"),
    ("Authenticator.", "auth"),
    ("authenticate (keyhouse/api/pipeline.py", "auth"),
    ("presented_key", "auth"),
    ("client_ip", "auth"),
    ("api/validation.py", "body: read, validate, estimate"),
    ("read_body", "body: read, validate, estimate"),
    ("Request.stream", "body: read, validate, estimate"),
    ("api/estimate.py", "body: read, validate, estimate"),
    ("check_chat", "body: read, validate, estimate"),
    ("precheck", "body: read, validate, estimate"),
    ("read (keyhouse/api/pipeline.py", "body: read, validate, estimate"),
    ("UpstreamBackend", "relay (the upstream HTTP client)"),
    ("keyhouse/backends/upstream/", "relay (the upstream HTTP client)"),
    ("aiohttp/", "relay (the upstream HTTP client)"),
    ("route_for", "route"),
    ("Router.", "route"),
    ("resolve (keyhouse/api/pipeline.py", "route"),
    ("Catalog.", "route"),
    ("head (keyhouse/api/v1.py", "route"),
    ("api/v1.py", "handler glue (api/v1, api/pipeline)"),
    ("api/pipeline.py", "handler glue (api/v1, api/pipeline)"),
    ("unless_disconnected", "handler glue (api/v1, api/pipeline)"),
    ("Edge.", "middleware (request ids, access log)"),
    ("new_request_id", "middleware (request ids, access log)"),
    ("RequestIds", "middleware (request ids, access log)"),
    ("AccessLog", "middleware (request ids, access log)"),
    ("api/dispatch.py", FRAMEWORK),
    ("starlette/", FRAMEWORK),
    ("GuardedHttp", "HTTP server (uvicorn, httptools, guard)"),
    ("uvicorn/", "HTTP server (uvicorn, httptools, guard)"),
]


def stages(path: str) -> tuple[collections.Counter[str], int]:
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path, encoding="utf-8") as lines:
        text = lines.read().splitlines()
    for line in text:
        stack, _, n = line.rstrip().rpartition(" ")
        frames = stack.split(";")
        threaded = frames[0].startswith("thread (")  # recorded with --threads
        if threaded and "MainThread" not in frames[0]:
            continue
        samples = int(n)
        total += samples
        stage = next((s for m, s in BACKGROUND if any(m in f for f in frames)), None)
        if stage is None:
            for frame in reversed(frames):
                stage = next((s for m, s in MARKS if m in frame), None)
                if stage is not None:
                    break
        counts[stage or "event loop and the rest"] += samples
    return counts, total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("profile")
    parser.add_argument("--us-per-request", type=float, default=None)
    args = parser.parse_args()
    counts, total = stages(args.profile)
    print(f"{'stage':<50} {'share':>6} {'µs/request':>11}")
    for stage, samples in counts.most_common():
        share = samples / total
        us = f"{share * args.us_per_request:>11.0f}" if args.us_per_request else ""
        print(f"{stage:<50} {share * 100:>5.1f}% {us}")
    print(f"({total} samples of the main thread)")


if __name__ == "__main__":
    main()
