"""Backends: where a model's requests go. ``local`` ships with Keyhouse; upstreams come later."""
