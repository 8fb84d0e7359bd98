"""The engine observer: one Observation per rule evaluation, carrying the state after it; it decides nothing."""

import pytest

from engine_kit import MIN, T0, rules, traffic
from rules.engine import Engine, EngineConfig

ONE = """
version: 1
name: t
features: ["f"]
rules:
  - {id: errors, tier: pause, metric: error_rate, op: ">", threshold: 0.5, window: 1m, for: 1m, min_samples: 10}
  - {id: slow, tier: investigate, metric: error_rate, op: ">", threshold: 0.5, window: 1m, min_samples: 10,
     baseline: 2m}
"""


def observe(pattern: str, batch: int | None = None):
    seen = []
    eng = Engine(rules(ONE), EngineConfig(allowed_lateness_ms=0), observer=seen.append)
    evs = traffic(pattern)
    outs = []
    for i in range(0, len(evs), batch or len(evs)):
        outs.append(eng.step(evs[i : i + (batch or len(evs))]))
    outs.append(eng.finish())
    return seen, [d for o in outs for d in o.decisions]


# pattern -> states of rule "errors" at minutes 1..n (the instant at minute m evaluates minute m-1)
STATES = [
    ("calm", "....", ["inactive", "inactive", "inactive"]),
    ("pending then firing (for 1m) and latched", "..xx.", ["inactive", "inactive", "pending", "firing"]),
    ("a gap is insufficient at rest", ".._.", ["inactive", "inactive", "insufficient"]),
    ("a gap holds a firing latch", ".xx_.", ["inactive", "pending", "firing", "firing"]),
]


@pytest.mark.parametrize("name,pattern,expected", STATES, ids=[s[0] for s in STATES])
def test_state_after_each_evaluation(name, pattern, expected):
    seen, _ = observe(pattern)
    got = [o.state for o in seen if o.bound.rule.id == "errors"]
    assert got == expected
    times = [o.t for o in seen if o.bound.rule.id == "errors"]
    assert times == [T0 + m * MIN for m in range(1, len(expected) + 1)]


def test_values_threshold_and_compared():
    seen, _ = observe("..x.")
    errs = {o.t: o for o in seen if o.bound.rule.id == "errors"}
    o = errs[T0 + 3 * MIN]
    assert (o.evaluation.value, o.evaluation.samples, o.compared, o.bound.rule.threshold) == (1.0, 20, 1.0, 0.5)
    base = [o for o in seen if o.bound.rule.id == "slow" and o.t == T0 + 3 * MIN][0]
    # baseline rules compare the relative change, not the value: 0 errors two minutes earlier -> undefined change
    assert base.evaluation.value == 1.0 and base.compared is None and base.state == "insufficient"
    seen, _ = observe("x.x.")
    base = [o for o in seen if o.bound.rule.id == "slow" and o.t == T0 + 3 * MIN][0]
    assert (base.evaluation.value, base.compared, base.state) == (1.0, 0.0, "inactive")  # 1.0 against 1.0


@pytest.mark.parametrize("batch", [None, 1, 7])
def test_observer_changes_no_output(batch):
    pattern = "..xx...x_x.."
    _, with_observer = observe(pattern, batch)
    eng = Engine(rules(ONE), EngineConfig(allowed_lateness_ms=0))
    evs = traffic(pattern)
    plain = eng.step(evs).decisions + eng.finish().decisions
    assert with_observer == plain and plain
