"""Function calling on a local model: tools into the prompt, a grammar for the call, and the
generated text back into OpenAI's ``tool_calls``.

The model writes a call as one JSON object, ``{"name": "<function>", "arguments": {…}}``,
constrained by a grammar built from the functions' own ``parameters`` schemas (bounded by
``schema_bounds`` and compiled through ``grammar.GrammarCache`` like a ``response_format``), so
the arguments always parse and fit. ``required`` and a named function make
that object the whole grammar. ``auto`` is decided by the deployment's ``auto_tools`` setting:

- ``"model"``: the grammar adds one alternative, free text that does not begin with ``{``. The
  first character decides, by the model's own preference: ``{`` commits it to a call the
  grammar carries to the end (names and argument types included); anything else is an
  ordinary answer. No marker the model was never trained on, no second pass; a text answer
  loses only the rare reply that would begin with ``{``. Right for a model that can judge.
- ``"turn"`` (the default): the conversation's last turn decides. After tool results (a last
  ``tool`` message) the model answers in text; after anything else it calls. Chosen for the
  bundled SmolLM2-135M, measured at temperature 0 with the tools described: it opened no call
  for any of seven prompts that plainly asked for the tool ("Call get_weather for Paris."
  got Python), and it called the weather function again once given its result. Left to
  choose, it would break every agent loop both ways; decided by the turn, an agent's
  call → result → answer runs end to end. The price: a question that needs no tool still gets
  a call while tools are offered (send ``tool_choice: "none"`` for such turns).

The local model makes at most one call per turn (``parallel_tool_calls`` allows more; it does
not require them).

Templates with their own tool format (``tools`` in the GGUF's chat template) get the tools and
the tool messages as the template expects; the rest get a plain system-prompt description, the
calls written back as the JSON the model produces, and tool results as user turns.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from keyhouse.backends.base import TextDelta, ToolCallDelta
from keyhouse.backends.local.schema_bounds import check_schema
from keyhouse.errors import InvalidRequest
from keyhouse.ids import random_base62

Mode = Literal["auto", "required"]

#: The free-text alternative of ``auto``: empty, or any text whose first character is not ``{``.
TEXT_RULE = "text ::= ([^{] [^\\x00]*)?"


def new_call_id() -> str:
    return "call_" + random_base62(24)


@dataclass(frozen=True)
class Function:
    name: str
    description: str
    parameters: dict[str, Any]


def functions(tools: list[dict[str, Any]]) -> list[Function]:
    """The request's tools, checked as OpenAI checks them (type, name, parameters)."""
    out: list[Function] = []
    for i, tool in enumerate(tools):
        kind = tool.get("type")
        if kind != "function":
            raise InvalidRequest(
                f"Invalid value: '{kind}'. Supported values are: 'function'.",
                param=f"tools[{i}].type",
                code="invalid_value",
            )
        fn = tool.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
            raise InvalidRequest(
                f"Invalid 'tools[{i}].function.name': a function name must be 1 to 64 "
                "letters, digits, underscores or dashes.",
                param=f"tools[{i}].function.name",
                code="invalid_value",
            )
        assert isinstance(fn, dict)
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}, "additionalProperties": False}
        if not isinstance(params, dict):
            raise InvalidRequest(
                f"Invalid type for 'tools[{i}].function.parameters': expected an object.",
                param=f"tools[{i}].function.parameters",
                code="invalid_type",
            )
        where = f"tools[{i}].function.parameters"
        try:
            check_schema(params)
        except InvalidRequest as exc:
            raise InvalidRequest(
                exc.message.replace("response_format", f"'{where}'"), param=where, code=exc.code
            ) from None
        description = fn.get("description")
        out.append(Function(name, description if isinstance(description, str) else "", params))
    names = [f.name for f in out]
    if len(set(names)) != len(names):
        raise InvalidRequest(
            "Invalid 'tools': function names must be unique.", param="tools", code="invalid_value"
        )
    return out


def mode(tool_choice: str | dict[str, Any] | None, fns: list[Function]) -> tuple[str, str | None]:
    """("auto" | "required" | "none", the one function a named choice forces)."""
    if tool_choice is None:
        return ("auto" if fns else "none"), None
    if isinstance(tool_choice, str):
        if tool_choice not in ("auto", "none", "required"):
            raise InvalidRequest(
                f"Invalid value: '{tool_choice}'. Supported values are: 'none', 'auto' and "
                "'required'.",
                param="tool_choice",
                code="invalid_value",
            )
        return tool_choice, None
    fn = tool_choice.get("function")
    name = fn.get("name") if isinstance(fn, dict) else None
    if tool_choice.get("type") != "function" or not isinstance(name, str):
        raise InvalidRequest(
            "Invalid 'tool_choice': expected 'none', 'auto', 'required' or "
            '{"type": "function", "function": {"name": …}}.',
            param="tool_choice",
            code="invalid_value",
        )
    if name not in {f.name for f in fns}:
        raise InvalidRequest(
            f"Invalid 'tool_choice': function '{name}' is not among the 'tools'.",
            param="tool_choice",
            code="invalid_value",
        )
    return "required", name


# ----------------------------------------------------------------------------- grammar


def _moved_refs(node: Any, prefix: str, defs: dict[str, str]) -> Any:
    """A copy of ``node`` with its local ``$ref``s pointing where the schema now lives."""
    if isinstance(node, list):
        return [_moved_refs(item, prefix, defs) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str) and value.startswith("#"):
            path = value[1:]
            for section in ("/$defs/", "/definitions/"):
                if path.startswith(section):
                    head, _, rest = path[len(section) :].partition("/")
                    if head in defs:
                        value = f"#/$defs/{defs[head]}" + (f"/{rest}" if rest else "")
                        break
            else:
                value = f"#/$defs/{prefix}{path}"
            out[key] = value
        elif key in ("$defs", "definitions"):
            continue
        else:
            out[key] = _moved_refs(value, prefix, defs)
    return out


def call_schema(fns: list[Function]) -> dict[str, Any]:
    """One JSON schema for "a call of one of these functions": each function's parameters
    moved into ``$defs`` (its own ``$defs`` renamed), so that their ``$ref``s and rule names
    cannot collide."""
    root_defs: dict[str, Any] = {}
    calls: list[dict[str, Any]] = []
    for i, fn in enumerate(fns):
        prefix = f"f{i}"
        own: dict[str, Any] = {}
        for section in ("$defs", "definitions"):
            found = fn.parameters.get(section)
            if isinstance(found, dict):
                own.update(found)
        renamed = {name: f"{prefix}-{name}" for name in own}
        for name, sub in own.items():
            root_defs[renamed[name]] = _moved_refs(sub, prefix, renamed)
        root_defs[prefix] = _moved_refs(fn.parameters, prefix, renamed)
        calls.append(
            {
                "type": "object",
                "properties": {
                    "name": {"const": fn.name},
                    "arguments": {"$ref": f"#/$defs/{prefix}"},
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    schema: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return {**schema, "$defs": root_defs}


def with_text(grammar: str) -> str:
    """A call grammar (its top rule ``root``) with ``auto``'s free-text alternative."""
    lines = grammar.splitlines()
    out = [
        ("call ::= " + line[len("root ::= ") :]) if line.startswith("root ::= ") else line
        for line in lines
    ]
    return "\n".join([*out, "root ::= call | text", TEXT_RULE])


# ----------------------------------------------------------------------------- prompts


def template_speaks_tools(template: str) -> bool:
    return "tools" in template


def describe(fns: list[Function]) -> str:
    lines = ["You can call these functions:"]
    for fn in fns:
        lines.append(
            f"- {fn.name}: {fn.description or 'no description'} Parameters (JSON schema): "
            + json.dumps(fn.parameters, ensure_ascii=False)
        )
    lines.append(
        'To call a function, reply with only a JSON object: {"name": <the function\'s name>, '
        '"arguments": <its arguments, as an object>}. Otherwise answer in plain text.'
    )
    return "\n".join(lines)


def _call_text(call: dict[str, Any]) -> str:
    fn = call.get("function") or {}
    arguments = fn.get("arguments", "{}")
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        parsed = arguments
    return json.dumps({"name": fn.get("name"), "arguments": parsed}, ensure_ascii=False)


def plain_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> list[dict[str, str]]:
    """Messages for a template with no tool format: the tools described in the system prompt,
    calls written as the JSON the model writes, tool results as user turns."""
    names: dict[str, str] = {}
    out: list[dict[str, str]] = []
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        calls = message.get("tool_calls")
        if role == "assistant" and calls:
            for call in calls:
                names[str(call.get("id"))] = str((call.get("function") or {}).get("name"))
            written = "\n".join(_call_text(call) for call in calls)
            out.append(
                {"role": "assistant", "content": f"{content}\n{written}" if content else written}
            )
        elif role == "tool":
            name = names.get(str(message.get("tool_call_id")), "the function")
            out.append({"role": "user", "content": f"The function {name} returned: {content}"})
        else:
            out.append({"role": role, "content": content})
    if tools:
        text = describe(functions(tools))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + text}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


# ----------------------------------------------------------------------------- output

_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')


@dataclass
class CallParser:
    """One choice's generated text → text deltas, or a tool call's header and argument
    fragments. The grammar guarantees the shape; this only finds where its parts are."""

    index: int
    mode: Mode
    state: Literal["undecided", "text", "head", "arguments", "after"] = "undecided"
    buffer: str = ""
    call_id: str = field(default_factory=new_call_id)
    depth: int = 0
    in_string: bool = False
    escaped: bool = False

    def feed(self, text: str) -> list[TextDelta | ToolCallDelta]:
        if self.state == "text":
            return [TextDelta(self.index, text)] if text else []
        if self.state == "after":
            return []
        self.buffer += text
        if self.state == "undecided":
            stripped = self.buffer.lstrip()
            if not stripped:
                return []
            if stripped[0] != "{" and self.mode == "auto":
                self.state = "text"
                out, self.buffer = self.buffer, ""
                return [TextDelta(self.index, out)]
            self.state = "head"
        out: list[TextDelta | ToolCallDelta] = []
        if self.state == "head":
            match = _HEAD.match(self.buffer)
            if match is None:
                return []
            name = json.loads(f'"{match.group(1)}"')
            out.append(ToolCallDelta(self.index, 0, self.call_id, name, ""))
            self.buffer = self.buffer[match.end() :]
            self.state = "arguments"
        if self.state == "arguments":
            fragment, self.buffer = self._arguments(self.buffer), ""
            if fragment:
                out.append(ToolCallDelta(self.index, 0, None, None, fragment))
        return out

    def _arguments(self, text: str) -> str:
        """The part of ``text`` that belongs to the arguments object (it ends where its
        braces balance)."""
        for i, ch in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
                continue
            if ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.state = "after"
                    return text[: i + 1]
        return text

    def finish(self, reason: str) -> list[TextDelta | ToolCallDelta]:
        """The last delta: ``tool_calls`` when a call was made; what the buffer still held."""
        out: list[TextDelta | ToolCallDelta] = []
        if self.state in ("undecided",) and self.buffer:
            out.append(TextDelta(self.index, self.buffer))
        called = self.state in ("arguments", "after", "head")
        if called and reason == "stop":
            reason = "tool_calls"
        out.append(TextDelta(self.index, "", None, reason))
        return out
