"""The machinery behind declarative settings: a setting is a dataclass field made by ``setting()``.

A field's name gives its TOML key and its ``KEYHOUSE_*`` variable, its type annotation how the
value is read (``int``, ``float``, ``bool``, ``str``, ``Decimal``, ``tuple[str, ...]``,
``tuple[IPNetwork, ...]``, ``Literal[...]`` for a fixed set of words, any of them ``| None``),
and ``setting()`` its default, its help line and its rules. Reading, checking and the documented
tables all come from that one declaration, so a name is written once and the docs cannot drift.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union

from keyhouse.errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """A check on a read value; ``message`` is formatted with the setting's ``name`` and
    ``value``, e.g. ``"{name} must be ≥ 1"``."""

    ok: Callable[[Any], bool]
    message: str


def at_least(minimum: float, message: str = "{name} must be ≥ %s") -> Rule:
    return Rule(lambda v: v >= minimum, message.replace("%s", str(minimum)))


#: 0, a negative number or NaN would turn a background loop into a busy loop.
SECONDS = Rule(lambda v: 0 < v < math.inf, "{name} must be a positive number of seconds")
NON_EMPTY = Rule(lambda v: bool(v.strip()), "{name}: must be a non-empty string")


@dataclass(frozen=True)
class Meta:
    help: str
    rules: tuple[Rule, ...]
    #: How the default reads in the docs, when the value itself would mislead.
    shown_default: str | None


def setting(
    default: Any = MISSING,
    help: str = "",
    *rules: Rule,
    factory: Callable[[], Any] | Any = MISSING,
    secret: bool = False,
    shown_default: str | None = None,
) -> Any:
    """A declared setting: ``port: int = setting(8000, "Where serve listens.", at_least(0))``."""
    return dataclasses.field(
        default=default,
        default_factory=factory,
        repr=not secret,
        metadata={"setting": Meta(help, rules, shown_default)},
    )


# --------------------------------------------------------------------------- reading values

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def coerce(name: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"setting {name!r}: expected true or false, got {value!r}")
    try:
        if kind is int and isinstance(value, str | int) and not isinstance(value, bool):
            return int(value)
        if kind is float and isinstance(value, str | int | float) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
    except ValueError:
        pass
    raise ConfigError(f"setting {name!r}: expected {kind.__name__}, got {value!r}")


def as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    raise ConfigError(f"expected a list or a comma-separated string, got {value!r}")


def decimal(name: str, value: Any) -> Decimal:
    if isinstance(value, float):
        # TOML floats are binary; read their shortest decimal form, never the float itself.
        value = repr(value)
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(f"{name}: not a decimal number: {value!r}") from None
    if not price.is_finite() or price < 0:
        raise ConfigError(f"{name}: must be a finite number ≥ 0, got {value!r}")
    return price


def parse_networks(values: list[str]) -> tuple[IPNetwork, ...]:
    try:
        return tuple(ipaddress.ip_network(v, strict=False) for v in values)
    except ValueError as exc:
        raise ConfigError(f"not a CIDR: {exc}") from None


def one_of(words: tuple[str, ...]) -> str:
    quoted = [f"'{w}'" for w in words]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


@dataclass(frozen=True)
class Declared:
    """One declared setting of a dataclass, its type worked out from the annotation."""

    name: str
    kind: Any
    choices: tuple[str, ...]
    meta: Meta
    default: Any

    def read(self, label: str, value: Any) -> Any:
        kind = self.kind
        if kind is Decimal:
            return decimal(label, value)
        if kind == tuple[str, ...]:
            return tuple(as_list(value))
        if kind == tuple[IPNetwork, ...]:
            return parse_networks(as_list(value))
        return coerce(label, value, kind)

    def check(self, label: str, value: Any) -> None:
        if value is None:
            return
        if self.choices and value not in self.choices:
            raise ConfigError(f"{label} must be {one_of(self.choices)}")
        for rule in self.meta.rules:
            if not rule.ok(value):
                raise ConfigError(rule.message.format(name=label, value=value))


def _unwrap(hint: Any) -> tuple[Any, tuple[str, ...]]:
    """The type a value is read as, and its allowed words for a ``Literal``."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007
    if typing.get_origin(hint) is Literal:
        return str, tuple(typing.get_args(hint))
    return hint, ()


@cache
def declared(cls: type) -> tuple[Declared, ...]:
    """The fields of ``cls`` made by ``setting()``, in declaration order."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("setting")
        if meta is None:
            continue
        kind, choices = _unwrap(hints[f.name])
        default = f.default if f.default is not MISSING else MISSING
        if f.default_factory is not MISSING:
            default = f.default_factory()
        found.append(Declared(f.name, kind, choices, meta, default))
    return tuple(found)


def read_declared(
    cls: type,
    raw: Mapping[str, Any],
    label: str = "",
    env: Mapping[str, str] | None = None,
    env_prefix: str = "KEYHOUSE_",
) -> dict[str, Any]:
    """Values for ``cls``'s declared settings from ``raw`` (a TOML table), the environment's
    ``{env_prefix}{NAME}`` winning when set (even to ""); absent ones are left out."""
    values: dict[str, Any] = {}
    for d in declared(cls):
        value = raw.get(d.name)
        if env is not None:
            value = env.get(f"{env_prefix}{d.name.upper()}", value)
        if value is not None:
            values[d.name] = d.read(f"{label}{d.name}", value)
    return values


def check_declared(obj: Any, label: str = "") -> None:
    """Every declared setting of ``obj`` against its allowed words and rules."""
    for d in declared(type(obj)):
        d.check(f"{label}{d.name}", getattr(obj, d.name))


def names(cls: type) -> frozenset[str]:
    return frozenset(d.name for d in declared(cls))


# --------------------------------------------------------------------------- documentation


def shown(value: Any, toml: bool = False) -> str:
    """A default as the docs show it (TOML-quoted in a section's table)."""
    if value is MISSING or value is None:
        return "–"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    elif isinstance(value, tuple):
        text = "[" + ", ".join(f'"{v}"' for v in value) + "]" if toml else ",".join(map(str, value))
        if not toml and not value:
            return "–"
    elif isinstance(value, str) and toml:
        text = f'"{value}"'
    else:
        text = str(value)
    return f"`{text}`"


@dataclass(frozen=True)
class Row:
    """A documented setting that is not a plain declared field (home, the secrets …)."""

    env: str
    key: str | None
    default: str
    help: str


def rows(cls: type, extra: tuple[Row, ...] = ()) -> Iterator[Row]:
    yield from extra
    for d in declared(cls):
        default = d.meta.shown_default or shown(d.default)
        yield Row(f"KEYHOUSE_{d.name.upper()}", d.name, default, d.meta.help)


def markdown_table(cls: type, extra: tuple[Row, ...] = ()) -> str:
    """The top-level settings as docs/configuration.md shows them."""
    lines = ["| Environment variable | TOML key | Default | What |", "|---|---|---|---|"]
    for row in rows(cls, extra):
        key = f"`{row.key}`" if row.key else "–"
        lines.append(f"| `{row.env}` | {key} | {row.default} | {row.help} |")
    return "\n".join(lines) + "\n"


def section_table(cls: type) -> str:
    """A ``[section]``'s settings as its page shows them (key, TOML default, what)."""
    lines = ["| Setting | Default | What it does |", "|---|---|---|"]
    for d in declared(cls):
        default = d.meta.shown_default or shown(d.default, toml=True)
        lines.append(f"| `{d.name}` | {default} | {d.meta.help} |")
    return "\n".join(lines) + "\n"


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the lines between ``<!-- name:start -->`` and ``<!-- name:end -->``
    replaced by ``body``."""
    start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
    head, found, rest = text.partition(start)
    if not found:
        raise ValueError(f"no {start.strip()} marker")
    _, found, tail = rest.partition(end)
    if not found:
        raise ValueError(f"no {end} marker")
    return head + start + body + end + tail


def write_docs(tables: Mapping[Path, Mapping[str, str]]) -> list[Path]:
    """Rewrite each file's marked blocks; the files that changed."""
    changed = []
    for path, blocks in tables.items():
        text = path.read_text(encoding="utf-8")
        new = text
        for name, body in blocks.items():
            new = replace_block(new, name, body)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    return changed
