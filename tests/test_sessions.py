"""User sessions (an extension of CONTRACT §1): ``session_ms`` on the interaction that ends a session, and the
metrics ``session_length_mean`` and ``sessions``.

Checked: both decoders accept it and agree, a bad value is a located schema error, a held event keeps it through a
state round trip (and a state written before it existed still reads), the metrics, a comparison of the mean
between arms, and the reference oracle's agreement.
"""

from __future__ import annotations

import pytest

from engine_kit import MIN, T0, rule_body
from reference_engine import ReferenceEngine
from rules.engine import Engine, EngineConfig
from rules.events import Event, EventParser, Pseudonymizer

CFG = EngineConfig(allowed_lateness_ms=0)


def parser() -> EventParser:
    return EventParser(Pseudonymizer(b"k" * 16))


def test_session_ms_is_read_by_both_decoders_and_checked():
    line = (b'{"type":"interaction","event_id":"e","ts":0,"feature":"f","latency_ms":12,"session_ms":45000.5}')
    [row] = parser().parse_rows(line)
    [ev] = parser().parse_items(line)
    assert row.session_ms == ev.session_ms == 45000.5
    for bad in (b'-1', b'"long"', b'true'):
        [err] = parser().parse_items(line.replace(b"45000.5", bad))
        assert err.reason == "schema" and "session_ms" in err.detail
    feedback = b'{"type":"feedback","event_id":"e","ts":0,"feature":"f","kind":"ticket","session_ms":5}'
    [fb] = parser().parse_items(feedback)  # not a feedback field: ignored like any unknown field
    assert fb.type == "feedback" and fb.session_ms is None


def test_a_held_event_keeps_its_session_length_and_old_states_still_read():
    ev = Event("interaction", "e", T0, "f", "p", {}, None, None, None, "ok", 10.0, session_ms=30_000.0)
    assert Event.from_state(ev.to_state()) == ev and Event.from_state(ev.to_state()).session_ms == 30_000.0
    plain = Event("interaction", "e", T0, "f", "p", {}, None, None, None, "ok", 10.0)
    assert len(plain.to_state()) == 21  # as written before sessions existed
    assert Event.from_state(plain.to_state()) == plain


def visits(minute: int, n: int, session_ms: float | None, variant: str | None = None) -> list[Event]:
    """``n`` interactions in one minute, every other one ending a session of ``session_ms``."""
    return [
        Event("interaction", f"{variant}-{minute}-{i}", T0 + minute * MIN + i * (MIN // n), "f", "p", {}, f"u{i}", None,
              None, "ok", 100.0, variant=variant, session_ms=session_ms if i % 2 == 0 else None)  # fmt: skip
        for i in range(n)
    ]


RULES = """\
  - {id: long, tier: investigate, metric: session_length_mean, op: ">", threshold: 60000, window: 5m, min_samples: 10}
  - {id: few, tier: investigate, metric: sessions, op: "<", threshold: 5, window: 5m, min_samples: 0}
  - {id: slower, tier: investigate, metric: session_length_mean, op: ">", threshold: 0.08, window: 10m,
     min_samples: 20, compare: {by: variant, control: ai-off, treatment: ai-on, as: relative, test: fixed}}
"""


def run(evs, engine=Engine):
    eng = engine(rule_body(RULES), CFG)
    seen = {}
    eng.observer = lambda o: seen.__setitem__((o.bound.rule.id, (o.t - T0) // MIN), o.evaluation)
    out = eng.step(sorted(evs, key=lambda e: e.ts))
    out.extend(eng.finish())
    return out.decisions, seen


def test_the_mean_session_length_and_the_number_of_sessions():
    evs = [e for m in range(10) for e in visits(m, 20, 50_000.0 if m < 5 else 70_000.0)]
    ds, seen = run(evs)
    at5 = seen[("long", 5)]
    assert at5.value == pytest.approx(50_000.0) and at5.samples == 50  # 10 sessions a minute end
    assert seen[("long", 8)].value == pytest.approx((2 * 50_000 + 3 * 70_000) / 5)
    assert seen[("few", 5)].value == 50
    assert [(d["rule_id"], d["transition"]) for d in ds if d["rule_id"] == "long"][0] == ("long", "firing")


def test_sessions_longer_with_ai_on_than_off_are_established_against_the_control():
    evs = []
    for m in range(20):
        evs += visits(m, 10, 50_000.0 + 1_000 * (m % 3), "ai-off")
        evs += visits(m, 10, 60_000.0 + 1_000 * (m % 3), "ai-on")  # 20 % longer
    ds, seen = run(evs)
    fired = [d for d in ds if d["rule_id"] == "slower" and d["transition"] == "firing"]
    assert fired and fired[0]["value"] == pytest.approx(0.2, abs=0.01)


def test_the_reference_engine_decides_the_same():
    evs = []
    for m in range(30):
        evs += visits(m, 10, 40_000.0 + 900 * (m % 7), "ai-off")
        evs += visits(m, 12 if m % 4 else 2, 45_000.0 + 2_000 * (m % 5), "ai-on")
    assert run(evs)[0] == run(evs, ReferenceEngine)[0]


def test_the_largest_amounts_aggregate_without_overflow():
    """At the schema's bound (rules.decode.AMOUNT_MAX) the scaled sums and squares stay finite integers."""
    big = [Event("interaction", f"b{i}", T0 + i * 1000, "f", "p", {}, None, None, None, "ok", 1e12, None, 10**9, 1e12,
                 variant="ai-on" if i % 2 else "ai-off", session_ms=1e12) for i in range(150)]  # fmt: skip
    ds, seen = run(big)
    values = [e.value for (rule, _), e in seen.items() if rule == "long"]
    assert values and values[0] == pytest.approx(1e12)
