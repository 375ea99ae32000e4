"""Members: who may hold keys (sign-up and verification come later)."""
