"""The worker's incremental state writes (``FeatureState.bucket_changes``, ``seen_changes``): after every batch,
idle advance and rule reload, the bucket fields in Redis are exactly those a full rewrite of the in-memory state
would store — same names, same bytes, none left over — and the dedup ids loaded from their fields are exactly those a
whole core would hold, in the same order; against a real redis-server.

Short windows make buckets expire within the stream (a 5-minute window keeps 6 minute buckets), so writes both
add and delete fields; random batch sizes put expiries, new buckets and late events at every position of a batch.
"""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest
import redis.asyncio as aioredis

from rules.engine import Engine
from rules.events import EventParser, Pseudonymizer
from rules.loader import load_rules_text
from rules.state import FeatureState
from streams.kafka.topics import Topics
from streams.live.processor import Message, Processor
from streams.live.store import RedisStore
from streams.offline.scenario import generate, scenario_from_args

KEY = b"state-key-0123456789"

RULES = """
version: 1
name: short
features: ["*"]
rules:
  - {id: errors, tier: pause, metric: error_rate, op: ">", threshold: 0.5, window: 5m, every: 1m, min_samples: 5}
  - {id: p95, tier: investigate, metric: latency_p95, op: ">", threshold: 9000, window: 10m, every: 2m,
     group_by: [platform], min_samples: 5}
  - {id: users, tier: investigate, metric: active_users, op: "<", threshold: 0, window: 20m, every: 10m}
  - {id: drift, tier: investigate, drift: {detector: page_hinkley, signal: latency_ms, params: {threshold: 50000}},
     every: 1m}
"""
# the reload drops the grouped store and keeps the others: its fields must go
RELOADED = RULES.split("  - {id: p95")[0] + RULES.split("group_by: [platform], min_samples: 5}\n")[1]


class Sink:
    async def publish(self, records, headers=None) -> None:  # noqa: ARG002
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _messages(feedback_lag_ms: int = 0) -> list[Message]:
    evs = list(generate(scenario_from_args("latency_spike", duration_ms="3h", seed=11, mean_rate_per_s="2")))
    offs = {"in": 0, "fb": 0}
    out = []
    for e in evs:
        t = "in" if e["type"] == "interaction" else "fb"
        if t == "fb":  # a feedback stream behind: the ids kept (above every source's late bound) reach further back
            e = {**e, "ts": e["ts"] - feedback_lag_ms}  # than the watermark up to which expiry prunes them
        out.append(Message(t, 0, offs[t], orjson.dumps(e)))
        offs[t] += 1
    return out


async def _check(p: Processor, r: aioredis.Redis, ns: str) -> int:
    """Every written feature's stored bucket fields against a full rewrite of its in-memory state; returns how many
    fields were compared."""
    n = 0
    recs = await RedisStore(r, ns).load(sorted(p.cache))
    for f in sorted(p.cache):
        fs = p.engine.features.get(f)
        if fs is None:
            continue
        want, present = fs.bucket_fields(p.engine.plan, None)
        got = recs[f].buckets
        assert set(got) == present, (f, sorted(set(got) ^ present)[:5])
        assert got == want, f
        assert p.cache[f].stored.buckets == present
        # dedup ids: those a whole core would hold (at or above the floor), from the id fields, in arrival order
        assert set(recs[f].ids) == set(p.cache[f].stored.ids)
        loaded = FeatureState.from_parts(recs[f].core, got, p.engine.plan, KEY, recs[f].ids)
        assert loaded.seen == fs.core_state(KEY, p.engine.config.allowed_lateness_ms)["seen"], f
        n += len(got) + len(loaded.seen)
    return n


@pytest.mark.parametrize("feedback_lag_ms", [0, 20 * 60_000])
def test_after_every_write_redis_holds_exactly_the_buckets_in_memory(stack, redis_client, feedback_lag_ms):
    msgs = _messages(feedback_lag_ms)
    rng = random.Random(4)

    async def go() -> tuple[int, int, int]:
        r = aioredis.Redis.from_url(stack.redis_url)
        clock = Clock()
        p = Processor(Engine(load_rules_text(RULES)), RedisStore(r, "inc"), EventParser(Pseudonymizer(b"u" * 20)),
                      Sink(), topics=Topics(), detector_key=KEY, clock=clock)  # fmt: skip
        i, checked, deleted, writes, ids_deleted = 0, 0, 0, 0, 0
        orig_write = p._write

        def spy(f, offsets, since):
            nonlocal deleted, writes, ids_deleted
            w, stored = orig_write(f, offsets, since)
            deleted += len(w.deleted)
            ids_deleted += len(w.ids_deleted)
            writes += 1
            return w, stored

        p._write = spy
        reloaded = False
        while i < len(msgs):
            n = rng.choice([1, 2, 7, 40, 150, 300])
            await p.process(msgs[i : i + n])
            i += n
            checked += await _check(p, r, "inc")
            if not reloaded and i > len(msgs) // 2:
                await p.reload(load_rules_text(RELOADED))
                reloaded = True
                checked += await _check(p, r, "inc")
        clock.now += 3600  # a silent hour: the idle advance expires what the windows no longer hold
        assert await p.idle_tick(60) > 0
        checked += await _check(p, r, "inc")
        await r.aclose()
        return checked, deleted, writes, ids_deleted

    checked, deleted, writes, ids_deleted = asyncio.run(go())
    assert writes > 200 and deleted > 200 and ids_deleted > 100 and checked > 3000, (writes, deleted, ids_deleted,
                                                                                    checked)  # fmt: skip


def test_dedup_ids_stored_in_the_core_by_the_previous_version_load_and_move_to_their_fields(stack, redis_client):
    """A Redis written before the id fields (the core held the ids, rewritten whole at every write): a worker loads
    the ids from the core, stores them in an id field at its next write, and ends where an uninterrupted run ends."""
    msgs = _messages()[:6000]

    def new_processor(r, ns):
        return Processor(Engine(load_rules_text(RULES)), RedisStore(r, ns), EventParser(Pseudonymizer(b"u" * 20)),
                         Sink(), topics=Topics(), detector_key=KEY)  # fmt: skip

    async def stored(r, ns):
        rec = (await RedisStore(r, ns).load(["email-reply"]))["email-reply"]
        return FeatureState.from_parts(rec.core, rec.buckets, Engine(load_rules_text(RULES)).plan, KEY, rec.ids), rec

    async def go():
        r = aioredis.Redis.from_url(stack.redis_url)
        ref = new_processor(r, "ids-ref")
        for i in range(0, len(msgs), 500):
            await ref.process(msgs[i : i + 500])
        old = new_processor(r, "ids-old")
        for i in range(0, 3000, 500):
            await old.process(msgs[i : i + 500])
        store = RedisStore(r, "ids-old")
        fs = old.engine.features["email-reply"]
        core = fs.core_state(KEY, old.engine.config.allowed_lateness_ms)  # the previous format: ids in the core
        assert core["seen"]
        await r.hset(store.core_key("email-reply"), "state", orjson.dumps(core))
        await r.delete(store.ids_key("email-reply"))
        loaded, _ = await stored(r, "ids-old")
        assert loaded.seen == core["seen"]
        new = new_processor(r, "ids-old")
        for i in range(3000, len(msgs), 500):
            await new.process(msgs[i : i + 500])
        after, rec = await stored(r, "ids-old")
        want, _ = await stored(r, "ids-ref")
        await r.aclose()
        return after, rec, want

    after, rec, want = asyncio.run(go())
    assert rec.ids and rec.core["seen"] == {}
    assert after.to_state(KEY) == want.to_state(KEY)
