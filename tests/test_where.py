"""``where:`` filters: located loader errors, which events count, shared stores, persisted state across reloads.

The engine's equality with the per-event reference under filters is checked in test_differential.py.
"""

from __future__ import annotations

import pytest
from engine_kit import MIN, T0, rule_body, rule_errors, rules, run

from rules.engine import Engine, EngineConfig
from rules.events import Event
from rules.model import Matcher
from rules.windows import StoreSpec

def test_matchers_load_sorted_with_their_operators():
    [rs] = rule_body("  - {id: r, tier: kill, metric: requests, op: '>', threshold: 0, window: 1m,\n"
                "     where: {region: eu, plan: {not: [trial, free]}, variant: [b, a]}}\n")  # fmt: skip
    where = rs.rules[0].where
    assert [m.describe() for m in where] == ["plan not in (free, trial)", "region = eu", "variant in (a, b)"]
    assert [m.store_key for m in where] == ["plan", "region", "@variant"]


@pytest.mark.parametrize(
    "where, message",
    [
        ("{plan: 3}", "where.plan: values are strings of 1 to 128 characters, got integer 3 (quote it"),
        ("{plan: {nott: x}}", "where.plan: a mapping takes only 'not'"),
        ("[plan]", "where: expected a mapping such as"),
        ("{}", "where: expected a mapping such as"),
        ("{plan: []}", "where.plan: expected a value or a non-empty list"),
        ("{plan: [a, a]}", "where.plan: a value is listed twice"),
        ("{'bad key': a}", "where: 'bad key' must be a segment key"),
    ],
)
def test_a_wrong_filter_is_refused_with_a_located_error(where, message):
    got = rule_errors(f"  - {{id: r, tier: kill, metric: requests, op: '>', threshold: 0, window: 1m, where: {where}}}\n")
    assert any(g.startswith(f"5: {message}") for g in got), got


def test_drift_rules_take_no_filter():
    got = rule_errors("  - {id: r, tier: kill, drift: {detector: adwin, signal: error}, where: {plan: x}}\n")
    assert any("where: drift rules take no where" in g for g in got), got


def test_a_store_admits_what_every_matcher_admits():
    spec = StoreSpec(0, 60_000, (), False, False, 60_000, (
        Matcher(key="plan", values=("free", "trial"), negate=True), Matcher(key="region", values=("eu",))))  # fmt: skip
    assert spec.admits({"region": "eu", "plan": "enterprise"})
    assert spec.admits({"region": "eu"})  # a missing key is "": not free, not trial
    assert not spec.admits({"region": "eu", "plan": "free"})
    assert not spec.admits({"region": "us", "plan": "enterprise"})
    assert not spec.admits({"plan": "enterprise"})


def ticket_day(region: str, plan: str, n: int, prefix: str) -> list[Event]:
    return [Event("feedback", f"{prefix}{i}", T0 + i * MIN, "f", "p", {"region": region, "plan": plan}, None, None,
                  None, kind="ticket", label="ai_reply") for i in range(n)]  # fmt: skip


def test_only_admitted_events_count():
    rs = rules("""version: 1
name: t
features: ["*"]
rules:
  - {id: eu-tickets, tier: kill, metric: tickets, op: ">", threshold: 5, window: 1h, min_samples: 0,
     where: {region: eu}}
  - {id: paying-tickets, tier: investigate, metric: tickets, op: ">", threshold: 5, window: 1h, min_samples: 0,
     where: {plan: {not: free}}}
""")
    evs = ticket_day("us", "free", 30, "a") + ticket_day("eu", "free", 4, "b") + ticket_day("us", "pro", 3, "c")
    evs.sort(key=lambda e: (e.ts, e.event_id))
    _, decisions, _, _ = run(rs, evs)
    assert decisions == []  # 34 free-plan or US tickets are not counted; 4 EU and 3 paying ones stay under 5
    evs += ticket_day("eu", "pro", 3, "d")
    evs.sort(key=lambda e: (e.ts, e.event_id))
    _, decisions, _, _ = run(rs, evs)
    fired = {d["rule_id"] for d in decisions if d["transition"] in ("firing", "inhibited")}  # the kill inhibits
    assert sorted(fired) == ["eu-tickets", "paying-tickets"]


def test_equal_filters_share_a_store_and_state_survives_a_reload():
    text = """version: 1
name: t
features: ["*"]
rules:
  - {id: a, tier: investigate, metric: error_rate, op: ">", threshold: 0.5, window: 10m, where: {region: eu}}
  - {id: b, tier: investigate, metric: latency_mean, op: ">", threshold: 500, window: 10m, where: {region: [eu]}}
  - {id: c, tier: investigate, metric: error_rate, op: ">", threshold: 0.5, window: 10m}
"""
    eng = Engine(rules(text), EngineConfig(allowed_lateness_ms=0))
    assert len(eng.plan.stores) == 2 and sorted(eng.plan.store_names.values()) == ["60000:", "60000:|region = eu"]
    evs = [Event("interaction", f"e{i}", T0 + i * 10_000, "f", "p", {"region": "eu" if i % 2 else "us"}, None, None,
                 None, "error" if i % 2 else "ok", 100.0) for i in range(60)]  # fmt: skip
    eng.step(evs)
    eng.reload(rules(text.replace("threshold: 500", "threshold: 400")))  # the filtered store keeps its name: kept
    fs = next(iter(eng.features.values()))
    eu = next(sid for sid, name in eng.plan.store_names.items() if name.endswith("eu"))
    counted = sum(b.c.get("n", 0) for s in fs.stores[eu].values() for b in s.buckets.values())
    assert counted == 30  # the EU half of the events, applied before the reload
