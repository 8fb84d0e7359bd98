"""Shared fixtures: the real embedded broker (tansu) and Redis server, started once per test session."""

from __future__ import annotations

import itertools

import pytest

from streams.live.embedded import EmbeddedStack

_ns = itertools.count()


@pytest.fixture(scope="session")
def stack():
    with EmbeddedStack() as s:
        yield s


@pytest.fixture
def topic_prefix() -> str:
    """A fresh topic prefix per test, so tests sharing the broker never see each other's messages."""
    return f"t{next(_ns)}."


@pytest.fixture
def redis_client(stack):
    import redis

    r = redis.Redis.from_url(stack.redis_url)
    r.flushdb()
    yield r
    r.close()
