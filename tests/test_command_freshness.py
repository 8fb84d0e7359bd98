"""Command freshness that survives backlog (issue 12, point 2): the worker signs the time it *published* a command
(Kafka record headers, rules.verify), so the documented actuator accepts a kill decided late and refuses the same
record re-sent an hour later; replay files, which carry no headers, stay byte-identical."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from rules.verify import (
    EMIT_SIGNATURE_HEADER, EMITTED_AT_HEADER, VerifierState, emission_from_headers, emission_headers, sign,
    verify_command,
)  # fmt: skip
from tests.live_kit import LiveWorker, produce, setup_topics, wait_processed
from tests.test_live_ops import rule_yaml, rules_dir

KEY = b"signing-secret"
KEYS = {"k1": KEY}
MAX_AGE = 5 * 60_000
NOW = 1_793_613_600_000
MIN = 60_000


def command(issued_at: int, seq: int = 1, cid: str = "c1") -> dict:
    cmd = {"command_id": cid, "feature": "f", "phase": "p", "action": "rollback", "seq": seq, "issued_at": issued_at,
           "key_id": "k1", "prev_hash": "0" * 64}  # fmt: skip
    cmd["signature"] = sign(cmd, KEY)
    return cmd


def check(cmd: dict, emission, now: int = NOW, state: VerifierState | None = None, require: bool = True):
    return verify_command(cmd, KEYS, now_ms=now, max_age_ms=MAX_AGE, state=state or VerifierState(),
                          emission=emission, require_emission=require)  # fmt: skip


LATE = command(NOW - 12 * MIN)  # decided after a 12-minute backlog
CASES = [
    # name, command, emission (None: no headers), now, require_emission, expected reason (None: accepted)
    ("late kill, emitted now", LATE, emission_from_headers(emission_headers(LATE, NOW - 2000, KEY)), NOW, True, None),
    ("same record an hour later", LATE, emission_from_headers(emission_headers(LATE, NOW - 2000, KEY)),
     NOW + 60 * MIN, True, "stale"),
    ("emitted in the future", LATE, emission_from_headers(emission_headers(LATE, NOW + 5 * MIN, KEY)), NOW, True,
     "future"),
    ("re-dated emission", LATE, (NOW, emission_from_headers(emission_headers(LATE, NOW - 60 * MIN, KEY))[1]), NOW,
     True, "bad_emission"),
    ("emission of another command", LATE,
     emission_from_headers(emission_headers(command(NOW, 2, "c2"), NOW, KEY)), NOW, True, "bad_emission"),
    ("emission under a guessed key", LATE, emission_from_headers(emission_headers(LATE, NOW, b"guess")), NOW, True,
     "bad_emission"),
    ("garbage emission time", LATE, emission_from_headers([(EMITTED_AT_HEADER, b"soon"),
                                                           (EMIT_SIGNATURE_HEADER, b"ab")]), NOW, True,
     "bad_emission"),
    ("only one header", LATE, emission_from_headers([(EMITTED_AT_HEADER, str(NOW).encode())]), NOW, True,
     "bad_emission"),
    ("no headers, emission required", LATE, None, NOW, True, "missing_emission"),
    ("no headers, old rule: late kill refused", LATE, None, NOW, False, "stale"),
    ("no headers, old rule: prompt kill accepted", command(NOW - MIN), None, NOW, False, None),
]  # fmt: skip


@pytest.mark.parametrize("name,cmd,emission,now,require,reason", CASES, ids=[c[0] for c in CASES])
def test_freshness_is_judged_by_the_signed_emission_time(name, cmd, emission, now, require, reason):
    assert check(cmd, emission, now, require=require).reason == reason


def test_a_replay_inside_max_age_is_caught_by_id_and_sequence():
    state = VerifierState()
    first = emission_from_headers(emission_headers(LATE, NOW, KEY))
    assert check(LATE, first, state=state).ok
    # the same command re-published (a worker crash): new emission time, same content
    assert check(LATE, emission_from_headers(emission_headers(LATE, NOW + 1000, KEY)), NOW + 1000, state).reason == \
        "duplicate"
    old = command(NOW - 20 * MIN, seq=1, cid="c0")  # an older, validly signed command emitted again
    assert check(old, emission_from_headers(emission_headers(old, NOW, KEY)), state=state).reason == "sequence"
    # the id is remembered by its emission time: pruning at max_age after *emission* keeps it that long
    assert state.prune(NOW + MAX_AGE, MAX_AGE) == 0 and state.prune(NOW + MAX_AGE + 1, MAX_AGE) == 1


# --- live: the documented actuator on records the worker published after a backlog --------------------------------


def actuator(tmp_path: Path, monkeypatch, state_name: str, clock_offset_s: float = 0.0):
    """docs/security.md's actuator example, executed, with its clock ``clock_offset_s`` ahead of the real one."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "security.md").read_text()
    (code,) = re.findall(r"<!-- actuator-example -->\n```python\n(.*?)```", doc, re.S)
    monkeypatch.setenv("ROLLGUARD_VERIFY_KEYS", "k1:" + KEY.decode())
    monkeypatch.setenv("FLAGS_VERIFIER_STATE", str(tmp_path / state_name))
    ns: dict = {}
    exec(compile(code, "docs/security.md", "exec"), ns)  # noqa: S102 - our own documentation

    class Clock:
        @staticmethod
        def time() -> float:
            return time.time() + clock_offset_s

    ns["time"] = Clock
    return ns["on_command"]


class Flags:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def disable(self, feature, cohort):
        self.calls.append(("disable", feature, cohort))

    def freeze_rollout(self, feature, cohort):
        self.calls.append(("freeze", feature, cohort))


def command_records(stack, topic: str, n: int, timeout: float = 60) -> list:
    c = KafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    got, deadline = [], time.time() + timeout
    while len(got) < n and time.time() < deadline:
        for msgs in c.poll(timeout_ms=500).values():
            got += msgs
    c.close()
    assert len(got) >= n, f"{len(got)} command records within {timeout}s"
    return got


@pytest.mark.slow
def test_a_kill_decided_after_a_backlog_is_accepted_and_the_same_record_an_hour_later_refused(
        stack, topic_prefix, tmp_path, monkeypatch):  # fmt: skip
    topics = setup_topics(stack, topic_prefix)
    rules = rules_dir(tmp_path, rule_yaml())
    # the backlog: errors whose event time is 16 to 10 minutes before the worker sees them
    start = int(time.time() * 1000) - 16 * MIN
    events = [{"type": "interaction", "event_id": f"late-{i}", "ts": start + i * 1000, "feature": "late",
               "outcome": "error", "latency_ms": 100} for i in range(6 * 60)]  # fmt: skip
    worker = LiveWorker(stack, topics, tmp_path / "worker.log", rules=json.dumps([str(rules)]),
                        signing_key=KEY.decode(), signing_key_id="k1")  # fmt: skip
    try:
        wait_processed(stack, topics, produce(stack, topics, events), worker, timeout=90)
        [rec] = command_records(stack, topics.commands, 1)
    finally:
        worker.stop()
    cmd = orjson.loads(rec.value)
    emitted_at, _ = emission_from_headers(rec.headers)
    assert cmd["action"] == "rollback" and emitted_at - cmd["issued_at"] >= 10 * MIN  # decided late
    assert EMITTED_AT_HEADER not in cmd  # the record itself is what replay writes: no emission field in it

    flags = Flags()
    on_command = actuator(tmp_path, monkeypatch, "now.json")
    assert on_command(rec.value, rec.headers, flags) is True
    assert flags.calls == [("disable", "late", "default")]
    # the same record re-sent an hour later: refused as stale by a fresh actuator and by the one that applied it
    for state in ("later.json", "now.json"):
        later = actuator(tmp_path, monkeypatch, state, clock_offset_s=3600)
        assert later(rec.value, rec.headers, flags) is False
    assert flags.calls == [("disable", "late", "default")]
    # the old rule (freshness by event time) would have refused the correct kill
    assert verify_command(cmd, KEYS, now_ms=int(time.time() * 1000), max_age_ms=MAX_AGE,
                          state=VerifierState()).reason == "stale"  # fmt: skip
