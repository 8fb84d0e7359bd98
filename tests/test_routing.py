"""Each input topic carries one stream (``streams.kafka.routing``): an event read from the other stream's topic is a
``wrong_topic`` dead letter, in ``rollguard replay --from-kafka`` as in the worker (tests/test_live_metrics.py
checks the worker on a real broker).

Why it matters, shown here: applied, a feedback event on the interactions topic would take its place among the
feedback by how the two topics interleave; refused, the decisions are the same however they interleave.
"""

from __future__ import annotations

import orjson

from rules.engine import EngineConfig
from streams.kafka.routing import input_streams
from streams.kafka.topics import Topics
from streams.offline.replay import replay
from tests.engine_kit import MIN, T0
from tests.test_control_auth import RULES, _TopicSource, events

THUMBS = {"type": "feedback", "event_id": "fb-1", "ts": T0 + 2 * MIN, "feature": "f", "phase": "p", "kind": "thumbs",
          "label": "down", "user": "someone@example.com"}  # fmt: skip


class _Source(_TopicSource):
    input_streams = input_streams(Topics())


def test_an_event_on_the_other_streams_topic_is_a_dead_letter_not_an_input(tmp_path):
    interaction = events(3, 1, "ok")[0]
    messages = [("rollguard.interactions", e) for e in events(0, 6, "error")]
    messages += [("rollguard.interactions", THUMBS), ("rollguard.feedback", interaction),
                 ("rollguard.feedback", dict(THUMBS, event_id="fb-2")),  # in its place: applied
                 ("rollguard.interactions", [events(7, 1, "ok")[0], dict(THUMBS, event_id="fb-3")])]  # an envelope
    res = replay(RULES, None, tmp_path, config=EngineConfig(allowed_lateness_ms=0), user_key=b"k", progress=False,
                 source=_Source(messages))  # fmt: skip
    assert res.invalid == {"wrong_topic": 3}
    dead = [orjson.loads(line) for line in (tmp_path / "deadletter.jsonl").read_text().splitlines()]
    assert [(d["reason"], d["source"]["topic"], d["payload"]["event_id"]) for d in dead] == [
        ("wrong_topic", "rollguard.interactions", "fb-1"), ("wrong_topic", "rollguard.feedback", interaction["event_id"]),
        ("wrong_topic", "rollguard.interactions", "fb-3")]  # fmt: skip
    assert dead[0]["detail"].startswith("a feedback or eval event read from rollguard.interactions, the interaction "
                                        "topic: send it to the feedback topic")  # fmt: skip
    assert dead[1]["detail"].startswith("an interaction event read from rollguard.feedback")
    assert all("user" not in d["payload"] for d in dead)  # a pseudonym already; the raw id never
    assert "someone@example.com" not in (tmp_path / "deadletter.jsonl").read_text()
    assert res.engine.stats.events == {"interaction": 6 * 60 + 1, "feedback": 1, "control": 0}


def test_a_file_has_no_topics_and_takes_both_streams(tmp_path):
    lines = events(0, 2, "ok") + [THUMBS]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in lines))
    res = replay(RULES, [str(path)], tmp_path / "out", config=EngineConfig(allowed_lateness_ms=0), user_key=b"k",
                 progress=False)  # fmt: skip
    assert res.invalid == {} and res.engine.stats.events == {"interaction": 120, "feedback": 1, "control": 0}
