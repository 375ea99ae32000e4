"""The pages' languages: Babel catalogs read from the .po files at start-up, the request's
language in a context variable, and numbers, money and dates formatted for it.

Every ``locales/<locale>/LC_MESSAGES/*.po`` of a locale is read and merged (each area of the
web app keeps its own file; there is no compile step). English is the source language: its
"translation" is the msgid itself. ``tests/web/test_catalog.py`` fails on a msgid that the
Chinese catalog lacks.
"""

from __future__ import annotations

import gettext as _gettext
from contextvars import ContextVar
from datetime import date as Date
from datetime import datetime as DateTime
from decimal import Decimal
from functools import cache
from io import BytesIO
from pathlib import Path
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_date, format_datetime
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal, parse_pattern
from babel.support import Translations

from keyhouse.billing.money import MICRO

LOCALES_DIR = Path(__file__).parent / "locales"
#: Our language tags (keyhouse.i18n.LANGUAGES) and their catalog folder and Babel locale.
CATALOG_DIRS = {"zh-CN": "zh_CN"}
BABEL_LOCALES = {"en": "en", "zh-CN": "zh_Hans_CN"}
LANGUAGE_NAMES = {"en": "English", "zh-CN": "简体中文"}

_language: ContextVar[str] = ContextVar("keyhouse_web_language", default="en")
_timezone: ContextVar[str] = ContextVar("keyhouse_web_timezone", default="UTC")
_currency: ContextVar[str] = ContextVar("keyhouse_web_currency", default="credits")


def merged_catalog(folder: str) -> Catalog:
    """Every .po file of one locale, as one catalog (fuzzy and empty entries left out)."""
    merged = Catalog(locale=folder, domain="keyhouse", fuzzy=False)
    for po in sorted((LOCALES_DIR / folder / "LC_MESSAGES").glob("*.po")):
        with po.open("rb") as handle:
            part = read_po(handle, locale=folder)
        for message in part:
            if not message.id or message.fuzzy:
                continue
            strings = message.string if isinstance(message.string, tuple) else (message.string,)
            if all(strings):
                merged[message.id] = message
    return merged


@cache
def translations(language: str) -> _gettext.NullTranslations:
    """The merged catalog of ``language`` (loaded once per process)."""
    folder = CATALOG_DIRS.get(language)
    if folder is None:
        return _gettext.NullTranslations()
    buffer = BytesIO()
    write_mo(buffer, merged_catalog(folder))
    buffer.seek(0)
    return Translations(buffer, domain="keyhouse")


def load_all() -> None:
    """Read every catalog now (at start-up), so a broken .po file stops the server early."""
    for language in LANGUAGE_NAMES:
        translations(language)


def use(language: str, *, timezone: str = "UTC", currency: str = "credits") -> None:
    """The language (and the organisation's timezone and currency) of the current request."""
    _language.set(language)
    _timezone.set(timezone)
    _currency.set(currency)


def current_language() -> str:
    return _language.get()


def locale() -> Locale:
    return Locale.parse(BABEL_LOCALES.get(_language.get(), "en"))


# ----------------------------------------------------------------------------- gettext


def gettext(message: str) -> str:
    return translations(_language.get()).gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return translations(_language.get()).ngettext(singular, plural, n)


def pgettext(context: str, message: str) -> str:
    return translations(_language.get()).pgettext(context, message)


def npgettext(context: str, singular: str, plural: str, n: int) -> str:
    return translations(_language.get()).npgettext(context, singular, plural, n)


_ = gettext


# ----------------------------------------------------------------------------- formatting


def number(value: int | float | Decimal | None) -> str:
    if value is None:
        return "—"
    return format_decimal(value, locale=locale())


_MONEY = parse_pattern("¤#,##0.00####")
_AMOUNT = parse_pattern("#,##0.00####")


def money(micros: int | None) -> str:
    """Micro-units of the organisation's currency, for people: ISO currencies with their sign,
    anything else ("credits") as a plain amount and the currency's name."""
    if micros is None:
        return "—"
    amount = Decimal(micros) / MICRO
    currency = _currency.get()
    if len(currency) == 3 and currency.isalpha() and currency.isupper():
        # currency_digits=False: the pattern's six decimals, not the currency's two (costs
        # are often fractions of a cent). The patterns are parsed once (a fifth of the time).
        return _MONEY.apply(amount, locale(), currency=currency, currency_digits=False)
    shown = _AMOUNT.apply(amount, locale())
    name = gettext("credits") if currency == "credits" else currency
    return f"{shown} {name}"


def _local(value: DateTime) -> DateTime:
    return value.astimezone(ZoneInfo(_timezone.get()))


def date(value: DateTime | Date | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, DateTime):
        value = _local(value).date()
    return format_date(value, format="medium", locale=locale())


def datetime(value: DateTime | None) -> str:
    if value is None:
        return "—"
    return format_datetime(_local(value), format="medium", locale=locale())
