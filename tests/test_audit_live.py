"""The audit trail on the real embedded broker and Redis: a worker's batch processor (restarted half-way, so the
second one continues the chains from Redis state) publishes decisions and commands; ``rollguard audit head`` reads
the chain heads from Redis, ``rollguard audit verify --from-kafka`` checks the topics against them and
``rollguard verify --from-kafka`` checks the command signatures; forged records on the topics are caught."""

from __future__ import annotations

import asyncio

import orjson
import redis.asyncio as aioredis
from kafka import KafkaProducer

from engine_kit import MIN, T0, rules
from rules.audit import link_hash
from rules.engine import Engine
from rules.events import EventParser, Pseudonymizer
from streams.cli import main
from streams.live.processor import Message, Processor
from streams.settings import Settings
from streams.live.store import RedisStore
from streams.kafka.topics import Topics
from tests.live_kit import setup_topics

RULES = rules("""
version: 1
name: t
features: ["*"]
rules:
  - {id: errors, tier: investigate, metric: error_rate, op: ">", threshold: 0.5, window: 1m, min_samples: 10}
  - {id: outage, tier: kill, metric: error_rate, op: ">", threshold: 0.5, window: 2m, min_samples: 10}
""")  # fmt: skip
USER_KEY = b"u" * 20
SETTINGS = Settings(user_key=USER_KEY.decode(), signing_key="new-secret", signing_key_id="k2")
PATTERN = "..xx..x.x.....xx..."


def messages() -> list[Message]:
    out: list[Message] = []
    for feature in ("f", "g"):
        for m, c in enumerate(PATTERN):
            for i in range(20):
                out.append({"type": "interaction", "event_id": f"{feature}-{m}-{i}", "ts": T0 + m * MIN + i * 3000,
                            "feature": feature, "phase": "p", "outcome": "error" if c == "x" else "ok"})  # fmt: skip
    out.append({"type": "control", "action": "resume", "event_id": "resume-1", "ts": T0 + 10 * MIN, "feature": "f",
                "phase": "p", "reason": "fixed", "operator": "oncall"})  # fmt: skip
    out.sort(key=lambda e: (e["ts"], e["event_id"]))
    # controls are accepted only from the control topic (issue 12); the events from an input topic
    return [Message(Topics().control if e["type"] == "control" else "in", 0, n, orjson.dumps(e))
            for n, e in enumerate(out)]  # fmt: skip


class ListPublisher:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes]] = []

    async def publish(self, records) -> None:
        self.records += list(records)


def processor(url: str, ns: str, pub: ListPublisher) -> Processor:
    return Processor(Engine(RULES, SETTINGS.engine_config()), RedisStore(aioredis.Redis.from_url(url), ns),
                     EventParser(Pseudonymizer(USER_KEY)), pub, topics=Topics(), detector_key=b"state-key",
                     max_backoff_s=0.05)  # fmt: skip


def produce(stack, records: list[tuple[str, bytes, bytes]]) -> None:
    p = KafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    for topic, key, value in records:
        p.send(topic, key=key, value=value)
    p.flush()
    p.close()


def test_chains_survive_a_restart_and_verify_on_the_topics_against_the_heads_in_redis(stack, topic_prefix, tmp_path,
                                                                                       capsys):  # fmt: skip
    topics = setup_topics(stack, topic_prefix)
    ns = f"{topic_prefix}audit"
    msgs = messages()
    pub = ListPublisher()

    async def go() -> None:
        first = processor(stack.redis_url, ns, pub)
        for i in range(0, len(msgs) // 2, 100):
            await first.process(msgs[i : min(i + 100, len(msgs) // 2)])
        second = processor(stack.redis_url, ns, pub)  # a restart: state, chains and counters come from Redis
        for i in range(len(msgs) // 2, len(msgs), 100):
            await second.process(msgs[i : i + 100])

    asyncio.run(go())
    # what the restarted pipeline published is exactly what one uninterrupted engine decides
    eng = Engine(RULES, SETTINGS.engine_config())
    parser = EventParser(Pseudonymizer(USER_KEY))
    ref = eng.step(x for m in msgs for x in parser.parse_message(m.value))
    published = {t: [orjson.loads(v) for tt, _, v in pub.records if tt == t] for t in (Topics().decisions,
                                                                                      Topics().commands)}  # fmt: skip
    assert published[Topics().decisions] == ref.decisions and published[Topics().commands] == ref.commands
    assert len(ref.commands) == 3  # f killed, resumed, killed again; g killed

    produce(stack, [(topic_prefix + t, k, v) for t, k, v in pub.records])
    heads = tmp_path / "heads.json"
    assert main(["audit", "head", "--redis-url", stack.redis_url, "--namespace", ns, "--out", str(heads)]) == 0
    want = {"decisions": {}, "commands": {}}
    for d in ref.decisions:
        want["decisions"][d["feature"]] = d["hash"]
    for c in ref.commands:
        want["commands"][c["feature"]] = c["hash"]
    assert orjson.loads(heads.read_bytes()) == want

    kafka = ["--from-kafka", stack.kafka_bootstrap, "--topic-prefix", topic_prefix]
    capsys.readouterr()
    assert main(["audit", "verify", *kafka, "--head", str(heads)]) == 0
    assert "ok: 4 chain(s)" in capsys.readouterr().out
    keys = tmp_path / "keys.txt"
    keys.write_text("k1:old-secret,k2:new-secret")
    assert main(["verify", *kafka, "--keys", str(keys), "--max-age", "off"]) == 0
    assert "3 accepted, 0 rejected" in capsys.readouterr().err

    # an attacker with write access to the topics: a forged command, and a decision linked into the past
    forged = dict(ref.commands[0], action="pause_rollout", command_id="forged", seq=9)
    early = ref.decisions[0]
    fake = dict(early, decision_id="forged", transition="resolved", prev_hash=early["hash"])
    fake["hash"] = link_hash(fake["prev_hash"], fake)
    produce(stack, [(topics.commands, b"f", orjson.dumps(forged)), (topics.decisions, fake["feature"].encode(),
                                                                     orjson.dumps(fake))])  # fmt: skip
    assert main(["verify", *kafka, "--keys", str(keys), "--max-age", "off"]) == 1
    out = capsys.readouterr().out
    assert "command_id=forged" in out and "bad_signature" in out
    assert main(["audit", "verify", *kafka, "--head", str(heads)]) == 1
    out = capsys.readouterr().out
    assert f"BROKEN fork       decisions/{early['feature']} at {topics.decisions}/0@" in out
