"""The producer SDK (streams.emitter) against the real embedded broker, and ``rollguard emit`` end to end."""

from __future__ import annotations

import argparse
import gzip
import logging
import re
import time
from collections import defaultdict

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from rules.events import Control, EventParser, Pseudonymizer
from streams.live.embedded import free_port
from streams.emitter import Emitter, add_emit_parser, emit_events
from streams.kafka.topics import Topics, ensure_topics

KEY = b"test-key"
FEATURES = ("email-reply", "summarize", "search.v2")


def interaction(i: int, feature: str = "email-reply", **extra) -> dict:
    return {"type": "interaction", "event_id": f"{feature}-{i}", "ts": 1_793_577_600_000 + i, "feature": feature,
            "phase": "beta", "user": f"alice-{i % 7}", "latency_ms": 100 + i, "flags": [], **extra}  # fmt: skip


def feedback(i: int, feature: str = "email-reply") -> dict:
    return {"type": "feedback", "event_id": f"{feature}-fb-{i}", "ts": 1_793_577_600_000 + i, "feature": feature,
            "kind": "suggestion", "label": "accepted", "user": f"bob-{i % 3}"}  # fmt: skip


def mixed_events(n: int) -> list[dict]:
    """Interleaved features, both types, and one control event: order matters per feature."""
    out = [interaction(i, FEATURES[i % 3]) if i % 4 else feedback(i, FEATURES[i % 3]) for i in range(n)]
    out.insert(n // 2, {"type": "control", "event_id": "c1", "ts": 5, "action": "resume", "feature": "summarize",
                        "reason": "fixed"})  # fmt: skip
    return out


@pytest.fixture
def topics(stack, topic_prefix) -> Topics:
    t = Topics(prefix=topic_prefix)
    ensure_topics(stack.kafka_bootstrap, t, partitions=4)
    return t


def consume(bootstrap: str, topic: str, expect_events: int, timeout: float = 15.0) -> list:
    """Every record of ``topic`` (all partitions, from the beginning) once ``expect_events`` events arrived."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = sorted(consumer.partitions_for_topic(topic) or ())
        consumer.assign([TopicPartition(topic, p) for p in parts])
        consumer.seek_to_beginning()
        records, n, deadline = [], 0, time.monotonic() + timeout
        while n < expect_events and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=200).values():
                records += recs
                n += sum(len(v) if isinstance(v := orjson.loads(r.value), list) else 1 for r in recs)
        time.sleep(0.2)  # anything beyond the expected count would show up here
        for recs in consumer.poll(timeout_ms=200).values():
            records += recs
        return records
    finally:
        consumer.close()


def parsed(records, parser: EventParser) -> list:
    return [ev for r in records for ev in parser.parse_message(r.value)]


def by_feature(events) -> dict[str, list]:
    out = defaultdict(list)
    for ev in events:
        out[ev.feature].append(ev.event_id)
    return dict(out)


def test_envelopes_round_trip_in_order_keyed_by_feature(stack, topics):
    events = mixed_events(300)
    with Emitter(stack.kafka_bootstrap, topics, envelope_size=10, linger_ms=20) as em:
        assert all(em.emit(e) for e in events)
        assert em.flush(10)
        stats = em.stats
    assert (stats.accepted, stats.sent_events, stats.failed, stats.dropped) == (301, 301, 0, 0)
    parser = EventParser(Pseudonymizer(KEY))
    for topic, kind in ((topics.interactions, "interaction"), (topics.feedback, "feedback")):
        want = [parser.parse_obj(e) for e in events if e["type"] == kind]
        records = consume(stack.kafka_bootstrap, topic, len(want))
        got = parsed(records, parser)
        assert sorted(got, key=lambda e: e.event_id) == sorted(want, key=lambda e: e.event_id)
        assert by_feature(got) == by_feature(want)  # per-feature order survives batching and partitioning
        for r in records:
            body = orjson.loads(r.value)
            assert isinstance(body, list) and 1 <= len(body) <= 10
            assert {e["feature"] for e in body} == {r.key.decode()}
        partitions = defaultdict(set)
        for r in records:
            partitions[r.key].add(r.partition)
        assert all(len(p) == 1 for p in partitions.values())
    (control,) = parsed(consume(stack.kafka_bootstrap, topics.control, 1), parser)
    assert isinstance(control, Control) and control.feature == "summarize"


def test_envelope_size_one_sends_single_objects(stack, topics):
    events = [interaction(i) for i in range(20)]
    with Emitter(stack.kafka_bootstrap, topics, envelope_size=1) as em:
        for e in events:
            em.emit(e)
        assert em.flush(10)
        assert em.stats.sent_messages == 20
    records = consume(stack.kafka_bootstrap, topics.interactions, 20)
    bodies = [orjson.loads(r.value) for r in records]
    assert all(isinstance(b, dict) for b in bodies)
    assert [b["event_id"] for b in bodies] == [e["event_id"] for e in events]


def test_user_key_sends_the_pseudonym_and_unknown_fields_never_leave(stack, topics):
    event = interaction(1, prompt="my secret prompt text")
    with Emitter(stack.kafka_bootstrap, topics, user_key=b"service-key") as em:
        assert em.emit(event)
        assert em.flush(10)
    (record,) = consume(stack.kafka_bootstrap, topics.interactions, 1)
    assert b"alice" not in record.value and b"secret" not in record.value
    (body,) = orjson.loads(record.value)
    assert body["user"] == Pseudonymizer(b"service-key")("alice-1")


def closed_bootstrap() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there


INVALID = {
    "not_an_object": (["a", "list"], "not_an_object"),
    "missing_fields": ({"type": "interaction", "user": "carol@example.com"}, "schema"),
    "unknown_type": ({"type": "click", "event_id": "1", "ts": 0, "feature": "f"}, "schema"),
    "bad_feature": ({**interaction(1), "feature": "has space", "user": "carol@example.com"}, "schema"),
    "negative_latency": ({**interaction(1), "latency_ms": -1}, "schema"),
    "int_beyond_64_bits": ({**interaction(1), "tokens_in": 2**70}, "unencodable"),
    "none": (None, "not_an_object"),
}


@pytest.mark.parametrize("event, reason", INVALID.values(), ids=INVALID.keys())
def test_invalid_events_are_rejected_counted_and_logged_without_payload(event, reason, caplog):
    with Emitter(closed_bootstrap()) as em, caplog.at_level(logging.WARNING, logger="streams.emitter"):
        assert em.emit(event, where="line 9") is False
        stats = em.stats
        em.close(0.1)
    assert stats.rejected == {reason: 1} and stats.rejected_at == {reason: ["line 9"]}
    assert stats.accepted == 0
    assert f"event rejected: {reason} at line 9" in caplog.text
    assert "carol" not in caplog.text and "has space" not in caplog.text


def test_a_dead_broker_never_blocks_the_caller_and_a_full_queue_drops_and_counts():
    t0 = time.monotonic()
    em = Emitter(closed_bootstrap(), max_queue=50)
    assert time.monotonic() - t0 < 0.2  # the producer is created in the background
    t0 = time.monotonic()
    results = [em.emit(interaction(i)) for i in range(2_000)]
    assert time.monotonic() - t0 < 1.0
    assert results.count(True) == 50
    assert em.flush(0.2) is False
    t0 = time.monotonic()
    em.close(0.3)
    assert time.monotonic() - t0 < 1.0
    stats = em.stats
    assert (stats.accepted, stats.dropped, stats.failed, stats.sent_events) == (50, 1_950, 50, 0)
    assert em.emit(interaction(1)) is False and em.stats.dropped == 1_951  # closed: dropped, never raised


def test_emit_events_paces_to_the_rate(stack, topics):
    t0 = time.monotonic()
    stats = emit_events([interaction(i) for i in range(30)], stack.kafka_bootstrap, topics, rate=100)
    assert time.monotonic() - t0 >= 0.28
    assert stats.sent_events == 30 and stats.failed == 0


# --- rollguard emit ----------------------------------------------------------------------------------------------


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="rollguard")
    add_emit_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["emit", *argv])
    return args.func(args)


def test_cli_sends_a_generated_scenario(stack, topic_prefix, capsys):
    code = run_cli("--bootstrap", stack.kafka_bootstrap, "--topic-prefix", topic_prefix, "--create-topics",
                   "--scenario", "clean", "--days", "0.01", "--seed", "3")  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    accepted = int(re.search(r"accepted ([\d,]+),", out)[1].replace(",", ""))
    assert accepted > 1_000 and f"sent {accepted:,} events" in out and "failed 0" in out
    topics = Topics(prefix=topic_prefix)
    records = consume(stack.kafka_bootstrap, topics.interactions, accepted // 3)
    assert records and all(r.key == b"email-reply" for r in records)


def test_cli_sends_a_file_and_counts_garbage_lines(stack, topics, tmp_path, capsys, monkeypatch):
    path = tmp_path / "events.jsonl.gz"
    lines = [orjson.dumps(interaction(0)), b"{not json", b"", orjson.dumps({"type": "interaction"}),
             orjson.dumps(interaction(1))]  # fmt: skip
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    monkeypatch.setenv("ROLLGUARD_KAFKA_BOOTSTRAP", stack.kafka_bootstrap)
    assert run_cli("--topic-prefix", topics.prefix, "--events", str(path), "--envelope-size", "1") == 0
    out = capsys.readouterr().out
    assert "accepted 2, rejected 2 (invalid_json: 1 at line 2; schema: 1 at line 4)" in out
    assert "sent 2 events in 2 messages, failed 0" in out
    bodies = [orjson.loads(r.value) for r in consume(stack.kafka_bootstrap, topics.interactions, 2)]
    assert sorted(b["event_id"] for b in bodies) == ["email-reply-0", "email-reply-1"]


def test_cli_exits_1_when_deliveries_fail(tmp_path, capsys):
    path = tmp_path / "events.jsonl"
    path.write_bytes(orjson.dumps(interaction(0)) + b"\n")
    assert run_cli("--bootstrap", closed_bootstrap(), "--events", str(path), "--timeout", "0.3") == 1
    assert "accepted 1, rejected 0, dropped 0, sent 0 events in 0 messages, failed 1" in capsys.readouterr().out


def test_cli_exits_2_on_a_truncated_file(stack, topics, tmp_path, capsys):
    path = tmp_path / "events.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(orjson.dumps(interaction(i)) for i in range(500)))[:-30])
    code = run_cli("--bootstrap", stack.kafka_bootstrap, "--topic-prefix", topics.prefix, "--events", str(path))
    captured = capsys.readouterr()
    assert code == 2 and "unreadable_file: 1 at line" in captured.out and "could not be read" in captured.err


BAD_ARGS = {
    "missing_file": ["--events", "/nonexistent/events.jsonl"],
    "envelope_size_zero": ["--events", "-", "--envelope-size", "0"],
    "negative_rate": ["--events", "-", "--rate", "-1"],
    "seed_without_scenario": ["--events", "-", "--seed", "1"],
    "unknown_preset": ["--scenario", "no_such_preset"],
    "negative_days": ["--scenario", "clean", "--days", "-1"],
}


@pytest.mark.parametrize("argv", BAD_ARGS.values(), ids=BAD_ARGS.keys())
def test_cli_exits_2_on_bad_arguments(argv, capsys):
    assert run_cli("--bootstrap", closed_bootstrap(), *argv) == 2
    assert "rollguard: error:" in capsys.readouterr().err
