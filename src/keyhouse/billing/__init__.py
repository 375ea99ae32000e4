"""Money: prices, the ledger, holds and settlements, budgets, usage records.

One job a module, imported downward only:

* ``money``: integer micro-units and ``Prices``; ``names``: the account ids (``bal:…``,
  ``bud:…``) of leases and budgets; ``sql``: the statements SQLite and PostgreSQL spell apart.
* ``holds``: the in-memory types (``Account``, ``Hold``, a ``Queued`` settlement); ``quota``:
  the 429 when credit cannot pay.
* ``ledger``: entries, lots and balances; ``usage``: usage rows, roll-ups, events;
  ``prices``: price versions; ``leases``: leasing, renewing, returning and reaping credit.
* ``flush``: one batch of settlements written in one transaction; ``wallet``: hold and settle
  in memory, flush on a timer and on shutdown (the ``Wallet`` the app runs).
* ``codes`` (redemption codes) and ``reports`` (usage reports, retention) read and write the
  ledger and the roll-ups.
"""
