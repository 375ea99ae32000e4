"""Every string the web app shows has a Simplified Chinese translation, with the same
placeholders; a broken or fuzzy entry counts as missing. Covers every area of the web app
(templates and Python, extracted with Babel as ``pybabel extract`` would).

To add what is missing: ``.venv/bin/python -m tests.web.catalog``, then translate the empty
entries it adds to ``src/keyhouse/web/locales/zh_CN/LC_MESSAGES/<area>.po``.
"""

from __future__ import annotations

from keyhouse.web import i18n
from tests.web.catalog import extract, placeholders


def test_every_string_has_a_chinese_translation() -> None:
    catalog = i18n.merged_catalog("zh_CN")
    found = extract()
    assert len(found) > 100, "the extraction found too little: is the method map right?"
    missing = []
    for message, where in found.items():
        msgid = message if isinstance(message, str) else message[0]
        entry = catalog.get(msgid)
        if entry is None or not entry.string:
            missing.append(f"{msgid!r} ({where[0]})")
    assert not missing, "no zh_CN translation for:\n" + "\n".join(missing)


def test_translations_keep_their_placeholders() -> None:
    catalog = i18n.merged_catalog("zh_CN")
    wrong = [
        f"{m.id!r} -> {m.string!r}"
        for m in catalog
        if m.id and isinstance(m.id, str) and placeholders(m.id) != placeholders(str(m.string))
    ]
    assert not wrong, "placeholders differ:\n" + "\n".join(wrong)


def test_the_pages_render_translated() -> None:
    i18n.use("zh-CN")
    try:
        assert i18n.gettext("API keys") == "API 密钥"
        assert i18n.money(1_500_000).startswith("1.50")
    finally:
        i18n.use("en")
    assert i18n.gettext("API keys") == "API keys"
