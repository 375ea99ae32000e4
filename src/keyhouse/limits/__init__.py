"""Rate limits: the rules, the limiter, and its stores (in-process, Redis)."""
