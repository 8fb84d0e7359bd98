"""Who may resume (issue 12, point 1), as pure logic: signed controls, the replay rule, controls on input topics, and
``rollguard replay`` deciding them as the worker does. The live path is in tests/test_control_auth_live.py."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from rules.control_auth import CONTROL_MAX_AGE_MS, check_signature, freshness, is_control, misplaced, sign_control
from rules.engine import Engine, EngineConfig
from rules.events import EventParser, Pseudonymizer
from rules.exceptions import InvalidEvent
from rules.loader import load_rules_text
from streams.offline.replay import replay
from streams.settings import Settings
from tests.engine_kit import MIN, T0

KEYS = {"op-1": b"operator-secret-1", "op-2": b"operator-secret-2"}
RULES = load_rules_text("""version: 1
name: ops
features: ["*"]
rules:
  - id: errors
    tier: kill
    metric: error_rate
    op: ">"
    threshold: 0.5
    window: 5m
    every: 1m
    min_samples: 5
""", source="ops.yaml")  # fmt: skip


def resume(ts: int, event_id: str = "resume-1", **extra) -> dict:
    return {"type": "control", "action": "resume", "event_id": event_id, "ts": ts, "feature": "f",
            "reason": "fixed upstream", "operator": "alice", **extra}  # fmt: skip


def events(start_min: int, minutes: int, outcome: str) -> list[dict]:
    return [{"type": "interaction", "event_id": f"e-{start_min}-{i}", "ts": T0 + start_min * MIN + i * 1000,
             "feature": "f", "phase": "p", "outcome": outcome, "latency_ms": 100}
            for i in range(minutes * 60)]  # fmt: skip


# --- signatures ---------------------------------------------------------------------------------------------------

SIGNED = sign_control(resume(T0), "op-1", KEYS["op-1"])
SIGNATURE_CASES = [
    ("valid", SIGNED, None),
    ("rotated key", sign_control(resume(T0), "op-2", KEYS["op-2"]), None),
    ("unsigned", resume(T0), "control_unsigned"),
    ("empty signature", dict(SIGNED, signature=""), "control_unsigned"),
    ("unknown key id", sign_control(resume(T0), "op-9", b"whatever"), "control_unknown_key"),
    ("wrong secret under a known id", sign_control(resume(T0), "op-1", b"guess"), "control_bad_signature"),
    ("phase added after signing", dict(SIGNED, phase="ga"), "control_bad_signature"),
    ("moved to another key id", dict(SIGNED, key_id="op-2"), "control_bad_signature"),
    ("re-dated", dict(SIGNED, ts=T0 + 1), "control_bad_signature"),
]


@pytest.mark.parametrize("name,ctl,reason", SIGNATURE_CASES, ids=[c[0] for c in SIGNATURE_CASES])
def test_signature_check(name, ctl, reason):
    got, detail, key_id = check_signature(ctl, KEYS)
    assert got == reason
    assert (key_id is None) == (reason is not None)
    assert "operator-secret" not in detail


@pytest.mark.parametrize("name,ctl,reason", SIGNATURE_CASES, ids=[c[0] for c in SIGNATURE_CASES])
def test_parser_refuses_badly_signed_controls_only_with_operator_keys(name, ctl, reason):
    strict = list(EventParser(Pseudonymizer(b"k"), KEYS).parse_message(orjson.dumps(ctl)))
    [item] = strict
    if reason is None:
        assert item.type == "control" and item.key_id == ctl["key_id"]
    else:
        assert isinstance(item, InvalidEvent) and item.reason == reason
    # without operator keys (dev profile) every well-formed control passes, unverified: no key id is recorded
    [lax] = EventParser(Pseudonymizer(b"k")).parse_message(orjson.dumps(ctl))
    assert lax.type == "control" and lax.key_id is None


FRESHNESS = [
    ("first control of a feature", T0, None, T0, None),
    ("later than the last accepted", T0 + 1, T0, T0, None),
    ("the same control again", T0, T0, T0, "control_replayed"),
    ("older than the last accepted", T0 - 1, T0, T0, "control_replayed"),
    ("ahead of the feature's event time (backlog)", T0 + 3_600_000, None, T0, None),
    ("exactly the maximum age behind", T0 - CONTROL_MAX_AGE_MS, None, T0, None),
    ("beyond the maximum age", T0 - CONTROL_MAX_AGE_MS - 1, None, T0, "control_stale"),
    ("feature without events", T0, None, None, None),
]


@pytest.mark.parametrize("name,ts,last,feature_time,reason", FRESHNESS, ids=[c[0] for c in FRESHNESS])
def test_replay_rule(name, ts, last, feature_time, reason):
    assert freshness(ts, last, feature_time) == reason


def test_a_control_on_an_input_topic_is_recognised_even_when_invalid():
    parser = EventParser(Pseudonymizer(b"k"), KEYS)
    for raw in (SIGNED, resume(T0), {"type": "control", "action": "reload"}):
        [item] = parser.parse_message(orjson.dumps(raw))
        assert is_control(item)
        err = misplaced(item)
        assert err.reason == "control_on_input_topic" and err.payload["type"] == "control"
    [ev] = parser.parse_message(orjson.dumps(events(0, 1, "ok")[0]))
    assert not is_control(ev)


# --- the engine: refused controls are dead letters, the kill stays latched -----------------------------------------


def run_engine(items: list) -> tuple[Engine, list[dict], list[dict]]:
    eng = Engine(RULES, EngineConfig(allowed_lateness_ms=0))
    parser = EventParser(Pseudonymizer(b"k"), KEYS)
    decisions, dead = [], []
    for raw in items:
        parsed = list(parser.parse_message(orjson.dumps(raw)))
        dead += [{"reason": p.reason} for p in parsed if isinstance(p, InvalidEvent)]
        out = eng.step([p for p in parsed if not isinstance(p, InvalidEvent)])
        decisions += out.decisions
        dead += out.dead_letters
    return eng, decisions, dead


def test_a_replayed_signed_resume_is_refused_and_the_kill_stays_latched():
    first = sign_control(resume(T0 + 7 * MIN, "resume-a"), "op-1", KEYS["op-1"])
    items = [events(0, 6, "error"), first, events(7, 1, "ok"), events(8, 6, "error"), first]
    eng, decisions, dead = run_engine(items)
    resumes = [d for d in decisions if d.get("cause") == "operator_resume"]
    assert len(resumes) == 1 and resumes[0]["key_id"] == "op-1"
    assert [d["reason"] for d in dead] == ["control_replayed"]
    assert dead[0]["key_id"] == "op-1" and dead[0]["payload"]["event_id"] == "resume-a"
    assert "fixed upstream" not in json.dumps(dead)  # the operator's free text is not in the dead letter
    assert eng.features["f"].latches == {"p": "kill"}  # the second kill is still latched
    assert eng.features["f"].control_ts == T0 + 7 * MIN


def test_a_captured_resume_older_than_a_day_of_event_time_is_refused():
    old = sign_control(resume(T0 - CONTROL_MAX_AGE_MS - MIN, "resume-old"), "op-1", KEYS["op-1"])
    eng, decisions, dead = run_engine([events(0, 6, "error"), old])
    assert [d["reason"] for d in dead] == ["control_stale"]
    assert not [d for d in decisions if d.get("cause") == "operator_resume"]
    assert eng.features["f"].latches == {"p": "kill"}


def test_the_signed_controls_memory_survives_the_stored_state():
    first = sign_control(resume(T0 + 7 * MIN), "op-1", KEYS["op-1"])
    eng, _, _ = run_engine([events(0, 6, "error"), first])
    from rules.state import FeatureState

    fs = eng.features["f"]
    again = FeatureState.from_state(fs.to_state(b"d" * 32), b"d" * 32)
    assert again.control_ts == T0 + 7 * MIN
    # a feature that never saw a signed control stores exactly what it stored before signing existed
    assert "control_ts" not in FeatureState().to_state(b"d" * 32)


# --- rollguard replay decides the same: keys verify, no keys keep old files working ---------------------------------


def write(path: Path, rows: list) -> str:
    path.write_text("".join(orjson.dumps(r).decode() + "\n" for r in rows))
    return str(path)


def replay_files(tmp_path: Path, rows: list, keys) -> tuple[list[dict], list[dict], object]:
    out = tmp_path / ("keys" if keys else "nokeys")
    res = replay(RULES, [write(tmp_path / "in.jsonl", rows)], out, config=EngineConfig(allowed_lateness_ms=0),
                 user_key=b"k", operator_keys=keys)  # fmt: skip
    read = lambda n: [json.loads(x) for x in (out / n).read_text().splitlines()]  # noqa: E731
    return read("decisions.jsonl"), read("deadletter.jsonl"), res


def test_replay_with_operator_keys_refuses_unsigned_controls_and_applies_signed_ones(tmp_path):
    unsigned = resume(T0 + 7 * MIN, "resume-unsigned")
    good = sign_control(resume(T0 + 8 * MIN, "resume-good"), "op-2", KEYS["op-2"])
    rows = [*events(0, 6, "error"), unsigned, *events(7, 1, "ok"), good, *events(9, 1, "ok")]
    decisions, dead, res = replay_files(tmp_path, rows, KEYS)
    assert [d["reason"] for d in dead] == ["control_unsigned"] and res.invalid == {"control_unsigned": 1}
    [r] = [d for d in decisions if d.get("cause") == "operator_resume"]
    assert (r["resume_id"], r["key_id"]) == ("resume-good", "op-2")


def test_replay_without_operator_keys_accepts_old_unsigned_files_unchanged(tmp_path):
    rows = [*events(0, 6, "error"), resume(T0 + 7 * MIN), *events(7, 1, "ok")]
    decisions, dead, _ = replay_files(tmp_path, rows, None)
    [r] = [d for d in decisions if d.get("cause") == "operator_resume"]
    assert "key_id" not in r and dead == []


def test_settings_parse_operator_keys_and_never_print_them():
    s = Settings(operator_keys="op-1:s3cret-a,op-2:s3cret-b", operator_key="s3cret-a", operator_key_id="op-1")
    assert s.operator_keys_map() == {"op-1": b"s3cret-a", "op-2": b"s3cret-b"}
    assert "s3cret" not in repr(s) + str(s.model_dump()) + s.model_dump_json()
    assert Settings(operator_keys="").operator_keys_map() is None
    with pytest.raises(ValueError, match="operator_keys"):
        Settings(operator_keys="no-colon-here")


class _TopicSource:
    """A replay source of (origin, message) pairs as --from-kafka reads them, without a broker."""

    labels = ("kafka",)
    control_topic = "rollguard.control"

    def __init__(self, messages: list[tuple[str, object]]) -> None:
        self.messages = messages

    def __iter__(self):
        for offset, (topic, value) in enumerate(self.messages):
            yield {"topic": topic, "partition": 0, "offset": offset}, orjson.dumps(value)

    def progress(self) -> tuple[int, int]:
        return 0, 0


@pytest.mark.parametrize("signed", [False, True])
def test_replay_refuses_a_control_read_from_an_input_topic_instead_of_failing(tmp_path, signed):
    """Replay from Kafka: a resume found on an input topic is a dead letter (as the worker does), whether the
    events around it took the fast path or not; replay once raised TypeError on it."""
    control = sign_control(resume(T0 + 7 * MIN), "op-1", KEYS["op-1"]) if signed else resume(T0 + 7 * MIN)
    messages = [("rollguard.interactions", e) for e in events(0, 6, "error")]
    messages += [("rollguard.interactions", control), ("rollguard.interactions", events(7, 1, "ok"))]
    res = replay(RULES, None, tmp_path, config=EngineConfig(allowed_lateness_ms=0), user_key=b"k", progress=False,
                 source=_TopicSource(messages), operator_keys=KEYS if signed else None)  # fmt: skip
    assert res.invalid == {"control_on_input_topic": 1}
    dead = [orjson.loads(line) for line in (tmp_path / "deadletter.jsonl").read_text().splitlines()]
    assert [d["reason"] for d in dead] == ["control_on_input_topic"]
    assert dead[0]["source"] == {"topic": "rollguard.interactions", "partition": 0, "offset": 360}
    assert res.engine.features["f"].latches == {"p": "kill"}  # the kill stays latched
