"""The Redis state store on a real Redis Cluster (three local primaries), with features spread over all nodes.

The same exactly-once scenarios as ``test_store.py`` (incremental writes rebuild the in-memory state; a restart
from older offsets neither loses nor double-counts), plus what only a cluster can break: one feature's keys share a
slot (its Lua write is atomic), features live on different nodes, and an evicting node anywhere is refused."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import redis.asyncio as aioredis

from redis_cluster import LocalCluster
from rules.engine import Engine
from rules.events import EventParser, Pseudonymizer
from rules.loader import CATALOG, load_rules
from rules.state import BreakerState, FeatureState
from streams.live.ops import read_status
from streams.live.processor import Message, Processor
from streams.offline.scenario import generate, scenario_from_args
from streams.settings import Settings
from streams.live.store import FeatureWrite, RedisStore, StoreError, redis_client
from streams.kafka.topics import Topics

KEY = b"state-key-0123456789"
RULESETS = load_rules([CATALOG])
# hash tags f:NAME in slots 2, 8049, 15167, 2862: with 3 primaries (slots split in thirds) every node holds one
FEATURES = ("email-reply", "smart-compose", "search-summary", "translate")


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster() as c:
        yield c


@pytest.fixture
def nodes(cluster):
    """Plain clients of every node, flushed."""
    clients = [cluster.node(p) for p in cluster.ports]
    for c in clients:
        c.flushall()
    yield clients
    for c in clients:
        c.close()


class ListPublisher:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes]] = []

    async def publish(self, records) -> None:
        self.records += list(records)


def messages() -> list[Message]:
    """The latency-spike scenario dealt over FEATURES by interaction (a feedback follows its interaction), each
    feature on partition 0 or 1 of the input topics, so feature and partition keys land in different slots."""
    out, offs = [], {}
    for e in generate(scenario_from_args("latency_spike", duration_ms="3h", seed=5)):
        interaction = e["event_id"] if e["type"] == "interaction" else e["interaction_id"]
        i = int(interaction.rsplit("-", 1)[1]) % len(FEATURES)
        old, new = e["feature"], FEATURES[i]
        e = dict(e, feature=new, event_id=e["event_id"].replace(old, new, 1))
        if "interaction_id" in e:
            e["interaction_id"] = e["interaction_id"].replace(old, new, 1)
        tp = ("in" if e["type"] == "interaction" else "fb", i % 2)
        out.append(Message(*tp, offs.setdefault(tp, 0), orjson.dumps(e)))
        offs[tp] += 1
    return out


MSGS = messages()[:40000]  # the spike's decisions (investigate, kill) are out by message 39000


def processor(url: str, ns: str, publisher=None) -> Processor:
    s = Settings(user_key="u" * 20)
    return Processor(Engine(RULESETS, s.engine_config()), RedisStore(redis_client(url, cluster=True), ns),
                     EventParser(Pseudonymizer(b"u" * 20)), publisher or ListPublisher(), topics=Topics(),
                     detector_key=KEY, max_backoff_s=0.05)  # fmt: skip


async def run(p: Processor, msgs: list[Message], batch: int) -> None:
    for i in range(0, len(msgs), batch):
        await p.process(msgs[i : i + batch])


async def stored_states(url: str, ns: str) -> dict[str, dict]:
    r = redis_client(url, cluster=True)
    try:
        recs = await RedisStore(r, ns).load(list(FEATURES))
    finally:
        await r.aclose()
    plan = Engine(RULESETS).plan
    return {f: FeatureState.from_parts(rec.core, rec.buckets, plan, KEY, rec.ids).to_state(KEY) for f, rec in recs.items()}


@pytest.mark.parametrize(("batch", "n"), [(1, 400), (97, 8000), (1000, len(MSGS))], ids=["1", "97", "1000"])
def test_incremental_writes_rebuild_exactly_the_in_memory_state(cluster, nodes, batch, n):
    async def go():
        p = processor(cluster.url, "t")
        await run(p, MSGS[:n], batch)
        await p.store.r.aclose()
        return {f: persisted_view(p, f) for f in FEATURES}

    want = asyncio.run(go())
    assert asyncio.run(stored_states(cluster.url, "t")) == want


def test_a_crash_at_any_batch_neither_loses_nor_double_counts(cluster, nodes):
    """Restart from earlier offsets (as after a crash before Kafka's commit): the stored per-feature offsets skip
    what was applied; outputs repeat with the same ids and content; the final state equals an uninterrupted run."""

    async def go():
        ref = processor(cluster.url, "ref")
        await run(ref, MSGS, 500)
        crashed_pub = ListPublisher()
        a = processor(cluster.url, "crash", crashed_pub)
        await run(a, MSGS[:31000], 500)  # crashed after the first decisions went out
        b = processor(cluster.url, "crash", crashed_pub)  # a new worker re-reads from an older position
        await run(b, MSGS[28000:], 700)
        for p in (ref, a, b):
            await p.store.r.aclose()
        return ref, crashed_pub, b

    ref, crashed_pub, b = asyncio.run(go())
    assert b.stats.skipped_replayed > 0 and b.stats.fenced == 0
    assert asyncio.run(stored_states(cluster.url, "crash")) == asyncio.run(stored_states(cluster.url, "ref"))
    first: dict[bytes, bytes] = {}
    for topic, _, v in crashed_pub.records:
        d = orjson.loads(v)
        rid = (d.get("decision_id") or d.get("command_id") or d.get("dedup_key") + d["event_action"]).encode()
        assert first.setdefault(topic.encode() + rid, v) == v, "same id, different content"
    assert list(dict.fromkeys(crashed_pub.records)) == ref.publisher.records
    assert {orjson.loads(v)["feature"] for t, _, v in ref.publisher.records if t == Topics().decisions} == set(
        FEATURES
    ), "every feature decided something: the scenario exercises all nodes"


def test_one_features_keys_share_a_slot_and_features_spread_over_every_node(cluster, nodes):
    async def go():
        p = processor(cluster.url, "slots")
        await run(p, MSGS[:3000], 1000)
        await p.store.r.aclose()
        return p.store

    store = asyncio.run(go())
    owner = {k.decode(): port for port, c in zip(cluster.ports, nodes) for k in c.keys("slots:*")}  # node-local
    node_of_feature = {}
    for f in FEATURES:
        core, buckets = store.core_key(f), store.buckets_key(f)
        assert nodes[0].cluster("keyslot", core) == nodes[0].cluster("keyslot", buckets)
        assert owner[core] == owner[buckets]
        node_of_feature[f] = owner[core]
    assert set(node_of_feature.values()) == set(cluster.ports)
    tp_nodes = {owner[store.tp_key(f"{t}:{p}")] for t in ("in", "fb") for p in (0, 1)}
    assert len(tp_nodes) > 1, "partition offsets are read across slots"

    async def read():
        offsets = await RedisStore(redis_client(cluster.url, cluster=True), "slots").partition_offsets(
            ["in:0", "in:1", "fb:0", "fb:1", "in:9"]
        )
        return offsets, await read_status(cluster.url, "slots", cluster=True)

    offsets, status = asyncio.run(read())
    assert offsets["in:9"] is None and all(offsets[tp] is not None for tp in ("in:0", "in:1", "fb:0", "fb:1"))
    assert sorted(s["feature"] for s in status) == sorted(FEATURES)


def test_a_failed_feature_write_stops_the_partition_offsets_but_not_the_breaker(cluster, nodes):
    """On a cluster the steps of a commit run on different nodes: each waits for the one before."""
    from redis.exceptions import ResponseError

    breaker = BreakerState()
    breaker.kills[7] = {"kill-1"}
    writes = [FeatureWrite(f, b"{}", b"{}", {"in:0": 5}) for f in ("email-reply", "translate")]

    async def go():
        store = RedisStore(redis_client(cluster.url, cluster=True), "order")
        await store.r.set(store.core_key("translate"), "not a hash")  # its Lua write fails (WRONGTYPE)
        try:
            with pytest.raises(ResponseError, match="WRONGTYPE"):
                await store.commit(writes, breaker, {"in:0": 5})
            return await store.partition_offsets(["in:0"]), await store.load_breaker(), await store.features()
        finally:
            await store.r.aclose()

    offsets, stored_breaker, features = asyncio.run(go())
    assert offsets == {"in:0": None}
    assert stored_breaker.kills == {7: {"kill-1"}} and features == ["email-reply", "translate"]


def check(url: str, cluster: bool) -> None:
    async def go():
        r = redis_client(url, cluster)
        try:
            await RedisStore(r).check()
        finally:
            await r.aclose()

    asyncio.run(go())


@pytest.mark.parametrize("node", [0, 2])
def test_an_evicting_node_anywhere_in_the_cluster_is_refused(cluster, nodes, node):
    check(cluster.url, cluster=True)  # all noeviction: accepted
    nodes[node].config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(StoreError, match=f"node 127.0.0.1:{cluster.ports[node]} .*'allkeys-lru'.*noeviction"):
            check(cluster.url, cluster=True)
    finally:
        nodes[node].config_set("maxmemory-policy", "noeviction")


def test_a_cluster_node_used_as_a_single_redis_is_refused(cluster, nodes):
    with pytest.raises(StoreError, match="ROLLGUARD_REDIS_CLUSTER=true"):
        check(cluster.url, cluster=False)


def test_the_cluster_setting_picks_the_client(cluster, monkeypatch):
    monkeypatch.setenv("ROLLGUARD_REDIS_CLUSTER", "true")
    monkeypatch.setenv("ROLLGUARD_REDIS_URL", cluster.url)
    s = Settings()
    assert s.redis_cluster is True
    r = redis_client(s.redis_url, s.redis_cluster)
    assert type(r).__name__ == "RedisCluster" and RedisStore(r).cluster
    assert isinstance(redis_client(cluster.url, False), aioredis.Redis)


@pytest.mark.parametrize(
    ("url", "message"),
    [("unix:///run/redis.sock", "not unix://"), ("redis://127.0.0.1:7000/2", "only database 0")],
)
def test_cluster_settings_refuse_what_a_cluster_cannot_be(url, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        Settings(redis_url=url, redis_cluster=True)
    with pytest.raises(StoreError, match="as a Redis Cluster"):
        redis_client(url, cluster=True)


def persisted_view(p, feature: str) -> dict:
    """The in-memory state as persisted: dedup ids older than every source's late bound are not stored."""
    fs = p.engine.features[feature]
    d = fs.to_state(KEY)
    floor = min(fs.src_max.values()) - p.engine.config.allowed_lateness_ms
    d["seen"] = {i: ts for i, ts in d["seen"].items() if ts >= floor}
    return d
