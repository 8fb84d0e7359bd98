"""Detection latency of a running worker (part of ``bench/worker.py``).

A ``rollguard worker`` runs with the bundled catalogue plus ``bench/latency_rules.yaml`` (a kill on any
``pii_leak`` flag, evaluated every 1 s over 10 s) and an allowed lateness of 1 s. Events are produced in real time
(event time = wall clock): a background feature at ~120 events/s, and one feature per trial (``lat-<i>``, ~40
events/s, a new trial every ``gap`` seconds so a few overlap). After ``warmup`` seconds a trial sends one interaction
flagged ``pii_leak``; a consumer polls the commands topic for the rollback of that feature. The warm-up (6.5 s) is
longer than a new feature's clock confirmation (``rules.clock``: its first events are held until 5 messages over
at least 5 s of their own time agree), so a trial measures a running feature; with the 1.5 s warm-up of earlier
runs, the leak waited for that confirmation and the latency read ~2 s higher.

Two latencies per trial, both ending when the command is readable on the commands topic:

* from the **tripping event**: the first event of the feature whose time moves the watermark (max event time − 1 s)
  past the first evaluation instant after the leak — the event the kill is decided on. This is the pipeline:
  Faust fetch, ``take_events`` batching (up to ``ROLLGUARD_BATCH_WITHIN``), parse, engine, publish and ack;
* from the **leak event**: adds what event time itself imposes: the allowed lateness plus the wait for the next
  ``every`` boundary (1-2 s with these settings; with the catalogue's own 1m rule and 30 s lateness, 30-90 s).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

BENCH = Path(__file__).resolve().parent
LATENESS_MS = 1000
EVERY_MS = 1000
TICK_S = 0.05
RULES = ("pii-leak-fast", "pii-leak")  # the bench rule and the catalogue's own


@dataclass
class Trial:
    feature: str
    start: float
    leak_wall: float | None = None
    leak_ts: int | None = None
    trip_wall: float | None = None
    seen: float | None = None  # wall clock when the command was read


@dataclass
class LatencyResult:
    trials: list[Trial] = field(default_factory=list)
    background_rate: float = 0.0
    worker_startup: float = 0.0
    fetch_floor: list[float] = field(default_factory=list)  # ms, see fetch_floor()
    fetch_wait_ms: int = 0  # the consumers' fetch_max_wait_ms

    def print(self) -> None:
        ok = [t for t in self.trials if t.seen is not None and t.trip_wall is not None]
        missed = len(self.trials) - len(ok)
        print(f"\ndetection latency: {len(ok)} trials ({missed} missed), events in real time at "
              f"~{self.background_rate:.0f} events/s, allowed lateness {LATENESS_MS / 1000:.0f}s, kill rule every "
              f"{EVERY_MS / 1000:.0f}s (bench/latency_rules.yaml) + the catalogue")  # fmt: skip
        if not ok:
            return
        trip = np.array([(t.seen - t.trip_wall) * 1000 for t in ok])
        leak = np.array([(t.seen - t.leak_wall) * 1000 for t in ok])
        print(f"{'from':<44} {'p50 ms':>8} {'p99 ms':>8} {'min':>7} {'max':>7}")
        rows = [("tripping event (watermark passes instant)", trip), ("pii_leak event", leak)]
        if self.fetch_floor:
            rows.append(("reference: broker fetch alone (see below)", np.array(self.fetch_floor)))
        for label, a in rows:
            print(f"{label:<44} {np.percentile(a, 50):>8.0f} {np.percentile(a, 99):>8.0f} {a.min():>7.0f} "
                  f"{a.max():>7.0f}")  # fmt: skip
        if self.fetch_floor:
            print("reference: produce -> consumed by a bare aiokafka consumer with fetch_max_wait_ms="
                  f"{self.fetch_wait_ms} (the worker's ROLLGUARD_FETCH_MAX_WAIT), on an otherwise idle topic")


def _feedback(feature: str, seq: int, ts: int) -> bytes:
    return orjson.dumps({"type": "feedback", "event_id": f"{feature}-fb-{seq}", "ts": ts, "feature": feature,
                         "phase": "canary", "kind": "suggestion", "label": ("accepted", "rejected")[seq % 2],
                         "user": f"u-{seq % 500}", "interaction_id": f"{feature}-{seq - 1}"})  # fmt: skip


def _event(feature: str, seq: int, ts: int, leak: bool = False) -> bytes:
    e = {"type": "interaction", "event_id": f"{feature}-{seq}", "ts": ts, "feature": feature, "phase": "canary",
         "segment": {"platform": ("desktop", "mobile")[seq % 2], "region": "us-east", "plan": "enterprise"},
         "user": f"u-{seq % 500}", "outcome": "ok", "latency_ms": 250.0 + seq % 100, "tokens_in": 900,
         "tokens_out": 200, "cost_usd": 0.0017, "confidence": 0.8}  # fmt: skip
    if leak:
        e["flags"] = ["pii_leak"]
    return orjson.dumps(e)


def _read_commands(bootstrap: str, topic: str, seen: dict[str, float], stop: threading.Event) -> None:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=5,
                      auto_offset_reset="earliest")  # fmt: skip
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    try:
        while not stop.is_set():
            for recs in c.poll(timeout_ms=5).values():
                now = time.time()
                for m in recs:
                    cmd = orjson.loads(m.value)
                    if cmd.get("rule_id") in RULES:
                        seen.setdefault(cmd["feature"], now)
    finally:
        c.close()


def _create_topic(bootstrap: str, name: str) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, 1, 1)])
    finally:
        admin.close()


def fetch_floor(bootstrap: str, topic: str, wait_ms: int, samples: int = 20) -> list[float]:
    """Milliseconds from sending a message to an aiokafka consumer (``fetch_max_wait_ms`` = ``wait_ms``, as the
    worker's) having it: what the broker's fetch wait alone adds to any Faust pipeline on this broker."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    async def run() -> list[float]:
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=wait_ms, enable_auto_commit=False,
                             auto_offset_reset="latest")  # fmt: skip
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        await c.start()
        await p.start()
        out: list[float] = []
        try:
            c.assign([TopicPartition(topic, 0)])
            await c.seek_to_end(TopicPartition(topic, 0))

            async def consume() -> None:
                while len(out) < samples:
                    for recs in (await c.getmany(timeout_ms=3000)).values():
                        now = time.time()
                        out.extend((now - float(m.value)) * 1000 for m in recs)

            task = asyncio.create_task(consume())
            await asyncio.sleep(0.5)
            for _ in range(samples):
                await p.send_and_wait(topic, str(time.time()).encode())
                await asyncio.sleep(0.137)
            await asyncio.wait_for(task, 10)
        finally:
            await p.stop()
            await c.stop()
        return out

    return asyncio.run(run())


def measure_latency(stack, topics, child_env, argv: list[str], logdir: Path, trials: int, gap: float = 0.4,
                    warmup: float = 6.5, trial_timeout: float = 20.0) -> LatencyResult:  # fmt: skip
    import redis
    from kafka import KafkaProducer

    from rules.durations import parse_duration
    from rules.loader import CATALOG
    from streams.kafka.topics import ensure_topics
    from streams.settings import Settings

    ensure_topics(stack.kafka_bootstrap, topics, 4)
    probe = f"{topics.prefix}bench.fetch-probe"
    _create_topic(stack.kafka_bootstrap, probe)
    wait_ms = parse_duration(Settings().fetch_max_wait)  # the worker child reads the same environment
    result = LatencyResult(fetch_floor=fetch_floor(stack.kafka_bootstrap, probe, wait_ms), fetch_wait_ms=wait_ms)
    app_id = f"{topics.prefix}worker-latency"
    env = child_env(stack, topics.prefix, app_id, RULES=json.dumps([str(CATALOG), str(BENCH / "latency_rules.yaml")]),
                    ALLOWED_LATENESS=f"{LATENESS_MS // 1000}s", MAX_KILLS_PER_HOUR="1000000")  # fmt: skip
    seen: dict[str, float] = {}
    stop = threading.Event()
    reader = threading.Thread(target=_read_commands, args=(stack.kafka_bootstrap, topics.commands, seen, stop),
                              daemon=True)  # fmt: skip
    reader.start()
    producer = KafkaProducer(bootstrap_servers=stack.kafka_bootstrap, linger_ms=0, acks=1)
    r = redis.Redis.from_url(stack.redis_url)
    seq = 0
    sent = 0

    def send(feature: str, leak: bool = False) -> int:
        """One interaction and one feedback event of ``feature`` at the wall clock: the feature's watermark is the
        lower of its two sources' (the catalogue reads both), so both must move for an instant to pass."""
        nonlocal seq, sent
        seq += 1
        sent += 2
        ts = int(time.time() * 1000)
        producer.send(topics.interactions, key=feature.encode(), value=_event(feature, seq, ts, leak))
        producer.send(topics.feedback, key=feature.encode(), value=_feedback(feature, seq, ts))
        return ts

    log = open(logdir / "worker-latency.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(argv, cwd=BENCH.parent, env=env, stdout=log, stderr=subprocess.STDOUT)
    t0 = time.time()
    try:
        # background traffic until the worker has committed a batch: it is up, joined and caught up
        while not any(r.scan_iter(f"{app_id}:{{tp:*")):
            if proc.poll() is not None or time.time() - t0 > 120:
                raise SystemExit(f"latency worker did not start; log: {log.name}")
            for _ in range(3):
                send("lat-bg")
            time.sleep(TICK_S)
        result.worker_startup = time.time() - t0
        start = time.time() + 1.0
        active = [Trial(f"lat-{i:03d}", start + i * gap) for i in range(trials)]
        result.trials = active
        sent, t_bg = 0, time.time()
        while True:
            tick = time.time()
            for _ in range(3):
                send("lat-bg")
            pending = 0
            for t in active:
                if tick < t.start or t.seen is not None or tick - t.start > trial_timeout:
                    pending += tick < t.start
                    continue
                pending += 1
                if t.leak_wall is None and tick - t.start >= warmup:
                    t.leak_wall = time.time()
                    t.leak_ts = send(t.feature, leak=True)
                    continue
                wall = time.time()
                ts = send(t.feature)
                if t.leak_ts is not None and t.trip_wall is None:
                    instant = (t.leak_ts // EVERY_MS + 1) * EVERY_MS
                    if ts - LATENESS_MS >= instant:
                        t.trip_wall = wall
                if t.feature in seen:
                    t.seen = seen[t.feature]
            for t in active:  # commands read since this tick's sends
                if t.seen is None and t.feature in seen:
                    t.seen = seen[t.feature]
            if not pending:
                break
            time.sleep(max(0.0, TICK_S - (time.time() - tick)))
        result.background_rate = sent / (time.time() - t_bg)
    finally:
        stop.set()
        producer.close()
        r.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()
        reader.join(5)
    return result
