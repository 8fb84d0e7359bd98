"""``resolve_threshold`` (hysteresis): a firing rule resolves only once its value crosses back over a second line.

Checked: the rule language (located errors for a line on the firing side, on a latching tier, on a drift rule,
outside [0, 1] for a rate), the engine (a value between the two lines keeps the instance firing where a plain rule
flaps; every op and the ``across`` spread), the outputs (decisions and pages carry the line), and what shows it
downstream: the Prometheus family, the Grafana panel, the replay chart and ``--compare``'s list of changed
definitions.
"""

from __future__ import annotations

import pytest

from engine_kit import interactions, rules
from rules.engine import Engine, EngineConfig
from rules.loader import RulesInvalid

CFG = EngineConfig(allowed_lateness_ms=0)


def ruleset(extra: str, op: str = ">", threshold: float = 0.5, metric: str = "error_rate") -> tuple:
    return rules(f"""
version: 1
name: h
features: ["f"]
rules:
  - {{id: plain, tier: investigate, metric: {metric}, op: "{op}", threshold: {threshold}, window: 1m, min_samples: 5}}
  - {{id: sticky, tier: investigate, metric: {metric}, op: "{op}", threshold: {threshold}, window: 1m, min_samples: 5,
      {extra}}}
""")


def run(rs, error_counts: list[int], n: int = 20) -> list[dict]:
    """One minute of ``n`` interactions per entry, the first ``errors`` of them failing; the decisions."""
    evs = [e for m, k in enumerate(error_counts) for e in interactions(m, n, errors=k)]
    eng = Engine(rs, CFG)
    out = eng.step(evs)
    fin = eng.finish()
    return out.decisions + fin.decisions


def transitions(decisions: list[dict], rule: str) -> list[str]:
    return [d["transition"] for d in decisions if d["rule_id"] == rule and d["transition"] in ("firing", "resolved")]


def test_a_value_between_the_lines_keeps_the_instance_firing():
    # error share per minute: 0.9 (fires), 0.4 (between 0.2 and 0.5), 0.6, 0.1 (below 0.2: resolves), 0.1
    decisions = run(ruleset("resolve_threshold: 0.2"), [18, 8, 12, 2, 2, 2])
    assert transitions(decisions, "plain") == ["firing", "resolved", "firing", "resolved"]
    assert transitions(decisions, "sticky") == ["firing", "resolved"]
    sticky = [d for d in decisions if d["rule_id"] == "sticky"]
    assert all(d["resolve_threshold"] == 0.2 for d in sticky)
    assert all("resolve_threshold" not in d for d in decisions if d["rule_id"] == "plain")
    resolved = [d for d in sticky if d["transition"] == "resolved"][0]
    assert resolved["value"] == pytest.approx(0.1)


def test_exactly_on_the_resolve_line_resolves_for_a_strict_op_and_holds_for_an_inclusive_one():
    assert transitions(run(ruleset("resolve_threshold: 0.2"), [18, 4, 4]), "sticky") == ["firing", "resolved"]
    inclusive = ruleset("resolve_threshold: 0.2", op=">=")
    assert transitions(run(inclusive, [18, 4, 4, 3, 3]), "sticky") == ["firing", "resolved"]
    decisions = run(inclusive, [18, 4, 4, 3, 3])  # the last minute is not evaluated: no event after it
    resolved = [d for d in decisions if d["rule_id"] == "sticky" and d["transition"] == "resolved"][0]
    assert resolved["value"] == pytest.approx(0.15)  # 0.2 >= 0.2 held on; 0.15 resolved


def test_a_falling_metric_rule_resolves_only_back_above_its_line():
    # acceptance of suggestions is not in engine_kit; error_rate with op "<" reads the same way: fires below 0.3,
    # resolves at or above 0.6
    rs = ruleset("resolve_threshold: 0.6", op="<", threshold=0.3)
    decisions = run(rs, [2, 10, 4, 14, 14])  # 0.1 (fires), 0.5, 0.2, 0.7 (resolves)
    assert transitions(decisions, "plain") == ["firing", "resolved", "firing", "resolved"]
    assert transitions(decisions, "sticky") == ["firing", "resolved"]


def test_pages_carry_the_resolve_line():
    evs = [e for m, k in enumerate([18, 8, 2, 2]) for e in interactions(m, 20, errors=k)]
    eng = Engine(ruleset("resolve_threshold: 0.2"), CFG)
    pages = eng.step(evs).pages + eng.finish().pages
    sticky = [p for p in pages if p["payload"]["class"] == "sticky"]
    assert [p["event_action"] for p in sticky] == ["trigger", "resolve"]
    assert all(p["payload"]["custom_details"]["resolve_threshold"] == 0.2 for p in sticky)
    plain = [p for p in pages if p["payload"]["class"] == "plain"]
    assert all("resolve_threshold" not in p["payload"]["custom_details"] for p in plain)


def test_the_spread_across_a_segment_key_has_hysteresis_too():
    rs = rules("""
version: 1
name: h
features: ["f"]
rules:
  - {id: gap, tier: investigate, metric: error_rate, op: ">", threshold: 0.3, resolve_threshold: 0.1, window: 1m,
     min_samples: 5, across: platform}
""")
    evs = []
    for m, (a, b) in enumerate([(18, 2), (10, 4), (6, 4), (5, 4)]):  # gaps 0.8, 0.3, 0.1, 0.05 of 20
        evs += interactions(m, 20, errors=a, segment={"platform": "ios"}, prefix="a")
        evs += interactions(m, 20, errors=b, segment={"platform": "web"}, prefix="b")
    evs.sort(key=lambda e: e.ts)  # in time order: with no allowed lateness, each platform's minute must interleave
    eng = Engine(rs, CFG)
    decisions = eng.step(evs).decisions + eng.finish().decisions
    assert transitions(decisions, "gap") == ["firing", "resolved"]
    resolved = [d for d in decisions if d["transition"] == "resolved"][0]
    assert resolved["value"] == pytest.approx(0.1)  # 0.3 held (not <= 0.1); 0.1 resolved


@pytest.mark.parametrize("extra,message", [
    ("resolve_threshold: 0.6", "resolve_threshold: 0.6 is on the firing side of threshold 0.5: with op > it must be <= 0.5"),
    ("resolve_threshold: -0.1", "resolve_threshold: error_rate is a fraction in [0, 1]; got -0.1"),
    ("resolve_threshold: x", "resolve_threshold:"),
])  # fmt: skip
def test_invalid_lines_are_located_errors(extra, message):
    with pytest.raises(RulesInvalid) as e:
        ruleset(extra)
    assert "t.yaml:8: ruleset 'h' rule 'sticky': " + message in str(e.value)


def test_a_falling_rule_needs_its_line_above_the_threshold():
    with pytest.raises(RulesInvalid) as e:
        ruleset("resolve_threshold: 0.2", op="<", threshold=0.3)
    assert "with op < it must be >= 0.3" in str(e.value)


def test_latching_tiers_and_drift_rules_take_no_resolve_line():
    with pytest.raises(RulesInvalid) as e:
        rules("""
version: 1
name: h
features: ["f"]
rules:
  - {id: k, tier: kill, metric: error_rate, op: ">", threshold: 0.5, resolve_threshold: 0.2, window: 1m}
  - {id: d, tier: investigate, drift: {detector: adwin, signal: latency_ms}, resolve_threshold: 3}
  - {id: dflt, tier: investigate, metric: error_rate, op: ">", threshold: 0.5, window: 1m}
defaults: {resolve_threshold: 0.2}
""")
    text = str(e.value)
    assert "rule 'k': resolve_threshold: only tier investigate resolves; kill latches until an operator resumes" in text
    assert "rule 'd': resolve_threshold: drift rules take no resolve_threshold" in text
    assert "defaults" in text and "resolve_threshold" in text


def test_the_prometheus_family_and_the_grafana_panel_show_the_line():
    from dashboards.rulepack import rule_description, rule_panel
    from streams.live.rule_series import RuleSeries

    [rs] = ruleset("resolve_threshold: 0.2")
    sticky, plain = rs.rules[1], rs.rules[0]
    series = RuleSeries(max_groups=50)
    eng = Engine((rs,), CFG, observer=series.observe)
    eng.step([e for m, k in enumerate([18, 8]) for e in interactions(m, 20, errors=k)])
    eng.finish()
    text = series.render()
    assert "# TYPE rollguard_rule_resolve_threshold gauge" in text
    lines = [x for x in text.splitlines() if x.startswith("rollguard_rule_resolve_threshold{")]
    assert lines and all('rule="sticky"' in x and x.endswith(" 0.2") for x in lines)
    panel = rule_panel(rs, sticky).build()
    exprs = [t.expr for t in panel.targets]
    assert any("rollguard_rule_resolve_threshold" in x for x in exprs)
    assert not any("rollguard_rule_resolve_threshold" in t.expr for t in rule_panel(rs, plain).build().targets)
    assert "once firing, resolves only when the value is at or below 0.2" in rule_description(rs, sticky)


def test_the_replay_chart_draws_the_line(tmp_path):
    from rules.plan import Plan
    from streams.offline.chart_series import RuleInfo

    [rs] = ruleset("resolve_threshold: 0.2")
    plan = Plan((rs,))
    info = RuleInfo.of(plan.by_key[("h", "sticky")])
    assert info.resolve_threshold == 0.2
    assert RuleInfo.of(plan.by_key[("h", "plain")]).resolve_threshold is None


def test_compare_lists_a_new_resolve_line_as_a_changed_definition():
    from streams.offline.comparison import diff_outputs

    a = run(ruleset("resolve_threshold: 0.5"), [18, 2, 2])
    b = run(ruleset("resolve_threshold: 0.2"), [18, 2, 2])
    diff = diff_outputs({"decisions": a}, {"decisions": b})
    changed = [c for c in diff.changes if c.status == "changed" and c.record["rule_id"] == "sticky"]
    assert changed and ("resolve_threshold", 0.5, 0.2) in changed[0].differences


CASES = """\
rule_files: [rules.yaml]
feature: f
tests:
  - name: a latency between the lines keeps one page open
    series:
      - {type: interaction, to: 5m, every: 10s, fields: {latency_ms: 2000}}
      - {type: interaction, from: 5m, to: 10m, every: 10s, fields: {latency_ms: 800}}
      - {type: interaction, from: 10m, to: 16m, every: 10s, fields: {latency_ms: 400}}
    expect:
      - {at: 1m, rule: sticky, transition: firing, page: trigger}
      - {at: 11m, rule: sticky, transition: resolved, page: resolve}
      - {at: 1m, rule: plain, transition: firing, page: trigger}
      - {at: 6m, rule: plain, transition: resolved, page: resolve}
    exact: all
"""

CASE_RULES = """\
version: 1
name: h
features: ["f"]
rules:
  - {id: plain, tier: investigate, metric: latency_p95, op: ">", threshold: 1000, window: 1m, min_samples: 3}
  - {id: sticky, tier: investigate, metric: latency_p95, op: ">", threshold: 1000, resolve_threshold: 600,
     window: 1m, min_samples: 3}
"""


def test_rules_test_cases_can_state_hysteresis(tmp_path):
    from rules.case_loader import load_cases
    from rules.testing import run_case

    (tmp_path / "rules.yaml").write_text(CASE_RULES)
    (tmp_path / "h.test.yaml").write_text(CASES)
    cf = load_cases(tmp_path / "h.test.yaml")
    [result] = [run_case(cf, case) for case in cf.cases]
    assert result.passed, result.failures
