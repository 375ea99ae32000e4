"""The fake upstream fixtures (``fake``, ``upstreams``) live in tests/conftest.py, shared with
the integration tests."""
