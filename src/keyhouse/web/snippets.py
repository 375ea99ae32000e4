""" "Copy as": one ``/v1`` call written as curl, Python (current and legacy SDK) and JavaScript.

Pure functions of the call and the server's base URL, shared by the quick start (the seed's
two snippets with this server's URL) and the API tester (whatever was composed). The key is
never written into a snippet: each reads ``OPENAI_API_KEY`` from the environment, as the
seed does, and the curl snippet begins with the seed's ``export`` line (the key, when the
caller gives one, else a placeholder).
"""

from __future__ import annotations

import json
import keyword
import re
from dataclasses import dataclass, field
from typing import Any

#: The seed's example request (SEED.md, section 3).
SEED_BODY: dict[str, Any] = {
    "model": "gpt-3.5-turbo",
    "messages": [{"role": "user", "content": "Say this is a test!"}],
}
PLACEHOLDER_KEY = "your_api_key_here"
LANGUAGES = ("curl", "python", "python-legacy", "javascript")
SHELL_SAFE = re.compile(r"^[A-Za-z0-9_\-./:@%+=,~]+$")


@dataclass(frozen=True)
class Call:
    """One request to the ``/v1`` surface."""

    method: str = "POST"
    #: From the server's root, e.g. ``/v1/chat/completions`` (a query string may follow).
    path: str = "/v1/chat/completions"
    body: dict[str, Any] | None = field(default_factory=lambda: dict(SEED_BODY))

    @property
    def streams(self) -> bool:
        return bool(self.body and self.body.get("stream"))

    @property
    def api_path(self) -> str:
        """The path below ``/v1`` (what the SDKs add to their base URL)."""
        return self.path[3:] if self.path.startswith("/v1/") else self.path


def base_of(public_url: str) -> str:
    return public_url.rstrip("/")


def dumps(body: Any) -> str:
    """JSON as the seed writes it: one line, ``", "`` and ``": "``, text kept as typed."""
    return json.dumps(body, ensure_ascii=False, separators=(", ", ": "))


def shell_quote(text: str) -> str:
    if SHELL_SAFE.match(text):
        return text
    return "'" + text.replace("'", "'\\''") + "'"


def curl(public_url: str, call: Call, key: str | None = None) -> str:
    """The seed's curl: ``--http1.1``, the key from ``$OPENAI_API_KEY``."""
    lines = [f"export OPENAI_API_KEY={shell_quote_double(key or PLACEHOLDER_KEY)}"]
    first = "curl --http1.1"
    if call.streams:
        first += " -N"
    if call.method.upper() not in ("GET", "POST") or (call.method.upper() == "GET" and call.body):
        first += f" -X {call.method.upper()}"
    if call.body is not None and call.method.upper() != "GET":
        first += ' -H "Content-Type: application/json"'
    first += ' -H "Authorization: Bearer $OPENAI_API_KEY"'
    parts = [first]
    if call.body is not None and call.method.upper() != "GET":
        parts.append(f"  -d {shell_quote(dumps(call.body))}")
    parts.append(f"  {shell_quote(base_of(public_url) + call.path)}")
    return "\n".join(lines) + "\n" + " \\\n".join(parts) + "\n"


def shell_quote_double(text: str) -> str:
    """``"text"`` for the export line, as the seed writes it, escaped for the shell."""
    return '"' + re.sub(r'(["\\$`])', r"\\\1", text) + '"'


# ----------------------------------------------------------------------------- Python


def py(value: Any, indent: int = 0) -> str:
    """A Python literal for a JSON value, laid out over lines like the seed's snippet."""
    pad = "    " * (indent + 1)
    end = "    " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        if all(not isinstance(v, dict | list) for v in value.values()):
            inline = "{" + ", ".join(f"{py(k)}: {py(v)}" for k, v in value.items()) + "}"
            if len(inline) <= 72:
                return inline
        items = [
            f"{pad}{json.dumps(k, ensure_ascii=False)}: {py(v, indent + 1)}"
            for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + ",\n" + end + "}"
    if isinstance(value, list):
        if not value:
            return "[]"
        if all(not isinstance(v, dict | list) for v in value):
            return "[" + ", ".join(py(v) for v in value) + "]"
        return "[\n" + ",\n".join(pad + py(v, indent + 1) for v in value) + ",\n" + end + "]"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if value is None:
        return "None"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value)


def kwargs(body: dict[str, Any] | None, indent: int = 1, *, legacy: bool = False) -> str:
    """``name=value`` arguments, one a line. A name that is not an identifier goes in
    ``extra_body`` (current SDK) or ``**{…}`` (the legacy SDK sends every keyword as is)."""
    if not body:
        return ""
    pad = "    " * indent
    plain = {k: v for k, v in body.items() if k.isidentifier() and not keyword.iskeyword(k)}
    odd = {k: v for k, v in body.items() if k not in plain}
    lines = [f"{pad}{k}={py(v, indent)}," for k, v in plain.items()]
    if odd:
        lines.append(
            f"{pad}**{py(odd, indent)}," if legacy else f"{pad}extra_body={py(odd, indent)},"
        )
    return "\n" + "\n".join(lines) + "\n"


#: (method, path below /v1) → (SDK call, how to print the result).
CURRENT = {
    ("POST", "/chat/completions"): (
        "client.chat.completions.create",
        "print(response.choices[0].message.content)",
        "for chunk in response:\n"
        "    if chunk.choices:\n"
        '        print(chunk.choices[0].delta.content or "", end="", flush=True)\n'
        "print()",
    ),
    ("POST", "/completions"): (
        "client.completions.create",
        "print(response.choices[0].text)",
        "for chunk in response:\n"
        "    if chunk.choices:\n"
        '        print(chunk.choices[0].text, end="", flush=True)\n'
        "print()",
    ),
    ("POST", "/embeddings"): (
        "client.embeddings.create",
        "print(len(response.data), len(response.data[0].embedding))",
        None,
    ),
    ("POST", "/responses"): (
        "client.responses.create",
        "print(response.output_text)",
        "for event in response:\n"
        '    if event.type == "response.output_text.delta":\n'
        '        print(event.delta, end="", flush=True)\n'
        "print()",
    ),
    ("GET", "/models"): ("client.models.list", "for model in response:\n    print(model.id)", None),
}


def python(public_url: str, call: Call) -> str:
    """The current ``openai`` SDK (1.x): a client with this server's base URL."""
    head = (
        "import os\n"
        "from openai import OpenAI\n\n"
        f'client = OpenAI(base_url="{base_of(public_url)}/v1", '
        'api_key=os.environ["OPENAI_API_KEY"])\n'
    )
    method = call.method.upper()
    known = CURRENT.get((method, call.api_path))
    if known is not None:
        function, show, show_stream = known
        text = f"response = {function}({kwargs(call.body)})\n"
        return head + text + ((show_stream if call.streams and show_stream else show) + "\n")
    if method == "GET" and call.api_path.startswith("/models/"):
        model = call.api_path[len("/models/") :]
        return head + f"response = client.models.retrieve({py(model)})\nprint(response)\n"
    # Anything else: the SDK's raw request, same auth and retries.
    verb = method.lower()
    body = f", body={py(call.body)}" if call.body is not None and method != "GET" else ""
    return (
        head
        + f"response = client.{verb}({py(call.api_path)}{body}, cast_to=object)\n"
        + "print(response)\n"
    )


LEGACY = {
    ("POST", "/chat/completions"): (
        "openai.ChatCompletion.create",
        "print(response.choices[0].message.content)",
        "for chunk in response:\n"
        '    print(chunk.choices[0].delta.get("content", ""), end="", flush=True)\n'
        "print()",
    ),
    ("POST", "/completions"): (
        "openai.Completion.create",
        "print(response.choices[0].text)",
        'for chunk in response:\n    print(chunk.choices[0].text, end="", flush=True)\nprint()',
    ),
    ("POST", "/embeddings"): (
        "openai.Embedding.create",
        'print(len(response["data"]), len(response["data"][0]["embedding"]))',
        None,
    ),
    ("GET", "/models"): (
        "openai.Model.list",
        'for model in response["data"]:\n    print(model["id"])',
        None,
    ),
}


def python_legacy(public_url: str, call: Call) -> str:
    """The legacy ``openai`` 0.28 SDK, as in the seed, with ``openai.api_base`` set."""
    head = (
        "import os, openai\n"
        'openai.api_key = os.getenv("OPENAI_API_KEY")\n'
        f'openai.api_base = "{base_of(public_url)}/v1"\n'
    )
    method = call.method.upper()
    known = LEGACY.get((method, call.api_path))
    if known is not None:
        function, show, show_stream = known
        return (
            head
            + f"response = {function}({kwargs(call.body, legacy=True)})\n"
            + ((show_stream if call.streams and show_stream else show) + "\n")
        )
    if method == "GET" and call.api_path.startswith("/models/"):
        model = call.api_path[len("/models/") :]
        return head + f'response = openai.Model.retrieve({py(model)})\nprint(response["id"])\n'
    params = f", params={py(call.body)}" if call.body is not None and method != "GET" else ""
    return (
        head
        + "requestor = openai.api_requestor.APIRequestor()\n"
        + f"response, _, _ = requestor.request({py(method.lower())}, {py(call.api_path)}{params})\n"
        + "print(response.data)\n"
    )


# ----------------------------------------------------------------------------- JavaScript


def javascript(public_url: str, call: Call) -> str:
    """``fetch`` (browsers, Node 18+ as an ES module), the key from ``OPENAI_API_KEY``."""
    method = call.method.upper()
    headers = ['    "Authorization": `Bearer ${process.env.OPENAI_API_KEY}`,']
    if call.body is not None and method != "GET":
        headers.insert(0, '    "Content-Type": "application/json",')
    options = [f'  method: "{method}",', "  headers: {", *headers, "  },"]
    if call.body is not None and method != "GET":
        body = json.dumps(call.body, ensure_ascii=False, indent=2).replace("\n", "\n  ")
        options.append(f"  body: JSON.stringify({body}),")
    url = json.dumps(base_of(public_url) + call.path, ensure_ascii=False)
    text = f"const response = await fetch({url}, {{\n" + "\n".join(options) + "\n});\n"
    if call.streams:
        text += (
            "const reader = response.body.getReader();\n"
            "const decoder = new TextDecoder();\n"
            "for (;;) {\n"
            "  const { done, value } = await reader.read();\n"
            "  if (done) break;\n"
            "  process.stdout.write(decoder.decode(value, { stream: true }));\n"
            "}\n"
        )
    else:
        text += "console.log(JSON.stringify(await response.json(), null, 2));\n"
    return text


def snippets(public_url: str, call: Call, key: str | None = None) -> dict[str, str]:
    """All four, by language."""
    return {
        "curl": curl(public_url, call, key),
        "python": python(public_url, call),
        "python-legacy": python_legacy(public_url, call),
        "javascript": javascript(public_url, call),
    }
