"""JSON schemas compiled to llama.cpp grammars: bounded, off the event loop, once per schema.

The schema is first checked by ``schema_bounds`` (microseconds, nothing built), then converted
by llama-cpp-python's converter on a worker thread — not the event loop, and not the model's
thread, so neither other members' requests nor their generations wait for it — within a time
budget, and the result is cached by the schema's canonical text.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from keyhouse.backends.local.schema_bounds import PARAM, check_schema
from keyhouse.errors import InvalidRequest

#: The compiled text's own bound (the schema bounds keep real ones far below it).
MAX_GRAMMAR_CHARS = 4_000_000
#: Seconds a conversion may take; the worst schema the bounds admit takes about half of it.
COMPILE_BUDGET = 2.0


@dataclass(frozen=True)
class Refusal:
    """Why a schema cannot be compiled; cached like a grammar (a fresh 400 is raised each
    time: an exception raised again would keep growing its traceback)."""

    reason: str

    def error(self) -> InvalidRequest:
        return _refused(self.reason)


def _refused(error: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid schema for response_format: {error}", param=PARAM)


def convert(schema_text: str) -> str | Refusal:
    """GBNF for a schema already bounded, or why it is refused."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        grammar = json_schema_to_gbnf(schema_text)
    except RecursionError:
        return Refusal("it is nested too deeply")
    except Exception as exc:  # the converter's own complaint (an unsupported keyword…)
        return Refusal(str(exc)[:500] or type(exc).__name__)
    if len(grammar) > MAX_GRAMMAR_CHARS:
        return Refusal(f"it compiles to a grammar of more than {MAX_GRAMMAR_CHARS} characters")
    return grammar


class GrammarCache:
    """Compiled grammars by canonical schema text, the most recently used kept."""

    def __init__(self, size: int = 256, budget: float = COMPILE_BUDGET) -> None:
        self.size = size
        self.budget = budget
        self._items: OrderedDict[str, str | Refusal] = OrderedDict()
        self._lock = threading.Lock()

    def _get(self, key: str) -> str | Refusal | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def _put(self, key: str, value: str | Refusal) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    async def compile(self, schema: dict[str, Any], *, ordered: bool = False) -> str:
        """The grammar for ``schema``, or a 400 naming the limit it passes. ``ordered``: keep
        the schema's own property order (a tool call's ``name`` before its ``arguments``)
        rather than the canonical, sorted one."""
        key = check_schema(schema)
        if ordered:
            key = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
        found = self._get(key)
        if found is None:
            try:
                async with asyncio.timeout(self.budget):
                    found = await asyncio.to_thread(convert, key)
            except TimeoutError:
                raise _refused(
                    f"it took longer than {self.budget:g} seconds to compile. Simplify it."
                ) from None
            self._put(key, found)
        if isinstance(found, Refusal):
            raise found.error()
        return found
