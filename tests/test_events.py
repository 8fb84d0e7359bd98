"""Input event validation: located errors, normalisation, pseudonymisation, fast path == specification."""

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.events import (
    _ANY,
    Control,
    Event,
    EventParser,
    InvalidEvent,
    Pseudonymizer,
    _fast_event,
    _from_model,
    parse_ts,
    redact,
)

P = Pseudonymizer(b"test-key")
PARSER = EventParser(P)
BASE = {"type": "interaction", "event_id": "e1", "ts": "2026-11-02T10:00:00Z", "feature": "email-reply"}


def one(obj):
    return PARSER.parse_obj(obj)


@pytest.mark.parametrize(
    "ts, ms",
    [
        ("2026-11-02T10:00:00Z", 1793613600000),
        ("2026-11-02T12:00:00+02:00", 1793613600000),
        ("2026-11-02T10:00:00.250Z", 1793613600250),
        ("2026-11-02 10:00:00Z", 1793613600000),
        (1793613600000, 1793613600000),
        (0, 0),
    ],
)
def test_timestamps_normalise_to_utc_epoch_ms(ts, ms):
    assert one({**BASE, "ts": ts}).ts == ms


@pytest.mark.parametrize(
    "name, patch, located",
    [
        ("naive time", {"ts": "2026-11-02T10:00:00"}, "ts:"),
        ("date only", {"ts": "2026-11-02"}, "ts:"),
        ("float epoch", {"ts": 1.5}, "ts:"),
        ("bool epoch", {"ts": True}, "ts:"),
        ("negative epoch", {"ts": -1}, "ts:"),
        ("bad feature charset", {"feature": "email reply"}, "feature:"),
        ("empty event id", {"event_id": ""}, "event_id:"),
        ("long event id", {"event_id": "x" * 129}, "event_id:"),
        ("bad outcome", {"outcome": "crashed"}, "outcome:"),
        ("negative latency", {"latency_ms": -3}, "latency_ms:"),
        ("string latency", {"latency_ms": "12"}, "latency_ms:"),
        ("fractional tokens", {"tokens_out": 1.5}, "tokens_out:"),
        ("confidence above 1", {"confidence": 1.2}, "confidence:"),
        ("bad flag", {"flags": ["PII"]}, "flags.0:"),
        ("too many segment keys", {"segment": {f"k{i}": "v" for i in range(17)}}, "segment:"),
        ("segment value not a string", {"segment": {"platform": 3}}, "segment.platform:"),
        ("unknown type", {"type": "click"}, "does not match any of the expected tags"),
    ],
)
def test_invalid_interactions_are_rejected_with_located_reason(name, patch, located):
    with pytest.raises(InvalidEvent) as e:
        one({**BASE, **patch})
    assert e.value.reason == "schema"
    assert located in e.value.detail, (name, e.value.detail)


FB = {"type": "feedback", "event_id": "f1", "ts": 1793613600000, "feature": "email-reply"}


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"kind": "suggestion", "label": "liked"}, "suggestion feedback needs label"),
        ({"kind": "thumbs", "label": "sideways"}, "thumbs feedback needs label up or down"),
        ({"kind": "review"}, "review feedback needs a label"),
        ({"kind": "review", "label": "ok", "score": 9}, "review score must be within 1..5"),
        ({"kind": "survey", "label": "csat"}, "survey feedback needs a score"),
        ({"kind": "survey", "label": "nps", "score": 11}, "nps score must be within 0..10"),
        ({"kind": "survey", "label": "ces", "score": 3}, "survey feedback needs label csat or nps"),
        ({"kind": "like"}, "kind:"),
        ({}, "kind:"),
    ],
)
def test_invalid_feedback_is_rejected(patch, message):
    with pytest.raises(InvalidEvent) as e:
        one({**FB, **patch})
    assert message in e.value.detail


def test_unknown_fields_are_dropped_and_defaults_applied():
    ev = one({**BASE, "prompt": "tell me a secret", "response": "no"})
    assert ev.phase == "default" and ev.outcome == "ok" and ev.segment == {} and ev.flags == ()
    assert "prompt" not in Event.__slots__


def test_user_is_rekeyed_before_anything_sees_it():
    ev = one({**BASE, "user": "alice@example.com"})
    assert ev.user != "alice@example.com" and len(ev.user) == 32
    assert ev.user == Pseudonymizer(b"test-key")("alice@example.com")
    assert ev.user != Pseudonymizer(b"other-key")("alice@example.com")


def test_batch_envelope_yields_each_event_and_locates_bad_items():
    msg = b'[{"type":"interaction","event_id":"a","ts":1,"feature":"f"}, 7, {"type":"interaction","event_id":"b","ts":2,"feature":"f","outcome":"x"}]'
    items = list(PARSER.parse_message(msg))
    assert isinstance(items[0], Event) and items[0].event_id == "a"
    assert isinstance(items[1], InvalidEvent) and items[1].reason == "not_an_object" and "[1]" in items[1].detail
    assert isinstance(items[2], InvalidEvent) and "[2] outcome:" in items[2].detail


def test_broken_json_is_one_invalid_item_not_an_exception():
    (item,) = PARSER.parse_message(b'{"type": "interaction", ')
    assert isinstance(item, InvalidEvent) and item.reason == "invalid_json"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "nan", "inf"])
def test_a_nan_or_infinity_literal_is_named_in_the_dead_letter(literal):
    msg = b'{"type": "interaction", "event_id": "a", "ts": 1, "feature": "f", "latency_ms": ' + literal.encode() + b"}"
    (item,) = PARSER.parse_message(msg)
    assert isinstance(item, InvalidEvent) and item.reason == "invalid_json"
    assert item.detail == "NaN/Infinity is not valid JSON; send null or omit the field"


def test_other_broken_json_keeps_its_own_reason_even_with_nan_in_a_string():
    (item,) = PARSER.parse_message(b'{"note": "NaN", "latency_ms": nope}')
    assert item.reason == "invalid_json" and "NaN" not in item.detail and item.detail.startswith("invalid literal")
    (item,) = PARSER.parse_message(b'[{"a": 1}, {"b": Infinity}]')  # in an envelope: the whole message is dead
    assert item.detail.startswith("NaN/Infinity is not valid JSON")


def test_control_resume_parses():
    c = one({"type": "control", "event_id": "c1", "ts": 5, "action": "resume", "feature": "f", "reason": "fixed"})
    assert isinstance(c, Control) and c.phase is None and c.reason == "fixed"


def test_dead_letter_redaction_keeps_no_free_text_or_raw_user():
    payload = {**BASE, "user": "alice@example.com", "prompt": "my card is 4111", "feature": "free text here!",
               "segment": {"platform": "mobile", "bad key!": "x"}, "flags": ["PII", "pii_leak"]}  # fmt: skip
    red = redact(payload, P)
    text = repr(red)
    for secret in ("alice@example.com", "4111", "free text here", "bad key!"):
        assert secret not in text
    assert red["segment"] == {"platform": "mobile"} and red["flags"] == ["PII", "pii_leak"]


def test_parse_ts_doc_example():
    assert parse_ts("2026-11-02T10:00:00+02:00") == 1793606400000


# --- the fast path never disagrees with the pydantic specification ---------------------------------------------------

names = st.sampled_from(["email-reply", "f", "a.b_c-d", "bad name", "", "x" * 129])
texts = st.one_of(st.none(), st.text(max_size=5), st.sampled_from(["x" * 128, "x" * 129]))
numbers = st.one_of(
    st.none(), st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.just("1")
)
interaction = st.fixed_dictionaries(
    {"type": st.just("interaction"), "event_id": st.sampled_from(["e", "", "x" * 129]),
     "ts": st.one_of(st.integers(-1, 2 * 10**15), st.sampled_from(["2026-11-02T10:00:00Z", "2026-11-02", "nope"])),
     "feature": names},
    optional={"phase": names, "segment": st.one_of(st.none(), st.dictionaries(st.text(max_size=3), texts, max_size=3)),
              "user": texts, "outcome": st.sampled_from(["ok", "error", "timeout", "refused", "boom"]),
              "latency_ms": numbers, "tokens_in": numbers, "tokens_out": numbers, "cost_usd": numbers,
              "confidence": numbers, "flags": st.lists(st.sampled_from(["pii_leak", "BAD", "x" * 65]), max_size=3),
              "extra": st.integers()},
)  # fmt: skip
feedback = st.fixed_dictionaries(
    {"type": st.just("feedback"), "event_id": st.just("e"), "ts": st.integers(0, 10**13), "feature": names,
     "kind": st.sampled_from(["suggestion", "thumbs", "review", "ticket", "survey", "other"])},
    optional={"label": st.sampled_from(["accepted", "edited", "up", "down", "ok", "hallucination", "csat", "nps",
                                        "Bad", "billing"]),
              "score": numbers, "interaction_id": texts},
)  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(st.one_of(interaction, feedback))
def test_fast_path_agrees_with_the_specification(obj):
    fast = _fast_event(obj, P)
    try:
        spec = _from_model(_ANY.validate_python(obj), P)
    except Exception:
        spec = None
    if fast is not None:
        assert spec is not None, obj
        assert fast == spec, obj


def test_an_empty_envelope_is_a_dead_letter_not_silence(tmp_path):
    [item] = PARSER.parse_message(b"[]")
    assert isinstance(item, InvalidEvent) and item.reason == "empty_envelope"
    from rules.engine import EngineConfig
    from rules.loader import load_rules_text
    from streams.replay import replay

    rules = load_rules_text("version: 1\nname: t\nfeatures: ['*']\nrules:\n  - {id: e, tier: investigate, "
                            "metric: error_rate, op: '>', threshold: 0.5, window: 1m}\n", source="t.yaml")  # fmt: skip
    (tmp_path / "in.jsonl").write_text('[]\n{"type": "interaction", "event_id": "a", "ts": 0, "feature": "f"}\n')
    res = replay(rules, [str(tmp_path / "in.jsonl")], tmp_path / "out", config=EngineConfig(), user_key=b"k")
    assert res.invalid == {"empty_envelope": 1}
    [dead] = [orjson.loads(x) for x in (tmp_path / "out" / "deadletter.jsonl").read_bytes().splitlines()]
    assert (dead["reason"], dead["source"]["line"]) == ("empty_envelope", 1)
