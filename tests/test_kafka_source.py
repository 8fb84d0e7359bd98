"""``replay --from-kafka``: a snapshot of the input topics replays exactly like the same events in a file, on the real
broker, without a consumer group or a commit."""

from __future__ import annotations

import argparse
import heapq
import itertools
from pathlib import Path

import orjson
import pytest

from rules.engine import EngineConfig
from rules.loader import CATALOG, load_rules
from streams.offline.kafka_source import KafkaSource, KafkaSourceError, add_from_kafka_args, source_from_args, time_arg
from streams.offline.replay import replay
from streams.offline.scenario import generate, scenario_from_args, write_jsonl
from streams.kafka.topics import Topics, ensure_topics

KEY = b"test-user-key"
START = 1_793_577_600_000  # the scenarios' start, 2026-11-02T00:00:00Z
HOUR = 3_600_000
ACTIONS = ("decisions.jsonl", "commands.jsonl", "pages.jsonl")
GARBAGE = [  # (after this many events, message value, expected dead-letter reasons)
    (10, b"not json at all", ["invalid_json"]),
    (2000, b'{"type": "interaction", "event_id": "g1", "ts": "yesterday", "feature": "email-reply",'
           b' "prompt": "secret text"}', ["schema"]),
    (4000, b'[{"type": "feedback", "event_id": "g2", "ts": 1793581200000, "feature": "summarize", "kind": "nope"},'
           b' 42]', ["schema", "not_an_object"]),
    (6000, None, ["invalid_json"]),  # a tombstone
]  # fmt: skip


def catalog():
    return load_rules([CATALOG])


def scenario_events() -> list[dict]:
    """Two features (two partitions of four), one rolled back, one paged for: ~19k events, ~0.5 s to generate."""
    a = generate(scenario_from_args("latency_spike", duration_ms="3h", mean_rate_per_s=1.0))
    b = generate(scenario_from_args("error_burst", duration_ms="3h", mean_rate_per_s=1.0, feature="summarize", seed=3))
    return list(heapq.merge(a, b, key=lambda e: e["ts"]))


def produce(bootstrap: str, topics: Topics, events: list[dict]) -> list[dict]:
    """Events to the interaction/feedback topics keyed by feature, every third run of 60 as batch envelopes of up to
    5 consecutive same-topic events, with GARBAGE in between. Message timestamps increase by 1 ms per message, so
    the merged replay order is the production order. Returns the garbage messages' expected dead-letter sources."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    clock = itertools.count(START)
    garbage = {at: (value, reasons) for at, value, reasons in GARBAGE}
    expected, futures, envelope = [], [], []

    def send(topic: str, key: str, value: bytes | None) -> object:
        return producer.send(topic, key=key.encode(), value=value, timestamp_ms=next(clock))

    def flush_envelope() -> None:
        if envelope:
            e = envelope[0]
            send(topics.interactions if e["type"] == "interaction" else topics.feedback, e["feature"],
                 orjson.dumps(envelope))  # fmt: skip
            envelope.clear()

    for i, e in enumerate(events):
        if i in garbage:
            flush_envelope()
            value, reasons = garbage[i]
            futures.append((send(topics.interactions, "email-reply", value), reasons))
        if (i // 60) % 3 == 0:
            head = envelope[0] if envelope else e
            if len(envelope) == 5 or (head["type"], head["feature"]) != (e["type"], e["feature"]):
                flush_envelope()
            envelope.append(e)
        else:
            flush_envelope()
            send(topics.interactions if e["type"] == "interaction" else topics.feedback, e["feature"], orjson.dumps(e))
    flush_envelope()
    producer.flush()
    for future, reasons in futures:
        md = future.get(timeout=10)
        expected += [{"topic": md.topic, "partition": md.partition, "offset": md.offset}] * len(reasons)
    producer.close()
    return expected


@pytest.fixture(scope="module")
def history(stack, tmp_path_factory):
    """The topics (a prefix of this module's own) and the same events as a JSONL file."""
    folder = tmp_path_factory.mktemp("kafka_source")
    topics = Topics(prefix="kafka-source.")
    ensure_topics(stack.kafka_bootstrap, topics, partitions=4)
    events = scenario_events()
    write_jsonl(events, folder / "events.jsonl")
    dead_sources = produce(stack.kafka_bootstrap, topics, events)
    return folder, topics, events, dead_sources


def run(out: Path, **kw):
    return replay(catalog(), kw.pop("paths", None), out, config=EngineConfig(), user_key=KEY, progress=False, **kw)


def source(stack, topics: Topics, since=None, until=None) -> KafkaSource:
    return KafkaSource(stack.kafka_bootstrap, [*topics.inputs(), topics.control], since, until, stall_timeout_s=10)


def lines(path: Path) -> list[dict]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def replays(stack, history, tmp_path_factory):
    """The whole history replayed from the file and from the topics (once: each replay takes ~1.5 s)."""
    folder, topics, _, _ = history
    out = tmp_path_factory.mktemp("replays")
    from_file = run(out / "file", paths=[str(folder / "events.jsonl")])
    from_kafka = run(out / "kafka", source=source(stack, topics))
    return out, from_file, from_kafka


def test_kafka_replay_equals_the_file_replay_of_the_same_events(history, replays):
    _, _, events, dead_sources = history
    out, from_file, from_kafka = replays
    assert from_file.counts["commands.jsonl"] and from_file.counts["pages.jsonl"]  # the comparison is not vacuous
    for name in ACTIONS:
        assert (out / "file" / name).read_bytes() == (out / "kafka" / name).read_bytes(), name
    assert from_kafka.events_read == len(events) + len(dead_sources) and from_kafka.outside_window == 0
    assert from_kafka.engine.stats.late == from_file.engine.stats.late
    assert "kafka://" in (out / "kafka" / "report.md").read_text()


def test_dead_letters_name_topic_partition_and_offset(history, replays):
    _, _, _, dead_sources = history
    out, _, from_kafka = replays
    dead = lines(out / "kafka" / "deadletter.jsonl")
    assert [d["source"] for d in dead] == dead_sources
    assert [d["reason"] for d in dead] == [r for _, _, reasons in GARBAGE for r in reasons]
    assert sum(from_kafka.invalid.values()) == len(dead)
    assert b"secret text" not in (out / "kafka" / "deadletter.jsonl").read_bytes()


def test_a_time_window_equals_the_file_cut_to_that_window(stack, history, tmp_path):
    folder, topics, events, _ = history
    since, until = START + HOUR, START + 2 * HOUR + HOUR // 2
    inside = [e for e in events if since <= e["ts"] < until]
    write_jsonl(inside, tmp_path / "cut.jsonl")
    cut = run(tmp_path / "cut", paths=[str(tmp_path / "cut.jsonl")])
    windowed = run(tmp_path / "window", source=source(stack, topics, since, until))
    assert cut.counts["decisions.jsonl"]
    for name in ACTIONS:
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "window" / name).read_bytes(), name
    assert windowed.outside_window == len(events) - len(inside)
    # an event outside the window is not read (invalid messages are, whatever their time: dead letters)
    assert windowed.events_read == cut.events_read + sum(windowed.invalid.values()) and cut.events_read == len(inside)
    # the same window over the whole file (the hot path of file replay)
    filed = run(tmp_path / "filed", paths=[str(folder / "events.jsonl")], since_ms=since, until_ms=until)
    assert (filed.events_read, filed.outside_window) == (len(inside), len(events) - len(inside))
    for name in ACTIONS:
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "filed" / name).read_bytes(), name
    assert "event time [2026-11-02T01:00:00Z, 2026-11-02T02:30:00Z)" in (tmp_path / "window" / "report.md").read_text()


def test_merge_order_is_message_time_then_topic_partition_offset(stack, history):
    _, topics, _, _ = history
    msgs = list(source(stack, topics).messages())
    keys = [(m.timestamp_ms, m.topic, m.partition, m.offset) for m in msgs]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert len({(m.topic, m.partition) for m in msgs}) == 4  # two features x two topics; two partitions stay empty


def test_replay_joins_no_group_and_commits_nothing(stack, history):
    from kafka import KafkaAdminClient

    _, topics, _, _ = history
    assert sum(1 for _ in source(stack, topics))
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    try:
        ours = set(topics.all())
        for group in [g["group_id"] for g in admin.list_groups()]:  # shared broker: only our topics matter
            offsets = admin.list_group_offsets(group).get(group, {})
            assert not {tp.topic for tp in offsets} & ours, group
    finally:
        admin.close()


def test_the_snapshot_ends_where_the_read_started(stack, topic_prefix):
    from kafka import KafkaProducer

    topics = Topics(prefix=topic_prefix)
    ensure_topics(stack.kafka_bootstrap, topics, partitions=2)
    producer = KafkaProducer(bootstrap_servers=stack.kafka_bootstrap, linger_ms=50)
    for i in range(300):  # one batch per partition: ends taken from ListOffsets alone would cut it (tansu)
        producer.send(topics.interactions, key=b"f%d" % (i % 2), value=b"before %d" % i)
    producer.flush()
    messages = KafkaSource(stack.kafka_bootstrap, [topics.interactions], stall_timeout_s=10).messages()
    first = next(messages)  # the snapshot is taken
    for i in range(100):
        producer.send(topics.interactions, key=b"f%d" % (i % 2), value=b"after %d" % i)
    producer.flush()
    producer.close()
    rest = [first, *messages]
    assert len(rest) == 300 and all(m.value.startswith(b"before") for m in rest)


def test_missing_topics_are_named(stack, topic_prefix):
    with pytest.raises(KafkaSourceError, match=f"{topic_prefix}nowhere"):
        list(KafkaSource(stack.kafka_bootstrap, [f"{topic_prefix}nowhere"], stall_timeout_s=5))


def test_an_unreachable_broker_is_a_rollguard_error():
    from streams.live.embedded import free_port

    src = KafkaSource(f"127.0.0.1:{free_port()}", ["t"], consumer_config={"bootstrap_timeout_ms": 1000})
    with pytest.raises(KafkaSourceError, match="cannot read"):
        list(src)


def test_a_group_in_the_consumer_config_is_refused():
    with pytest.raises(KafkaSourceError, match="group_id"):
        KafkaSource("127.0.0.1:1", ["t"], consumer_config={"group_id": "g"})


# --- command line --------------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """The replay subcommand as streams/cli.py is meant to wire it."""
    p = argparse.ArgumentParser()
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--events", nargs="+")
    add_from_kafka_args(p, group)
    return p


@pytest.mark.parametrize(
    "argv, topics, window",
    [
        ("--from-kafka h:9092", ["rollguard.interactions", "rollguard.feedback", "rollguard.control"], (None, None)),
        ("--from-kafka h:9092 --topic-prefix s. --since 2026-11-02T01:00:00Z --until 1793584800000",
         ["s.rollguard.interactions", "s.rollguard.feedback", "s.rollguard.control"], (START + HOUR, START + 2 * HOUR)),
    ],
    ids=["defaults", "prefix-and-window"],
)  # fmt: skip
def test_from_kafka_arguments_build_the_source(argv, topics, window):
    src = source_from_args(parser().parse_args(argv.split()))
    assert src.topics == topics and (src.since_ms, src.until_ms) == window and src.bootstrap == "h:9092"


def test_the_topic_prefix_defaults_to_the_settings_one():
    src = source_from_args(parser().parse_args(["--from-kafka", "h:1"]), default_prefix="prod.")
    assert src.topics[0] == "prod.rollguard.interactions"


def test_events_arguments_build_no_source():
    assert source_from_args(parser().parse_args(["--events", "a.jsonl", "--since", "0"])) is None


@pytest.mark.parametrize(
    "argv",
    ["", "--events a.jsonl --from-kafka h:1", "--from-kafka h:1 --since soon", "--from-kafka h:1 --until 2026-11-02"],
    ids=["no-input", "both-inputs", "bad-since", "until-without-time"],
)
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(argv.split())
    assert e.value.code == 2


def test_an_empty_window_is_refused():
    args = parser().parse_args("--from-kafka h:1 --since 1000 --until 1000".split())
    with pytest.raises(KafkaSourceError, match="before"):
        source_from_args(args)


def test_time_arguments_take_rfc3339_or_epoch_ms():
    assert time_arg("2026-11-02T01:00:00+01:00") == time_arg(str(START)) == START


def test_reload_requests_on_the_control_topic_are_not_inputs():
    from streams.offline.kafka_source import _is_reload

    assert _is_reload(b'{"type": "control", "action": "reload"}')
    assert not _is_reload(b'{"type": "control", "action": "resume", "feature": "f", "reason": "reload"}')
    assert not _is_reload(b'{"action": "reload"')
