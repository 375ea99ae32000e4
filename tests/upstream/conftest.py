"""Fake upstreams for the upstream and routing tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.upstream.fake import FakeUpstream, Running


@pytest.fixture
def upstreams() -> Iterator[Callable[..., FakeUpstream]]:
    """Start fake upstreams on demand: ``upstreams(name="a", keys={...})``."""
    running: list[Running] = []

    def start(**options: object) -> FakeUpstream:
        fake = FakeUpstream(**options)  # type: ignore[arg-type]
        running.append(Running(fake))
        return fake

    yield start
    for server in running:
        server.stop()


@pytest.fixture
def fake(upstreams: Callable[..., FakeUpstream]) -> FakeUpstream:
    return upstreams()
