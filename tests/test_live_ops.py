"""Operations on a running live pipeline, against the real broker and Redis: operator resume, rule hot reload
(folder poll and control message), dead letters, the degraded path when Redis dies, the eviction pre-flight and
idle watermarks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from rules.events import Pseudonymizer, parse_ts
from rules.loader import load_rules
from rules.outputs import iso
from streams.cli import main
from streams.live.embedded import EmbeddedStack
from streams.offline.replay import replay
from streams.offline.scenario import write_jsonl
from streams.settings import Settings
from tests.live_kit import (
    ROOT, LiveWorker, merge_offsets, outputs, produce, read_jsonl, setup_topics, wait_processed,
)  # fmt: skip

USER_KEY = "test-user-key-0123456789"
T0 = parse_ts("2024-03-01T00:00:00Z")
MIN = 60_000


# --- helpers ------------------------------------------------------------------------------------------------------


def rule_yaml(threshold: float = 0.5, tier: str = "kill") -> str:
    keep = "\n    keep_firing_for: 0s" if tier == "investigate" else ""
    return f"""version: 1
name: ops
features: ["*"]
rules:
  - id: errors
    tier: {tier}
    metric: error_rate
    op: ">"
    threshold: {threshold}
    window: 5m
    every: 1m
    min_samples: 5{keep}
"""


def rules_dir(tmp_path: Path, text: str) -> Path:
    d = tmp_path / "rules"
    d.mkdir(exist_ok=True)
    (d / "ops.yaml").write_text(text)
    return d


def interactions(feature: str, start_min: float, minutes: float, outcome: str = "error") -> list[dict]:
    """One interaction per second of event time from ``T0 + start_min`` for ``minutes``."""
    start = T0 + int(start_min * MIN)
    return [{"type": "interaction", "event_id": f"{feature}-{start + i * 1000}", "ts": start + i * 1000,
             "feature": feature, "outcome": outcome, "latency_ms": 120, "user": f"user-{i % 7}@example.com"}
            for i in range(int(minutes * 60))]  # fmt: skip


class Tail:
    """Incremental reader of a single-partition topic (manual assignment: no consumer group on tansu)."""

    def __init__(self, stack, topic: str) -> None:
        self.c = KafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False)
        tp = TopicPartition(topic, 0)
        self.c.assign([tp])
        self.c.seek_to_beginning(tp)
        self.records: list[dict] = []

    def poll(self) -> list[dict]:
        for msgs in self.c.poll(timeout_ms=200).values():
            self.records += [orjson.loads(m.value) for m in msgs]
        return self.records

    def wait(self, pred: Callable[[dict], bool], worker: LiveWorker | None = None, timeout: float = 30,
             n: int = 1, what: str = "") -> list[dict]:  # fmt: skip
        deadline = time.time() + timeout
        while True:
            found = [r for r in self.poll() if pred(r)]
            if len(found) >= n:
                return found
            if worker is not None and not worker.alive():
                raise AssertionError(f"worker died waiting for {what}:\n{worker.tail()}")
            if time.time() > deadline:
                raise AssertionError(f"no {what} within {timeout}s; have {self.records[-5:]}\n"
                                     f"{worker.tail() if worker else ''}")  # fmt: skip

    def close(self) -> None:
        self.c.close()


def wait_until(pred: Callable[[], bool], timeout: float, what: str, worker: LiveWorker | None = None) -> None:
    deadline = time.time() + timeout
    while not pred():
        if worker is not None and not worker.alive():
            raise AssertionError(f"worker died waiting for {what}:\n{worker.tail()}")
        if time.time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}\n{worker.tail() if worker else ''}")
        time.sleep(0.2)


def log_has(worker: LiveWorker, text: str) -> bool:
    return text in worker.log.read_text(errors="replace")


@pytest.fixture
def cli(stack, monkeypatch, capsys):
    """``rollguard ARGS...`` in-process with the deployment's environment; returns (exit code, stdout, stderr)."""

    def run(topics, *argv: str) -> tuple[int, str, str]:
        monkeypatch.setenv("ROLLGUARD_KAFKA_BOOTSTRAP", stack.kafka_bootstrap)
        monkeypatch.setenv("ROLLGUARD_REDIS_URL", stack.redis_url)
        monkeypatch.setenv("ROLLGUARD_TOPIC_PREFIX", topics.prefix)
        monkeypatch.setenv("ROLLGUARD_STATE_NAMESPACE", f"{topics.prefix}rollguard")
        monkeypatch.setenv("ROLLGUARD_USER_KEY", USER_KEY)
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def status(cli, topics) -> dict[str, dict]:
    code, out, err = cli(topics, "status", "--json")
    assert code == 0, err
    return {row["feature"]: row for row in json.loads(out)}


def produce_each(stack, topic: str, key: bytes, values: list[bytes | None]) -> list[tuple[int, int]]:
    """Send raw values one by one; returns (partition, offset) of each."""
    p = KafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    mds = [p.send(topic, key=key, value=v).get(10) for v in values]
    p.close()
    return [(m.partition, m.offset) for m in mds]


def replay_outputs(tmp_path: Path, rules: Path, events: list[dict]) -> dict[str, list[dict]]:
    path = tmp_path / "events.jsonl"
    write_jsonl(events, path)
    s = Settings(user_key=USER_KEY)
    out = tmp_path / "replay"
    replay(load_rules([str(rules)]), [str(path)], out, config=s.engine_config(), user_key=s.user_key_bytes(),
           progress=False)  # fmt: skip
    return {k: read_jsonl(out / f"{k}.jsonl") for k in ("decisions", "commands", "pages", "deadletter")}


# --- 1. operator resume -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_clears_the_latch_and_a_later_incident_fires_again(stack, topic_prefix, tmp_path, cli):
    topics = setup_topics(stack, topic_prefix)
    rules = rules_dir(tmp_path, rule_yaml())
    worker = LiveWorker(stack, topics, tmp_path / "worker.log", rules=json.dumps([str(rules)]))
    decisions, commands = Tail(stack, topics.decisions), Tail(stack, topics.commands)
    f = "resume-me"
    try:
        # errors, then healthy traffic: the kill latches and stays although the condition cleared
        last = produce(stack, topics, interactions(f, 0, 6) + interactions(f, 6, 6, "ok"))
        wait_processed(stack, topics, last, worker, timeout=60)
        [first] = commands.wait(lambda c: c["action"] == "rollback", worker, what="rollback")
        phase = status(cli, topics)[f]["phases"]["default"]
        assert (phase["tier"], phase["latch"]) == ("kill", "kill")
        assert [r["rule_id"] for r in phase["rules"]] == ["errors"]
        code, out, _ = cli(topics, "status", f)
        assert code == 0 and out.split("\n")[1].split()[:4] == [f, "default", "KILL", "kill"]

        code, out, err = cli(topics, "resume", f, "--reason", "prompt v7 reverted", "--operator", "alice")
        assert code == 0, err
        assert "resume of resume-me (all phases) sent" in out
        [res] = decisions.wait(lambda d: d.get("cause") == "operator_resume", worker, what="resume decision")
        assert (res["transition"], res["feature"], res["phase"], res["rule_id"]) == ("resolved", f, "default", "errors")
        assert (res["operator"], res["reason"]) == ("alice", "prompt v7 reverted")
        assert res["resume_id"].startswith("resume-")
        wait_until(lambda: status(cli, topics)[f]["phases"]["default"]["latch"] is None, 15, "latch cleared", worker)
        assert status(cli, topics)[f]["phases"]["default"]["tier"] == "ok"

        # the same failure again later: a new incident, a new rollback with a new command id
        last = produce(stack, topics, interactions(f, 12, 6))
        wait_processed(stack, topics, last, worker, timeout=60)
        rollbacks = commands.wait(lambda c: c["action"] == "rollback", worker, n=2, what="second rollback")
        assert len(rollbacks) == 2 and rollbacks[1]["command_id"] != first["command_id"]
        assert parse_ts(rollbacks[1]["ts"]) > T0 + 12 * MIN
        assert status(cli, topics)[f]["phases"]["default"]["latch"] == "kill"

    finally:
        worker.stop()
        decisions.close()
        commands.close()


@pytest.mark.slow
def test_resume_of_an_unknown_feature_and_control_garbage_do_not_stop_the_worker(stack, topic_prefix, tmp_path,
                                                                                 cli):  # fmt: skip
    topics = setup_topics(stack, topic_prefix)
    rules = rules_dir(tmp_path, rule_yaml())
    worker = LiveWorker(stack, topics, tmp_path / "worker.log", rules=json.dumps([str(rules)]))
    pages = Tail(stack, topics.pages)
    f = "known"
    try:
        last = produce(stack, topics, interactions(f, 0, 2, "ok"))
        wait_processed(stack, topics, last, worker, timeout=60)
        assert cli(topics, "resume", "bad name!", "--reason", "x")[0] == 2  # refused before it is sent
        assert cli(topics, "resume", f, "--reason", "  ")[0] == 2
        code, _, err = cli(topics, "resume", "never-seen", "--reason", "typo in the feature name", "--phase", "beta")
        assert code == 0, err
        produce_each(stack, topics.control, b"x", [b"{not json", orjson.dumps({"type": "control", "action": "nap"})])
        last = produce(stack, topics, interactions(f, 2, 2, "ok"))
        wait_processed(stack, topics, last, worker, timeout=10)
        dead = Tail(stack, topics.deadletter).wait(lambda d: d["source"]["topic"] == topics.control, worker, n=2,
                                                   what="control dead letters")  # fmt: skip
        assert [d["reason"] for d in dead] == ["invalid_json", "schema"]
        assert "never-seen" not in status(cli, topics)
        assert not [p for p in pages.poll() if p["payload"]["class"] == "monitor-degraded"]
        # a reload afterwards saves the state of every feature the worker holds: none is missing
        assert cli(topics, "rules", "reload")[0] == 0
        wait_until(lambda: log_has(worker, "rules reloaded (control message)"), 20, "control reload", worker)
        assert not log_has(worker, "Traceback") and not log_has(worker, "failed")
        assert worker.alive()
    finally:
        worker.kill9() if worker.alive() else None  # a stuck worker would take 30 s to stop
        pages.close()


PROMO_YAML = """version: 1
name: ops-beta
features: ["*"]
phases: [beta]
rules:
  - {id: gate-errors, tier: investigate, mode: shadow, metric: error_rate, op: ">", threshold: 0.5, window: 2m,
     every: 1m, min_samples: 5}
promotion: {to: ga, gates: [gate-errors], min_exposure: {time: 3m, interactions: 20}, signoffs: [pm], auto: true}
"""


@pytest.mark.slow
def test_signoff_makes_the_promotion_ready_live_and_replay_agrees(stack, topic_prefix, tmp_path, cli):
    """`rollguard signoff` through the control topic: the worker records it, the promotion becomes ready with a
    promote_rollout command, status prints the checklist, a typo'd role is dead-lettered; replaying the same events and
    control records gives the same decisions and commands."""
    topics = setup_topics(stack, topic_prefix)
    rules = rules_dir(tmp_path, PROMO_YAML)
    worker = LiveWorker(stack, topics, tmp_path / "worker.log", rules=json.dumps([str(rules)]))
    decisions, commands, control = Tail(stack, topics.decisions), Tail(stack, topics.commands), Tail(stack, topics.control)
    f = "promo-me"
    now = int(time.time() * 1000) // MIN * MIN  # event time near the wall clock: a sign-off counts from its own time

    def beta(start: int, seconds: int) -> list[dict]:
        return [{"type": "interaction", "event_id": f"{f}-{start + i * 1000}", "ts": start + i * 1000, "feature": f,
                 "phase": "beta", "outcome": "ok", "latency_ms": 120, "user": f"user-{i % 7}@example.com"}
                for i in range(seconds)]  # fmt: skip

    try:
        before = beta(now - 6 * MIN, 6 * 60)
        last = produce(stack, topics, before)
        wait_processed(stack, topics, last, worker, timeout=60)
        assert status(cli, topics)[f]["phases"]["beta"]["promotions"][0]["verdict"] == "blocked"
        assert cli(topics, "signoff", f, "--phase", "beta", "--role", "pm", "--reason", "  ")[0] == 2
        code, out, err = cli(topics, "signoff", f, "--phase", "beta", "--role", "qa", "--reason", "typo")
        assert code == 0, err
        code, out, err = cli(topics, "signoff", f, "--phase", "beta", "--role", "pm", "--reason", "beta reviewed",
                             "--operator", "ann")  # fmt: skip
        assert code == 0 and "sign-off of promo-me/beta by role pm sent" in out, (out, err)
        [so] = decisions.wait(lambda d: d["transition"] == "signed_off", worker, what="sign-off decision")
        assert (so["role"], so["operator"], so["reason"], so["rule_id"]) == ("pm", "ann", "beta reviewed", "promotion")
        dead = Tail(stack, topics.deadletter).wait(lambda d: d["reason"] == "signoff_unknown", worker, what="dead letter")
        assert "role 'qa'" in dead[0]["detail"]
        after = beta(now + 5_000, 3 * 60)
        last = produce(stack, topics, after)
        wait_processed(stack, topics, last, worker, timeout=60)
        [ready] = decisions.wait(lambda d: d["transition"] == "ready", worker, what="ready verdict")
        [cmd] = commands.wait(lambda c: c["action"] == "promote_rollout", worker, what="promote command")
        assert (cmd["to"], cmd["phase"], cmd["decision_id"]) == ("ga", "beta", ready["decision_id"])
        assert ready["promotion"]["signoffs"]["signed"]["pm"]["operator"] == "ann"
        code, out, _ = cli(topics, "status", f)
        assert code == 0 and "promo-me/beta -> ga: READY" in out and "[x] sign-off pm: ann at" in out, out
        # replay: the same events and the control records, in the order the worker saw them
        controls = [c for c in control.wait(lambda c: c.get("action") == "signoff", worker, n=2, what="controls")]
        replayed = replay_outputs(tmp_path, rules, before + controls + after)
        live = [d for d in decisions.poll() if d["feature"] == f]
        assert [d["decision_id"] for d in replayed["decisions"]] == [d["decision_id"] for d in live]
        assert [c["command_id"] for c in replayed["commands"]] == [cmd["command_id"]]
        assert [d["reason"] for d in replayed["deadletter"]] == ["signoff_unknown"]
    finally:
        worker.stop()
        for t in (decisions, commands, control):
            t.close()


# --- 2. rule hot reload -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rules_folder_change_reloads_without_restart_and_invalid_rules_are_rejected(stack, topic_prefix, tmp_path):
    topics = setup_topics(stack, topic_prefix)
    rules = rules_dir(tmp_path, rule_yaml(0.5, "investigate"))
    [v1] = [r.version for r in load_rules([str(rules)])]
    worker = LiveWorker(stack, topics, tmp_path / "worker.log", rules=json.dumps([str(rules)]), rules_poll="1s")
    pid = worker.proc.pid
    decisions = Tail(stack, topics.decisions)
    f = "reload-me"
    try:
        # errors then recovery: firing, resolved under v1
        last = produce(stack, topics, interactions(f, 0, 6) + interactions(f, 6, 6, "ok"))
        wait_processed(stack, topics, last, worker, timeout=60)
        before = decisions.wait(lambda d: d["transition"] == "resolved", worker, what="v1 resolve")
        assert {d["ruleset_version"] for d in decisions.records} == {v1}
        n1 = len(decisions.poll())

        (rules / "ops.yaml").write_text(rule_yaml(0.4, "investigate"))
        [v2] = [r.version for r in load_rules([str(rules)])]
        assert v2 != v1
        wait_until(lambda: log_has(worker, "rules reloaded (rules folder changed)"), 20, "folder reload", worker)
        last = produce(stack, topics, interactions(f, 12, 6) + interactions(f, 18, 6, "ok"))
        wait_processed(stack, topics, last, worker, timeout=60)
        after = decisions.wait(lambda d: d["ruleset_version"] == v2 and d["transition"] == "resolved", worker,
                               what="v2 resolve")  # fmt: skip
        new = decisions.poll()[n1:]
        assert {d["ruleset_version"] for d in new} == {v2} and after[0]["threshold"] == 0.4
        assert [d["transition"] for d in new if d["transition"] in ("firing", "resolved")] == ["firing", "resolved"]
        assert before[0]["threshold"] == 0.5

        # a broken file is rejected with a located error; the worker keeps v2 and carries on
        (rules / "ops.yaml").write_text(rule_yaml(0.3, "investigate").replace("error_rate", "eror_rate"))
        wait_until(lambda: log_has(worker, "rules reload (rules folder changed) rejected, keeping version"), 20,
                   "rejection", worker)  # fmt: skip
        assert "ops.yaml:7: ruleset 'ops' rule 'errors': metric: unknown metric 'eror_rate'" in worker.log.read_text()
        n2 = len(decisions.poll())
        last = produce(stack, topics, interactions(f, 24, 6) + interactions(f, 30, 6, "ok"))
        wait_processed(stack, topics, last, worker, timeout=60)
        decisions.wait(lambda d: parse_ts(d["ts"]) > T0 + 30 * MIN, worker, what="decisions after the rejection")
        new = decisions.poll()[n2:]
        assert new and {d["ruleset_version"] for d in new} == {v2}
        assert worker.alive() and worker.proc.pid == pid
        assert worker.log.read_text().count("rules reloaded") == 1
    finally:
        worker.stop()
        decisions.close()


@pytest.mark.slow
def test_rules_reload_control_message(stack, topic_prefix, tmp_path, cli):
    """With polling effectively off, only ``rollguard rules reload`` makes the worker pick up a changed file."""
    topics = setup_topics(stack, topic_prefix)
    rules = rules_dir(tmp_path, rule_yaml(0.5, "investigate"))
    [v1] = [r.version for r in load_rules([str(rules)])]
    # an old reload request on the control topic is history: the worker loaded the rules after it
    assert cli(topics, "rules", "reload")[0] == 0
    worker = LiveWorker(stack, topics, tmp_path / "worker.log", rules=json.dumps([str(rules)]), rules_poll="1h")
    decisions = Tail(stack, topics.decisions)
    f = "reload-ctl"
    try:
        last = produce(stack, topics, interactions(f, 0, 6) + interactions(f, 6, 6, "ok"))
        wait_processed(stack, topics, last, worker, timeout=60)
        (rules / "ops.yaml").write_text(rule_yaml(0.4, "investigate"))
        [v2] = [r.version for r in load_rules([str(rules)])]
        last = produce(stack, topics, interactions(f, 12, 6) + interactions(f, 18, 6, "ok"))
        wait_processed(stack, topics, last, worker, timeout=60)
        decisions.wait(lambda d: parse_ts(d["ts"]) > T0 + 18 * MIN, worker, what="decisions of the second round")
        assert {d["ruleset_version"] for d in decisions.records} == {v1}  # the file changed, nobody asked
        assert not log_has(worker, "rules reloaded")

        n = len(decisions.poll())
        code, out, err = cli(topics, "rules", "reload")
        assert code == 0 and "reload requested" in out, err
        wait_until(lambda: log_has(worker, "rules reloaded (control message)"), 20, "control reload", worker)
        last = produce(stack, topics, interactions(f, 24, 6) + interactions(f, 30, 6, "ok"))
        wait_processed(stack, topics, last, worker, timeout=60)
        decisions.wait(lambda d: parse_ts(d["ts"]) > T0 + 30 * MIN, worker, what="decisions after the reload")
        new = decisions.poll()[n:]
        assert new and {d["ruleset_version"] for d in new} == {v2}
        assert worker.log.read_text().count("rules reloaded") == 1  # the historical request was not re-applied
    finally:
        worker.stop()
        decisions.close()


# --- 3. dead letters ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dead_letters_are_located_redacted_and_do_not_stop_valid_events(stack, topic_prefix, tmp_path, cli):
    topics = setup_topics(stack, topic_prefix)
    rules = rules_dir(tmp_path, rule_yaml())
    worker = LiveWorker(stack, topics, tmp_path / "worker.log", rules=json.dumps([str(rules)]))
    f = "dead-letters"
    secret = "please summarise my divorce papers"
    ok = [{"type": "interaction", "event_id": f"ok-{i}", "ts": T0 + i * MIN, "feature": f, "user": "u1"}
          for i in range(7)]  # fmt: skip
    bad_schema = {"type": "interaction", "event_id": "bad-1", "ts": T0, "feature": f, "user": "alice@example.com",
                  "outcome": "exploded", "prompt": secret, "model_version": secret}  # fmt: skip
    bad_item = {"type": "feedback", "event_id": "bad-2", "ts": T0, "feature": f, "kind": "thumbs",
                "label": "sideways", "user": "bob@example.com", "comment": secret}  # fmt: skip
    values = [
        b"{not json",
        b"",
        None,  # a tombstone
        orjson.dumps(bad_schema),
        orjson.dumps([ok[0], bad_item, ok[2]]),  # one bad item in an envelope: the others are applied
        orjson.dumps("just a string"),
        # a new feature's time is trusted once events of 5 messages agree (rules/clock.py): four more
        *(orjson.dumps(e) for e in ok[3:]),
    ]
    try:
        where = produce_each(stack, topics.interactions, f.encode(), values)
        wait_processed(stack, topics, {f"{topics.interactions}:{p}": o for p, o in where[-1:]}, worker, timeout=60)
        dead = Tail(stack, topics.deadletter).wait(lambda d: True, worker, n=6, what="dead letters")
        assert [(d["reason"], d["source"]["partition"], d["source"]["offset"]) for d in dead] == [
            ("invalid_json", *where[0]), ("not_an_object", *where[1]), ("not_an_object", *where[2]),
            ("schema", *where[3]), ("schema", *where[4]), ("not_an_object", *where[5]),
        ]  # fmt: skip
        assert {d["source"]["topic"] for d in dead} == {topics.interactions}
        assert dead[0]["payload"] == {"_payload": "<redacted 9 bytes>"}
        assert dead[4]["detail"].startswith("[1] ")
        pseudo = Pseudonymizer(USER_KEY.encode())
        assert dead[3]["payload"]["user"] == pseudo("alice@example.com")
        assert dead[4]["payload"]["user"] == pseudo("bob@example.com")
        assert "prompt" not in dead[3]["payload"] and "comment" not in dead[4]["payload"]
        text = orjson.dumps(dead).decode()
        for raw in ("alice@example.com", "bob@example.com", "divorce", "just a string"):
            assert raw not in text
        # the valid events of the envelope were applied with the rest: the watermark is the last one's - lateness
        assert status(cli, topics)[f]["watermark"] == iso(T0 + 6 * MIN - 30_000)
        assert worker.alive()
    finally:
        worker.stop()


# --- 4. Redis dies and comes back ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_redis_outage_pages_degraded_once_and_loses_nothing(topic_prefix, tmp_path):
    with EmbeddedStack() as own:
        topics = setup_topics(own, topic_prefix)
        rules = rules_dir(tmp_path, rule_yaml())
        worker = LiveWorker(own, topics, tmp_path / "worker.log", rules=json.dumps([str(rules)]))
        pages = Tail(own, topics.pages)
        f = "outage"
        first = interactions(f, 0, 5, "ok")
        second = interactions(f, 5, 8) + interactions(f, 13, 4, "ok")
        degraded = lambda p: p["payload"]["class"] == "monitor-degraded"  # noqa: E731
        try:
            last1 = produce(own, topics, first)
            wait_processed(own, topics, last1, worker, timeout=60)
            own.kill_redis()
            last2 = produce(own, topics, second)
            pages.wait(lambda p: degraded(p) and p["event_action"] == "trigger", worker, what="degraded page")
            wait_until(lambda: worker.log.read_text().count("retrying in") >= 4, 20, "several retries", worker)
            own.start_redis()  # same port and folder: the AOF brings the state back
            wait_processed(own, topics, merge_offsets(last1, last2), worker, timeout=60)
            pages.wait(lambda p: degraded(p) and p["event_action"] == "resolve", worker, what="degraded resolve")
            assert [p["event_action"] for p in pages.poll() if degraded(p)] == ["trigger", "resolve"]
            assert worker.alive()
        finally:
            worker.stop()
            pages.close()
        live = outputs(own, topics)
    events = first + second
    want = replay_outputs(tmp_path, rules, events)
    wm = iso(max(e["ts"] for e in events) - 30_000)
    assert [c["action"] for c in live["commands"]] == ["rollback"]
    assert live["decisions"] == [d for d in want["decisions"] if d["ts"] <= wm]
    assert live["commands"] == [c for c in want["commands"] if c["ts"] <= wm]
    assert [p for p in live["pages"] if not degraded(p)] == [p for p in want["pages"]
                                                               if p["payload"]["timestamp"] <= wm]  # fmt: skip
    assert live["deadletter"] == []


# --- 5. an evicting Redis is refused ------------------------------------------------------------------------------


@pytest.mark.slow
def test_worker_refuses_an_evicting_redis(stack, topic_prefix):
    r = redis.Redis.from_url(stack.redis_url)
    r.config_set("maxmemory-policy", "allkeys-lru")
    try:
        env = dict(os.environ, ROLLGUARD_KAFKA_BOOTSTRAP=stack.kafka_bootstrap, ROLLGUARD_REDIS_URL=stack.redis_url,
                   ROLLGUARD_TOPIC_PREFIX=topic_prefix, ROLLGUARD_USER_KEY=USER_KEY)  # fmt: skip
        proc = subprocess.run([sys.executable, "-m", "streams.cli", "worker"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    finally:
        r.config_set("maxmemory-policy", "noeviction")
        r.close()
    assert proc.returncode in (1, 2), proc.stdout + proc.stderr
    assert "maxmemory-policy" in proc.stderr and "noeviction" in proc.stderr and "allkeys-lru" in proc.stderr


# --- 6. idle watermark --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_idle_watermark_fires_traffic_stopped_without_new_events(stack, topic_prefix, tmp_path):
    topics = setup_topics(stack, topic_prefix)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "idle.yaml").write_text("""version: 1
name: idle
features: ["*"]
rules:
  - id: traffic-stopped
    tier: investigate
    metric: requests
    op: "<"
    threshold: 1
    window: 5s
    every: 5s
    min_samples: 0
""")
    worker = LiveWorker(stack, topics, tmp_path / "worker.log", rules=json.dumps([str(rules)]), idle_after="2s",
                        allowed_lateness="1s")  # fmt: skip
    decisions = Tail(stack, topics.decisions)
    f = "goes-quiet"
    try:
        events = interactions(f, 0, 1, "ok")
        last = produce(stack, topics, events)
        wait_processed(stack, topics, last, worker, timeout=60)
        assert not [d for d in decisions.poll() if d["transition"] == "firing"]
        [fired] = decisions.wait(lambda d: d["transition"] == "firing", worker, timeout=40, what="idle firing")
        assert fired["rule_id"] == "traffic-stopped" and fired["value"] == 0
        assert fired.get("idle_watermark") and parse_ts(fired["idle_watermark"]) >= parse_ts(fired["ts"])
        assert parse_ts(fired["ts"]) > max(e["ts"] for e in events)
    finally:
        worker.stop()
        decisions.close()
