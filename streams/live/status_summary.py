"""What ``rollguard status`` shows for one feature, from the engine's state: per phase the tier, latch and active rules.

The processor writes it to Redis with each feature's state (streams.live.store), ``rollguard status`` reads it back
(streams.live.ops), and the worker's metrics derive the feature tier and firing gauges from it
(streams.live.observability).
"""

from __future__ import annotations

from typing import Any

from rules.engine import Engine
from rules.model import TIER_ORDER
from rules.outputs import iso
from rules.state import FeatureState

__all__ = ["summary_of"]


def summary_of(engine: Engine, feature: str, fs: FeatureState) -> dict:
    """What ``rollguard status`` shows for one feature: per phase the tier, latch and active rules."""
    phases: dict[str, dict[str, Any]] = {}
    for ph in sorted(fs.phases | set(fs.latches)):
        phases[ph] = {"tier": "ok", "latch": fs.latches.get(ph), "rules": []}
    for (rs, rid, ph, group), inst in sorted(fs.instances.items()):
        if inst.state not in ("pending", "firing"):
            continue
        b = engine.plan.by_key.get((rs, rid))
        tier = b.rule.tier if b else "investigate"
        p = phases.setdefault(ph, {"tier": "ok", "latch": fs.latches.get(ph), "rules": []})
        p["rules"].append({"ruleset": rs, "rule_id": rid, "tier": tier, "state": inst.state,
                           "group": list(group), "since": iso(inst.pending_since or inst.incident or 0),
                           "held": inst.held})  # fmt: skip
        if b is not None and b.rule.mode == "shadow":
            p["rules"][-1]["mode"] = "shadow"  # listed, but a shadow rule raises no tier: it enforces nothing
            continue
        if inst.state == "firing" and TIER_ORDER[tier] > TIER_ORDER.get(p["tier"], -1):
            p["tier"] = tier
    for (rs, rid, ph, group), (since, flagged) in sorted(fs.starving.items()):
        if flagged:  # rules.starvation: the rule cannot decide for want of data (a starved page is open)
            p = phases.setdefault(ph, {"tier": "ok", "latch": fs.latches.get(ph), "rules": []})
            p.setdefault("starved", []).append({"ruleset": rs, "rule_id": rid, "group": list(group),
                                                "since": iso(since)})  # fmt: skip
    for (rs, ph), st in sorted(fs.promotions.items()):  # rules.promotion: the last verdict and its checklist
        p = phases.setdefault(ph, {"tier": "ok", "latch": fs.latches.get(ph), "rules": []})
        p.setdefault("promotions", []).append({"ruleset": rs, "verdict": st["verdict"], "at": iso(st["at"]),
                                               **st["detail"]})  # fmt: skip
    for p in phases.values():
        if p["latch"] and TIER_ORDER[p["latch"]] > TIER_ORDER.get(p["tier"], -1):
            p["tier"] = p["latch"]
    return {
        "feature": feature,
        "watermark": iso(wm) if (wm := engine.watermark(feature)) is not None else None,
        "plan_version": engine.plan.version,
        "phases": phases,
        # producer clocks (rules.clock): events quarantined as ts_outlier, events held, whether a skew page is open
        "clock": {"outliers": dict(sorted(fs.outliers.items())), "held": sum(len(c.held) for c in fs.clocks.values()),
                  "skew_paged": fs.skew is not None and fs.skew[2] is not None},
    }
