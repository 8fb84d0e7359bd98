"""Shared fixtures: the real embedded broker (tansu) and Redis server, started once per test session."""

from __future__ import annotations

import itertools

import pytest
from hypothesis.internal.conjecture import providers

from streams.live.embedded import EmbeddedStack

_ns = itertools.count()


def _no_local_constants() -> None:
    """Hypothesis (6.170 here) mixes literal constants found in the source of the *local modules already imported*
    — the product's and the tests' — into what it generates (5 % of draws). So a derandomized test's examples
    changed whenever a number was added anywhere in the product, and with which modules a run had imported (``-k``,
    xdist's split): a coverage claim held in one run and failed in another. Drawing from Hypothesis's own constants
    only makes a test's examples depend on its strategies and seed alone. This replaces a private function of
    Hypothesis: an upgrade that renames it fails here, loudly, instead of bringing the dependence back silently."""
    assert callable(getattr(providers, "_get_local_constants", None)), (
        "hypothesis.internal.conjecture.providers._get_local_constants is gone: find how this Hypothesis version "
        "collects local constants and turn that off again (tests/conftest.py)"
    )
    empty = providers.Constants()
    providers._get_local_constants = lambda: empty


_no_local_constants()


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
