"""Kafka unavailable at start-up, then available (issue 12, point 4), on the real broker and Redis: the worker
waits with backoff (``/healthz`` alive, ``/ready`` not ready), starts once the broker listens, and its outputs equal
a clean replay of the same events. And the bound: an unreachable dependency for the whole
``ROLLGUARD_STARTUP_TIMEOUT`` is exit 2 with a clear message; a configuration error is not waited for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import redis

from rules.events import parse_ts
from streams.live.embedded import EmbeddedStack, free_port
from tests.live_kit import ROOT, LiveWorker, outputs, produce, wait_processed
from tests.test_fault_redis_snapshot import without_repeats
from tests.test_live_ops import interactions, replay_outputs, rule_yaml, rules_dir, wait_until
from streams.kafka.topics import Topics

BROKER_LATE_S = 8


def probe(port: int, path: str) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


@pytest.mark.slow
def test_a_worker_started_before_its_broker_waits_then_equals_a_clean_replay(topic_prefix, tmp_path):
    rules = rules_dir(tmp_path, rule_yaml(0.5, "kill"))
    features = ["late-a", "late-b"]
    events = [e for f in features for e in interactions(f, 0, 3, "ok") + interactions(f, 3, 6)]  # kills
    # a broker port where nothing listens yet; Redis is up
    own = EmbeddedStack(kafka_port=free_port(), workdir=tmp_path / "stack")
    own.workdir.mkdir()
    metrics = free_port()
    try:
        own.start_redis()
        topics = Topics(topic_prefix)
        worker = LiveWorker(own, topics, tmp_path / "worker.log", rules=json.dumps([str(rules)]),
                            metrics_port=str(metrics), startup_timeout="2m")  # fmt: skip
        started = time.monotonic()
        try:
            wait_until(lambda: worker.log.read_text().count("start-up attempt") >= 1, 30, "a failed attempt", worker)
            wait_until(lambda: probe(metrics, "/healthz") == 200, 15, "the liveness probe", worker)
            assert probe(metrics, "/ready") == 503  # waiting: alive, not ready
            # at least two failed attempts (each waits up to 10 s for the broker) and BROKER_LATE_S of waiting
            t0 = time.monotonic()
            wait_until(lambda: worker.log.read_text().count("start-up attempt") >= 2, 60, "a retry", worker)
            time.sleep(max(0.0, BROKER_LATE_S - (time.monotonic() - t0)))
            assert worker.alive() and probe(metrics, "/ready") == 503
            attempts = worker.log.read_text().count("start-up attempt")
            waited = time.monotonic() - started
            own.start_kafka()  # the broker arrives on the port the worker was told
            wait_until(lambda: "reachable after" in worker.log.read_text(), 60, "the worker to start", worker)
            wait_until(lambda: worker.assignments(topics.interactions)[-1:] == [{0, 1, 2, 3}], 60, "assignment",
                       worker)  # fmt: skip
            wait_until(lambda: probe(metrics, "/ready") == 200, 30, "readiness", worker)
            wait_processed(own, topics, produce(own, topics, events), worker, timeout=90)  # nothing lost
            time.sleep(2)
        finally:
            worker.stop()
        log = worker.log.read_text()
        live = outputs(own, topics)
    finally:
        own.stop()
    assert "cannot use Kafka at 127.0.0.1:" in log and "retrying in" in log
    want = replay_outputs(tmp_path, rules, events)
    wm = max(e["ts"] for e in events) - 30_000
    decisions, _ = without_repeats(live["decisions"])
    commands, _ = without_repeats(live["commands"])
    # per feature, in order: how two features' outputs interleave on a topic depends on which partition's batch
    # the worker took first, while each feature's own sequence (and hash chain) is what must be equal
    by_feature = lambda records: sorted(records, key=lambda r: r["feature"])  # noqa: E731 - stable: keeps order
    assert by_feature(decisions) == by_feature([d for d in want["decisions"] if parse_ts(d["ts"]) <= wm])
    assert by_feature(commands) == by_feature([c for c in want["commands"] if parse_ts(c["ts"]) <= wm])
    assert len(commands) == len(features)  # the incident was acted on: one rollback per feature
    print(f"\nbroker started {waited:.0f}s after the worker: {attempts} failed start-up attempts, /ready 503 "
          f"then 200; {len(events)} events, 0 lost, {len(decisions)} decisions and {len(commands)} rollbacks = replay")


def run_worker(env_vars: dict[str, str], timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, ROLLGUARD_USER_KEY="test-user-key-0123456789", ROLLGUARD_METRICS_PORT="0", **env_vars)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "worker", "--log-level", "info"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    return proc, time.monotonic() - t0


def test_redis_unreachable_for_the_whole_startup_timeout_exits_2_without_its_password(tmp_path):
    nowhere = free_port()  # Redis refuses at once: several attempts fit in 3 s
    proc, took = run_worker({"ROLLGUARD_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
                             "ROLLGUARD_REDIS_URL": f"redis://rollguard:s3cret-pw@127.0.0.1:{nowhere}/0",
                             "ROLLGUARD_STARTUP_TIMEOUT": "3s"})  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "gave up after waiting 3s" in proc.stderr and "ROLLGUARD_STARTUP_TIMEOUT=3s" in proc.stderr, out
    assert "cannot reach Redis" in proc.stderr and f"127.0.0.1:{nowhere}" in proc.stderr, out
    assert out.count("start-up attempt") >= 3, out  # backoff 0.5, 1, 2 s (jittered): each attempt logged
    assert "s3cret-pw" not in out
    assert 3 <= took < 30


def test_kafka_unreachable_for_the_whole_startup_timeout_exits_2(stack, tmp_path):
    proc, _ = run_worker({"ROLLGUARD_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
                          "ROLLGUARD_REDIS_URL": stack.redis_url, "ROLLGUARD_STARTUP_TIMEOUT": "2s"})  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "gave up after waiting" in proc.stderr and "cannot use Kafka at 127.0.0.1:" in proc.stderr


def test_a_configuration_error_is_not_waited_for(stack, tmp_path):
    """An evicting Redis with the broker down and a long start-up timeout: refused at the first attempt."""
    r = redis.Redis.from_url(stack.redis_url)
    r.config_set("maxmemory-policy", "allkeys-lru")
    try:
        proc, took = run_worker({"ROLLGUARD_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
                                 "ROLLGUARD_REDIS_URL": stack.redis_url, "ROLLGUARD_STARTUP_TIMEOUT": "5m"})
    finally:
        r.config_set("maxmemory-policy", "noeviction")
        r.close()
    assert proc.returncode == 2 and "allkeys-lru" in proc.stderr, proc.stdout + proc.stderr
    assert "start-up attempt" not in proc.stdout + proc.stderr and took < 30


def test_the_production_profile_refuses_insecure_settings_at_once(tmp_path):
    proc, took = run_worker({"ROLLGUARD_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
                             "ROLLGUARD_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "ROLLGUARD_PROFILE":
                             "production", "ROLLGUARD_STARTUP_TIMEOUT": "5m"})  # fmt: skip
    assert proc.returncode == 2 and "production profile refuses" in proc.stderr, proc.stdout + proc.stderr
    assert "start-up attempt" not in proc.stdout + proc.stderr and took < 30
