"""The local engine: each model on its own thread, fed by a bounded queue, fair across members.

A request waits in its member's line; the thread serves the lines round-robin, so one member
with fifty requests queued cannot starve another's one. A generation model runs several
requests at once (continuous batching, ``llama.LlamaRunner.step``): a free slot takes the next
request in that order while the others go on, so a long generation does not hold up a short
one. A full queue, or a wait longer than
the queue timeout, is answered at once with OpenAI's "overloaded" error (503). A caller that
goes away (client disconnect) marks its job cancelled; the generation loop stops at the next
token, and a job still waiting is dropped from its line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from keyhouse.backends.base import Embeddings, Event, Meter, Usage
from keyhouse.errors import KeyhouseError, Overloaded, ServerError

log = logging.getLogger("keyhouse.local")

Emit = Callable[[Any], None]
#: Runs the job; or, on a batching runner, admits it and returns the task ``step`` drives.
Work = Callable[[Emit, Callable[[], bool]], Any]

_STARTED = object()
_DONE = object()


@dataclass(eq=False)
class Ticket:
    member: str
    work: Work
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    cancelled: bool = False

    def post(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the loop is gone (shutdown); nobody is listening
            self.cancelled = True


class QueueFull(Exception):
    pass


class FairQueue:
    """Bounded, thread-safe; ``take`` serves members round-robin."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lines: OrderedDict[str, deque[Ticket]] = OrderedDict()
        self._size = 0
        self._closed = False
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return self._size

    def put(self, ticket: Ticket) -> None:
        with self._cond:
            if self._size >= self.capacity:
                raise QueueFull
            self._lines.setdefault(ticket.member, deque()).append(ticket)
            self._size += 1
            self._cond.notify()

    @property
    def closed(self) -> bool:
        return self._closed

    def take(self, wait: bool = True) -> Ticket | None:
        """The next ticket, in member round-robin order; None once closed (or, not waiting,
        when none is queued)."""
        with self._cond:
            while wait and not self._lines and not self._closed:
                self._cond.wait()
            if self._closed or not self._lines:
                return None
            member, line = next(iter(self._lines.items()))
            ticket = line.popleft()
            self._size -= 1
            if line:
                self._lines.move_to_end(member)
            else:
                del self._lines[member]
            return ticket

    def remove(self, ticket: Ticket) -> bool:
        """Drop a waiting ticket; False if a thread already took it."""
        with self._cond:
            line = self._lines.get(ticket.member)
            if line is None or ticket not in line:
                return False
            line.remove(ticket)
            self._size -= 1
            if not line:
                del self._lines[ticket.member]
            return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class ModelThread:
    """One loaded model (a runner), one thread, one fair queue."""

    def __init__(
        self, name: str, load: Callable[[], Any], *, capacity: int, timeout: float
    ) -> None:
        self.name = name
        self._load = load
        self.runner: Any = None
        self.queue = FairQueue(capacity)
        self.timeout = timeout
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        self.runner = await asyncio.to_thread(self._load)
        self._thread = threading.Thread(target=self._serve, name=f"model-{self.name}", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self.queue.close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)

    def _serve(self) -> None:
        if getattr(self.runner, "slots", 0):
            self._serve_batched()
            return
        while (ticket := self.queue.take()) is not None:
            if ticket.cancelled:
                continue
            ticket.post(_STARTED)
            try:
                ticket.work(ticket.post, lambda t=ticket: t.cancelled)
            except KeyhouseError as exc:
                ticket.post(exc)
            except Exception:
                log.exception("local model %s failed", self.name)
                ticket.post(ServerError())
            finally:
                ticket.post(_DONE)

    def _serve_batched(self) -> None:
        """Continuous batching: the runner's ``begin`` admits a job to a free slot (its work
        returns the running task), and each ``step`` advances every running task by one
        token. A free slot takes the next ticket from the fair queue at once, so a short
        request from one member runs beside another member's long one."""
        runner = self.runner
        running: dict[Any, Ticket] = {}
        while True:
            while runner.free_slots() > 0:
                ticket = self.queue.take(wait=not running)
                if ticket is None:
                    break
                if ticket.cancelled:
                    continue
                ticket.post(_STARTED)
                try:
                    task = ticket.work(ticket.post, lambda t=ticket: t.cancelled)
                except Exception as exc:
                    self._failed(ticket, exc)
                    continue
                if task is None:  # work done on the spot
                    ticket.post(_DONE)
                else:
                    running[task] = ticket
            if not running:
                if self.queue.closed:
                    return
                continue
            try:
                ended = runner.step()
            except Exception as exc:  # the batch itself failed: every running job with it
                ended = [(task, exc) for task in running]
                for task in running:
                    runner.drop(task)
            for task, error in ended:
                ticket = running.pop(task)
                if error is None:
                    ticket.post(_DONE)
                else:
                    self._failed(ticket, error)

    def _failed(self, ticket: Ticket, error: BaseException) -> None:
        if isinstance(error, KeyhouseError):
            ticket.post(error)
        else:
            log.error("local model %s failed", self.name, exc_info=error)
            ticket.post(ServerError())
        ticket.post(_DONE)

    async def submit(
        self, member: str, work: Work, abandoned: Meter | None = None
    ) -> AsyncIterator[Any]:
        """Queue ``work`` and yield what it emits, in order. A consumer that stops early
        cancels the work; if it had started, the meter ``abandoned`` is settled with the work's
        last Usage, read in the background from what it still emits (it stops at its next
        step)."""
        ticket = Ticket(member, work, asyncio.get_running_loop())
        started = finished = False
        try:
            self.queue.put(ticket)
        except QueueFull:
            raise Overloaded(self.name) from None
        try:
            try:
                first = await asyncio.wait_for(ticket.events.get(), self.timeout)
            except TimeoutError:
                if self.queue.remove(ticket):
                    raise Overloaded(self.name) from None
                first = await ticket.events.get()  # taken just now: carry on
            assert first is _STARTED
            started = True
            while (item := await ticket.events.get()) is not _DONE:
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
            finished = True
        finally:
            ticket.cancelled = True
            self.queue.remove(ticket)
            if started and not finished and abandoned is not None:
                abandoned.defer()
                task = ticket.loop.create_task(_last_word(ticket, abandoned))
                _draining.add(task)
                task.add_done_callback(_draining.discard)


_draining: set[asyncio.Task[None]] = set()


async def _last_word(ticket: Ticket, meter: Meter) -> None:
    usage = None
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        async with asyncio.timeout(60):
            while (item := await ticket.events.get()) is not _DONE:
                if isinstance(item, Usage):
                    usage = item
    meter.settle(usage)


class LocalEngine:
    """All local models of this server, by public name."""

    def __init__(self, threads: dict[str, ModelThread]) -> None:
        self.threads = threads

    async def start(self) -> None:
        for thread in self.threads.values():
            await thread.start()

    async def stop(self) -> None:
        for thread in self.threads.values():
            await thread.stop()

    def _thread(self, model: str) -> ModelThread:
        try:
            return self.threads[model]
        except KeyError:
            raise ServerError(f"the local engine does not serve {model}") from None

    async def generate(
        self, model: str, member: str, job: Any, abandoned: Meter | None = None
    ) -> AsyncIterator[Event]:
        thread = self._thread(model)
        stream = thread.submit(
            member, lambda emit, cancelled: thread.runner.begin(job, emit, cancelled), abandoned
        )
        try:
            async for event in stream:
                yield event
        finally:
            await stream.aclose()

    async def embed(self, model: str, member: str, job: Any) -> Embeddings:
        thread = self._thread(model)

        def work(emit: Emit, cancelled: Callable[[], bool]) -> None:
            emit(thread.runner.run(job))

        stream = thread.submit(member, work)
        try:
            async for result in stream:
                return result
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()
        raise ServerError("the embedding model returned nothing")
