"""What `rollguard status` and the tier metric show: enforced firing rules and latches raise the tier, shadow rules
are listed but raise nothing."""

import pytest

from engine_kit import rules, traffic
from rules.engine import Engine, EngineConfig
from streams.processor import summary_of

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
