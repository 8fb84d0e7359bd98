"""Who may resume, live (issue 12, point 1): a worker with operator keys on the real broker and Redis refuses an
unsigned resume, a wrongly signed one, a resume on the input topic, a replayed one and an unsigned reload — each
dead-lettered with its reason and counted, the kill staying latched — and applies a valid resume, recording the
operator key id in the audit chain."""

from __future__ import annotations

import json
import urllib.request

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from streams.cli import main
from tests.live_kit import LiveWorker, produce, setup_topics, wait_processed
from tests.test_live_metrics import free_port
from tests.test_live_ops import USER_KEY, Tail, interactions, produce_each, rule_yaml, rules_dir, wait_until

OPERATOR_KEYS = "op-1:live-operator-secret,op-2:next-operator-secret"


@pytest.fixture
def rg(stack, monkeypatch, capsys):
    """``rollguard ARGS...`` in-process, as an operator whose shell holds ``key`` (None: no operator key)."""

    def run(topics, *argv: str, key: str | None = None, key_id: str = "op-1") -> tuple[int, str, str]:
        for k, v in dict(KAFKA_BOOTSTRAP=stack.kafka_bootstrap, REDIS_URL=stack.redis_url, TOPIC_PREFIX=topics.prefix,
                         STATE_NAMESPACE=f"{topics.prefix}rollguard", USER_KEY=USER_KEY).items():  # fmt: skip
            monkeypatch.setenv(f"ROLLGUARD_{k}", v)
        if key is None:
            monkeypatch.delenv("ROLLGUARD_OPERATOR_KEY", raising=False)
        else:
            monkeypatch.setenv("ROLLGUARD_OPERATOR_KEY", key)
        monkeypatch.setenv("ROLLGUARD_OPERATOR_KEY_ID", key_id)
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def latch(rg, topics, feature: str) -> str | None:
    code, out, err = rg(topics, "status", "--json")
    assert code == 0, err
    return {r["feature"]: r for r in json.loads(out)}[feature]["phases"]["default"]["latch"]


def last_control(stack, topics) -> bytes:
    c = KafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topics.control, 0)
    c.assign([tp])
    end = c.end_offsets([tp])[tp]
    c.seek(tp, end - 1)
    [m] = [m for msgs in c.poll(timeout_ms=5000).values() for m in msgs][:1]
    c.close()
    return m.value


def invalid_counter(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("rollguard_invalid_events_total{"):
            reason = line.split('reason="')[1].split('"')[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


@pytest.mark.slow
def test_only_a_validly_signed_resume_on_the_control_topic_clears_a_kill(stack, topic_prefix, tmp_path, rg):
    topics = setup_topics(stack, topic_prefix)
    rules = rules_dir(tmp_path, rule_yaml())
    port = free_port()
    worker = LiveWorker(stack, topics, tmp_path / "worker.log", rules=json.dumps([str(rules)]),
                        operator_keys=OPERATOR_KEYS, metrics_port=port)  # fmt: skip
    decisions, commands, dead = Tail(stack, topics.decisions), Tail(stack, topics.commands), Tail(stack, topics.deadletter)
    f = "guarded"

    def refused(reason: str) -> dict:
        [d] = dead.wait(lambda d: d["reason"] == reason, worker, what=f"{reason} dead letter")
        assert latch(rg, topics, f) == "kill", f"the kill must stay latched after {reason}"
        return d

    try:
        last = produce(stack, topics, interactions(f, 0, 6) + interactions(f, 6, 6, "ok"))
        wait_processed(stack, topics, last, worker, timeout=60)
        commands.wait(lambda c: c["action"] == "rollback", worker, what="rollback")
        assert latch(rg, topics, f) == "kill"

        # 1. unsigned: the operator's shell has no key
        code, out, err = rg(topics, "resume", f, "--reason", "looks fine", "--operator", "mallory")
        assert code == 0, err
        assert "unsigned" in out
        d = refused("control_unsigned")
        assert d["source"]["topic"] == topics.control and "looks fine" not in json.dumps(d)

        # 2. wrongly signed: a known key id with a guessed secret
        assert rg(topics, "resume", f, "--reason", "trust me", key="guessed-secret")[0] == 0
        refused("control_bad_signature")

        # 3. a validly signed resume written to the interactions topic (whoever can write inputs)
        from rules.control_auth import sign_control
        from streams.live.ops import resume_message

        forged = sign_control(resume_message(f, None, "via inputs", "mallory", 2_000_000_000_000), "op-1",
                              b"live-operator-secret")  # fmt: skip
        produce_each(stack, topics.interactions, f.encode(), [orjson.dumps(forged)])
        d = refused("control_on_input_topic")
        assert d["source"]["topic"] == topics.interactions
        produce_each(stack, topics.interactions, f.encode(), [b"[]"])  # an empty envelope is counted too
        dead.wait(lambda d: d["reason"] == "empty_envelope", worker, what="empty envelope dead letter")
        assert not [x for x in decisions.poll() if x.get("cause") == "operator_resume"]

        # 4. valid: signed with a rotated-in key on the control topic; the audit chain records the key id
        code, out, err = rg(topics, "resume", f, "--reason", "model v7 rolled back", "--operator", "alice",
                            key="next-operator-secret", key_id="op-2")  # fmt: skip
        assert code == 0 and "signed with operator key op-2" in out, err
        [res] = decisions.wait(lambda x: x.get("cause") == "operator_resume", worker, what="resume decision")
        assert (res["key_id"], res["operator"], res["transition"]) == ("op-2", "alice", "resolved")
        assert res["prev_hash"] and res["hash"]
        wait_until(lambda: latch(rg, topics, f) is None, 15, "latch cleared", worker)
        valid = last_control(stack, topics)

        # 5. replayed: the same valid message again, after a new kill
        last = produce(stack, topics, interactions(f, 12, 6))
        wait_processed(stack, topics, last, worker, timeout=60)
        commands.wait(lambda c: c["action"] == "rollback", worker, n=2, what="second rollback")
        wait_until(lambda: latch(rg, topics, f) == "kill", 15, "second kill latched", worker)
        produce_each(stack, topics.control, f.encode(), [valid])
        d = refused("control_replayed")
        assert d["key_id"] == "op-2"
        assert len([x for x in decisions.poll() if x.get("cause") == "operator_resume"]) == 1

        # 6. an unsigned reload is refused too (and the rules are not re-read)
        assert rg(topics, "rules", "reload")[0] == 0
        [rl] = dead.wait(lambda d: d["reason"] == "control_unsigned" and d["source"]["offset"] > 0
                         and d["payload"].get("action") == "reload", worker, what="reload dead letter")  # fmt: skip
        assert "rules reloaded (control message)" not in worker.log.read_text()
        assert rg(topics, "rules", "reload", key="live-operator-secret")[0] == 0
        wait_until(lambda: "rules reloaded (control message)" in worker.log.read_text(), 20, "signed reload", worker)

        # every refusal is counted by reason
        counts = invalid_counter(port)
        assert counts.get("control_unsigned") == 2 and counts.get("control_bad_signature") == 1, counts
        assert counts.get("control_on_input_topic") == 1 and counts.get("control_replayed") == 1, counts
        assert counts.get("empty_envelope") == 1, counts
        assert worker.alive() and "Traceback" not in worker.log.read_text()
    finally:
        worker.stop()
        for t in (decisions, commands, dead):
            t.close()
