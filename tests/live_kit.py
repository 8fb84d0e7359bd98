"""Helpers for live-pipeline tests: real worker processes on the embedded stack, producing and reading topics."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import orjson
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streams.kafka.topics import Topics, ensure_topics

ROOT = Path(__file__).resolve().parent.parent


class LiveWorker:
    """``rollguard worker`` in a subprocess, with settings from the environment."""

    def __init__(self, stack, topics: Topics, log: Path, log_level: str = "info", **settings: str) -> None:
        env = dict(os.environ)
        env.update(
            ROLLGUARD_KAFKA_BOOTSTRAP=stack.kafka_bootstrap,
            ROLLGUARD_REDIS_URL=stack.redis_url,
            ROLLGUARD_TOPIC_PREFIX=topics.prefix,
            ROLLGUARD_APP_ID=f"{topics.prefix}rollguard",
            ROLLGUARD_STATE_NAMESPACE=f"{topics.prefix}rollguard",
            ROLLGUARD_IDLE_AFTER="off",
            ROLLGUARD_USER_KEY="test-user-key-0123456789",
            ROLLGUARD_SESSION_TIMEOUT_S="6",
        )
        env.update({f"ROLLGUARD_{k.upper()}": str(v) for k, v in settings.items()})
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--log-level", log_level],
            cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )  # fmt: skip

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def assignments(self, topic: str) -> list[set[int]]:
        """The partitions of ``topic`` this worker was given at each group (re)assignment so far, oldest first,
        read from Faust's INFO log table ("Setting newly assigned partitions ... for group")."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        out = []
        for block in _ASSIGNED.findall(text):
            row = re.search(rf"^\|\s*{re.escape(topic)}\s*\|\s*\{{([^}}]*)\}}\s*\|", block, re.M)
            out.append(_partition_set(row.group(1)) if row else set())
        return out


_ASSIGNED = re.compile(r"Setting newly assigned partitions(.*?)for group", re.S)


def _partition_set(text: str) -> set[int]:
    """Faust's partition set rendering: ``0-2, 5`` -> {0, 1, 2, 5}."""
    out: set[int] = set()
    for item in filter(None, (t.strip() for t in text.split(","))):
        lo, _, hi = item.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def setup_topics(stack, prefix: str, partitions: int = 4) -> Topics:
    topics = Topics(prefix)
    ensure_topics(stack.kafka_bootstrap, topics, partitions)
    return topics


def produce(stack, topics: Topics, events: Iterable[dict], envelope: int = 1) -> dict[str, int]:
    """Send events keyed by feature (envelopes of ``envelope`` per topic/feature); returns last offset per tp."""
    p = KafkaProducer(bootstrap_servers=stack.kafka_bootstrap, linger_ms=10, batch_size=1 << 20, acks="all")
    last: dict[str, int] = {}
    buf: dict[tuple[str, str], list] = {}

    def send(topic: str, feature: str, value: bytes) -> None:
        md = p.send(topic, key=feature.encode(), value=value)
        md.add_callback(lambda m: last.__setitem__(f"{m.topic}:{m.partition}", max(last.get(f"{m.topic}:{m.partition}", -1), m.offset)))

    for e in events:
        # eval runs ride the feedback stream (contract §6.1), so they go on its topic, as the emitter sends them
        topic = topics.feedback if e.get("type") in ("feedback", "eval") else topics.interactions
        if envelope == 1:
            send(topic, e.get("feature", ""), orjson.dumps(e))
            continue
        k = (topic, e["feature"])
        buf.setdefault(k, []).append(e)
        if len(buf[k]) >= envelope:
            send(topic, e["feature"], orjson.dumps(buf.pop(k)))
    for (topic, feature), evs in buf.items():
        send(topic, feature, orjson.dumps(evs))
    p.flush()
    p.close()
    return last


def produce_raw(stack, topic: str, key: bytes, values: list[bytes]) -> dict[str, int]:
    p = KafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    mds = [p.send(topic, key=key, value=v) for v in values]
    p.flush()
    p.close()
    last: dict[str, int] = {}
    for md in mds:
        m = md.get(10)
        last[f"{m.topic}:{m.partition}"] = max(last.get(f"{m.topic}:{m.partition}", -1), m.offset)
    return last


def merge_offsets(*lasts: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for last in lasts:
        for tp, off in last.items():
            out[tp] = max(out.get(tp, -1), off)
    return out


def processed_offsets(stack, topics: Topics, tps: Iterable[str]) -> dict[str, int]:
    """The processed offset Redis records per partition (-1: none yet)."""
    r = redis.Redis.from_url(stack.redis_url)
    ns = f"{topics.prefix}rollguard"
    try:
        return {tp: int(r.get(f"{ns}:{{tp:{tp}}}") or -1) for tp in tps}
    finally:
        r.close()


def wait_processed(stack, topics: Topics, last: dict[str, int], worker: LiveWorker | None = None,
                   timeout: float = 120) -> None:  # fmt: skip
    """Until Redis records every partition's last offset as processed."""
    r = redis.Redis.from_url(stack.redis_url)
    ns = f"{topics.prefix}rollguard"
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = {tp: int(r.get(f"{ns}:{{tp:{tp}}}") or -1) for tp in last}
        if all(done[tp] >= off for tp, off in last.items()):
            return
        if worker is not None and not worker.alive():
            raise AssertionError(f"worker died:\n{worker.tail()}")
        time.sleep(0.2)
    raise AssertionError(f"not processed within {timeout}s: {done} < {last}\n{worker.tail() if worker else ''}")


def read_topic(stack, topic: str) -> list[dict]:
    """Every message of a (single-partition) topic, decoded, in order."""
    c = KafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False, consumer_timeout_ms=1500)
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    out = [orjson.loads(m.value) for m in c]
    c.close()
    return out


def read_topics(stack, names: Iterable[str], timeout_ms: int = 1500) -> dict[str, list[dict]]:
    """Like ``read_topic`` for several (single-partition) topics at once: one consumer, one wait for silence.
    (Reads until silence: tansu's end offsets are not the log end, they may lag it by a record batch.)"""
    names = list(names)
    c = KafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False, consumer_timeout_ms=timeout_ms)
    tps = [TopicPartition(n, 0) for n in names]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out: dict[str, list[dict]] = {n: [] for n in names}
    for m in c:
        out[m.topic].append(orjson.loads(m.value))
    c.close()
    return out


def outputs(stack, topics: Topics) -> dict[str, list[dict]]:
    return {
        "decisions": read_topic(stack, topics.decisions),
        "commands": read_topic(stack, topics.commands),
        "pages": read_topic(stack, topics.pages),
        "deadletter": read_topic(stack, topics.deadletter),
    }


def read_jsonl(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
