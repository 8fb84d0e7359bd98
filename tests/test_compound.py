"""Compound rules (``all:`` / ``any:``): several conditions, one verdict, one lifecycle (rules.compound).

Checked: the three-valued combination (every verdict triple), the rule language (each condition checked as a rule of
its own, located; what belongs to the conditions or does not combine), the engine (the seed's "mobile <14 % while
desktop >17 %": fires only while both hold, one lifecycle with ``for``, a side without data is insufficient, the
decision's fields and generated summary), the reference oracle's agreement, the Prometheus series and the panel.
"""

from __future__ import annotations

import itertools

import numpy as np

import pytest

from engine_kit import interactions, rule_body, rule_errors
from reference_engine import ReferenceEngine
from rules.compound import combine
from rules.engine import Engine, EngineConfig
from rules.evaluation import Evaluation
from rules.timestamps import parse_ts

CFG = EngineConfig(allowed_lateness_ms=0)
T0 = interactions(0, 1)[0].ts


@pytest.mark.parametrize("verdicts", list(itertools.product([True, False, None], repeat=3)))
def test_verdicts_combine_in_three_valued_logic(verdicts):
    parts = [Evaluation(v, float(i), 10 + i, 0, 60_000) for i, v in enumerate(verdicts)]
    heads = [{"metric": f"m{i}"} for i in range(3)]
    every, one = all(v is True for v in verdicts), any(v is True for v in verdicts)
    no, none_true = any(v is False for v in verdicts), all(v is False for v in verdicts)
    want_all = False if no else True if every else None
    want_any = True if one else False if none_true else None
    for kind, want in (("all", want_all), ("any", want_any)):
        ev = combine(kind, parts, heads, 60_000, 60_000)
        assert ev.verdict is want
        lead = verdicts.index(want)  # the deciding condition: the first whose verdict is the rule's
        assert (ev.value, ev.samples) == (float(lead), 10 + lead)
        assert [c["verdict"] for c in ev.details["conditions"]] == list(verdicts)
        assert [c["metric"] for c in ev.details["conditions"]] == ["m0", "m1", "m2"]


GAP = """\
  - id: gap
    tier: investigate
    all:
      - {metric: error_rate, where: {platform: mobile}, op: ">", threshold: 0.3}
      - {metric: error_rate, where: {platform: desktop}, op: "<", threshold: 0.1}
    window: 2m
    min_samples: 5
    for: 1m
"""


def test_the_language_checks_each_condition_where_it_is_written():
    errors = rule_errors("""\
  - id: g
    tier: kill
    keep_firing_for: 1h
    metric: error_rate
    any:
      - {metric: error_rate, op: ">", threshold: 2}
      - {metric: nope, op: ">", threshold: 0.1, baseline: 1d}
      - 3
    window: 1d
    every: 7m
""")
    assert errors == [
        "7: keep_firing_for: only tier investigate resolves; kill latches until an operator resumes",
        "7: keep_firing_for: 1h is not a multiple of every (7m)",
        "8: metric: goes into each condition of any: (a compound rule has no metric of its own)",
        "10: threshold: error_rate is a fraction in [0, 1], so 2 can never be crossed (did you mean 0.02?)",
        "11: any[1]: unknown key 'baseline'",
        "11: metric: unknown metric 'nope' (see CONTRACT §2 for the metric names)",
        "12: any[2]: expected a condition (a mapping with metric, op and threshold), got integer 3",
        "13: window: 1d is not a multiple of every (7m)",
    ]
    one = rule_errors('  - {id: g, tier: kill, all: [{metric: error_rate, op: ">", threshold: 0.1}], window: 1m}\n')
    assert len(one) == 1 and one[0].startswith("5: all: expected a list of 2 to 8 conditions")
    both = '  - {id: g, tier: kill, all: [{metric: error_rate, op: ">", threshold: 0.1}], any: [], window: 1m}\n'
    assert rule_errors(both) == ["5: any: give all or any, not both (a rule combines its conditions one way)"]
    across = ('  - {id: g, tier: kill, window: 1m, across: platform, all: [{metric: error_rate, op: ">", threshold: '
              '0.1}, {metric: error_rate, op: "<", threshold: 0.5}]}\n')  # fmt: skip
    assert rule_errors(across) == [
        "5: across: not on a compound rule (all:); give that condition a rule of its own"]
    summary = GAP + '    summary: "{value} {threshold}"\n'
    assert any("threshold" in e for e in rule_errors(summary))
    missing = rule_errors('  - {id: g, tier: kill, window: 1m, all: [{metric: error_rate, op: ">"}, '
                          '{metric: error_rate, op: "<", threshold: 0.5}]}\n')  # fmt: skip
    assert missing == ["5: missing required key 'threshold' (threshold rules need metric, op and threshold)"]


def test_conditions_take_the_rules_shared_keys_and_their_own():
    rule = rule_body(GAP + "    group_by: [region]\n")[0].rules[0]
    assert rule.combine == "all" and rule.metric is None and rule.op is None and rule.threshold is None
    first, second = rule.conditions
    assert (first.id, second.id) == ("gap#1", "gap#2")
    assert first.window_ms == second.window_ms == 120_000 and first.for_ms == 60_000
    assert first.group_by == ("region",) and first.where[0].values == ("mobile",)


def minutes(mobile_errors: list[int], desktop_errors: list[int], n: int = 10) -> list:
    evs = []
    for m, (me, de) in enumerate(zip(mobile_errors, desktop_errors)):
        if me is not None:
            evs += interactions(m, n, errors=me, segment={"platform": "mobile"})
        if de is not None:
            evs += interactions(m, n, errors=de, segment={"platform": "desktop"})
    return sorted(evs, key=lambda e: e.ts)


def decisions(body: str, evs: list, engine=Engine) -> list[dict]:
    eng = engine(rule_body(body), CFG)
    return eng.step(evs).decisions + eng.finish().decisions


def timeline(ds: list[dict]) -> list[tuple[int, str]]:
    return [((parse_ts(d["ts"]) - T0) // 60_000, d["transition"]) for d in ds]


def test_it_fires_only_while_both_hold_with_one_lifecycle():
    # mobile errs half the time from minute 3; desktop errs 0 %, then 50 % from minute 8 (mobile still bad)
    ds = decisions(GAP, minutes([0] * 3 + [5] * 9, [0] * 8 + [5] * 4))
    # mobile's 2-minute window is > 30 % from 5 (10/20 at minutes 3-4): pending at 5, firing at 6 (for: 1m); the
    # desktop window passes 10 % at 9 (5/20): the combination no longer holds, resolved
    assert timeline(ds) == [(5, "pending"), (6, "firing"), (9, "resolved")]
    firing = ds[1]
    assert firing["metric"] == "all(error_rate{platform = mobile} > 0.3, error_rate{platform = desktop} < 0.1)"
    assert firing["op"] is None and firing["threshold"] is None
    assert firing["value"] == 0.5 and firing["samples"] == 20  # the deciding condition: the first (all true)
    assert firing["details"]["conditions"] == [
        {"metric": "error_rate", "op": ">", "threshold": 0.3, "where": ["platform = mobile"], "value": 0.5,
         "samples": 20, "verdict": True},
        {"metric": "error_rate", "op": "<", "threshold": 0.1, "where": ["platform = desktop"], "value": 0.0,
         "samples": 20, "verdict": True},
    ]  # fmt: skip
    assert firing["summary"] == (
        "investigate: t/gap on f/p: all of error_rate{platform = mobile} = 0.5 > 0.3; "
        "error_rate{platform = desktop} = 0 < 0.1")
    resolved = ds[2]
    assert resolved["value"] == 0.25 and resolved["details"]["conditions"][1]["verdict"] is False  # desktop decided


def test_a_side_without_data_is_insufficient_never_false_or_true():
    eng = Engine(rule_body(GAP), CFG)
    seen = []
    eng.observer = seen.append
    eng.step(minutes([5] * 6, [None] * 6))  # desktop sends nothing
    eng.finish()
    assert seen and all(o.evaluation.verdict is None for o in seen)
    assert all(o.evaluation.live for o in seen)  # the window holds data: starved, not idle (rules.starvation)
    assert all(o.evaluation.details["conditions"][1]["samples"] == 0 for o in seen)
    # with any, the mobile side alone decides
    either = GAP.replace("all:", "any:")
    assert timeline(decisions(either, minutes([5] * 6, [None] * 6)))[:2] == [(1, "pending"), (2, "firing")]


def test_the_reference_engine_decides_the_same():
    evs = minutes([0, 5, 5, 5, 1, 5, 5, 5, 5, 0, 0, 5], [0, 0, 1, 0, 0, 5, 0, 0, 0, 0, 2, 0])
    for body in (GAP, GAP.replace("all:", "any:"), GAP + "    group_by: [platform]\n"):
        assert decisions(body, evs) == decisions(body, evs, ReferenceEngine)


def test_the_worker_exports_each_condition_and_the_panel_plots_it():
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    from dashboards.rulepack import rule_panel
    from streams.live.rule_series import RuleSeries

    series = RuleSeries()
    eng = Engine(rule_body(GAP), CFG)
    eng.observer = series.observe
    eng.step(minutes([5] * 6, [0] * 6))
    text = series.render()
    assert 'rollguard_rule_condition_value{feature="f",phase="p",ruleset="t",rule="gap",tier="investigate",' in text
    lines = [x for x in text.splitlines() if x.startswith("rollguard_rule_condition_threshold{")]
    assert [x.rsplit(" ", 1)[1] for x in lines] == ["0.3", "0.1"]
    assert 'condition="2"' in lines[1]
    assert not any(x.startswith("rollguard_rule_threshold{") for x in text.splitlines())  # no single line
    rs = rule_body(GAP)[0]
    panel = JSONEncoder().encode(rule_panel(rs, rs.rules[0]).build())
    assert "rollguard_rule_condition_value" in panel and "rollguard_rule_condition_threshold" in panel


def test_the_report_chart_keeps_each_conditions_value_and_formats_the_shared_unit(tmp_path):
    from streams.offline.chart_render import draw_rule
    from streams.offline.chart_series import SeriesCollector
    from streams.offline.report_format import metric_value

    collector = SeriesCollector()
    eng = Engine(rule_body(GAP), CFG)
    eng.observer = collector
    eng.step(minutes([0] * 3 + [5] * 9, [0] * 8 + [5] * 4))
    eng.finish()
    [(key, rs)] = collector.rules.items()
    [gs] = rs.groups.values()
    mobile, desktop = (np.frombuffer(series.points()[1], dtype=np.float64) for series in gs.conditions)
    assert (mobile.min(), mobile.max(), desktop.min(), desktop.max()) == (0.0, 0.5, 0.0, 0.5)
    assert [c[1:] for c in rs.info.conditions] == [(">", 0.3), ("<", 0.1)] and rs.info.value_metric == "error_rate"
    draw_rule(tmp_path / "gap.png", rs, key, [], (collector.first, collector.last))
    assert (tmp_path / "gap.png").stat().st_size > 1000
    assert metric_value(rs.info.metric, 0.25, False) == "25%"  # the conditions' shared unit
