"""Starved rules (rules.starvation): a rule insufficient while its window holds data pages after ``max_starved``,
resolves once it decides again, restarts its clock when the window is idle, and persists across restarts/reloads."""

from __future__ import annotations

import pytest
from engine_kit import MIN, RULES_HEAD, T0, interactions, rule_body, rule_errors, run, timeline

from rules.engine import Engine, EngineConfig
from rules.loader import load_rules_text
from rules.starvation import DEFAULT_MAX_STARVED_MS, max_starved_ms
from rules.state import FeatureState

RULE = """  - {{id: r, tier: kill, metric: error_rate, op: ">", threshold: 0.5, window: 10m, min_samples: 100{extra}}}
"""


def minutes(spec: list[tuple[int, int, int]]) -> list:
    """Interactions: ``(first minute, last minute exclusive, per minute)`` runs; none in the gaps."""
    out = []
    for lo, hi, n in spec:
        for m in range(lo, hi):
            out += interactions(m, n, prefix=f"{lo}-")
    return out


def test_a_rule_short_of_samples_while_data_flows_pages_once_and_resolves_when_it_decides_again():
    rs = rule_body(RULE.format(extra=", max_starved: 30m"))
    # 5 calls a minute: 50 in the window, half of min_samples; from minute 60, 20 a minute (110 by minute 64)
    _, decisions, commands, pages = run(rs, minutes([(0, 60, 5), (60, 80, 20)]))
    assert timeline(decisions) == [(31, "starved"), (64, "fed")]
    starved, fed = decisions
    assert starved["starved_since"] == "2026-11-02T00:01:00Z" and starved["max_starved"] == "30m"
    assert starved["samples"] == 50 and starved["tier"] == "kill" and commands == []
    assert starved["summary"] == ("t/r on f/p has had too little data to decide for 30m (50 samples, needs 100): "
                                  "this kill rule cannot fire")  # fmt: skip
    trigger, resolve = pages
    assert (trigger["event_action"], resolve["event_action"]) == ("trigger", "resolve")
    assert trigger["dedup_key"] == resolve["dedup_key"] and trigger["payload"]["class"] == "r.starved"
    assert trigger["payload"]["severity"] == "warning"
    assert trigger["payload"]["custom_details"]["decision_id"] == starved["decision_id"]
    assert fed["summary"] == "t/r on f/p decides again after 1h3m with too little data"


def test_an_idle_window_restarts_the_clock_and_leaves_a_flagged_rule_flagged():
    rs = rule_body(RULE.format(extra=", max_starved: 30m"))
    # starved 20 minutes, then 15 idle minutes (the window empties at minute 30), then starved again from 35
    _, decisions, _, _ = run(rs, minutes([(0, 20, 5), (35, 60, 5)]))
    assert timeline(decisions) == []  # the clock restarted at minute 36: 30 minutes later is past the data's end
    _, decisions, _, pages = run(rs, minutes([(0, 40, 5), (60, 70, 5), (70, 80, 20)]))
    # flagged at 31; idle from 50 to 60 keeps it flagged; starved again, then fed at 74
    assert timeline(decisions) == [(31, "starved"), (74, "fed")] and len(pages) == 2


def test_shadow_rules_only_record_and_off_turns_it_off():
    shadow = rule_body(RULE.format(extra=", mode: shadow, max_starved: 30m"))
    _, decisions, _, pages = run(shadow, minutes([(0, 60, 5)]))
    assert timeline(decisions) == [(31, "starved")] and decisions[0]["mode"] == "shadow" and pages == []
    off = rule_body(RULE.format(extra=", max_starved: off"))
    assert off[0].rules[0].max_starved_ms == 0 and max_starved_ms(off[0].rules[0]) is None
    _, decisions, _, pages = run(off, minutes([(0, 60 * 24, 1)]))
    assert decisions == [] and pages == []


def test_defaults_follow_the_tier_and_never_undercut_the_window():
    [rs] = load_rules_text(RULES_HEAD + """  - {id: k, tier: kill, metric: error_rate, op: ">", threshold: 0.5, window: 10m}
  - {id: p, tier: pause, metric: error_rate, op: ">", threshold: 0.5, window: 10m}
  - {id: i, tier: investigate, metric: error_rate, op: ">", threshold: 0.5, window: 10m}
  - {id: long, tier: kill, metric: error_rate, op: ">", threshold: 0.5, window: 1d, baseline: 1d, every: 1h}
  - {id: d, tier: kill, drift: {detector: page_hinkley, signal: latency_ms}}
""", source="t.yaml")  # fmt: skip
    got = {r.id: max_starved_ms(r) for r in rs.rules}
    hour = 3_600_000
    assert DEFAULT_MAX_STARVED_MS == {"kill": 6 * hour, "pause": 12 * hour, "investigate": 24 * hour}
    assert got == {"k": 6 * hour, "p": 12 * hour, "i": 24 * hour, "long": 48 * hour, "d": None}
    [rs] = load_rules_text(RULES_HEAD.replace("rules:", "defaults: {max_starved: 2h}\nrules:") + """  - {id: k, tier: kill, metric: error_rate, op: ">", threshold: 0.5, window: 10m}
""", source="t.yaml")  # fmt: skip
    assert max_starved_ms(rs.rules[0]) == 2 * hour


@pytest.mark.parametrize("extra, message", [
    (", max_starved: 0", "max_starved: must be longer than 0s (or off)"),
    (", max_starved: sometimes", "max_starved:"),
    (", max_starved: [1h]", "max_starved: expected a duration"),
])  # fmt: skip
def test_max_starved_is_checked(extra, message):
    assert any(message in e for e in rule_errors(RULE.format(extra=extra))), rule_errors(RULE.format(extra=extra))


def test_drift_rules_take_no_max_starved():
    errors = rule_errors("""  - {id: d, tier: kill, drift: {detector: page_hinkley, signal: latency_ms}, max_starved: 1h}
""")
    assert any("max_starved: drift rules take no max_starved" in e for e in errors), errors


def test_the_clock_survives_a_restart_and_a_removed_rule_ends_flagged():
    rs = rule_body(RULE.format(extra=", max_starved: 30m"))
    eng = Engine(rs, EngineConfig(allowed_lateness_ms=0))
    out = eng.step(minutes([(0, 20, 5)]))
    fs = eng.features["f"]
    assert fs.starving == {("t", "r", "p", ()): [T0 + MIN, False]}
    key = b"k" * 32
    restored = FeatureState.from_state(fs.to_state(key), key)
    assert restored.starving == fs.starving
    assert "starving" not in FeatureState().to_state(key)  # states without a starved rule are unchanged
    out = eng.step(minutes([(20, 40, 5)]))
    assert [d["transition"] for d in out.decisions] == ["starved"]
    other = load_rules_text(RULES_HEAD + """  - {id: q, tier: kill, metric: error_rate, op: ">", threshold: 0.5, window: 10m}
""", source="t.yaml")  # fmt: skip
    out = eng.reload(other)
    [fed] = [d for d in out.decisions if d["transition"] == "fed"]
    assert fed["cause"] == "rule_removed" and fed["rule_id"] == "r"
    assert [p["event_action"] for p in out.pages] == ["resolve"] and eng.features["f"].starving == {}
