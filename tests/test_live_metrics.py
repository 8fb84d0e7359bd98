"""The worker's /metrics, /healthz and /ready over HTTP, on the real embedded broker and Redis: after an incident the
counters equal what was produced and what is on the output topics, and the kill shows as tier 3."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections import Counter

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from rules.events import parse_ts
from tests.live_kit import LiveWorker, merge_offsets, produce, produce_raw, read_topics, setup_topics, wait_processed

T0 = parse_ts("2024-03-01T00:00:00Z")
FEATURE = "metrics-kill"
RULES = """version: 1
name: ops
features: ["*"]
rules:
  - {id: errors, tier: kill, metric: error_rate, op: ">", threshold: 0.5, window: 5m, every: 1m, min_samples: 5}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def interactions(start_min: int, minutes: int, outcome: str) -> list[dict]:
    """One interaction per second of event time."""
    start = T0 + start_min * 60_000
    return [{"type": "interaction", "event_id": f"m-{start + i * 1000}", "ts": start + i * 1000, "feature": FEATURE,
             "outcome": outcome, "latency_ms": 120, "user": f"user-{i % 7}@example.com"}
            for i in range(minutes * 60)]  # fmt: skip


def get(port: int, path: str, worker: LiveWorker, timeout: float = 15) -> tuple[int, str, bytes]:
    """(status, content type, body) of ``GET path``, retried while the endpoint is not listening yet."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.headers["Content-Type"], r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers["Content-Type"], e.read()
        except OSError:
            if time.time() > deadline or not worker.alive():
                raise AssertionError(f"no answer on :{port}{path}\n{worker.tail()}") from None
            time.sleep(0.2)


def test_metrics_endpoint_counts_what_was_produced_and_published(stack, topic_prefix, tmp_path):
    topics = setup_topics(stack, topic_prefix)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "ops.yaml").write_text(RULES)
    port = free_port()
    worker = LiveWorker(stack, topics, tmp_path / "worker.log", rules=json.dumps([str(rules)]), metrics_port=port,
                        metrics_host="127.0.0.1")  # fmt: skip
    events = interactions(0, 2, "ok") + interactions(2, 5, "error")  # the error rate passes 0.5 at minute 5
    try:
        assert get(port, "/healthz", worker)[0] == 200
        # a dead letter, and a feedback event on the interactions topic (refused: wrong_topic, streams.kafka.routing)
        misrouted = orjson.dumps({"type": "feedback", "event_id": "fb-x", "ts": events[-1]["ts"], "feature": FEATURE,
                                  "kind": "thumbs", "label": "down"})  # fmt: skip
        last = merge_offsets(produce(stack, topics, events), produce_raw(stack, topics.interactions,
                                                                         FEATURE.encode(), [b"{not json", misrouted]))  # fmt: skip
        wait_processed(stack, topics, last, worker, timeout=60)
        status, ctype, body = get(port, "/metrics", worker)
        assert (status, ctype) == (200, CONTENT_TYPE_LATEST)
        assert get(port, "/ready", worker)[0] == 200
        assert get(port, "/healthz", worker)[0] == 200
    finally:
        worker.stop()
    samples = [s for f in text_string_to_metric_families(body.decode()) for s in f.samples]
    assert samples and all(s.name.startswith("rollguard_") for s in samples)

    def value(name: str, **labels: str) -> float:
        [v] = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
        return v

    def by(name: str, *keys: str) -> dict:
        return {tuple(s.labels[k] for k in keys): s.value for s in samples if s.name == name}

    out = read_topics(stack, [topics.decisions, topics.commands])
    decisions, commands = out[topics.decisions], out[topics.commands]
    assert [c["action"] for c in commands] == ["rollback"]
    assert value("rollguard_events_total", type="interaction") == len(events)
    assert value("rollguard_messages_total") == len(events) + 2
    assert value("rollguard_invalid_events_total", reason="invalid_json") == 1
    assert value("rollguard_invalid_events_total", reason="wrong_topic") == 1
    assert value("rollguard_events_total", type="feedback") == 0
    assert by("rollguard_decisions_total", "transition", "tier") == Counter(
        (d["transition"], d["tier"]) for d in decisions)  # fmt: skip
    assert by("rollguard_commands_total", "action") == {("rollback",): 1}
    assert value("rollguard_feature_tier", feature=FEATURE, phase="default") == 3
    assert value("rollguard_feature_latch", feature=FEATURE, phase="default", latch="kill") == 1
    assert value("rollguard_rule_state", feature=FEATURE, rule="errors", group="", state="firing") == 1
    lag = by("rollguard_consumer_lag", "topic", "partition")
    assert lag and set(lag.values()) == {0}  # caught up
    assert {t for t, _ in lag} <= {topics.interactions, topics.feedback}
    assert value("rollguard_assigned_partitions") == 8  # 4 partitions of each input topic, one worker
    assert value("rollguard_degraded") == 0
    assert value("rollguard_batches_total") >= 1 and value("rollguard_batch_duration_seconds_count") >= 1
    assert value("rollguard_redis_duration_seconds_count", op="commit") >= 1
    assert value("rollguard_last_state_write_timestamp_seconds") > 0
    assert "metrics on http://127.0.0.1:" in worker.log.read_text()
