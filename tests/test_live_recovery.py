"""Recovery of the live pipeline on the real embedded broker and Redis.

* kill -9 of the worker at seeded random points while it works through ~120k events, restarted each time: the
  outputs and the Redis state equal those of an uninterrupted run;
* two workers in one consumer group share the partitions; one stops (SIGTERM), the other takes its features over
  from Redis; a third joins and the second is killed (-9): nothing is lost or counted twice.

The uninterrupted run is the engine itself, stepping over the same events in one go: the live worker is the same
pure step function over batches, so up to the watermark (live mode never runs ``finish()``) it must produce the same
records, in the same order per feature, and the same state. Crashes may re-publish a batch whose state was not
saved yet (at-least-once delivery of deterministic records): repeats are allowed only with identical content.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from collections import defaultdict

import pytest
import redis
from aiokafka.partitioner import DefaultPartitioner
from kafka import KafkaConsumer, TopicPartition

from rules.engine import Engine
from rules.events import EventParser, Pseudonymizer
from rules.loader import CATALOG, load_rules
from rules.state import FeatureState
from streams.offline.scenario import generate, scenario_from_args
from streams.settings import Settings
from streams.live.store import RedisStore
from tests.live_kit import (
    LiveWorker, merge_offsets, processed_offsets, produce, produce_raw, read_topics, setup_topics, wait_processed,
)  # fmt: skip

USER_KEY = "test-user-key-0123456789"  # what LiveWorker configures
PARTITIONS = 4
# one feature per partition (murmur2 of the key over 4 partitions), each with an incident that makes rules fire
FEATURES = {"code-assist": "cost_runaway", "ticket-triage": "pii_leak", "email-reply": "latency_spike",
            "smart-compose": "error_burst"}  # fmt: skip

ID = {
    "decisions": lambda d: d["decision_id"],
    "commands": lambda c: c["command_id"],
    "pages": lambda p: (p["dedup_key"], p["event_action"], p["payload"]["timestamp"]),
    "deadletter": lambda d: (d["source"]["topic"], d["source"]["partition"], d["source"]["offset"]),
}
FEATURE_OF = {
    "decisions": lambda d: d["feature"],
    "commands": lambda c: c["feature"],
    "pages": lambda p: p["payload"]["component"],
}


def _events(duration: str, rate: float, seed: int) -> list[dict]:
    """Business-hours traffic of every feature, merged (each feature keeps its own arrival order)."""
    gens = [generate(scenario_from_args(preset, duration_ms=duration, mean_rate_per_s=rate, seed=seed + i,
                                        feature=f, start="2026-11-02T13:00:00Z"))
            for i, (f, preset) in enumerate(sorted(FEATURES.items()))]  # fmt: skip
    return list(heapq.merge(*gens, key=lambda e: e["ts"]))


def _partition_of(feature: str) -> int:
    return DefaultPartitioner()(feature.encode(), list(range(PARTITIONS)), list(range(PARTITIONS)))


def _uninterrupted(events: list[dict]) -> tuple[Engine, dict[str, list[dict]], int]:
    """The engine over ``events`` one step per event: its final state, its outputs, and the index of the first
    event whose step issues a command."""
    s = Settings(user_key=USER_KEY)
    engine = Engine(load_rules([CATALOG]), s.engine_config())
    parser = EventParser(Pseudonymizer(s.user_key_bytes()))
    out = {"decisions": [], "commands": [], "pages": []}
    first_command = -1
    for i, e in enumerate(events):
        o = engine.step((parser.parse_obj(e),))
        if o.commands and first_command < 0:
            first_command = i
        out["decisions"] += o.decisions
        out["commands"] += o.commands
        out["pages"] += o.pages
    return engine, out, first_command


def _first_occurrences(kind: str, records: list[dict]) -> tuple[list[dict], int]:
    """Records without repeats, and how many repeats there were; a repeated id must carry identical content."""
    first: dict = {}
    out = []
    for r in records:
        key = ID[kind](r)
        if key in first:
            assert r == first[key], f"{kind} {key} published twice with different content:\n{first[key]}\n{r}"
        else:
            first[key] = r
            out.append(r)
    return out, len(records) - len(out)


def _by_feature(kind: str, records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        out[FEATURE_OF[kind](r)].append(r)
    return dict(out)


def _assert_outputs_equal(live: dict[str, list[dict]], want: dict[str, list[dict]]) -> dict[str, int]:
    """Same records as the uninterrupted run, in the same order per feature, after dropping exact repeats."""
    repeats = {}
    for kind in ("decisions", "commands", "pages"):
        assert len({ID[kind](r) for r in want[kind]}) == len(want[kind]), f"reference {kind} ids are not unique"
        got, repeats[kind] = _first_occurrences(kind, live[kind])
        got_f, want_f = _by_feature(kind, got), _by_feature(kind, want[kind])
        assert sorted(got_f) == sorted(want_f), f"{kind}: features {sorted(got_f)} != {sorted(want_f)}"
        for f in want_f:
            missing = [ID[kind](r) for r in want_f[f] if r not in got_f[f]]
            extra = [ID[kind](r) for r in got_f[f] if r not in want_f[f]]
            assert not missing and not extra, f"{kind} of {f}: missing {missing}, unexpected {extra}"
            assert got_f[f] == want_f[f], f"{kind} of {f}: same records, different order"
    return repeats


def _redis_states(stack, topics, features: list[str], plan, key: bytes):
    import redis.asyncio as aioredis

    async def load():
        r = aioredis.Redis.from_url(stack.redis_url)
        try:
            store = RedisStore(r, f"{topics.prefix}rollguard")
            return await store.load(features), await store.load_breaker(), await store.features()
        finally:
            await r.aclose()

    records, breaker, listed = asyncio.run(load())
    states = {f: FeatureState.from_parts(rec.core, rec.buckets, plan, key, rec.ids) for f, rec in records.items()
              if rec.core is not None}  # fmt: skip
    return states, {f: rec.offsets for f, rec in records.items()}, breaker, listed


def _comparable(fs: FeatureState, feature: str, engine: Engine, key: bytes) -> dict:
    """``to_state`` with the dedup ids that still matter: the ids below the watermark are pruned only when the set
    grows past 1024 at an evaluation instant, so which of them remain depends on how the interaction and feedback
    topics interleaved (it differs between two uninterrupted live runs); an event that old is dropped as late anyway."""
    d = fs.to_state(key)
    wm = min(fs.src_max[s] for s in engine.plan.profile(feature).sources) - engine.config.allowed_lateness_ms
    d["seen"] = {i: ts for i, ts in d["seen"].items() if ts >= wm}
    return d


def _assert_state_equal(stack, topics, engine: Engine, events: list[dict], last: dict[str, int]) -> None:
    """Redis holds, per feature, the uninterrupted run's state with the offsets of its last input message."""
    key = Settings(user_key=USER_KEY).state_key_bytes()
    features = sorted(engine.features)
    states, offsets, breaker, listed = _redis_states(stack, topics, features, engine.plan, key)
    assert listed == features
    assert breaker.to_state() == engine.breaker.to_state()
    ids: dict[str, set[str]] = defaultdict(set)
    for e in events:
        ids[e["feature"]].add(e["event_id"])
    for f in features:
        assert f in states, f"no state for {f} in Redis"
        p = _partition_of(f)
        want_offsets = {tp: off for tp, off in last.items() if tp.endswith(f":{p}")}
        assert offsets[f] == want_offsets, f"{f}: stored offsets {offsets[f]} != last input {want_offsets}"
        got, want = _comparable(states[f], f, engine, key), _comparable(engine.features[f], f, engine, key)
        diff = sorted(k for k in want if got[k] != want[k])
        assert not diff, f"{f}: Redis state differs from the uninterrupted run in {diff}"
        assert set(states[f].seen) <= ids[f]


def _wait_progress(stack, topics, tps, beyond: int, worker: LiveWorker, timeout: float = 60) -> None:
    """Until the processed offsets (summed over ``tps``) pass ``beyond``: this worker incarnation committed."""
    deadline = time.time() + timeout
    while sum(processed_offsets(stack, topics, tps).values()) <= beyond:
        assert worker.alive(), f"worker died:\n{worker.tail()}"
        assert time.time() < deadline, f"no progress within {timeout}s:\n{worker.tail()}"
        time.sleep(0.05)


def _wait_split(topics, workers: list[LiveWorker], timeout: float = 60) -> list[set[int]]:
    """Until the workers' latest assignments of the input topics are non-empty, disjoint and cover every partition."""
    deadline = time.time() + timeout
    while True:
        held = [(w.assignments(topics.interactions) or [set()])[-1] for w in workers]
        fb = [(w.assignments(topics.feedback) or [set()])[-1] for w in workers]
        if (held == fb and all(held) and sum(map(len, held)) == PARTITIONS
                and set().union(*held) == set(range(PARTITIONS))):  # fmt: skip
            return held
        for w in workers:
            assert w.alive(), f"worker died:\n{w.tail()}"
        assert time.time() < deadline, f"no partition split within {timeout}s: {held}\n" + "\n".join(
            w.tail(15) for w in workers
        )
        time.sleep(0.2)


def _outputs(stack, topics) -> dict[str, list[dict]]:
    names = {"decisions": topics.decisions, "commands": topics.commands, "pages": topics.pages,
             "deadletter": topics.deadletter}  # fmt: skip
    got = read_topics(stack, names.values())
    return {kind: got[name] for kind, name in names.items()}


def _wait_published(stack, topic: str, beyond: int, worker: LiveWorker, timeout: float = 60) -> None:
    """Until ``topic`` holds more than ``beyond`` records."""
    c = KafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        n, deadline = 0, time.time() + timeout
        while n <= beyond:
            assert worker.alive() and time.time() < deadline, f"nothing new on {topic}:\n{worker.tail()}"
            n += sum(len(msgs) for msgs in c.poll(timeout_ms=100).values())
    finally:
        c.close()


def _kill_at_random_points(stack, topics, last: dict[str, int], worker: LiveWorker, restart, rng: random.Random,
                           n: int) -> tuple[LiveWorker, list[int]]:  # fmt: skip
    """Up to ``n`` times: at a random point of the work left after the worker's first commit (a share of the
    messages still to process, not a time: how long the work takes depends on the machine and the engine), kill -9
    and restart it, unless the partitions are processed up to ``last`` by then. Returns the live worker and the
    progress at each kill."""
    tps, total = sorted(last), sum(last.values())
    kills = []
    for _ in range(n):
        start = sum(processed_offsets(stack, topics, tps).values())
        _wait_progress(stack, topics, tps, start, worker)
        target = start + rng.uniform(0.05, 0.5) * (total - start)
        deadline = time.time() + 120
        while (done := sum(processed_offsets(stack, topics, tps).values())) < min(target, total):
            assert worker.alive(), f"worker died:\n{worker.tail()}"
            assert time.time() < deadline, f"no progress within 120s:\n{worker.tail()}"
            time.sleep(0.005)
        if done >= total:
            break
        worker.kill9()
        kills.append(done)
        worker = restart()
    return worker, kills


@pytest.mark.slow
def test_kill9_at_random_points_equals_uninterrupted_run(stack, topic_prefix, tmp_path):
    assert sorted(map(_partition_of, FEATURES)) == list(range(PARTITIONS))
    topics = setup_topics(stack, topic_prefix, PARTITIONS)
    events = _events("4h", 0.7, seed=7)
    assert len(events) >= 100_000
    engine, want, k = _uninterrupted(events)
    assert len(want["commands"]) >= 2 and want["pages"]
    assert len({c["feature"] for c in want["decisions"]}) == len(FEATURES)
    assert len(events) // 2 < k < len(events) - 1000

    def restart() -> LiveWorker:
        return LiveWorker(stack, topics, tmp_path / "worker.log", batch_max="250")

    rng = random.Random(20261102)
    r = redis.Redis.from_url(stack.redis_url)
    worker = restart()
    try:
        # part 1: everything before the first command's event; envelopes, single-event messages, invalid messages
        third = k // 3
        last1 = merge_offsets(
            produce(stack, topics, events[:third], envelope=20),
            produce(stack, topics, events[third:third + 12_000], envelope=1),
            produce_raw(stack, topics.interactions, b"email-reply", [b"{not json", b'{"type":"interaction"}']),
            produce(stack, topics, events[third + 12_000:k], envelope=20),
        )  # fmt: skip
        worker, kills = _kill_at_random_points(stack, topics, last1, worker, restart, rng, 2)
        wait_processed(stack, topics, last1, worker, timeout=180)

        # part 2: the first command's event alone, with Redis refusing writes: the worker publishes the command,
        # blocks on saving the state, and is killed there; its successor must publish the same command again.
        # Fencing (streams/live/store.py) writes to Redis when the group rebalances (a new epoch) and when a feature
        # is loaded: let the group settle after the random kills, then send a duplicate of the feature's last event
        # (it decides nothing) so the worker loads and claims the feature in its settled epoch before writes stop.
        time.sleep(10)
        j = max(i for i in range(k) if events[i]["feature"] == events[k]["feature"])
        warm = produce(stack, topics, [events[j]])
        wait_processed(stack, topics, merge_offsets(last1, warm), worker, timeout=60)
        commands = len(_outputs(stack, topics)["commands"])
        r.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
        try:
            last2 = produce(stack, topics, [events[k]])
            _wait_published(stack, topics.commands, commands, worker)
            worker.kill9()
        finally:
            r.execute_command("CLIENT", "UNPAUSE")
        [(tp, off)] = last2.items()
        assert processed_offsets(stack, topics, [tp])[tp] < off  # the kill came between publish and commit
        worker = restart()

        # part 3: the rest, with more random kills
        last3 = produce(stack, topics, events[k + 1:], envelope=20)
        last = merge_offsets(last1, warm, last2, last3)
        worker, more = _kill_at_random_points(stack, topics, last, worker, restart, rng, 2)
        kills += more
        wait_processed(stack, topics, last, worker, timeout=180)
    finally:
        r.close()
        worker.stop()
    assert len(kills) >= 3, f"the worker finished before enough random kills: {kills} of {sum(last.values())}"

    live = _outputs(stack, topics)
    repeats = _assert_outputs_equal(live, want)
    assert repeats["commands"] >= 1  # the command of part 2, published twice with the same content
    dead, dead_repeats = _first_occurrences("deadletter", live["deadletter"])
    assert sorted(d["reason"] for d in dead) == ["invalid_json", "schema"]
    _assert_state_equal(stack, topics, engine, events, last)
    print(f"\nrandom kills at processed offset sums {kills}; repeated records {repeats}, dead letters {dead_repeats}")


@pytest.mark.slow
def test_two_workers_share_partitions_and_take_over(stack, topic_prefix, tmp_path):
    topics = setup_topics(stack, topic_prefix, PARTITIONS)
    events = _events("3h", 0.5, seed=3)
    engine, want, _ = _uninterrupted(events)
    assert want["commands"] and want["pages"]
    cut1, cut2 = len(events) * 2 // 5, len(events) * 7 // 10
    feature_at = {_partition_of(f): f for f in FEATURES}

    a = LiveWorker(stack, topics, tmp_path / "a.log", batch_max="250")
    b = LiveWorker(stack, topics, tmp_path / "b.log", batch_max="250")
    workers = [a, b]
    try:
        held_a, held_b = _wait_split(topics, [a, b])
        n_assign = (len(a.assignments(topics.interactions)), len(b.assignments(topics.interactions)))
        last1 = produce(stack, topics, events[:cut1], envelope=20)
        wait_processed(stack, topics, last1, b, timeout=120)
        # no rebalance while part 1 was processed: each worker processed the features of its own partitions
        assert (len(a.assignments(topics.interactions)), len(b.assignments(topics.interactions))) == n_assign
        shares = [sorted(feature_at[p] for p in held) for held in (held_a, held_b)]

        a.stop()  # graceful: leaves the group, b takes every partition over from Redis
        assert a.proc.returncode is not None
        last2 = produce(stack, topics, events[cut1:cut2], envelope=20)
        wait_processed(stack, topics, merge_offsets(last1, last2), b, timeout=120)
        assert b.assignments(topics.interactions)[-1] == set(range(PARTITIONS))
        so_far = _outputs(stack, topics)
        for kind in ("decisions", "commands", "pages"):
            assert _first_occurrences(kind, so_far[kind])[1] == 0, f"{kind} repeated after a graceful hand-over"

        c = LiveWorker(stack, topics, tmp_path / "c.log", batch_max="250")
        workers.append(c)
        held_b, _ = _wait_split(topics, [b, c])
        last3 = produce(stack, topics, events[cut2:], envelope=20)
        last = merge_offsets(last1, last2, last3)
        tps_b = [tp for tp in sorted(last) if int(tp.rsplit(":", 1)[1]) in held_b]
        _wait_progress(stack, topics, tps_b, sum(merge_offsets(last1, last2)[tp] for tp in tps_b), b)
        time.sleep(random.Random(7).uniform(0.0, 0.2))
        b.kill9()  # c takes b's partitions over once the group notices (session timeout)
        left = {tp: last[tp] - off for tp, off in processed_offsets(stack, topics, tps_b).items()}
        assert any(n > 0 for n in left.values()), "b finished its part before the kill; nothing to take over"
        wait_processed(stack, topics, last, c, timeout=120)
        assert c.assignments(topics.interactions)[-1] == set(range(PARTITIONS))
    finally:
        for w in workers:
            w.stop()

    repeats = _assert_outputs_equal(_outputs(stack, topics), want)
    _assert_state_equal(stack, topics, engine, events, last)
    print(f"\nfeatures of a, b: {shares}; b killed with {left} messages left; repeated records {repeats}")
