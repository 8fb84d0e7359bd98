"""Cohort metrics (``rules.cohort``): ``retention:<k>``, ``returning_share:<k>`` and ``uses_per_user``.

Checked: the rule language (spans, what a cohort metric cannot be combined with, no inherited confidence), exact
values while the sketches hold their hashes, the estimate past 1,024 users against the true share, the windows an
instant reads (the cohort ends ``k`` before it), state kept long enough for the cohort, and the reference oracle's
agreement on a stream that crosses into the estimated regime.
"""

from __future__ import annotations

import random

import pytest

from engine_kit import MIN, T0, rule_body, rule_errors
from reference_engine import ReferenceEngine
from rules.engine import Engine, EngineConfig
from rules.events import Event
from rules.metric_names import MetricNameError, parse_metric

CFG = EngineConfig(allowed_lateness_ms=0)
HOUR = 60 * MIN


def visits(hour: float, users, phase: str = "p", platform: str = "web") -> list[Event]:
    """One interaction per user, spread over the hour starting at ``hour``."""
    users = list(users)
    return [
        Event("interaction", f"{phase}-{hour}-{u}", T0 + int(hour * HOUR) + (i * HOUR) // max(len(users), 1), "f",
              phase, {"platform": platform}, u, None, None, "ok", 100.0)  # fmt: skip
        for i, u in enumerate(users)
    ]


def ticks(hours: int) -> list[Event]:
    """An interaction without a user every 5 minutes: the stream's clock moves on steadily (a jump of an hour would
    be held as a clock outlier), and no user is added."""
    return [Event("interaction", f"tick-{m}", T0 + m * 5 * MIN, "f", "p", {"platform": "web"}, None, None, None, "ok",
                  100.0) for m in range(hours * 12)]  # fmt: skip


def observe(body: str, evs: list, engine=Engine) -> tuple[list[dict], dict[tuple[str, int], object]]:
    """(decisions, evaluation per (rule, hour of the instant))."""
    eng = engine(rule_body(body), CFG)
    evs = sorted(evs + ticks(max((e.ts - T0) // HOUR for e in evs) + 1), key=lambda e: e.ts)
    seen = {}
    eng.observer = lambda o: seen.__setitem__((o.bound.rule.id, (o.t - T0) // HOUR), o.evaluation)
    out = eng.step(evs)
    end = eng.finish()
    return out.decisions + end.decisions, seen


def test_metric_names_take_a_span():
    assert parse_metric("retention:7d") == ("retention", "7d")
    assert parse_metric("returning_share:48h") == ("returning_share", "48h")
    assert parse_metric("uses_per_user") == ("uses_per_user", None)
    for bad, says in (("retention", "needs a parameter, e.g. 'retention:7d'"), ("retention:7", "whole days"),
                      ("retention:0d", "whole days"), ("retention:1w", "whole days"),
                      ("uses_per_user:x", "takes no parameter")):  # fmt: skip
        with pytest.raises(MetricNameError, match=says):
            parse_metric(bad)


def test_the_language_says_what_a_cohort_metric_takes():
    head = '  - {id: r, tier: pause, metric: "retention:2h", op: "<", threshold: 0.3, window: 1h, every: 1h, '
    assert rule_errors(head + "baseline: 1h}\n") == [
        "5: baseline: retention:2h is a share of one window's users found in another (estimated from sketches past "
        "1,024 users), so it takes no baseline"
    ]
    for key, value in (("across", "platform"), ("confidence", "0.9"), ("trailing_baseline", "2h"),
                       ("compare", "{arms: variant, control: a, treatment: b}")):  # fmt: skip
        errors = rule_errors(head + f"{key}: {value}}}\n")
        assert any(e.startswith(f"5: {key}: retention:2h is a share") for e in errors), errors
    errors = rule_errors(head.replace("retention:2h", "retention:90m") + "min_samples: 1}\n")
    assert errors == ["5: metric: the span of retention:90m is not a multiple of every (1h)"]
    errors = rule_errors(head.replace("retention:2h", "retention:9999d") + "min_samples: 1}\n")
    assert errors == ["5: metric: the span of retention:9999d is over 3650d"]  # state is kept for window + span
    # a rate, but estimated past 1,024 users: the defaults' confidence is not inherited (it would be refused)
    body = "defaults: {confidence: 0.9}\nrules:\n" + head.replace("  - {", "  - {") + "min_samples: 1}\n"
    from rules.loader import load_rules_text

    rs = load_rules_text("version: 1\nname: t\nfeatures: ['*']\n" + body, source="t.yaml")
    assert rs[0].rules[0].confidence is None


RETENTION = """\
  - {id: ret, tier: pause, metric: "retention:2h", op: "<", threshold: 0.35, window: 1h, every: 1h, min_samples: 5}
  - {id: back, tier: investigate, metric: "returning_share:2h", op: ">", threshold: 0.9, window: 1h, every: 1h,
     min_samples: 3}
  - {id: upu, tier: investigate, metric: uses_per_user, op: ">", threshold: 2.5, window: 2h, every: 1h,
     min_samples: 3}
"""


def test_retention_is_the_share_of_a_cohort_active_again_within_the_span():
    users = [f"u{i}" for i in range(10)]
    evs = visits(0, users) + visits(1, users[:2]) + visits(2, users[1:3]) + visits(3, users[5:6]) + visits(5, ["z"])
    ds, seen = observe(RETENTION, evs)
    # at 3h: the cohort is hour 0's ten users, three of them came back in [1h, 3h) (u1 twice): 0.3 < 0.35
    at3 = seen[("ret", 3)]
    assert (at3.value, at3.samples, at3.details) == (0.3, 10, {"users": 10, "shared_users": 3})
    assert (at3.window_start - T0, at3.window_end - T0) == (0, 3 * HOUR) and at3.verdict is True
    fired = [d for d in ds if d["rule_id"] == "ret"]
    assert [(d["transition"], d["value"]) for d in fired] == [("firing", 0.3)]
    # before 3h there is no cohort yet; at 4h the cohort (hour 1: u0, u1) is under min_samples
    assert seen[("ret", 2)].verdict is None and seen[("ret", 2)].samples == 0 and not seen[("ret", 2)].live
    assert seen[("ret", 4)].verdict is None and seen[("ret", 4)].samples == 2 and seen[("ret", 4)].live


def test_returning_share_and_uses_per_user():
    users = [f"u{i}" for i in range(10)]
    evs = visits(0, users) + visits(1, users[:3]) + visits(1.5, users[:3]) + visits(1, ["new"]) + visits(3, ["z"])
    _, seen = observe(RETENTION, evs)
    at2 = seen[("back", 2)]  # hour 1's four users, three of them seen in the two hours before
    assert (at2.value, at2.samples, at2.verdict) == (0.75, 4, False)
    # 10 + 6 requests by 11 users in [0h, 2h) (the third visit from 1.5h falls at 2h10m), and 24 ticks (no user)
    upu = seen[("upu", 2)]
    assert upu.value == pytest.approx((16 + 24) / 11) and upu.samples == 11


def test_past_1024_users_the_share_is_estimated_close_to_the_truth():
    rnd = random.Random(7)
    week1 = [f"user-{i}" for i in range(20_000)]
    back = rnd.sample(week1, 7_600)  # 38 %
    fresh = [f"new-{i}" for i in range(5_000)]
    later = back + fresh
    rnd.shuffle(later)
    evs = visits(0, week1) + visits(1.5, later) + visits(4, ["z"])
    _, seen = observe(RETENTION, evs)
    at3 = seen[("ret", 3)]
    assert at3.samples == pytest.approx(20_000, rel=0.02)
    assert at3.value == pytest.approx(0.38, abs=0.01)
    at2 = seen[("back", 2)]  # [1h, 2h) holds half of the later visits: 60 % of them returning
    assert at2.value == pytest.approx(7_600 / 12_600, abs=0.015)


def test_state_is_kept_for_the_cohort():
    from rules.plan import Plan

    plan = Plan(rule_body(RETENTION))
    spec = next(b.store for b in plan.rules if b.rule.id == "ret")
    assert spec.needs_users and spec.retention_ms == 3 * HOUR  # the window and the span after it


def test_the_reference_engine_decides_the_same():
    rnd = random.Random(11)
    evs = []
    population = [f"p{i}" for i in range(3_000)]
    for hour in range(10):
        n = rnd.choice((8, 40, 700, 1_500))
        evs += visits(hour, rnd.sample(population, n), platform=rnd.choice(("web", "ios")))
    body = """\
  - {id: ret, tier: investigate, metric: "retention:2h", op: between, threshold: [0.2, 0.5], window: 1h, every: 1h}
  - {id: back, tier: investigate, metric: "returning_share:1h", op: ">", threshold: 0.3, window: 1h, every: 1h}
  - {id: upu, tier: investigate, metric: uses_per_user, op: "<", threshold: 1.2, window: 2h, every: 1h}
  - {id: ret-ios, tier: investigate, metric: "retention:3h", op: between, threshold: [0.2, 0.6], window: 2h,
     every: 1h, where: {platform: ios}, min_samples: 1}
"""
    ds, seen = observe(body, evs)
    ref, ref_seen = observe(body, evs, ReferenceEngine)
    assert ds == ref and {d['rule_id'] for d in ds} >= {'ret', 'back', 'upu'}
    assert {k: (e.value, e.samples, e.details) for k, e in seen.items()} == \
        {k: (e.value, e.samples, e.details) for k, e in ref_seen.items()}  # fmt: skip


def test_a_test_case_pool_shares_user_ids_between_series(tmp_path):
    from rules.case_loader import load_cases
    from rules.cases import CasesInvalid
    from rules.testing import run_case

    (tmp_path / "r.yaml").write_text("version: 1\nname: t\nfeatures: ['*']\nrules:\n" + RETENTION)
    case = """\
rule_files: [r.yaml]
feature: f
phase: p
tests:
  - name: a quarter of the cohort comes back
    series:
      - {type: interaction, to: 1h, every: 1m, users: 20, pool: c}
      - {type: interaction, from: 1h, to: 4h, every: 1m, users: 5, pool: c}
    expect:
      - {at: 3h, rule: ret, transition: firing, tier: pause}
    exact: listed
"""
    (tmp_path / "c.test.yaml").write_text(case)
    cases = load_cases(tmp_path / "c.test.yaml")
    [result] = [run_case(cases, t) for t in cases.cases]
    assert result.passed, result.failures
    assert [d["value"] for d in result.outputs.decisions if d["rule_id"] == "ret"] == [0.25]
    # without a pool each series has users of its own: nobody comes back
    (tmp_path / "c.test.yaml").write_text(case.replace(", pool: c", ""))
    cases = load_cases(tmp_path / "c.test.yaml")
    result = run_case(cases, cases.cases[0])
    assert [d["value"] for d in result.outputs.decisions if d["rule_id"] == "ret"] == [0.0]
    (tmp_path / "c.test.yaml").write_text(case.replace("users: 20, pool: c", "pool: c"))
    with pytest.raises(CasesInvalid, match="pool: a pool name .* goes with users"):
        load_cases(tmp_path / "c.test.yaml")


def test_a_cohort_rule_is_not_called_starved_before_its_span_has_passed():
    from rules.starvation import max_starved_ms

    ret = rule_body(RETENTION)[0].rules[0]
    assert max_starved_ms(ret) == 12 * HOUR  # pause default; window + span is 3h
    long = rule_body(RETENTION.replace('"retention:2h"', '"retention:7d"').replace("window: 1h, every: 1h, min_samples: 5",
                                                                               "window: 7d, every: 1d"))[0].rules[0]
    assert max_starved_ms(long) == 14 * 24 * HOUR
