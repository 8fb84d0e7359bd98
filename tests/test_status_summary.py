"""What `rollguard status` and the tier metric show: enforced firing rules and latches raise the tier, shadow rules
are listed but raise nothing."""

import pytest

from engine_kit import interactions, rules, traffic
from rules.engine import Engine, EngineConfig
from streams.demo import _status_line
from streams.live.ops import render_status
from streams.live.status_summary import summary_of

PACK = """
version: 1
name: t
features: ["f"]
rules:
  - {{id: r, tier: {tier}, metric: error_rate, op: ">", threshold: 0.5, window: 1m, min_samples: 10, mode: {mode}}}
"""


@pytest.mark.parametrize("tier,mode,expected_tier,latch", [
    ("investigate", "enforce", "investigate", None),
    ("pause", "enforce", "pause", "pause"),
    ("kill", "enforce", "kill", "kill"),
    ("kill", "shadow", "ok", None),
    ("pause", "shadow", "ok", None),
])  # fmt: skip
def test_tier_while_firing(tier, mode, expected_tier, latch):
    eng = Engine(rules(PACK.format(tier=tier, mode=mode)), EngineConfig(allowed_lateness_ms=0))
    eng.step(traffic("..xxx"))
    p = summary_of(eng, "f", eng.features["f"])["phases"]["p"]
    assert (p["tier"], p["latch"]) == (expected_tier, latch)
    assert [(r["rule_id"], r["state"]) for r in p["rules"]] == [("r", "firing")]
    assert p["rules"][0].get("mode") == ("shadow" if mode == "shadow" else None)


@pytest.mark.parametrize("mode, shown", [("enforce", "r(kill,firing)"), ("shadow", "r(kill,firing (shadow))")])
def test_status_text_marks_a_firing_shadow_rule(mode, shown):
    eng = Engine(rules(PACK.format(tier="kill", mode=mode)), EngineConfig(allowed_lateness_ms=0))
    eng.step(traffic("..xxx"))
    row = dict(summary_of(eng, "f", eng.features["f"]), updated_ms=0)  # as read back from Redis
    [line] = render_status([row], 0).splitlines()[1:]
    assert line.endswith("  " + shown)
    assert line.split()[2] == ("KILL" if mode == "enforce" else "OK")  # the tier: a shadow rule raises none


def test_the_demo_status_line_marks_shadow_rules():
    eng = Engine(rules(PACK.format(tier="pause", mode="shadow")), EngineConfig(allowed_lateness_ms=0))
    eng.step(traffic("..xxx"))
    assert _status_line([summary_of(eng, "f", eng.features["f"])]).endswith("; firing: r (shadow)")


def test_status_counts_the_events_quarantined_or_held_for_their_time():
    eng = Engine(rules(PACK.format(tier="kill", mode="enforce")), EngineConfig(allowed_lateness_ms=0))
    evs = traffic("....")
    bad = interactions(0, 2, prefix="bad-")
    bad[0].ts, bad[1].ts = 0, evs[-1].ts + 86_400_000  # 1970, and a day ahead
    eng.step(evs + bad)
    s = summary_of(eng, "f", eng.features["f"])
    assert s["clock"] == {"outliers": {"behind": 1}, "held": 1, "skew_paged": False}
    text = render_status([dict(s, updated_ms=0)], 0)
    assert "f: 1 quarantined as ts_outlier (behind 1), 1 held" in text
