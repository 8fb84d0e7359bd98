"""Fencing before publishing, deterministically, against a real redis-server (the Kafka side a recording publisher):
a worker whose epoch is older than the feature's owner publishes nothing — not from a batch, not from an idle
tick, not from a reload — and its events are skipped; with the same epoch the newer owner goes on. The live
SIGSTOP/SIGCONT version is tests/test_fencing_live.py."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from streams.live.store import RedisStore
from tests.test_store import MSGS, RULESETS, processor, run


def test_a_zombie_with_an_older_epoch_publishes_nothing(stack, redis_client):
    async def go():
        store = RedisStore(aioredis.Redis.from_url(stack.redis_url), "epochs")
        zombie, owner = processor(stack.redis_url, "epochs"), processor(stack.redis_url, "epochs")
        await zombie.reassigned(await store.new_epoch())
        await run(zombie, MSGS[:1000], 500)
        published_before = len(zombie.publisher.records)
        assert zombie.stats.fenced == 0
        # the partition moves: the new owner takes a newer epoch and goes on (it claims the feature at load)
        await owner.reassigned(await store.new_epoch())
        await run(owner, MSGS[1000:1500], 500)
        # the zombie wakes: an idle tick, a reload and a batch of later events — nothing is published
        assert await zombie.idle_tick(0) == 0
        await zombie.reload(RULESETS)
        await zombie.process(MSGS[1500:1700])
        assert len(zombie.publisher.records) == published_before
        assert zombie.fenced == {"email-reply"} and zombie.stats.skipped_fenced > 0
        assert "email-reply" not in zombie.engine.features
        # the owner, unaware of any of it, continues without being fenced and processes those events itself
        await run(owner, MSGS[1500:1700], 200)
        assert owner.stats.fenced == 0 and owner.stats.events == 700 and owner.stats.skipped_fenced == 0
        # after a new assignment the zombie (now a member again) may own the feature anew
        await zombie.reassigned(await store.new_epoch())
        await zombie.process(MSGS[1700:1800])
        assert zombie.fenced == set() and "email-reply" in zombie.engine.features
        await store.r.aclose()

    asyncio.run(go())

