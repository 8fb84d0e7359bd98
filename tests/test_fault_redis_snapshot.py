"""Redis restored from an older snapshot (issue 12, point 4), on the real broker and Redis: Kafka's committed
offsets are then ahead of the state in Redis. The worker notices on its first batch after the assignment, seeks
back to Redis' offsets and reprocesses; its outputs equal a clean replay of the same events apart from identical
repeats of what it had published after the snapshot."""

from __future__ import annotations

import json

import orjson
import pytest
import redis

from rules.events import parse_ts
from tests.live_kit import LiveWorker, outputs, produce, setup_topics, wait_processed
from tests.test_live_ops import interactions, replay_outputs, rule_yaml, rules_dir, wait_until


def without_repeats(records: list[dict]) -> tuple[list[dict], int]:
    """Records in first-publication order with identical repeats removed, and how many repeats there were."""
    seen: dict[bytes, dict] = {}
    for r in records:
        seen.setdefault(orjson.dumps(r, option=orjson.OPT_SORT_KEYS), r)
    return list(seen.values()), len(records) - len(seen)


@pytest.mark.slow
def test_redis_restored_from_an_older_snapshot_seeks_back_and_equals_a_clean_run(stack, topic_prefix, tmp_path):
    topics = setup_topics(stack, topic_prefix)
    rules = rules_dir(tmp_path, rule_yaml(0.5, "investigate"))
    settings = dict(rules=json.dumps([str(rules)]))
    ns = f"{topics.prefix}rollguard"
    r = redis.Redis.from_url(stack.redis_url)
    f = "snapshot"
    part1 = interactions(f, 0, 6)  # errors: firing
    part2 = interactions(f, 6, 6, "ok") + interactions(f, 12, 6)  # resolved, firing again
    part3 = interactions(f, 18, 3, "ok")  # resolved
    worker = LiveWorker(stack, topics, tmp_path / "w1.log", **settings)
    try:
        wait_processed(stack, topics, produce(stack, topics, part1), worker, timeout=60)
        # the snapshot: every key of the deployment, as a backup would hold it
        snapshot = {k: (r.dump(k), max(r.pttl(k), 0)) for k in r.scan_iter(f"{ns}*")}
        wait_processed(stack, topics, produce(stack, topics, part2), worker, timeout=60)
    finally:
        worker.stop()  # a clean stop: Kafka's committed offsets include part 2
    published_after_snapshot = len(outputs(stack, topics)["decisions"])

    # Redis is restored from the older snapshot: the state and offsets of part 1 only
    for k in list(r.scan_iter(f"{ns}*")):
        r.delete(k)
    for k, (blob, ttl) in snapshot.items():
        r.restore(k, ttl, blob, replace=True)

    worker = LiveWorker(stack, topics, tmp_path / "w2.log", **settings)
    try:
        wait_until(lambda: worker.assignments(topics.interactions)[-1:] == [{0, 1, 2, 3}], 60, "assignment", worker)
        wait_processed(stack, topics, produce(stack, topics, part3), worker, timeout=90)
        assert "is ahead of the state in Redis" in worker.log.read_text(), "no seek-back happened"
    finally:
        worker.stop()

    live = outputs(stack, topics)
    want = replay_outputs(tmp_path, rules, part1 + part2 + part3)
    wm = max(e["ts"] for e in part1 + part2 + part3) - 30_000  # live evaluates up to its watermark
    decisions, repeats = without_repeats(live["decisions"])
    # per feature, in order (how features interleave on the topic depends on which partition's batch came first)
    assert sorted(decisions, key=lambda d: d["feature"]) == sorted(
        [d for d in want["decisions"] if parse_ts(d["ts"]) <= wm], key=lambda d: d["feature"])
    pages, _ = without_repeats(live["pages"])
    assert sorted(pages, key=lambda p: p["payload"]["component"]) == sorted(
        [p for p in want["pages"] if parse_ts(p["payload"]["timestamp"]) <= wm], key=lambda p: p["payload"]["component"])
    assert repeats >= 1 and len(live["decisions"]) > published_after_snapshot  # part 2 was decided again
    assert [d["transition"] for d in decisions][:3] == ["firing", "resolved", "firing"]
    print(f"\nRedis restored from an older snapshot: seek-back; {len(live['decisions'])} decisions published, "
          f"{repeats} identical repeats, {len(decisions)} distinct = the clean replay")
