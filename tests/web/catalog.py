"""Extract every string the web app shows (templates and web Python, with Babel's own
extractors, as ``pybabel extract`` would) and compare it with the zh_CN catalogs.

``python -m tests.web.catalog`` adds the msgids a catalog lacks to the .po file of their area
(empty: someone must translate them; ``test_catalog`` fails until they do).
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po, write_po

from keyhouse.web import i18n

WEB = Path(i18n.__file__).parent
METHODS = [
    ("**/templates/**.html", "jinja2.ext:babel_extract"),
    ("**.py", "python"),
]
OPTIONS = {"**/templates/**.html": {"trim_blocks": "true", "lstrip_blocks": "true"}}
PLACEHOLDER = re.compile(r"%\((\w+)\)s|\{(\w+)\}")

#: Which catalog file holds the strings of which source (the first match wins).
AREAS = [
    ("templates/auth/", "auth"),
    ("templates/keys/", "keys"),
    ("templates/settings/", "settings"),
    ("templates/usage/", "usage"),
    ("templates/billing/", "usage"),
    ("templates/playground/", "tools"),
    ("templates/tester/", "tools"),
    ("templates/quickstart/", "tools"),
    ("templates/", "frame"),
    ("auth.py", "auth"),
    ("keys.py", "keys"),
    ("settings.py", "settings"),
    ("usage", "usage"),
    ("billing", "usage"),
    ("base.py", "frame"),
    ("i18n.py", "frame"),
    ("", "tools"),
]


def area_of(path: str) -> str:
    for prefix, area in AREAS:
        if path.startswith(prefix) or (prefix and prefix in path):
            return area
    return "tools"


def extract() -> dict[str | tuple[str, ...], list[str]]:
    """Every msgid, with where it was found (path:line)."""
    found: dict[str | tuple[str, ...], list[str]] = defaultdict(list)
    for path, line, message, _comments, context in extract_from_dir(
        str(WEB), METHODS, options_map=OPTIONS
    ):
        if context:
            message = (context, message) if isinstance(message, str) else (context, *message)
        found[message].append(f"{path}:{line}")
    return found


def placeholders(text: str) -> set[str]:
    return {a or b for a, b in PLACEHOLDER.findall(text)}


def main() -> None:
    """Add missing msgids to their area's .po file."""
    merged = i18n.merged_catalog("zh_CN")
    folder = i18n.LOCALES_DIR / "zh_CN" / "LC_MESSAGES"
    added = 0
    for message, where in extract().items():
        msgid = message if isinstance(message, str) else message[0]
        if msgid in merged:
            continue
        area = area_of(where[0])
        po = folder / f"{area}.po"
        if po.exists():
            with po.open("rb") as handle:
                catalog = read_po(handle, locale="zh_CN")
        else:
            catalog = Catalog(locale="zh_CN", project="Keyhouse", domain=area)
        if msgid in catalog:
            continue
        catalog.add(msgid, "")
        with po.open("wb") as handle:
            write_po(handle, catalog, width=100, no_location=True)
        added += 1
    print(f"{added} msgids added", file=sys.stderr)


if __name__ == "__main__":
    main()
