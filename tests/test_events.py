"""Input event validation: located errors, normalisation, pseudonymisation, typed decoder == specification."""

import decimal
import enum
import hashlib
import hmac
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import rules.decode
import rules.events
from rules.events import (
    _ANY,
    Control,
    Event,
    EventParser,
    InvalidEvent,
    Pseudonymizer,
    _from_model,
    _json_error_detail,
    _located,
    parse_ts,
    row_event,
    redact,
    rfc3339_ms,
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
        # amounts are kept as scaled integers: 1e308 ms made an infinity (rules.decode.AMOUNT_MAX)
        ("latency beyond 1e12 ms", {"latency_ms": 1e308}, "latency_ms:"),
        ("cost beyond 1e12 USD", {"cost_usd": 2e12}, "cost_usd:"),
        ("session beyond 1e12 ms", {"session_ms": 1e13}, "session_ms:"),
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


def test_user_pseudonyms_are_hmac_sha256_and_the_cache_stays_bounded():
    pseudo = Pseudonymizer(b"k", cache_max=3)
    users = [f"u-{i}" for i in range(10)] + ["u-1", "\ud800"]  # a lone surrogate (Python input) must not crash
    for u in users:
        want = hmac.new(b"k", u.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:32]
        assert pseudo(u) == want and pseudo(u) == want  # a miss, then a hit
        assert len(pseudo._cache) <= 3
    assert list(pseudo._cache)[-1] == "\ud800"  # the newest stays when the older half goes


# --- the typed decoder (rules.decode) never disagrees with the pydantic specification -------------------------------
#
# The reference below is the specification alone: orjson, then the pydantic models item by item. The tests check
# that (1) whenever the typed path accepts a whole message, the reference gives exactly the same events, and (2)
# parse_message, whichever path it takes, yields exactly what the reference yields, errors and payloads included.


def reference(data):
    """parse_message as the specification alone would do it: orjson, then the pydantic models for every item."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        return [canon(("invalid_json", _json_error_detail(e), None))]
    items = obj if type(obj) is list else [obj]
    if not items:  # an envelope of nothing is said, never silent (issue 12)
        return [canon(("empty_envelope", "a batch envelope with no events ([])", obj))]
    out = []
    for i, item in enumerate(items):
        where = f"[{i}] " if type(obj) is list else ""
        if not isinstance(item, dict):
            out.append(("not_an_object", f"{where}expected a JSON object, got {type(item).__name__}", item))
            continue
        try:
            out.append(_from_model(_ANY.validate_python(item), P))
        except ValidationError as e:
            out.append(("schema", where + _located(e), item))
    return [canon(x) for x in out]


def canon(x):
    """A comparable form that tells 5 from 5.0, -0.0 from 0.0 and a tuple from a list."""
    if isinstance(x, Event):
        return ("event", repr(x.as_tuple()), [type(v) for v in x.as_tuple()])
    if isinstance(x, Control):
        return ("control", repr([getattr(x, k) for k in Control.__slots__]))
    if isinstance(x, InvalidEvent):
        return (x.reason, x.detail, repr(getattr(x, "payload", None)))
    reason, detail, payload = x
    return (reason, detail, repr(payload))


def check_agrees(data):
    want = reference(data)
    got = [canon(x) for x in PARSER.parse_message(data)]
    assert got == want, data
    typed = PARSER._typed(data)
    if typed is not None:  # the typed path accepted the whole message: the specification accepts it identically
        assert [canon(x) for x in typed] == want, data
        assert all(w[0] in ("event", "control") for w in want), data
    rows = PARSER.parse_rows(data)  # the hot path: rows read like the Events, or it refuses the whole message
    assert (rows is None) == (typed is None), data
    if rows is not None:
        assert [canon(x if type(x) is Control else row_event(x)) for x in rows] == want, data
        fields = [k for k in Event.FIELDS if k != "type"]
        for r, w in zip(rows, typed):
            if type(r) is Control:
                continue
            assert r.type == w.type and all(getattr(r, k) == getattr(w, k) for k in fields), data
    return typed is not None


LONE = ["\ud800", "\udc00"]
odd_text = st.sampled_from(["é", "😀", "\n", "\x00", "\x7f", "\u2028", "Ｆ", *LONE])
texts = st.one_of(
    st.none(), st.text(max_size=5), st.lists(odd_text, max_size=3).map("".join),
    st.sampled_from(["x" * 128, "x" * 129, "😀" * 128, "😀" * 129, "é" * 129]),
)  # fmt: skip
names = st.one_of(
    st.sampled_from(["email-reply", "f", "a.b_c-d", "A" * 128, "closed_beta"]),
    st.sampled_from(["bad name", "", "x" * 129, "f\n", "é", "Ｆ", "f\u2028", 1, None]),
)
labels = st.sampled_from(["pii_leak", "up", "down", "ok", "csat", "nps", "accepted", "hallucination", "x" * 64,
                          "BAD", "x" * 65, "ok\n", "", "é", 3])  # fmt: skip
numbers = st.one_of(
    st.none(), st.integers(-5, 10**6), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
    st.sampled_from(["1", 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30, -(2**63) - 1, 1e308, -0.0, 0.5, 1.0, 5e-324]),
)  # fmt: skip
digits = st.integers(0, 99).map("{:02d}".format)
ts_strings = st.builds(
    lambda y, mo, d, sep, h, mi, sec, frac, off: f"{y:04d}-{mo}-{d}{sep}{h}:{mi}:{sec}{frac}{off}",
    st.sampled_from([1, 1969, 1970, 2026, 9999, 0]), digits, digits, st.sampled_from(["T", " ", "t", "x"]),
    digits, digits, digits, st.sampled_from(["", ".", ".1", ".25", ".999", ".9999", ".123456", ".1234567", ",5"]),
    st.sampled_from(["Z", "z", "", "+00:00", "-00:00", "+02:00", "-05:30", "+23:59", "+24:00", "+02", "+0200",
                     "+02:60", "+02:00:30"]),
)  # fmt: skip
timestamps = st.one_of(
    st.integers(-1, 2 * 10**15), st.sampled_from([253_402_300_799_999, 253_402_300_800_000, 2**64, True, 1.5]),
    ts_strings, st.sampled_from(["2026-11-02T10:00:00Z", "2026-11-02", "nope", "20261102T100000Z"]),
)  # fmt: skip
segments = st.one_of(
    st.dictionaries(st.one_of(st.text(max_size=3), st.sampled_from(["platform", "k" * 64, "k" * 65])),
                    st.one_of(texts, st.integers()), max_size=4),
    st.just({f"k{i}": "v" for i in range(16)}), st.just({f"k{i}": "v" for i in range(17)}), st.none(), st.just([]),
)  # fmt: skip
extras = st.one_of(st.integers(), st.text(max_size=4), st.lists(st.integers(), max_size=2), st.just({"a": [1]}))
common = {"event_id": st.one_of(st.sampled_from(["e", "", "x" * 128, "x" * 129, "😀" * 128]), texts),
          "ts": timestamps, "feature": names}  # fmt: skip
optional_common = {"phase": names, "segment": segments, "user": texts, "model_version": texts,
                   "prompt_version": texts, "extra": extras, "prompt": st.text(max_size=8)}  # fmt: skip
interaction = st.fixed_dictionaries(
    {"type": st.just("interaction"), **common},
    optional={**optional_common, "outcome": st.sampled_from(["ok", "error", "timeout", "refused", "boom", 1, None]),
              "latency_ms": numbers, "tokens_in": numbers, "tokens_out": numbers, "cost_usd": numbers,
              "confidence": numbers, "session_ms": numbers,
              "flags": st.one_of(st.lists(labels, max_size=3), st.just(["a"] * 64), st.just(["a"] * 65), st.none())},
)  # fmt: skip
feedback = st.fixed_dictionaries(
    {"type": st.just("feedback"), **common,
     "kind": st.sampled_from(["suggestion", "thumbs", "review", "ticket", "survey", "other"])},
    optional={**optional_common, "label": st.one_of(st.none(), labels), "score": numbers, "interaction_id": texts},
)  # fmt: skip
control = st.fixed_dictionaries(
    {"type": st.just("control"), **common, "action": st.sampled_from(["resume", "pause", "signoff"]),
     "reason": st.one_of(st.text(max_size=4), st.sampled_from(["x" * 500, "x" * 501]))},
    optional={"phase": st.one_of(st.none(), names), "operator": texts, "extra": extras,
              "role": st.one_of(st.none(), labels, st.sampled_from(["pm", "legal", "-x", "a" * 65])),
              "revoke": st.one_of(st.booleans(), st.sampled_from([0, 1, "yes", None]))},
)  # fmt: skip
evals = st.fixed_dictionaries(
    {"type": st.just("eval"), **common, "suite": st.one_of(labels, st.none())},
    optional={**optional_common, "score": numbers, "n": numbers, "passed": numbers, "variant": texts},
)  # fmt: skip
wrong_type = st.builds(lambda d, t: {**d, "type": t}, interaction, st.sampled_from(["click", "", 1, None]))

# well-formed values (so that the typed path is exercised), with the variety it must normalise exactly
ok_names = st.one_of(st.sampled_from(["email-reply", "closed_beta", "A" * 128]),
                     st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True))  # fmt: skip
ok_texts = st.one_of(st.none(), st.text(max_size=8), st.sampled_from(["😀" * 128, "x" * 128]))
ok_ts = st.one_of(
    st.integers(0, 253_402_300_799_999),
    st.builds(
        lambda y, mo, d, h, mi, sec, frac, off: f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{sec:02d}{frac}{off}",
        st.integers(1970, 9999), st.integers(1, 12), st.integers(1, 28), st.integers(0, 23), st.integers(0, 59),
        st.integers(0, 59), st.one_of(st.just(""), st.from_regex(r"\.[0-9]{1,6}", fullmatch=True)),
        st.one_of(st.just("Z"), st.builds("{}{:02d}:{:02d}".format, st.sampled_from("+-"), st.integers(0, 23),
                                          st.integers(0, 59))),
    ),
)  # fmt: skip
ok_amount = st.one_of(st.none(), st.integers(0, 2**64 - 1), st.floats(0, allow_infinity=False))
ok_common = {"event_id": st.text(min_size=1, max_size=10), "ts": ok_ts, "feature": ok_names}
ok_optional = {"phase": ok_names, "user": ok_texts, "model_version": ok_texts, "prompt_version": ok_texts,
               "segment": st.dictionaries(st.text(min_size=1, max_size=6), st.text(max_size=6), max_size=4)}  # fmt: skip
ok_interaction = st.fixed_dictionaries(
    {"type": st.just("interaction"), **ok_common},
    optional={**ok_optional, "outcome": st.sampled_from(["ok", "error", "timeout", "refused"]),
              "latency_ms": ok_amount, "cost_usd": ok_amount, "confidence": st.one_of(st.none(), st.floats(0, 1), st.just(1)),
              "session_ms": ok_amount,
              "tokens_in": st.one_of(st.none(), st.integers(0, 2**64 - 1)), "tokens_out": st.integers(0, 10**6),
              "flags": st.lists(st.from_regex(r"[a-z0-9_]{1,8}", fullmatch=True), max_size=4)},
)  # fmt: skip
ok_feedback = st.builds(
    lambda d, kls: {**d, **kls},
    st.fixed_dictionaries({"type": st.just("feedback"), **ok_common},
                          optional={**ok_optional, "interaction_id": ok_texts}),
    st.one_of(
        st.fixed_dictionaries({"kind": st.just("suggestion"),
                               "label": st.sampled_from(["accepted", "edited", "rejected", "ignored"])}),
        st.fixed_dictionaries({"kind": st.just("thumbs"), "label": st.sampled_from(["up", "down"])}),
        st.fixed_dictionaries({"kind": st.just("review"), "label": st.sampled_from(["ok", "hallucination"])},
                              optional={"score": st.one_of(st.integers(1, 5), st.floats(1, 5))}),
        st.fixed_dictionaries({"kind": st.just("survey"), "label": st.just("nps"), "score": st.floats(0, 10)}),
        st.fixed_dictionaries({"kind": st.just("ticket")}, optional={"score": st.floats(allow_nan=False, allow_infinity=False)}),
    ),
)  # fmt: skip
ok_eval = st.builds(
    lambda d, n, k: {**d, "n": n, **({"passed": min(k, n)} if k is not None else {})} if k is not None or "score" in d
    else {**d, "n": n, "passed": 0},
    st.fixed_dictionaries({"type": st.just("eval"), **ok_common, "suite": st.from_regex(r"[a-z0-9_]{1,8}", fullmatch=True)},
                          optional={**ok_optional, "score": st.one_of(st.floats(0, 1), st.integers(0, 100))}),
    st.integers(1, 10**6), st.one_of(st.none(), st.integers(0, 10**6)),
)  # fmt: skip
ok_control = st.fixed_dictionaries(
    {"type": st.just("control"), **ok_common, "action": st.just("signoff"), "phase": ok_names,
     "role": st.sampled_from(["pm", "legal", "dpa"]), "reason": st.text(min_size=1, max_size=8)},
    optional={"operator": ok_texts, "revoke": st.booleans()},
)  # fmt: skip
ok_objects = st.one_of(ok_interaction, ok_interaction, ok_feedback, ok_eval, ok_control)
# near-valid: a well-formed event with one or two fields replaced by anything from the wide strategies above
near_valid = st.builds(
    lambda d, patch: {**d, **patch},
    ok_objects,
    st.dictionaries(st.sampled_from([*common, *optional_common, "latency_ms", "tokens_in", "flags", "score", "label"]),
                    st.one_of(texts, numbers, timestamps, names, labels), min_size=1, max_size=2),
)  # fmt: skip
objects = st.one_of(ok_objects, near_valid, near_valid, interaction, feedback, evals, control, wrong_type)


def encode(value, ascii_only):
    # json.dumps writes integers beyond 64 bits (orjson.dumps cannot) and, with ensure_ascii, \\u escapes; a lone
    # surrogate becomes invalid UTF-8 or an unpaired escape, both of which must stay invalid_json
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@settings(max_examples=700, deadline=None)
@given(objects, st.booleans())
def test_typed_decoder_agrees_with_the_specification_on_single_events(obj, ascii_only):
    check_agrees(encode(obj, ascii_only))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(objects, objects, objects, st.sampled_from([7, "x", None, [], [{}]])), max_size=4),
       st.booleans())  # fmt: skip
def test_typed_decoder_agrees_with_the_specification_on_envelopes(items, ascii_only):
    check_agrees(encode(items, ascii_only))


SPLICES = [b"\xff", b"\xed\xa0\x80", b"\\ud800", b"1e400", b"-1", b" ", b",", b"}", b"]", b"NaN", b'"', b"0", b".5",
           b"\n", b"\\n", b'"x":1,', b'"type":"feedback",', b'"ts":"2026-11-02T10:00:00Z",', b"e9", b"\\u00e9"]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.one_of(interaction, feedback, control, st.lists(interaction, min_size=1, max_size=3)),
       st.lists(st.tuples(st.floats(0, 1), st.sampled_from(SPLICES), st.integers(0, 2)), min_size=1, max_size=3))
def test_typed_decoder_agrees_with_the_specification_on_damaged_bytes(value, splices):
    data = encode(value, False)
    for where, piece, how in splices:  # insert, overwrite or delete at a relative position
        i = int(where * len(data))
        data = data[:i] + piece + data[i + len(piece) * (how == 1) :] if how < 2 else data[:i] + data[i + 1 :]
    check_agrees(data)


class Level(enum.IntEnum):
    ONE = 1


class Text(str):
    pass


non_json = st.sampled_from([("a",), {"a"}, decimal.Decimal("1.5"), Level.ONE, Text("f"), float("nan"),
                            float("inf"), float("-inf"), 10**400, b"f", object()])  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(objects, st.dictionaries(st.sampled_from(["ts", "feature", "phase", "flags", "segment", "latency_ms",
                                                 "tokens_in", "score", "label", "user", "kind", "outcome"]),
                                non_json, max_size=2))  # fmt: skip
def test_parse_obj_agrees_with_the_specification_on_python_values(obj, odd):
    obj = {**obj, **odd}
    if "flags" in odd and type(odd["flags"]) is not tuple:
        obj["flags"] = [odd["flags"]]  # a non-JSON value inside the list
    try:
        want = canon(_from_model(_ANY.validate_python(obj), P))
    except ValidationError as e:
        want = ("schema", _located(e), "None")
    except Exception:  # the specification itself fails on this Python value: parse_obj may not accept it either
        want = None
    try:
        got = canon(PARSER.parse_obj(obj))
    except InvalidEvent as e:
        got = canon(e)
    except Exception:
        got = None
    assert got == want, obj


@pytest.mark.parametrize(
    "name, data",
    [
        ("name with a final newline", b'{"type":"interaction","event_id":"e","ts":0,"feature":"f\\n"}'),
        ("flag with a final newline", b'{"type":"interaction","event_id":"e","ts":0,"feature":"f","flags":["a\\n"]}'),
        ("tokens beyond int64", b'{"type":"interaction","event_id":"e","ts":0,"feature":"f","tokens_in":9223372036854775808}'),
        ("tokens beyond 64 bits", b'{"type":"interaction","event_id":"e","ts":0,"feature":"f","tokens_in":18446744073709551616}'),
        ("latency beyond 64 bits", b'{"type":"interaction","event_id":"e","ts":0,"feature":"f","latency_ms":18446744073709551616}'),
        ("infinite number in an unknown field", b'{"type":"interaction","event_id":"e","ts":0,"feature":"f","x":1e400}'),
        ("invalid UTF-8 in an unknown field", b'{"type":"interaction","event_id":"e","ts":0,"feature":"f","x":"\xff"}'),
        ("unknown field", b'{"type":"interaction","event_id":"e","ts":0,"feature":"f","prompt":"hi"}'),
        ("type given twice", b'{"type":"interaction","event_id":"e","ts":0,"feature":"f","type":"feedback","kind":"ticket"}'),
        ("field given twice", b'{"type":"interaction","event_id":"e","ts":0,"feature":"f","latency_ms":-1,"latency_ms":2}'),
        ("segment of 16 keys given as 17", b'{"type":"interaction","event_id":"e","ts":0,"feature":"f","segment":{'
         + b",".join(b'"k%d":"v"' % i for i in range(16)) + b',"k0":"w"}}'),
        ("seven fraction digits", b'{"type":"interaction","event_id":"e","ts":"2026-11-02T10:00:00.9999999Z","feature":"f"}'),
        ("last ms of 9999", b'{"type":"interaction","event_id":"e","ts":"9999-12-31T23:59:59.999Z","feature":"f"}'),
        ("offset pushing past 9999", b'{"type":"interaction","event_id":"e","ts":"9999-12-31T23:59:59-00:01","feature":"f"}'),
        ("offset pulling before 1970", b'{"type":"interaction","event_id":"e","ts":"1970-01-01T00:00:59+00:01","feature":"f"}'),
        ("lone surrogate escape", b'{"type":"interaction","event_id":"\\ud800","ts":0,"feature":"f"}'),
        ("survey without a score", b'{"type":"feedback","event_id":"e","ts":0,"feature":"f","kind":"survey","label":"nps"}'),
        ("envelope with one bad item", b'[{"type":"interaction","event_id":"a","ts":0,"feature":"f"},'
         b'{"type":"interaction","event_id":"b","ts":"2026-02-30T00:00:00Z","feature":"f"}]'),
        ("empty envelope", b"[]"),
        ("a str message", '{"type":"interaction","event_id":"é","ts":0,"feature":"f"}'),
        ("a str message with a lone surrogate", '{"type":"interaction","event_id":"\ud800","ts":0,"feature":"f"}'),
        ("nothing but a lone surrogate", "\ud800"),
        ("nested beyond any depth limit", b"[" * 5000 + b"]" * 5000),
        ("empty", b""),
    ],
)  # fmt: skip
def test_typed_decoder_edge_cases_agree_with_the_specification(name, data):
    check_agrees(data)


@pytest.mark.parametrize(
    "data",
    [
        b'{"type":"interaction","event_id":"e","ts":1793613600000,"feature":"email-reply","phase":"beta",'
        b'"segment":{"platform":"mobile"},"user":"u-1","outcome":"error","latency_ms":12,"tokens_in":3,'
        b'"cost_usd":0.5,"confidence":1,"flags":["pii_leak"]}',
        b'[{"type":"feedback","event_id":"f","ts":"2026-11-02T12:00:00.5+02:00","feature":"f","kind":"survey",'
        b'"label":"nps","score":9},{"type":"control","event_id":"c","ts":5,"action":"resume","feature":"f","reason":"x"}]',
    ],
)
def test_well_formed_messages_never_reach_the_models(data, monkeypatch):
    want = reference(data)

    class Refuse:
        def validate_python(self, obj):
            raise AssertionError("the typed path should have accepted this")

    monkeypatch.setattr(rules.events, "_ANY", Refuse())
    assert [canon(x) for x in PARSER.parse_message(data)] == want
    assert [canon(PARSER.parse_obj(o)) for o in (lambda v: v if type(v) is list else [v])(orjson.loads(data))] == want


@pytest.mark.parametrize(
    "patch",
    [{"latency_ms": float("inf")}, {"cost_usd": float("nan")}, {"confidence": float("-inf")}, {"ts": float("nan")},
     {"flags": ("pii_leak",)}, {"flags": ["pii_leak", Text("a")]}, {"latency_ms": decimal.Decimal("1")},
     {"tokens_in": Level.ONE}, {"feature": Text("f")}, {"user": "\ud800"}, {"segment": {"k": "\udc00"}},
     {"latency_ms": 10**400}, {"tokens_in": 2**64}, {"phase": b"p"}],
    ids=repr,
)  # fmt: skip
def test_parse_obj_edge_cases_agree_with_the_specification(patch):
    obj = {**BASE, "latency_ms": 3, "flags": ["pii_leak"], **patch}
    try:
        want = canon(_from_model(_ANY.validate_python(obj), P))
    except ValidationError as e:
        want = ("schema", _located(e), "None")
    try:
        got = canon(PARSER.parse_obj(obj))
    except InvalidEvent as e:
        got = canon(e)
    assert got == want


@settings(max_examples=1500, deadline=None)
@given(st.one_of(ts_strings, st.text(max_size=30), st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{5,16}[Z+-][0-9:]{0,5}", fullmatch=True)))  # fmt: skip
def test_rfc3339_ms_is_parse_ts(s):
    try:
        want = parse_ts(s)
    except ValueError:
        want = ValueError
    for _ in range(2):  # a miss, then the cached minute
        try:
            got = rfc3339_ms(s)
        except ValueError:
            got = ValueError
        assert got == want, s


@settings(max_examples=600, deadline=None)
@given(ok_ts.filter(lambda t: type(t) is str),
       st.sampled_from([":00", ":59", ":60", ":5", ":5x", ":00.", ":00.1234567", ":00,5", ":00.12a", ":00.123\u0664",
                        ":00.1\u00b2", "", ":00:00", ":00.000", ":07.9", ":07.99", ":07.999999", "x00.5", ":٠٠"]))  # fmt: skip
def test_rfc3339_ms_is_parse_ts_for_any_second_of_a_cached_minute(ts, tail):
    end = len(ts) - 1 if ts.endswith("Z") else len(ts) - 6
    try:
        rfc3339_ms(ts[:16] + ":00" + ts[end:])  # puts the minute in the cache when it is valid
    except ValueError:
        pass
    s = ts[:16] + tail + ts[end:]
    try:
        want = parse_ts(s)
    except ValueError:
        want = ValueError
    try:
        got = rfc3339_ms(s)
    except ValueError:
        got = ValueError
    assert got == want, s


def test_an_empty_envelope_is_a_dead_letter_not_silence(tmp_path):
    [item] = PARSER.parse_message(b"[]")
    assert isinstance(item, InvalidEvent) and item.reason == "empty_envelope"
    from rules.engine import EngineConfig
    from rules.loader import load_rules_text
    from streams.offline.replay import replay

    rules = load_rules_text("version: 1\nname: t\nfeatures: ['*']\nrules:\n  - {id: e, tier: investigate, "
                            "metric: error_rate, op: '>', threshold: 0.5, window: 1m}\n", source="t.yaml")  # fmt: skip
    (tmp_path / "in.jsonl").write_text('[]\n{"type": "interaction", "event_id": "a", "ts": 0, "feature": "f"}\n')
    res = replay(rules, [str(tmp_path / "in.jsonl")], tmp_path / "out", config=EngineConfig(), user_key=b"k")
    assert res.invalid == {"empty_envelope": 1}
    [dead] = [orjson.loads(x) for x in (tmp_path / "out" / "deadletter.jsonl").read_bytes().splitlines()]
    assert (dead["reason"], dead["source"]["line"]) == ("empty_envelope", 1)
