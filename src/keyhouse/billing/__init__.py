"""Money: prices, the ledger, holds and settlements, budgets, usage records."""
