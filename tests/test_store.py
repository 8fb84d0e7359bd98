"""The Redis state store and the batch processor's exactly-once bookkeeping, against a real redis-server.

The Kafka side is replaced by a list-collecting publisher (these tests are about state and offsets; the live tests
cover the broker)."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import redis.asyncio as aioredis

from rules.engine import Engine
from rules.events import EventParser, Pseudonymizer
from rules.loader import CATALOG, load_rules
from rules.state import FeatureState
from streams.live.processor import Message, Processor
from streams.offline.scenario import generate, scenario_from_args
from streams.settings import Settings
from streams.live.store import RedisStore, StoreError
from streams.kafka.topics import Topics

KEY = b"state-key-0123456789"
RULESETS = load_rules([CATALOG])


class ListPublisher:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes]] = []
        self.fail = 0  # fail the next N publishes

    async def publish(self, records) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("broker unavailable (test)")
        self.records += list(records)


def messages(n_hours: str = "3h", seed: int = 5) -> list[Message]:
    evs = list(generate(scenario_from_args("latency_spike", duration_ms=n_hours, seed=seed)))
    out, offs = [], {"i": 0, "f": 0}
    for e in evs:
        t = "in" if e["type"] == "interaction" else "fb"
        k = t[0]
        out.append(Message(t, 0, offs[k], orjson.dumps(e)))
        offs[k] += 1
    return out


def processor(url: str, ns: str, publisher=None) -> Processor:
    r = aioredis.Redis.from_url(url)
    s = Settings(user_key="u" * 20)
    return Processor(Engine(RULESETS, s.engine_config()), RedisStore(r, ns), EventParser(Pseudonymizer(b"u" * 20)),
                     publisher or ListPublisher(), topics=Topics(), detector_key=KEY, max_backoff_s=0.05)  # fmt: skip


async def run(p: Processor, msgs: list[Message], batch: int) -> None:
    for i in range(0, len(msgs), batch):
        await p.process(msgs[i : i + batch])


async def stored_state(url: str, ns: str, feature: str) -> dict:
    r = aioredis.Redis.from_url(url)
    try:
        recs = await RedisStore(r, ns).load([feature])
    finally:
        await r.aclose()
    rec = recs[feature]
    return FeatureState.from_parts(rec.core, rec.buckets, Engine(RULESETS).plan, KEY, rec.ids).to_state(KEY)


MSGS = messages()


@pytest.mark.parametrize("batch", [1 + 0 * 97, 97, 1000])
def test_incremental_writes_rebuild_exactly_the_in_memory_state(stack, redis_client, batch):
    msgs = MSGS[:3000] if batch == 1 else MSGS

    async def go():
        p = processor(stack.redis_url, "t")
        await run(p, msgs, batch)
        fs = p.engine.features["email-reply"]
        want = fs.to_state(KEY)
        # dedup ids older than every source's late bound are not persisted (any such event is late anyway)
        floor = min(fs.src_max.values()) - p.engine.config.allowed_lateness_ms
        want["seen"] = {i: ts for i, ts in want["seen"].items() if ts >= floor}
        return want

    want = asyncio.run(go())
    assert asyncio.run(stored_state(stack.redis_url, "t", "email-reply")) == want


def test_a_crash_at_any_batch_neither_loses_nor_double_counts(stack, redis_client):
    """Restart from earlier offsets (as after a crash before Kafka's commit): the stored per-feature offsets skip
    what was applied; outputs repeat with the same ids and content; the final state equals an uninterrupted run."""

    async def go():
        ref = processor(stack.redis_url, "ref")
        await run(ref, MSGS, 500)
        crashed_pub = ListPublisher()
        a = processor(stack.redis_url, "crash", crashed_pub)
        await run(a, MSGS[:7000], 500)
        b = processor(stack.redis_url, "crash", crashed_pub)  # a new worker re-reads from an older position
        await run(b, MSGS[4000:], 700)
        return ref, crashed_pub, b

    ref, crashed_pub, b = asyncio.run(go())
    assert b.stats.skipped_replayed > 0
    assert asyncio.run(stored_state(stack.redis_url, "crash", "email-reply")) == asyncio.run(
        stored_state(stack.redis_url, "ref", "email-reply")
    )
    first: dict[bytes, bytes] = {}
    for topic, _, v in crashed_pub.records:
        d = orjson.loads(v)
        rid = (d.get("decision_id") or d.get("command_id") or d.get("dedup_key") + d["event_action"]).encode()
        assert first.setdefault(topic.encode() + rid, v) == v, "same id, different content"
    dedup = list(dict.fromkeys(crashed_pub.records))
    assert dedup == ref.publisher.records


def test_failures_retry_without_losing_the_batch_and_page_degraded_once(stack, redis_client):
    class FlakyStore(RedisStore):
        failures = 3

        async def commit(self, *a, **kw):
            if self.failures:
                self.failures -= 1
                raise ConnectionError("redis unavailable (test)")
            return await super().commit(*a, **kw)

    async def go():
        pub = ListPublisher()
        p = processor(stack.redis_url, "retry", pub)
        p.store = FlakyStore(p.store.r, "retry")
        await run(p, MSGS[:2000], 1000)
        return p, pub

    p, pub = asyncio.run(go())
    pages = [orjson.loads(v) for t, _, v in pub.records if t == Topics().pages]
    degraded = [x for x in pages if x["payload"]["class"] == "monitor-degraded"]
    assert [x["event_action"] for x in degraded] == ["trigger", "resolve"]
    assert p.stats.retries == 3 and p.stats.events == 2000 - p.stats.skipped_replayed


def test_a_stale_writer_is_fenced(stack, redis_client):
    async def go():
        a = processor(stack.redis_url, "fence")
        z = processor(stack.redis_url, "fence")
        await run(a, MSGS[:1000], 500)
        await run(z, MSGS[1000:1100], 100)  # z loads a's state and writes once ...
        b = processor(stack.redis_url, "fence")
        await run(b, MSGS[1100:1500], 500)  # ... then b takes over and goes further
        await a.process(MSGS[1000:1200])  # zombies: a (never saw z's or b's writes) ...
        await z.idle_tick(0)  # ... and z writing without events (idle advance): both refused
        return a, z, b

    a, z, b = asyncio.run(go())
    assert a.stats.fenced == 1 and "email-reply" not in a.engine.features
    assert z.stats.fenced == 1 and "email-reply" not in z.engine.features
    assert b.stats.fenced == 0


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl", "allkeys-random"])
def test_an_evicting_redis_is_refused(stack, redis_client, policy):
    redis_client.config_set("maxmemory-policy", policy)
    try:

        async def go():
            r = aioredis.Redis.from_url(stack.redis_url)
            try:
                await RedisStore(r).check()
            finally:
                await r.aclose()

        with pytest.raises(StoreError, match="noeviction"):
            asyncio.run(go())
    finally:
        redis_client.config_set("maxmemory-policy", "noeviction")


def test_a_message_that_breaks_the_engine_is_dead_lettered_and_the_rest_applied(stack, redis_client, monkeypatch):
    import rules.batch as batch_mod

    real = batch_mod.group_counters
    poison = orjson.loads(MSGS[10].value)["event_id"]

    def group_counters(evs, *rest):  # applying the poison event to the windows fails (in whichever run it comes)
        if any(ev.event_id == poison for ev in evs):
            raise ZeroDivisionError("bug (test)")
        return real(evs, *rest)

    monkeypatch.setattr(batch_mod, "group_counters", group_counters)

    async def go():
        pub = ListPublisher()
        p = processor(stack.redis_url, "poison", pub)
        await run(p, MSGS[:300], 100)
        return p, pub

    p, pub = asyncio.run(go())
    dead = [orjson.loads(v) for t, _, v in pub.records if t == Topics().deadletter]
    assert [(d["reason"], d["source"]["offset"]) for d in dead] == [("processing_error", MSGS[10].offset)]
    assert "ZeroDivisionError" in dead[0]["detail"]
    assert p.stats.events == 299 and p.stats.invalid == {"processing_error": 1}


def test_the_breaker_round_trips_through_redis_with_its_resolved_hours(stack, redis_client):
    from rules.state import BreakerState

    async def go() -> tuple[BreakerState, BreakerState]:
        r = aioredis.Redis.from_url(stack.redis_url)
        try:
            store = RedisStore(r, "breaker")
            b = BreakerState()
            b.kills = {7: {"k1", "k2"}, 8: {"k3"}}
            b.paged = {7, 8}
            b.resolved = {7}
            await store.commit([], b, {})
            return b, await store.load_breaker()
        finally:
            await r.aclose()

    written, loaded = asyncio.run(go())
    assert loaded.to_state() == written.to_state() and loaded.open_hours() == [8]


def test_buckets_stored_as_json_by_the_previous_version_load_and_migrate_to_the_binary_format(stack, redis_client):
    """A Redis written before the binary format (bucket values were ``orjson.dumps(Bucket.to_state())``): a worker
    loads it as the same state, continues exactly as an uninterrupted run, and its next write stores every bucket
    in the binary format."""
    from rules.aggregate import BUCKET_FORMAT, Bucket

    async def go():
        ref = processor(stack.redis_url, "mig-ref")
        await run(ref, MSGS, 1000)
        old = processor(stack.redis_url, "mig")
        await run(old, MSGS[:5000], 1000)
        r = aioredis.Redis.from_url(stack.redis_url)
        key = old.store.buckets_key("email-reply")
        stored = await r.hgetall(key)
        from_binary = await stored_state(stack.redis_url, "mig", "email-reply")
        await r.hset(key, mapping={k: orjson.dumps(Bucket.decode(v).to_state()) for k, v in stored.items()})
        legacy = await r.hgetall(key)
        assert legacy.keys() == stored.keys() and all(v[:1] == b"{" for v in legacy.values())
        from_json = await stored_state(stack.redis_url, "mig", "email-reply")
        new = processor(stack.redis_url, "mig")
        await run(new, MSGS[5000:], 1000)
        after = await r.hgetall(key)
        await r.aclose()
        return from_binary, from_json, after

    from_binary, from_json, after = asyncio.run(go())
    assert from_json == from_binary and from_json["stores"]
    assert all(v[0] == BUCKET_FORMAT for v in after.values())
    assert asyncio.run(stored_state(stack.redis_url, "mig", "email-reply")) == asyncio.run(
        stored_state(stack.redis_url, "mig-ref", "email-reply")
    )
