"""Function calling on the local model, piece by piece: the call schema built from the tools,
the prompt without a template tool format, the parser of generated calls, and the ``auto``
grammar (the ``"model"`` setting) on the bundled model."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest

from keyhouse.backends.base import TextDelta, ToolCallDelta
from keyhouse.backends.local import tools
from keyhouse.backends.local.grammar import GrammarCache
from keyhouse.backends.local.llama import GenerateJob, LlamaRunner
from keyhouse.errors import InvalidRequest
from tests.backends.conftest import generate

ITEM = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def tool(name: str, parameters: dict | None = None) -> dict:  # type: ignore[type-arg]
    fn: dict = {"name": name}  # type: ignore[type-arg]
    if parameters is not None:
        fn["parameters"] = parameters
    return {"type": "function", "function": fn}


def test_call_schema_keeps_each_functions_refs_apart() -> None:
    """Two functions with a ``$defs`` entry of the same name: each call validates against its
    own (the converter names rules by a ref's last part, so they are renamed apart)."""
    a = {"type": "object", "properties": {"x": {"$ref": "#/$defs/Item"}}, "$defs": {"Item": ITEM}}
    b_item = {"type": "string"}
    b = {"type": "object", "properties": {"x": {"$ref": "#/$defs/Item"}}, "$defs": {"Item": b_item}}
    schema = tools.call_schema(tools.functions([tool("a", a), tool("b", b)]))
    jsonschema.validate({"name": "a", "arguments": {"x": {"n": 1}}}, schema)
    jsonschema.validate({"name": "b", "arguments": {"x": "s"}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "a", "arguments": {"x": "s"}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "c", "arguments": {}}, schema)
    grammar = asyncio.run(GrammarCache().compile(schema, ordered=True))
    assert "f0-Item ::= " in grammar  # a's Item, an object
    assert "f1-x ::= string" in grammar  # b's Item, a string: not a's


def test_a_function_without_parameters_takes_an_empty_object() -> None:
    schema = tools.call_schema(tools.functions([tool("now")]))
    jsonschema.validate({"name": "now", "arguments": {}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "now", "arguments": {"x": 1}}, schema)


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(InvalidRequest) as refused:
        tools.functions([tool("f"), tool("f")])
    assert refused.value.param == "tools"


def test_parser_streams_a_call_in_pieces() -> None:
    parser = tools.CallParser(0, "required")
    text = '{"name": "get_weather", "arguments": {"city": "Pa{ris\\"", "n": [1, {"a": 2}]}}'
    out: list[TextDelta | ToolCallDelta] = []
    for i in range(0, len(text), 3):  # three characters at a time, as tokens come
        out += parser.feed(text[i : i + 3])
    out += parser.finish("stop")
    head, *rest = out
    assert isinstance(head, ToolCallDelta) and head.name == "get_weather" and head.id
    fragments = [e for e in rest if isinstance(e, ToolCallDelta)]
    assert all(f.id is None and f.name is None for f in fragments)
    arguments = "".join(f.arguments for f in fragments)
    assert json.loads(arguments) == {"city": 'Pa{ris"', "n": [1, {"a": 2}]}
    last = out[-1]
    assert isinstance(last, TextDelta) and last.finish_reason == "tool_calls"


def test_parser_in_auto_passes_text_through() -> None:
    parser = tools.CallParser(0, "auto")
    out = parser.feed("  ") + parser.feed("Hello") + parser.finish("stop")
    assert "".join(e.text for e in out if isinstance(e, TextDelta)) == "  Hello"
    assert out[-1].finish_reason == "stop"  # type: ignore[union-attr]


def test_plain_messages_describe_tools_and_carry_calls_and_results() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "cold"},
    ]
    out = tools.plain_messages(messages, [tool("get_weather", ITEM)])
    assert out[0]["role"] == "system"
    assert out[0]["content"].startswith("Be brief.") and "get_weather" in out[0]["content"]
    assert json.loads(out[2]["content"]) == {"name": "get_weather", "arguments": {"city": "Oslo"}}
    assert out[3] == {"role": "user", "content": "The function get_weather returned: cold"}


def test_auto_grammar_gives_text_or_a_call_that_fits(llama: LlamaRunner) -> None:
    """``auto_tools = "model"``: whatever the model chooses, the output is one of the two."""
    fns = tools.functions([tool("get_weather", ITEM)])
    grammar = tools.with_text(
        asyncio.run(GrammarCache().compile(tools.call_schema(fns), ordered=True))
    )
    for question in ("What is the weather in Paris?", "Tell me a joke."):
        job = GenerateJob(
            messages=[{"role": "user", "content": question}],
            tools=[tool("get_weather", ITEM)],
            grammar=grammar,
            grammar_until_text=True,
            temperature=0,
            max_tokens=24,
        )
        text = generate(llama, job).text()
        if text.lstrip().startswith("{"):
            call = json.loads(text)
            assert call["name"] == "get_weather"
            jsonschema.validate(call["arguments"], ITEM)
        else:
            assert text


def test_a_template_with_a_tool_format_gets_the_tools_as_they_are(llama: LlamaRunner) -> None:
    """A GGUF whose template reads ``tools`` renders them, the calls and the results itself."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = (
        "{% for t in tools %}[TOOL {{ t.function.name }}]{% endfor %}"
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
        "{% for c in m.tool_calls or [] %}[CALL {{ c.function.name }}]{% endfor %}{% endfor %}"
    )
    messages = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c1", "function": {"name": "get_weather", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "cold"},
    ]
    saved = llama.formatter, llama.speaks_tools
    llama.formatter = Jinja2ChatFormatter(template=template, eos_token="", bos_token="")
    llama.speaks_tools = tools.template_speaks_tools(template)
    try:
        ids = llama.chat_prompt(messages, [tool("get_weather", ITEM)])
    finally:
        llama.formatter, llama.speaks_tools = saved
    text = llama.llm.detokenize(ids).decode()
    assert "[TOOL get_weather]<user>Weather?<assistant>[CALL get_weather]<tool>cold" in text
