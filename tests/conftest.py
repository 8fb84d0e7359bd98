"""Shared fixtures: the real embedded broker (tansu) and Redis server, started once per test session."""

from __future__ import annotations

import importlib
import itertools
import pkgutil

import pytest

from streams.live.embedded import EmbeddedStack

_ns = itertools.count()


def _import_the_product() -> None:
    """Import every module of the product before any test runs. Hypothesis mixes constants from the source of the
    local modules already imported into what it generates, so without this the examples of a derandomized test depend
    on which tests ran before it in the process (``-k``, xdist's split): a coverage claim held in one run and failed
    in another."""
    for pkg in ("rules", "detectors", "streams", "dashboards"):
        root = importlib.import_module(pkg)
        for mod in pkgutil.walk_packages(root.__path__, pkg + "."):
            importlib.import_module(mod.name)


_import_the_product()


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
