"""Starting a live worker: pre-flight checks (topics, Redis eviction policy), then the Faust worker loop."""

from __future__ import annotations

import asyncio
import logging

from streams.settings import Settings
from streams.topics import Topics, ensure_topics

__all__ = ["run_worker", "preflight"]


def preflight(settings: Settings, create_topics: bool = True) -> None:
    """Fail fast with a clear message: Redis must not evict, topics must exist."""
    import redis.asyncio as aioredis

    from streams.store import RedisStore

    async def check() -> None:
        r = aioredis.Redis.from_url(settings.redis_url)
        try:
            await RedisStore(r, settings.state_namespace).check()
        finally:
            await r.aclose()

    asyncio.run(check())
    if create_topics:
        ensure_topics(settings.kafka_bootstrap, Topics(settings.topic_prefix), settings.partitions)


def run_worker(settings: Settings, create_topics: bool = True, log_level: str = "warning") -> int:
    from faust.worker import Worker as FaustWorker

    from streams.app import Worker

    preflight(settings, create_topics)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    worker = Worker(settings)
    FaustWorker(worker.app, loglevel=log_level, quiet=True).execute_from_commandline()
    return 0
