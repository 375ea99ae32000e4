"""The import contracts of ``.importlinter`` hold: every import under src/keyhouse runs downward
through the layers, and no modules or packages import each other in a circle.

``make test`` runs ``lint-imports`` too; this test makes any pytest run (CI's) fail the same way.
Break it once by adding ``from keyhouse.api import v1`` to ``backends/base.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from importlinter.cli import lint_imports

import keyhouse

CONFIG = Path(__file__).resolve().parents[1] / ".importlinter"


def test_the_import_contracts_hold(capsys) -> None:
    # The tree under test is the one imported here (PYTHONPATH first, else the installed one).
    assert Path(keyhouse.__file__).resolve().parents[2] == CONFIG.parent, keyhouse.__file__
    # lint_imports configures logging with dictConfig, which disables every logger that exists
    # (keyhouse.api's too): tests after this one would see none of their records.
    loggers = [x for x in logging.root.manager.loggerDict.values() if isinstance(x, logging.Logger)]
    disabled = {logger: logger.disabled for logger in loggers}
    try:
        code = lint_imports(config_filename=str(CONFIG), no_cache=True, no_logo=True)
    finally:
        for logger, was in disabled.items():
            logger.disabled = was
    report = capsys.readouterr().out
    assert code == 0, report
