"""The words Keyhouse says to people, in English and Simplified Chinese.

Messages are ``str.format`` templates in one flat catalogue per language (``en``, ``zh_cn``),
keyed ``mail.*`` / ``sms.*`` (what is sent), ``error.<code>`` (why a request was refused, one
per machine-readable code) and ``period.*``. English is complete by definition: a key missing in
Chinese falls back to it, a key missing in English is a bug and raises ``KeyError``.
"""

from __future__ import annotations

from collections.abc import Mapping

from keyhouse.i18n import en, zh_cn

LANGUAGES = ("en", "zh-CN")

CATALOGUES: Mapping[str, Mapping[str, str]] = {"en": en.MESSAGES, "zh-CN": zh_cn.MESSAGES}


def _match(tag: str) -> str | None:
    """One language tag to a language we speak, or None."""
    primary = tag.strip().replace("_", "-").lower().split("-")[0]
    if primary == "en":
        return "en"
    if primary == "zh":
        # zh, zh-CN, zh-Hans, zh-SG… and also zh-TW / zh-Hant: Simplified Chinese is the
        # closest we have, and nearer to those readers than English.
        return "zh-CN"
    return None


def pick_language(value: str | None, default: str = "en") -> str:
    """A language we speak from a stored choice ("zh_CN") or an Accept-Language header
    ("zh-CN,zh;q=0.9,en;q=0.8"), best-liked first; ``default`` when nothing matches."""
    if not value:
        return default
    choices: list[tuple[float, int, str]] = []
    for position, item in enumerate(value.split(",")):
        tag, _, params = item.partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, number = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(number)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            choices.append((-quality, position, tag))
    for _, _, tag in sorted(choices):
        language = _match(tag)
        if language is not None:
            return language
    return default


def t(language: str, key: str, **params: object) -> str:
    """The message ``key`` in ``language`` (English if Chinese lacks it), filled with
    ``params``; extra params are ignored, so callers may pass the same set to every key."""
    catalogue = CATALOGUES.get(language) or CATALOGUES[pick_language(language)]
    template = catalogue.get(key)
    if template is None:
        template = en.MESSAGES[key]  # KeyError: no such message at all
    return template.format(**params)


__all__ = ["CATALOGUES", "LANGUAGES", "pick_language", "t"]
