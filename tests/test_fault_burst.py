"""A 10x burst (issue 12, point 4), on the real broker and Redis: steady traffic at ``RATE`` events/s to a live
worker, then ``10 x RATE`` for ``ROLLGUARD_BURST_S`` seconds, then ``RATE`` again. Sampled every 0.5 s throughout:
the consumer lag (Kafka offsets: the last offset the broker acknowledged to the producer, per partition, minus the
offset the worker recorded as processed in Redis, atomically with its state) and the worker's RSS
(``/proc/PID/status``). The lag must come back to its steady level, the peak RSS stay bounded, and nothing may be
lost: every offset processed and the outputs equal a clean replay of the same events.

``./dev faults burst`` runs the 60 s burst of the issue (``ROLLGUARD_BURST_S=60``) and prints the figures. A 15 s
burst (``ROLLGUARD_BURST_S=15``) takes about 52 s, over the suite's budget, so the suite skips this test."""

from __future__ import annotations

import json
import os
import threading
import time

import orjson
import pytest
from kafka import KafkaProducer

from rules.events import parse_ts
from streams.live.embedded import EmbeddedStack
from tests.live_kit import LiveWorker, outputs, processed_offsets, setup_topics, wait_processed
from tests.test_fault_redis_snapshot import without_repeats
from tests.test_live_ops import T0, replay_outputs, rule_yaml, rules_dir, wait_until

RATE = int(os.environ.get("ROLLGUARD_BURST_RATE", "300"))  # events/s, steady
BURST_S = float(os.environ.get("ROLLGUARD_BURST_S", "15"))
# a 15 s burst takes about 52 s on the 2-core development machine, over the suite's budget: faults only
ONLY_IN_FAULT_RUNS = pytest.mark.skipif("ROLLGUARD_BURST_S" not in os.environ,
                                        reason="a fault run: ./dev faults burst (or set ROLLGUARD_BURST_S)")
STEADY_S = 10.0  # before the burst; after it, RATE until the lag recovered, then AFTER_S more
AFTER_S = 5.0
RECOVER_WITHIN_S = 240.0
RSS_BOUND_MIB = 1024  # the worker's peak resident set, burst included
FEATURES = ["burst-a", "burst-b", "burst-c", "burst-d"]
STEP_MS = 100  # event time between consecutive events (all features), whatever the wall-clock rate


def event(n: int) -> dict:
    """Event ``n`` of the run: features in turn, 3 minutes of errors in every 20 of event time (firing, resolving)."""
    ts = T0 + n * STEP_MS
    minute = (n * STEP_MS) // 60_000
    return {"type": "interaction", "event_id": f"burst-{n}", "ts": ts, "feature": FEATURES[n % len(FEATURES)],
            "outcome": "error" if minute % 20 in (5, 6, 7) else "ok", "latency_ms": 120,
            "user": f"user-{n % 7}@example.com"}  # fmt: skip


class Producer(threading.Thread):
    """Sends ``event(0), event(1), ...`` at ``rate`` events/s (changed on the fly) until ``stop()``; keeps the last
    acknowledged offset per partition."""

    def __init__(self, stack, topic: str) -> None:
        super().__init__(name="burst-producer", daemon=True)
        self.p = KafkaProducer(bootstrap_servers=stack.kafka_bootstrap, linger_ms=5, acks="all")
        self.topic = topic
        self.rate = RATE
        self.sent = 0
        self.acked: dict[str, int] = {}
        self.errors: list[BaseException] = []
        self._halt = threading.Event()

    def _ack(self, m) -> None:
        tp = f"{m.topic}:{m.partition}"
        self.acked[tp] = max(self.acked.get(tp, -1), m.offset)

    def run(self) -> None:
        t0 = time.monotonic()
        due = 0.0
        while not self._halt.is_set():
            now = time.monotonic() - t0
            due += self.rate * 0.02
            while self.sent < int(due):
                e = event(self.sent)
                self.p.send(self.topic, key=e["feature"].encode(), value=orjson.dumps(e)).add_callback(
                    self._ack).add_errback(self.errors.append)  # fmt: skip
                self.sent += 1
            time.sleep(max(0.0, 0.02 - (time.monotonic() - t0 - now)))
        self.p.flush()
        self.p.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(60)


def by_feature(decisions: list[dict]) -> dict[str, list[dict]]:
    """Each feature's decisions in publication order (one feature is one partition: its order is the log's)."""
    out: dict[str, list[dict]] = {}
    for d in decisions:
        out.setdefault(d["feature"], []).append(d)
    return out


def canonical(records: list[dict]) -> list[bytes]:
    """The records in a total order that keeps each one's content: live and replay must hold the same multiset."""
    return sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in records)


def rss_kib(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0])
    return out


@pytest.mark.slow
@ONLY_IN_FAULT_RUNS
def test_a_10x_burst_recovers_its_lag_keeps_rss_bounded_and_loses_nothing(topic_prefix, tmp_path):
    rules = rules_dir(tmp_path, rule_yaml(0.5, "investigate"))
    samples: list[tuple[float, int, int, int]] = []  # (t, lag, VmRSS KiB, VmHWM KiB)
    with EmbeddedStack() as own:
        topics = setup_topics(own, topic_prefix)
        worker = LiveWorker(own, topics, tmp_path / "worker.log", rules=json.dumps([str(rules)]), metrics_port="0")
        prod = Producer(own, topics.interactions)
        try:
            wait_until(lambda: worker.assignments(topics.interactions)[-1:] == [{0, 1, 2, 3}], 60, "assignment",
                       worker)  # fmt: skip
            t0 = time.monotonic()
            prod.start()

            def sample() -> None:
                acked = dict(prod.acked)
                done = processed_offsets(own, topics, acked)
                lag = sum(off - done[tp] for tp, off in acked.items())
                m = rss_kib(worker.proc.pid)
                samples.append((time.monotonic() - t0, lag, m["VmRSS"], m["VmHWM"]))

            def run_for(seconds: float) -> None:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    assert worker.alive(), worker.tail()
                    sample()
                    time.sleep(0.5)

            run_for(STEADY_S)
            steady = [s for s in samples if s[0] > 2.0]  # after the first second's start-up
            burst_start = time.monotonic() - t0
            prod.rate = 10 * RATE
            run_for(BURST_S)
            prod.rate = RATE
            burst_end = time.monotonic() - t0
            threshold = max(max(s[1] for s in steady), RATE)  # the steady level, at least one second of traffic
            recovered_at = None
            while time.monotonic() - t0 < burst_end + RECOVER_WITHIN_S:
                run_for(0.5)
                if samples[-1][1] <= threshold:
                    recovered_at = samples[-1][0]
                    break
            assert recovered_at is not None, f"lag still {samples[-1][1]} > {threshold} after {RECOVER_WITHIN_S}s"
            run_for(AFTER_S)
        finally:
            prod.stop()
        try:
            assert not prod.errors, prod.errors[:3]
            wait_processed(own, topics, prod.acked, worker, timeout=120)  # nothing lost: every offset processed
            time.sleep(2)
            m = rss_kib(worker.proc.pid)
        finally:
            worker.stop()
        live = outputs(own, topics)
    events = [event(n) for n in range(prod.sent)]
    want = replay_outputs(tmp_path, rules, events)
    wm = max(e["ts"] for e in events) - 30_000
    decisions, repeats = without_repeats(live["decisions"])
    pages, _ = without_repeats(live["pages"])
    # per feature in order (features on different partitions interleave differently live and in replay)
    assert by_feature(decisions) == by_feature([d for d in want["decisions"] if parse_ts(d["ts"]) <= wm])
    assert canonical([p for p in pages if p["payload"]["class"] != "monitor-degraded"]) == canonical(
        [p for p in want["pages"] if parse_ts(p["payload"]["timestamp"]) <= wm])  # fmt: skip
    assert len(decisions) >= len(FEATURES)  # the errors fired (and resolved): the comparison is not empty
    rss_before = max(s[2] for s in steady) / 1024
    peak = max(s[3] for s in samples) / 1024
    assert peak < RSS_BOUND_MIB, f"peak RSS {peak:.0f} MiB"
    peak_lag = max(s[1] for s in samples)
    in_burst = [s for s in samples if burst_start <= s[0] <= burst_end]
    print(f"\n10x burst: {RATE} events/s, {10 * RATE} events/s for {BURST_S:.0f}s, then {RATE}: {prod.sent} events "
          f"({len(live['decisions'])} decisions, {repeats} identical repeats; {len(decisions)} distinct = replay), "
          f"0 lost\n  lag: steady max {max(s[1] for s in steady)}, peak {peak_lag} messages "
          f"(at {max(samples, key=lambda s: s[1])[0] - burst_start:.1f}s into the burst; max during the burst "
          f"{max(s[1] for s in in_burst)}), back to <= {threshold} {recovered_at - burst_end:.1f}s after the burst "
          f"ended\n  RSS: before {rss_before:.0f} MiB, peak (VmHWM) {peak:.0f} MiB, after {m['VmRSS'] / 1024:.0f} MiB")
