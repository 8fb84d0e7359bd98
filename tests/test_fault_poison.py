"""1 % poison at volume (issue 12, point 4), on the real broker and Redis: 99,000 valid events and 1,000 bad items
(one per envelope of 100, ten kinds) — every bad item is dead-lettered and counted, every valid one applied, the
worker stays up, and the dead-letter rate the alert rule in deploy/prometheus/rules/ computes is 1 %."""

from __future__ import annotations

import json
import urllib.request

import orjson
import pytest

from tests.live_kit import LiveWorker, read_topic, setup_topics, wait_processed
from tests.live_kit import produce_raw
from tests.test_control_auth_live import invalid_counter
from tests.test_live_metrics import free_port
from tests.test_live_ops import T0, rule_yaml, rules_dir

BAD = [
    {"type": "interaction", "event_id": "x", "ts": "yesterday", "feature": "poison"},
    {"type": "interaction", "event_id": "x", "ts": T0, "feature": "poison", "latency_ms": "slow"},
    {"type": "interaction", "event_id": "x", "ts": T0, "feature": "poison", "outcome": "exploded"},
    {"type": "feedback", "event_id": "x", "ts": T0, "feature": "poison", "kind": "thumbs", "label": "sideways"},
    {"type": "nonsense", "event_id": "x", "ts": T0, "feature": "poison"},
    {"type": "interaction", "ts": T0, "feature": "poison"},
    {"type": "interaction", "event_id": "x", "ts": T0, "feature": "bad name!"},
    "a string",
    17,
    {"type": "control", "action": "resume", "event_id": "x", "ts": T0, "feature": "poison", "reason": "sneaky"},
]


def counter(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(name + "{") or
               ln.startswith(name + " "))  # fmt: skip


@pytest.mark.slow
def test_one_percent_poison_at_volume_is_dead_lettered_counted_and_rated(stack, topic_prefix, tmp_path):
    topics = setup_topics(stack, topic_prefix)
    port = free_port()
    worker = LiveWorker(stack, topics, tmp_path / "worker.log", rules=json.dumps([str(rules_dir(tmp_path,
                        rule_yaml(0.5, "investigate")))]), metrics_port=port)  # fmt: skip
    envelopes = []
    for n in range(1000):
        good = [{"type": "interaction", "event_id": f"p-{n}-{i}", "ts": T0 + n * 1000 + i, "feature": "poison",
                 "outcome": "ok", "latency_ms": 100} for i in range(99)]  # fmt: skip
        envelopes.append(orjson.dumps(good[:50] + [BAD[n % len(BAD)]] + good[50:]))
    try:
        last = produce_raw(stack, topics.interactions, b"poison", envelopes)
        wait_processed(stack, topics, last, worker, timeout=300)
        invalid = invalid_counter(port)
        applied = counter(port, "rollguard_events_total")
        assert worker.alive() and "Traceback" not in worker.log.read_text()
    finally:
        worker.stop()
    dead = read_topic(stack, topics.deadletter)
    assert len(dead) == 1000 and sum(invalid.values()) == 1000, invalid
    assert invalid.get("control_on_input_topic") == 100  # the control among them, refused for its topic
    assert all(d["detail"].startswith("[50] ") or d["reason"] == "control_on_input_topic" for d in dead)
    assert applied == 99_000
    rate = sum(invalid.values()) / (applied + sum(invalid.values()))
    assert rate == pytest.approx(0.01)
    print(f"\n1 % poison at volume: 100,000 items, {len(dead):,} dead letters ({dict(sorted(invalid.items()))}), "
          f"{applied:,.0f} applied, dead-letter rate {rate:.2%} (alert threshold 5 %)")
