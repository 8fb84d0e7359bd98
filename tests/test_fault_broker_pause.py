"""The broker paused (SIGSTOP) for 30 s mid-stream, then resumed (issue 12, point 4), with a broker of its own: the
worker rides it out; nothing is lost (every offset processed) and nothing has a duplicated effect (the outputs,
with identical repeats removed, equal a clean replay of the same events; no command id twice with other content)."""

from __future__ import annotations

import json
import signal
import time

import pytest

from rules.events import parse_ts
from streams.live.embedded import EmbeddedStack
from tests.live_kit import LiveWorker, outputs, processed_offsets, produce, setup_topics, wait_processed
from tests.test_fault_redis_snapshot import without_repeats
from tests.test_live_ops import interactions, replay_outputs, rule_yaml, rules_dir

PAUSE_S = 30


@pytest.mark.slow
def test_the_broker_paused_30s_mid_stream_loses_and_duplicates_nothing(topic_prefix, tmp_path):
    rules = rules_dir(tmp_path, rule_yaml(0.5, "kill"))
    features = ["pause-a", "pause-b", "pause-c"]
    part1 = [e for f in features for e in interactions(f, 0, 3, "ok")]
    part2 = [e for f in features for e in interactions(f, 3, 6) + interactions(f, 9, 3, "ok")]  # kills
    with EmbeddedStack() as own:
        topics = setup_topics(own, topic_prefix)
        # small batches, so the worker is still working through part 2 when the broker stops
        worker = LiveWorker(own, topics, tmp_path / "worker.log", rules=json.dumps([str(rules)]), batch_max="20")
        try:
            wait_processed(own, topics, produce(own, topics, part1), worker, timeout=60)
            last = produce(own, topics, part2)
            own.signal_kafka(signal.SIGSTOP)  # while the worker works through part 2
            try:
                done = processed_offsets(own, topics, last)
                behind = sum(last[tp] - done[tp] for tp in last)
                assert behind > 0, "the broker must stop mid-stream"
                time.sleep(PAUSE_S)
                assert worker.alive()
            finally:
                own.signal_kafka(signal.SIGCONT)
            wait_processed(own, topics, last, worker, timeout=120)  # 0 lost: every offset processed
            time.sleep(2)
        finally:
            worker.stop()
        live = outputs(own, topics)
    want = replay_outputs(tmp_path, rules, part1 + part2)
    wm = max(e["ts"] for e in part1 + part2) - 30_000
    decisions, repeats = without_repeats(live["decisions"])
    commands, command_repeats = without_repeats(live["commands"])
    pages, _ = without_repeats(live["pages"])
    rule_pages = [p for p in pages if p["payload"]["class"] != "monitor-degraded"]
    # per feature, in order (how features interleave on the topic depends on which partition's batch came first)
    assert sorted(decisions, key=lambda d: d["feature"]) == sorted(
        [d for d in want["decisions"] if parse_ts(d["ts"]) <= wm], key=lambda d: d["feature"])
    assert sorted(commands, key=lambda c: c["feature"]) == sorted(
        [c for c in want["commands"] if parse_ts(c["ts"]) <= wm], key=lambda c: c["feature"])
    assert sorted(rule_pages, key=lambda p: p["payload"]["component"]) == sorted(
        [p for p in want["pages"] if parse_ts(p["payload"]["timestamp"]) <= wm], key=lambda p: p["payload"]["component"])
    assert len(commands) == len(features) and len({c["command_id"] for c in live["commands"]}) == len(commands)
    print(f"\nbroker paused {PAUSE_S}s mid-stream ({behind} messages not yet processed): "
          f"{len(part1) + len(part2)} events, 0 lost, "
          f"{len(commands)} rollbacks ({command_repeats} identical re-deliveries), {repeats} identical decision "
          f"repeats, {len(pages) - len(rule_pages)} monitor-degraded pages")
