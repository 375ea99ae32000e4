"""The model host: with several workers, the local models live in one process they share.

``keyhouse serve --workers N`` starts this process first; each worker talks to it over a Unix
socket, one connection per request, newline-delimited JSON both ways. Closing the connection
cancels the request (a client that disconnects stops its generation). The host runs the same
``LocalEngine`` as a single-worker server, so queueing and fairness are identical.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from keyhouse.backends.base import (
    Embeddings,
    Event,
    Meter,
    TextDelta,
    TokenLogprob,
    TopToken,
    Usage,
)
from keyhouse.backends.local.e5 import E5Runner, EmbedJob
from keyhouse.backends.local.engine import LocalEngine, ModelThread
from keyhouse.backends.local.llama import GenerateJob, LlamaRunner
from keyhouse.config import LOCAL_KINDS, ModelSpec, Settings
from keyhouse.errors import KeyhouseError, Overloaded, ServerError

log = logging.getLogger("keyhouse.host")


def build_engine(settings: Settings) -> LocalEngine:
    """One thread per local model declared in the settings."""
    from keyhouse.backends.local.backend import e5_settings, llama_settings

    threads: dict[str, ModelThread] = {}
    for spec in settings.models:
        for deployment in spec.deployments:
            if deployment.backend == "local":
                llama = llama_settings(spec, deployment)
                load: Any = lambda llama=llama: LlamaRunner(llama)  # noqa: E731
            elif deployment.backend == "local-embedding":
                e5 = e5_settings(deployment)
                load = lambda e5=e5: E5Runner(**e5)  # noqa: E731
            else:
                continue
            threads[deployment.name] = ModelThread(
                deployment.name, load, capacity=settings.queue_size, timeout=settings.queue_timeout
            )
    return LocalEngine(threads)


def has_local_models(models: tuple[ModelSpec, ...]) -> bool:
    return any(spec.kinds & LOCAL_KINDS for spec in models)


# ----------------------------------------------------------------------------- wire format


def _encode_event(event: Any) -> bytes:
    if isinstance(event, TextDelta):
        payload: dict[str, Any] = {"t": "delta", **asdict(event)}
    elif isinstance(event, Usage):
        payload = {"t": "usage", **asdict(event)}
    elif isinstance(event, Embeddings):
        payload = {
            "t": "embeddings",
            "data": base64.b64encode(event.data).decode(),
            "dim": event.dim,
            "prompt_tokens": event.prompt_tokens,
        }
    elif isinstance(event, KeyhouseError):
        payload = {
            "t": "error",
            "status": event.status,
            "type": event.type,
            "code": event.code,
            "param": event.param,
            "message": event.message,
        }
    else:
        payload = {"t": "end"}
    return orjson.dumps(payload) + b"\n"


def _decode_event(line: bytes) -> Any:
    data = orjson.loads(line)
    kind = data.pop("t")
    if kind == "delta":
        logprobs = data.pop("logprobs")
        if logprobs is not None:
            logprobs = [
                TokenLogprob(
                    lp["token"], lp["logprob"], lp["bytes"], [TopToken(**top) for top in lp["top"]]
                )
                for lp in logprobs
            ]
        return TextDelta(logprobs=logprobs, **data)
    if kind == "usage":
        return Usage(**data)
    if kind == "embeddings":
        return Embeddings(base64.b64decode(data["data"]), data["dim"], data["prompt_tokens"])
    if kind == "error":
        message = data.pop("message")
        return KeyhouseError(message, **data)
    return None


def _generate_job(data: dict[str, Any]) -> GenerateJob:
    """JSON object keys are strings: give ``logit_bias`` back its integer token ids."""
    data["logit_bias"] = {int(token): bias for token, bias in data["logit_bias"].items()}
    return GenerateJob(**data)


# ----------------------------------------------------------------------------- host side


class ModelHost:
    def __init__(self, engine: LocalEngine, socket_path: Path) -> None:
        self.engine = engine
        self.socket_path = socket_path

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = orjson.loads(await reader.readline())
            work = asyncio.create_task(self._answer(request, writer))
            gone = asyncio.create_task(reader.read(1))  # EOF: the worker gave up on it
            done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            if work not in done:
                work.cancel()
            gone.cancel()
            for task in (work, gone):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        except Exception:
            log.exception("model host request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        try:
            if request["op"] == "generate":
                stream = self.engine.generate(
                    request["model"], request["member"], _generate_job(request["job"])
                )
                try:
                    async for event in stream:
                        writer.write(_encode_event(event))
                        await writer.drain()
                finally:
                    await stream.aclose()
            else:
                result = await self.engine.embed(
                    request["model"], request["member"], EmbedJob(**request["job"])
                )
                writer.write(_encode_event(result))
        except KeyhouseError as exc:
            writer.write(_encode_event(exc))
        except Exception:
            log.exception("model host: %s failed", request.get("op"))
            writer.write(_encode_event(ServerError()))
        writer.write(_encode_event(None))
        await writer.drain()

    async def serve(self) -> None:
        await self.engine.start()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        tmp = self.socket_path.with_name(self.socket_path.name + ".starting")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        server = await asyncio.start_unix_server(self.handle, path=str(tmp), limit=2**26)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.socket_path)  # appears only once it accepts connections
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("model host ready on %s", self.socket_path)
        async with server:
            await stop.wait()
        await self.engine.stop()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()


def run_host(settings: Settings, socket_path: str) -> None:
    """Entry point of the model host process."""
    from keyhouse.logs import setup_logging

    setup_logging(settings.log_level)
    asyncio.run(ModelHost(build_engine(settings), Path(socket_path)).serve())


# ----------------------------------------------------------------------------- worker side


class RemoteEngine:
    """A worker's handle on the model host: same interface as ``LocalEngine``."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def _open(self, op: str, model: str, member: str, job: Any):  # type: ignore[no-untyped-def]
        try:
            reader, writer = await asyncio.open_unix_connection(self.socket_path, limit=2**26)
        except OSError:
            log.error("the model host at %s does not answer", self.socket_path)
            raise Overloaded(model) from None
        request = {"op": op, "model": model, "member": member, "job": asdict(job)}
        writer.write(orjson.dumps(request, option=orjson.OPT_NON_STR_KEYS) + b"\n")
        await writer.drain()
        return reader, writer

    async def generate(
        self, model: str, member: str, job: GenerateJob, abandoned: Meter | None = None
    ) -> AsyncIterator[Event]:
        # A request abandoned mid-generation is not followed here (the host stops it when the
        # connection closes); its meter settles with unknown usage, which costs its hold.
        reader, writer = await self._open("generate", model, member, job)
        try:
            while line := await reader.readline():
                event = _decode_event(line)
                if event is None:
                    return
                if isinstance(event, KeyhouseError):
                    raise event
                yield event
            raise ServerError("the model host closed the connection")
        finally:
            writer.close()

    async def embed(self, model: str, member: str, job: EmbedJob) -> Embeddings:
        reader, writer = await self._open("embed", model, member, job)
        try:
            line = await reader.readline()
        finally:
            writer.close()
        event = _decode_event(line) if line else None  # b"": the host closed the connection
        if isinstance(event, KeyhouseError):
            raise event
        if not isinstance(event, Embeddings):
            raise ServerError("the model host closed the connection")
        return event
