"""``op: between`` / ``outside``: a rule on a band ``threshold: [low, high]`` — loading, evaluation, outputs and what
reads them downstream (reports, annotations, dashboards, the worker's metrics)."""

from __future__ import annotations

import pytest
from engine_kit import interactions, rule_body, rule_errors, run, timeline

from dashboards.rulepack import rule_panel
from streams.grafana.annotations import _evidence
from streams.offline.report_format import evidence as _fmt_evidence

BAND = """  - {{id: r, tier: investigate, metric: error_rate, op: {op}, threshold: [0.2, 0.4], window: 5m, min_samples: 10,
     keep_firing_for: 0s}}
"""


def minutes(errors_per_minute: list[int], n: int = 20) -> list:
    out = []
    for m, errors in enumerate(errors_per_minute):
        out += interactions(m, n, errors=errors)
    return out


@pytest.mark.parametrize("op, x, fires", [
    ("between", 0.2, True), ("between", 0.3, True), ("between", 0.4, True), ("between", 0.19, False),
    ("between", 0.41, False), ("outside", 0.2, False), ("outside", 0.4, False), ("outside", 0.1, True),
    ("outside", 0.5, True),
])  # fmt: skip
def test_the_band_includes_its_bounds(op, x, fires):
    [rs] = rule_body(BAND.format(op=op))
    assert rs.rules[0].holds(x) is fires


def test_between_fires_inside_the_band_and_resolves_on_either_side():
    [rs] = rule_body(BAND.format(op="between"))
    # 6 errors in 20 (30 %) for 10 minutes, then 2 (10 %): in the band from the first minute (20 calls >=
    # min_samples), below it once the 5-minute window holds 18 % (minute 13)
    _, decisions, commands, pages = run([rs], minutes([6] * 10 + [2] * 10))
    assert timeline(decisions) == [(1, "firing"), (13, "resolved")] and commands == []
    d = decisions[0]
    assert (d["op"], d["threshold"], d["threshold_high"]) == ("between", 0.2, 0.4)
    assert pages[0]["payload"]["custom_details"]["threshold_high"] == 0.4
    assert d["summary"].endswith("error_rate = 0.3 between [0.2, 0.4]")
    # above the band it does not fire either: a band is not a floor
    _, decisions, _, _ = run([rs], minutes([12] * 10))
    assert decisions == []


def test_outside_fires_on_both_sides():
    [rs] = rule_body(BAND.format(op="outside"))
    # 5 % (below), then 30 % (inside: 20 % at minute 11 is on the band's bound, which belongs to it), then 60 %
    _, decisions, _, _ = run([rs], minutes([1] * 8 + [6] * 8 + [12] * 8))
    assert timeline(decisions) == [(1, "firing"), (11, "resolved"), (18, "firing")]


def test_a_band_is_checked_where_it_is_written():
    body = '  - {{id: r, tier: investigate, metric: acceptance_rate, op: {op}, threshold: {th}, window: 1h{extra}}}\n'
    cases = [
        (("between", "0.15", ""), "5: threshold: op between takes a band [low, high], got one number"),
        (('">"', "[0.1, 0.2]", ""), "5: threshold: a band [low, high] goes with op between or outside, not >"),
        (("outside", "[0.2, 0.1]", ""), "5: threshold: the band's low line must be below its high line"),
        (("outside", "[0.1, 20]", ""), "5: threshold: acceptance_rate is a fraction in [0, 1], so 20 can never be"),
        (("outside", "[0.1, 0.2, 0.3]", ""), "5: threshold: a band is two finite numbers [low, high]"),
        (("between", "[0.1, 0.2]", ", confidence: 0.9"), "5: confidence: cannot be combined with op between"),
        (("between", "[0.1, 0.2]", ", resolve_threshold: 0.3"), "5: resolve_threshold: cannot be combined with op"),
        (("between", "[0.1, 0.2]", ", compare: {by: variant, control: a}"), "compare: cannot be combined with op"),
    ]
    for (op, th, extra), want in cases:
        errors = rule_errors(body.format(op=op, th=th, extra=extra))
        assert any(e.startswith(want) or want in e for e in errors), (op, th, extra, errors)


def test_defaults_confidence_does_not_reach_a_band():
    from rules.loader import load_rules_text

    [rs] = load_rules_text("""version: 1
name: t
features: ['*']
defaults: {confidence: 0.95}
rules:
  - {id: r, tier: investigate, metric: acceptance_rate, op: between, threshold: [0.15, 0.165], window: 1d}
""", source="t.yaml")  # fmt: skip
    assert rs.rules[0].confidence is None


def test_downstream_readers_show_both_lines():
    [rs] = rule_body(BAND.format(op="between"))
    _, decisions, _, _ = run([rs], minutes([6] * 6))
    d = decisions[0]
    assert _fmt_evidence(d) == "30% (between 20% – 40%)"
    assert _evidence(d, "decision") == " (value 0.3 between [0.2, 0.4])"
    panel = rule_panel(rs, rs.rules[0]).build()
    steps = [(s.value, s.color) for s in panel.field_config.defaults.thresholds.steps]
    assert steps == [(None, "transparent"), (0.2, "red"), (0.4, "transparent")]
    assert any("rollguard_rule_threshold_high" in t.expr for t in panel.targets)
