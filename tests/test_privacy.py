"""Privacy canary (issue 5, point 5): no raw user id or free text reaches a log, a metric label, Redis, an output
topic, a dead letter, a report or a Grafana annotation.

A live worker (debug logging, /metrics on) consumes a generated latency incident that ends in a kill, with canary
values mixed in: unique tokens in every place a user id or free text can enter (the ``user`` of interactions and
feedback, unknown free-text fields such as ``prompt``, ``completion``, ``comment``, ``ticket_text``, a user id in
an unknown ``email`` field, and inside invalid input: a malformed field, a free-text ``type``, a free-text object in
``segment``, a non-JSON message, a bare JSON string, a canary user with a bad timestamp, an oversized user id, a
rejected control message's ``reason``). An operator then resumes the feature with a canary reason and operator
name. Afterwards every sink is read back and searched for every canary, case-insensitively, in raw and JSON-escaped
form; pseudonyms (hex HMACs) are fine and are what must appear where identity is needed.

Segment *values* carry no canaries: they are labels by design (CONTRACT §2 groups metrics by them, and they become
metric labels), so a producer must not put user data there. The resume's ``reason`` and ``operator`` are
operator-authored text that docs/live.md publishes on purpose ("records a ``resolved`` decision with ``cause:
operator_resume``, the operator and the reason"): they are allowed on the control and decisions topics, in the
replayed decisions and in the Kafka clients' debug dumps of those records, and nowhere else (docs/observability.md:
never in annotations).

Sinks: the worker's log at debug level (line by line), its /metrics page and local data directory; every key and
value in Redis; key, value and headers of every record of every topic with the test's prefix except the two input
topics (outputs, dead letters, control, Faust's own); ``status --json``; an offline ``replay --charts all`` of the
same input (every file, PNGs included, and its output); ``audit head``, ``audit verify`` (topics and files) and
``verify``; ``annotate --once`` against a recording fake Grafana (every request). CLI commands run in-process and
what they log at debug level is scanned too.
"""

from __future__ import annotations

import json
import logging
import socket
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from rules.events import EventParser, InvalidEvent, Pseudonymizer, parse_ts, redact
from rules.sketches.hll import key_hash
from streams.cli import main
from streams.offline.scenario import generate, scenario_from_args, write_jsonl
from tests.grafana_fake import FakeGrafana
from tests.live_kit import LiveWorker, merge_offsets, produce, produce_raw, setup_topics, wait_processed

USER_KEY = "test-user-key-0123456789"  # what LiveWorker gives the worker
SIGNING_KEY, SIGNING_KEY_ID = "privacy-signing-key-0123", "k1"
GRAFANA_TOKEN = "glsa_privacy_0123456789abcdef"
FEATURE, PHASE = "email-reply", "closed_beta"
SEGMENT = {"platform": "desktop", "region": "us-east", "plan": "enterprise"}
RULES = """version: 1
name: privacy
features: ["email-reply"]
defaults: {every: 1m, min_samples: 30}
rules:
  - {id: p95-kill, tier: kill, metric: latency_p95, op: ">", threshold: 1200, window: 15m, for: 10m,
     summary: "P95 latency {value:.0f} ms > {threshold} ms"}
  - {id: p95-by-platform, tier: investigate, metric: latency_p95, op: ">", threshold: 900, window: 5m,
     group_by: [platform]}
  - {id: few-users, tier: investigate, metric: active_users, op: "<", threshold: 1, window: 5m, min_samples: 1}
  - {id: tickets, tier: investigate, metric: tickets_per_1k_users, op: ">", threshold: 100000, window: 15m,
     min_samples: 1}
  - {id: acceptance-drift, tier: investigate, drift: {detector: adwin, signal: acceptance}, keep_firing_for: 1h}
"""


@dataclass(frozen=True)
class Canary:
    """``token`` is searched for (any copy, cut or re-encoding of the value keeps it); ``value`` is what is sent."""

    token: str
    value: str
    kind: str  # user | text | operator

    def forms(self) -> set[bytes]:
        """Lower-cased byte forms to look for: the token, the value raw and JSON-escaped (ASCII or not)."""
        return {f.lower().encode() for f in (self.token, self.value, json.dumps(self.value)[1:-1],
                                             json.dumps(self.value, ensure_ascii=False)[1:-1])}  # fmt: skip


def _user(token: str) -> Canary:
    return Canary(token, f"{token}.jösé@example.com", "user")


def _text(token: str) -> Canary:
    return Canary(token, f'Hi — {token} here, card 4111 1111 1111 1111, "reset" my password', "text")


C = {
    "interaction_user": _user("CANARY-USER-7f3a91c4e2b8"),
    "feedback_user": _user("CANARY-USER-0d5e62a9b713"),
    "email_field": _user("CANARY-USER-a4c80f1e9d26"),
    "oversized_valid_user": _user("CANARY-USER-5b19e7d0c3fa"),
    "envelope_user": _user("CANARY-USER-e62d4a8b1f05"),
    "bad_ts_user": _user("CANARY-USER-93f0b5c7a1e4"),
    "long_user": _user("CANARY-USER-1c7a3e9f50bd"),
    "list_user": _user("CANARY-USER-8e4f2d6b0a97"),
    "non_json_user": _user("CANARY-USER-2a9d7c1e4f63"),
    "prompt": _text("CANARY-TEXT-4e8b0c2f7a19"),
    "completion": _text("CANARY-TEXT-b7d13f5a9e02"),
    "comment": _text("CANARY-TEXT-6f2a8d4c1b7e"),
    "ticket_text": _text("CANARY-TEXT-d0e95b3a7c21"),
    "survey_answer": _text("CANARY-TEXT-3c7e1a5f9d08"),
    "oversized_completion": _text("CANARY-TEXT-a15f8c3e6b90"),
    "envelope_prompt": _text("CANARY-TEXT-f48b2e6d0a3c"),
    "envelope_bad_field": _text("CANARY-TEXT-09c6a4e2d8f1"),
    "bad_field": _text("CANARY-TEXT-7a3d9f1b5e64"),
    "bad_label": _text("CANARY-TEXT-c2e80b6f4a1d"),
    "bad_type": _text("CANARY-TEXT-5d1f7b3e9c0a"),
    "segment_object": _text("CANARY-TEXT-e8a2c6f0d4b5"),
    "non_json_text": _text("CANARY-TEXT-1b5e9d3a7f2c"),
    "bare_string": _text("CANARY-TEXT-64f0a8e2c9d1"),
    "rejected_control_reason": _text("CANARY-TEXT-b3c9e5a1f7d0"),
    "resume_reason": Canary("CANARY-REASON-0f6d2b8e4a3c", "rolled back CANARY-REASON-0f6d2b8e4a3c, p95 ok", "operator"),
    "resume_operator": Canary("CANARY-OPERATOR-7c1e5a9d3b2f", "CANARY-OPERATOR-7c1e5a9d3b2f", "operator"),
}  # fmt: skip


def canary_messages(ts: int) -> tuple[list[bytes], list[bytes], Counter]:
    """(interactions topic values, feedback topic values, the dead-letter reasons they must produce)."""

    def ev(type_: str, n: int, **fields) -> dict:
        base = {"type": type_, "event_id": f"privacy-{n}", "ts": ts + n * 100, "feature": FEATURE, "phase": PHASE,
                "segment": SEGMENT}  # fmt: skip
        return {**base, **fields}

    def it(n: int, **fields) -> dict:
        return ev("interaction", n, **{"outcome": "ok", "latency_ms": 300.0, **fields})

    v = {k: c.value for k, c in C.items()}
    huge = ("lorem ipsum " * 25_000) + v["oversized_completion"]  # ~300 kB: valid, the extra field is dropped
    interactions = [
        it(1, user=v["interaction_user"], prompt=v["prompt"], completion=v["completion"], email=v["email_field"]),
        it(2, user=v["oversized_valid_user"], completion=huge),
        [it(3, user=v["envelope_user"], prompt=v["envelope_prompt"]), it(4, latency_ms=v["envelope_bad_field"])],
        it(5, user=v["bad_ts_user"]) | {"ts": "yesterday at noon"},
        it(6, latency_ms=v["bad_field"]),
        it(7, user=v["long_user"] + "x" * 10_000),
        it(8, user=[v["list_user"]]),
        it(9) | {"type": v["bad_type"]},
        it(10, segment={**SEGMENT, v["segment_object"]: {"note": v["segment_object"]}}),
        v["bare_string"],
        {"type": "control", "action": "resume-now", "event_id": "privacy-11", "ts": ts, "feature": FEATURE,
         "reason": v["rejected_control_reason"]},
    ]  # fmt: skip
    fb = [
        ev("feedback", 20, kind="suggestion", label="accepted", user=v["feedback_user"], comment=v["comment"]),
        ev("feedback", 21, kind="ticket", label="wrong_info", user=v["feedback_user"], ticket_text=v["ticket_text"]),
        ev("feedback", 22, kind="survey", label="csat", score=2, user=v["feedback_user"], answer=v["survey_answer"]),
        ev("feedback", 23, kind="thumbs", label=v["bad_label"], user=v["feedback_user"]),
    ]  # fmt: skip
    non_json = f'{{"type":"interaction","user":"{v["non_json_user"]}","prompt":"{v["non_json_text"]}'.encode()
    # the control message on the interactions topic: refused for its topic (control_on_input_topic), not its schema
    reasons = Counter({"schema": 8, "control_on_input_topic": 1, "invalid_json": 1, "not_an_object": 1})
    return [orjson.dumps(m) for m in interactions] + [non_json], [orjson.dumps(m) for m in fb], reasons


# --- sinks: (sink, where, bytes) ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    topic: str
    where: str
    key: bytes
    value: bytes
    headers: bytes

    def blob(self) -> tuple[str, str, bytes]:
        return "topic", self.where, b"\n".join((self.key, self.value, self.headers))


def topic_records(stack, names: list[str]) -> list[Record]:
    """Every record (key, value, headers) of every partition of ``names``, read until silence."""
    c = KafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False, consumer_timeout_ms=2000)
    tps = [TopicPartition(n, p) for n in names for p in sorted(c.partitions_for_topic(n) or ())]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out = [Record(m.topic, f"{m.topic}:{m.partition}@{m.offset}", m.key or b"", m.value or b"",
                  b"".join(k.encode() + b"=" + (v or b"") for k, v in m.headers or ())) for m in c]  # fmt: skip
    c.close()
    return out


def topic_names(stack) -> list[str]:
    c = KafkaConsumer(bootstrap_servers=stack.kafka_bootstrap)
    try:
        return sorted(c.topics())
    finally:
        c.close()


def redis_blobs(r) -> list[tuple[str, str, bytes]]:
    """Every key and every value in the database, read by type (DUMP's encoding may compress)."""
    out = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        if kind == "string":
            parts = [r.get(key)]
        elif kind == "hash":
            parts = [x for kv in r.hgetall(key).items() for x in kv]
        elif kind == "set":
            parts = list(r.smembers(key))
        elif kind == "zset":
            parts = [m + b" " + str(s).encode() for m, s in r.zrange(key, 0, -1, withscores=True)]
        elif kind == "list":
            parts = r.lrange(key, 0, -1)
        elif kind == "stream":
            parts = [orjson.dumps({k.decode(): v.decode(errors="replace") for k, v in f.items()})
                     for _, f in r.xrange(key)]  # fmt: skip
        else:
            raise AssertionError(f"redis key {key!r} of unexpected type {kind}: extend the scan")
        out.append(("redis", key.decode(errors="replace"), key + b"\n" + b"\n".join(p or b"" for p in parts)))
    return out


def files(sink: str, root: Path) -> list[tuple[str, str, bytes]]:
    return [(sink, str(p.relative_to(root)), p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]


def orjson_lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def scan(blobs: list[tuple[str, str, bytes]], allowed) -> list[tuple[str, str, str]]:
    hits = []
    for sink, where, data in blobs:
        low = data.lower()
        for name, c in C.items():
            if any(f in low for f in c.forms()) and not allowed(sink, where, data, c):
                hits.append((sink, where, name))
    return hits


# --- the dead-letter view, without the stack ------------------------------------------------------------------

_IN, _FB, _ = canary_messages(0)


@pytest.mark.parametrize("message", _IN + _FB, ids=[f"message-{i}" for i in range(len(_IN + _FB))])
def test_a_rejected_message_is_dead_lettered_without_its_canaries(message):
    """Each canary message alone, as the worker and replay dead-letter it: reason, detail, redacted payload."""
    parser = EventParser(Pseudonymizer(USER_KEY.encode()))
    dead = [{"reason": e.reason, "detail": e.detail, "payload": redact(getattr(e, "payload", None), parser.pseudo)}
            for e in parser.parse_message(message) if isinstance(e, InvalidEvent)]  # fmt: skip
    assert scan([("dead letter", "", orjson.dumps(dead))], lambda *a: False) == []


# --- the run -----------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int, worker: LiveWorker) -> bytes:
    deadline = time.time() + 15
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.read()
        except OSError:
            if time.time() > deadline or not worker.alive():
                raise AssertionError(f"no /metrics on :{port}\n{worker.tail()}") from None
            time.sleep(0.2)


def wait_for(pred, what: str, worker: LiveWorker, timeout: float = 30):
    deadline = time.time() + timeout
    while not (found := pred()):
        if not worker.alive() or time.time() > deadline:
            raise AssertionError(f"no {what} within {timeout}s\n{worker.tail()}")
        time.sleep(0.3)
    return found


class Cli:
    """``rollguard ARGS...`` in-process; keeps what each command printed and logged (at debug level) as blobs."""

    def __init__(self, capsys, caplog) -> None:
        self.capsys, self.caplog = capsys, caplog
        self.blobs: list[tuple[str, str, bytes]] = []

    def __call__(self, *argv: str, sink: str | None = None) -> tuple[int, bytes]:
        self.capsys.readouterr()
        self.caplog.clear()
        with self.caplog.at_level(logging.DEBUG):
            code = main(list(argv))
        out, err = self.capsys.readouterr()
        name = " ".join(a for a in argv[:2] if not a.startswith("-"))
        if sink is not None:
            self.blobs.append((sink, f"{name}: output", (out + err).encode()))
        self.blobs += [("cli log", f"{name}: {r.name} {r.levelname}", r.getMessage().encode())
                       for r in self.caplog.records]  # fmt: skip
        return code, (out + err).encode()


@pytest.fixture
def cli(stack, topic_prefix, monkeypatch, capsys, caplog) -> Cli:
    """:class:`Cli` with the deployment's environment."""
    env = dict(KAFKA_BOOTSTRAP=stack.kafka_bootstrap, REDIS_URL=stack.redis_url, TOPIC_PREFIX=topic_prefix,
               STATE_NAMESPACE=f"{topic_prefix}rollguard", APP_ID=f"{topic_prefix}rollguard", USER_KEY=USER_KEY,
               SIGNING_KEY=SIGNING_KEY, SIGNING_KEY_ID=SIGNING_KEY_ID, SESSION_TIMEOUT_S="2")  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(f"ROLLGUARD_{k}", v)
    monkeypatch.setenv("GRAFANA_TOKEN", GRAFANA_TOKEN)
    return Cli(capsys, caplog)


@pytest.mark.slow
def test_no_canary_reaches_any_sink(stack, topic_prefix, redis_client, tmp_path, cli):
    topics = setup_topics(stack, topic_prefix)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "privacy.yaml").write_text(RULES)
    events = list(generate(scenario_from_args("latency_spike", duration_ms="4h", mean_rate_per_s=1.0, seed=5)))
    # the canaries go in 5 minutes before the end: applied (not late), and their buckets still in Redis at the end
    t_canary = parse_ts(events[-1]["ts"]) - 5 * 60_000
    split = next(i for i, e in enumerate(events) if parse_ts(e["ts"]) >= t_canary)
    to_interactions, to_feedback, dead_reasons = canary_messages(t_canary)
    port = free_port()
    worker = LiveWorker(stack, topics, tmp_path / "worker.log", log_level="debug", rules=json.dumps([str(rules)]),
                        metrics_port=str(port), metrics_host="127.0.0.1", signing_key=SIGNING_KEY,
                        signing_key_id=SIGNING_KEY_ID)  # fmt: skip
    try:
        last = merge_offsets(
            produce(stack, topics, events[:split], envelope=50),
            produce_raw(stack, topics.interactions, FEATURE.encode(), to_interactions),
            produce_raw(stack, topics.feedback, FEATURE.encode(), to_feedback),
            produce(stack, topics, events[split:], envelope=50),
        )
        wait_processed(stack, topics, last, worker, timeout=60)
        kills = [r for r in topic_records(stack, [topics.commands]) if b'"rollback"' in r.value]
        assert kills, f"the scenario must end in a kill\n{worker.tail()}"
        code, _ = cli("resume", FEATURE, "--reason", C["resume_reason"].value, "--operator",
                      C["resume_operator"].value)  # fmt: skip
        assert code == 0
        wait_for(lambda: [r for r in topic_records(stack, [topics.decisions]) if b"operator_resume" in r.value],
                 "resume decision", worker)  # fmt: skip
        metrics = scrape(port, worker)
    finally:
        worker.stop()

    log = worker.log.read_bytes()
    assert b"[DEBUG]" in log and b"rollguard_" in metrics  # the scans below read something
    blobs = [("worker log", f"line {n}", line) for n, line in enumerate(log.splitlines(), 1)]
    blobs.append(("metrics", "/metrics", metrics))
    # the worker's local directory (Faust's datadir; rollguard keeps its state in Redis, so normally empty)
    blobs += files("worker datadir", Path(tempfile.gettempdir()) / "rollguard-faust" / f"{topic_prefix}rollguard")
    blobs += redis_blobs(redis_client)
    inputs = {topics.interactions, topics.feedback}  # they hold the canaries by construction: the positive control
    published = topic_records(stack, [n for n in topic_names(stack) if n.startswith(topic_prefix) and n not in inputs])
    assert {r.topic for r in published} >= set(topics.outputs()) | {topics.control}
    blobs += [r.blob() for r in published]
    code, out = cli("status", "--json", sink="status --json")
    assert code == 0 and FEATURE.encode() in out

    # offline replay of the same input (the control message as the worker read it, last)
    jsonl = tmp_path / "events.jsonl"
    write_jsonl(events, jsonl)
    control = [r.value for r in topic_records(stack, [topics.control])]
    with jsonl.open("ab") as f:
        for value in to_interactions + to_feedback + control:
            f.write(value + b"\n")
    replayed = tmp_path / "replay"
    code, out = cli("replay", "--rules", str(rules), "--events", str(jsonl), "--out", str(replayed),
                    "--charts", "all", "--no-progress", sink="replay")  # fmt: skip
    assert code == 0, out
    blobs += files("replay", replayed)
    assert {"report.md", "deadletter.jsonl"} <= {w for s, w, _ in blobs if s == "replay"}
    assert any(w.endswith(".png") for s, w, _ in blobs if s == "replay")

    heads = tmp_path / "heads.json"
    kafka = ["--from-kafka", stack.kafka_bootstrap]
    for argv in (["audit", "head", "--out", str(heads)], ["audit", "verify", *kafka, "--head", str(heads)],
                 ["verify", *kafka, "--max-age", "off"],
                 ["audit", "verify", str(replayed / "decisions.jsonl"), str(replayed / "commands.jsonl")]):
        code, out = cli(*argv, sink="audit")
        assert code == 0, out
    blobs.append(("audit", "heads.json", heads.read_bytes()))

    with FakeGrafana(GRAFANA_TOKEN) as grafana:
        code, out = cli("annotate", "--url", grafana.url, "--once", "--log-level", "debug", sink="grafana")
        assert code == 0, out
        assert grafana.violations == [] and grafana.annotations
        blobs += [("grafana", f"{r.method} {r.path}", f"{r.path}\n{json.dumps(r.body, ensure_ascii=False)}".encode())
                  for r in grafana.requests]  # fmt: skip

    def allowed(sink: str, where: str, data: bytes, c: Canary) -> bool:
        """Operator-authored resume text is published on purpose on the control and decisions topics, so it is also
        in the replayed decisions and in the Kafka clients' debug dumps of those records (aiokafka logs every record
        it sends, kafka-python the wire bytes); a user id or free text from an event is allowed nowhere."""
        if c.kind != "operator":
            return False
        return (
            (sink == "topic" and where.startswith((f"{topics.control}:", f"{topics.decisions}:")))
            or (sink == "replay" and where == "decisions.jsonl")
            or (sink == "worker log" and b"[DEBUG] Sending (key=" in data)
            or (sink == "cli log" and where.split(": ", 1)[1].startswith("kafka."))
        )

    hits = scan(blobs + cli.blobs, allowed)
    assert not hits, "canaries leaked:\n" + "\n".join(f"  {s:14} {w:60} {n}" for s, w, n in hits)

    # --- positive controls: the canaries really went in and were processed ---------------------------------------
    fed = topic_records(stack, sorted(inputs))
    found = {n for n, c in C.items() for r in fed if any(f in r.value.lower() for f in c.forms())}
    assert found == {n for n, c in C.items() if c.kind != "operator"}
    assert all(any(C[n].token.encode() in v for v in control) for n in ("resume_reason", "resume_operator"))
    resumed = [orjson.loads(r.value) for r in topic_records(stack, [topics.decisions])]
    assert any(d.get("reason") == C["resume_reason"].value for d in resumed)  # the allowance is not vacuous

    dead = [orjson.loads(r.value) for r in topic_records(stack, [topics.deadletter])]
    assert Counter(d["reason"] for d in dead) == dead_reasons
    assert all(d["source"]["topic"] in inputs and d["source"]["offset"] >= 0 for d in dead)
    pseudo = Pseudonymizer(USER_KEY.encode())
    users = {d["payload"].get("user") for d in dead}
    assert {pseudo(C["bad_ts_user"].value), pseudo(C["long_user"].value + "x" * 10_000), "<redacted>"} <= users
    # a file has no topics: the control written to the interactions topic is judged by its schema in a replay,
    # where the worker refused it first for coming from an input topic
    offline = dead_reasons - Counter({"control_on_input_topic": 1}) + Counter({"schema": 1})
    assert Counter(d["reason"] for d in orjson_lines(replayed / "deadletter.jsonl")) == offline

    # identity where it is needed: the distinct-user sketches in Redis hold hashes of the pseudonyms, not of raw ids
    # (window buckets are binary: an exact sketch holds each hash as a little-endian uint64)
    state = b"\n".join(d for _, _, d in redis_blobs(redis_client))
    for name in ("interaction_user", "oversized_valid_user", "envelope_user"):
        assert key_hash(pseudo(C[name].value)).to_bytes(8, "little") in state, name
        assert key_hash(C[name].value).to_bytes(8, "little") not in state, name
        assert str(key_hash(C[name].value)).encode() not in state, name

