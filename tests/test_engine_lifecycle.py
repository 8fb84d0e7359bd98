"""Rule lifecycle through the real engine, as tables: traffic pattern in, decision timeline out.

Pattern: one character per minute — ``x`` all requests fail, ``.`` all succeed, ``_`` no traffic (insufficient).
The instant at minute m evaluates the window [m-1, m), i.e. the previous character.
"""

import pytest

from engine_kit import T0, MIN, interactions, resume, rules, run, timeline, traffic
from rules.engine import EngineConfig


def one_rule(tier="investigate", for_="0s", kff="0s", mode="enforce", extra=""):
    kff_line = f"keep_firing_for: {kff}" if tier == "investigate" else ""
    return rules(
        f"""
version: 1
name: t
features: ["f"]
rules:
  - id: errors
    tier: {tier}
    metric: error_rate
    op: ">"
    threshold: 0.5
    window: 1m
    for: {for_}
    {kff_line}
    min_samples: 10
    mode: {mode}
    {extra}
"""
    )


LIFECYCLE = [
    # name, tier, for, keep_firing_for, pattern, expected timeline
    ("fires at once with for 0", "investigate", "0s", "0s", "..xx..", [(3, "firing"), (5, "resolved")]),
    ("for delays firing", "investigate", "2m", "0s", "..xxx..", [(3, "pending"), (5, "firing"), (6, "resolved")]),
    ("false evaluation clears pending", "investigate", "2m", "0s", "..xx..", [(3, "pending"), (5, "cleared")]),
    ("insufficient data holds pending", "investigate", "2m", "0s", "..x_x..",
     [(3, "pending"), (5, "firing"), (6, "resolved")]),
    ("insufficient data holds firing", "investigate", "0s", "0s", "..x__..", [(3, "firing"), (6, "resolved")]),
    ("keep_firing_for delays resolve", "investigate", "0s", "2m", "..x....", [(3, "firing"), (6, "resolved")]),
    ("true during keep_firing_for restarts it", "investigate", "0s", "2m", "..x.x....",
     [(3, "firing"), (8, "resolved")]),
    ("kill latches", "kill", "0s", "0s", "..xx.....", [(3, "firing")]),
    ("pause latches", "pause", "0s", "0s", "..xx.....", [(3, "firing")]),
    ("never true, never a decision", "kill", "0s", "0s", ".........", []),
]  # fmt: skip


@pytest.mark.parametrize("name, tier, for_, kff, pattern, expected", LIFECYCLE, ids=[c[0] for c in LIFECYCLE])
def test_lifecycle(name, tier, for_, kff, pattern, expected):
    _, decisions, _, _ = run(one_rule(tier, for_, kff), traffic(pattern))
    assert timeline(decisions) == expected


@pytest.mark.parametrize(
    "tier, action, severity", [("kill", "rollback", "critical"), ("pause", "pause_rollout", "error")]
)
def test_latching_tiers_command_once_and_page_once(tier, action, severity):
    _, decisions, commands, pages = run(one_rule(tier), traffic("..xx..xx.."))
    assert [c["action"] for c in commands] == [action]
    assert commands[0]["decision_id"] == decisions[0]["decision_id"]
    assert [(p["event_action"], p["payload"]["severity"]) for p in pages] == [("trigger", severity)]


def test_investigate_pages_trigger_and_resolve_with_one_dedup_key():
    _, _, commands, pages = run(one_rule("investigate"), traffic("..xx.."))
    assert commands == []
    assert [p["event_action"] for p in pages] == ["trigger", "resolve"]
    assert pages[0]["dedup_key"] == pages[1]["dedup_key"]


@pytest.mark.parametrize("tier", ["pause", "kill"])
def test_shadow_mode_decides_but_never_acts_nor_latches(tier):
    # a shadow pause/kill holds nothing: it resolves like an investigate rule instead of staying firing forever
    _, decisions, commands, pages = run(one_rule(tier, mode="shadow"), traffic("..xx.."))
    assert timeline(decisions) == [(3, "firing"), (5, "resolved")] and decisions[0]["mode"] == "shadow"
    assert commands == [] and pages == []


def test_promoting_a_firing_shadow_rule_to_enforce_fires_it_afresh():
    from rules.engine import Engine, EngineConfig

    eng = Engine(one_rule("kill", mode="shadow"), EngineConfig(allowed_lateness_ms=0))
    evs = traffic("..xxxxxx..")
    cut = next(i for i, e in enumerate(evs) if e.ts >= T0 + 5 * MIN)
    outs = [eng.step(evs[:cut]), eng.reload(one_rule("kill", mode="enforce")), eng.step(evs[cut:]), eng.finish()]
    decisions = [d for o in outs for d in o.decisions]
    assert [(m, tr, d["mode"]) for (m, tr), d in zip(timeline(decisions), decisions)] == [
        (3, "firing", "shadow"), (4, "resolved", "shadow"), (5, "firing", "enforce")]
    assert decisions[1]["cause"] == "mode_changed"
    assert [c["action"] for o in outs for c in o.commands] == ["rollback"]


TWO_TIERS = """
version: 1
name: t
features: ["f"]
defaults: {{min_samples: 10, window: 1m}}
rules:
  - {{id: low, tier: {low}, metric: error_rate, op: ">", threshold: 0.5, for: {low_for}}}
  - {{id: high, tier: kill, metric: error_rate, op: ">", threshold: 0.5, for: {kill_for}}}
"""


def test_pause_escalates_to_kill():
    rs = rules(TWO_TIERS.format(low="pause", low_for="0s", kill_for="3m"))
    _, decisions, commands, _ = run(rs, traffic("..xxxxx.."))
    assert [c["action"] for c in commands] == ["pause_rollout", "rollback"]
    assert timeline(decisions, "high") == [(3, "pending"), (6, "firing")]


def test_kill_inhibits_lower_tiers_decided_at_the_same_instant():
    rs = rules(TWO_TIERS.format(low="investigate", low_for="0s", kill_for="0s"))
    _, decisions, commands, pages = run(rs, traffic("..xx.."))
    assert timeline(decisions, "high") == [(3, "firing")]
    assert timeline(decisions, "low")[0] == (3, "inhibited")
    assert [p["payload"]["class"] for p in pages] == ["high"]  # the inhibited rule pages no one


def test_kill_inhibits_lower_tiers_that_fire_later():
    rs = rules(TWO_TIERS.format(low="pause", low_for="2m", kill_for="0s"))
    _, decisions, commands, pages = run(rs, traffic("..xxx.."))
    assert timeline(decisions, "low") == [(3, "pending"), (5, "inhibited")]
    assert [c["action"] for c in commands] == ["rollback"]


def test_kill_breaker_holds_kills_beyond_the_hourly_budget_and_pages_once():
    rs = rules(
        """
version: 1
name: t
features: ["*"]
rules:
  - {id: errors, tier: kill, metric: error_rate, op: ">", threshold: 0.5, window: 1m, min_samples: 10}
"""
    )
    evs = []
    for f in ("f1", "f2", "f3", "f4"):
        evs += traffic("..xx..", feature=f)
    evs.sort(key=lambda e: (e.ts, e.feature))
    _, decisions, commands, pages = run(rs, evs, EngineConfig(allowed_lateness_ms=0, max_kills_per_hour=2))
    assert [c["feature"] for c in commands] == ["f1", "f2"]
    held = [d for d in decisions if d["transition"] == "held"]
    assert [d["feature"] for d in held] == ["f3", "f4"]
    breaker_pages = [p for p in pages if p["payload"]["class"] == "kill-breaker"]
    assert len(breaker_pages) == 1 and breaker_pages[0]["payload"]["severity"] == "critical"


def test_kill_latches_until_resume_then_a_new_incident_gets_a_new_command_id():
    evs = traffic("..xx.....xx...")
    items = sorted(evs + [resume(6)], key=lambda e: e.ts)
    _, decisions, commands, pages = run(one_rule("kill"), items)
    assert [c["action"] for c in commands] == ["rollback", "rollback"]
    assert commands[0]["command_id"] != commands[1]["command_id"]
    resumed = [d for d in decisions if d.get("cause") == "operator_resume"]
    assert len(resumed) == 1 and resumed[0]["transition"] == "resolved" and resumed[0]["reason"] == "fixed upstream"
    assert [p["event_action"] for p in pages] == ["trigger", "resolve", "trigger"]


def test_without_resume_a_kill_never_unkills():
    _, decisions, commands, pages = run(one_rule("kill"), traffic("..xx" + "." * 100))
    assert timeline(decisions) == [(3, "firing")]
    assert all(p["event_action"] == "trigger" for p in pages)


def test_same_incident_same_ids_across_runs():
    a = run(one_rule("kill"), traffic("..xx.."))
    b = run(one_rule("kill"), traffic("..xx.."))
    assert a[2] == b[2] and a[1] == b[1] and a[3] == b[3]


def test_group_by_evaluates_each_segment_independently():
    rs = rules(
        """
version: 1
name: t
features: ["f"]
rules:
  - {id: errors, tier: investigate, metric: error_rate, op: ">", threshold: 0.5, window: 1m, min_samples: 10,
     group_by: [platform]}
"""
    )
    evs = traffic("..xx..", segment={"platform": "mobile"}) + traffic("......", segment={"platform": "desktop"})
    evs.sort(key=lambda e: e.ts)
    _, decisions, _, _ = run(rs, evs)
    assert {tuple(d["group"].items()) for d in decisions} == {(("platform", "mobile"),)}


def test_across_fires_on_the_gap_between_segment_values():
    rs = rules(
        """
version: 1
name: t
features: ["f"]
rules:
  - {id: gap, tier: pause, metric: error_rate, op: ">", threshold: 0.5, window: 1m, min_samples: 10,
     across: platform}
"""
    )
    evs = traffic("..xx..", segment={"platform": "mobile"}) + traffic("..xx..", segment={"platform": "desktop"})
    evs += traffic("......", segment={"platform": "web"})
    evs.sort(key=lambda e: e.ts)
    _, decisions, commands, _ = run(rs, evs)
    assert timeline(decisions) == [(3, "firing")]
    assert decisions[0]["value"] == 1.0 and decisions[0]["details"]["by"] == {"desktop": 1.0, "mobile": 1.0, "web": 0.0}


def test_confidence_needs_convincing_evidence():
    rs = rules(
        """
version: 1
name: t
features: ["f"]
rules:
  - {id: e, tier: investigate, metric: error_rate, op: ">", threshold: 0.1, window: 1m, min_samples: 5,
     confidence: 0.95}
"""
    )
    few = interactions(1, 10, errors=2)  # 20 % of 10: the lower bound is below 10 %
    many = interactions(3, 1000, errors=200)  # 20 % of 1000: convincing
    _, decisions, _, _ = run(rs, few + many + interactions(5, 10) + interactions(6, 10))
    assert timeline(decisions) == [(4, "firing"), (6, "resolved")]  # minute 4 has no data: insufficient holds
    assert decisions[0]["details"]["bound"] > 0.1


def test_baseline_compares_against_the_same_window_a_day_earlier():
    rs = rules(
        """
version: 1
name: t
features: ["f"]
rules:
  - {id: drop, tier: investigate, metric: requests, op: "<", threshold: -0.5, window: 1h, every: 1h,
     baseline: 1d, min_samples: 100}
"""
    )
    day = 24 * 60
    evs = []
    for h in range(24):  # day 1: 200 per hour; day 2: 200 per hour until 12:00, then 50
        evs += interactions(h * 60, 200)
    for h in range(24, 48):
        evs += interactions(h * 60, 200 if h < 36 else 50)
    _, decisions, _, _ = run(rs, evs)
    assert timeline(decisions)[0] == (day + 13 * 60, "firing")
    assert decisions[0]["details"]["change"] == pytest.approx(-0.75)


def test_traffic_dropping_to_zero_fires_for_the_silent_phase():
    rs = rules(
        """
version: 1
name: t
features: ["f"]
rules:
  - {id: silent, tier: investigate, metric: requests, op: "<", threshold: 5, window: 2m, min_samples: 0}
"""
    )
    evs = traffic("....", phase="p") + traffic("........", phase="q")
    evs.sort(key=lambda e: e.ts)
    _, decisions, _, _ = run(rs, evs)
    fired = [(d["phase"], d["transition"]) for d in decisions]
    assert ("p", "firing") in fired and ("q", "firing") not in fired


def test_duplicates_and_late_events_are_counted_not_applied():
    evs = traffic("..xx..")
    late = interactions(0, 5, errors=5, prefix="late-")
    eng, decisions, _, _ = run(one_rule("kill"), evs + evs[-10:] + late, EngineConfig(allowed_lateness_ms=30_000))
    assert eng.stats.duplicates == 10 and eng.stats.late == 5
    assert timeline(decisions) == [(3, "firing")]


def test_control_for_an_unknown_feature_is_harmless():
    _, decisions, commands, _ = run(one_rule("kill"), [resume(1, feature="nope")] + traffic("...."))
    assert decisions == [] and commands == []


def test_events_outside_any_ruleset_are_counted_as_unmatched():
    eng, *_ = run(one_rule("kill"), traffic("...", feature="other"))
    assert eng.stats.unmatched == 60


def test_decisions_carry_contract_fields():
    _, decisions, commands, pages = run(one_rule("kill"), traffic("..xx.."))
    d = decisions[0]
    for k in ("decision_id", "ts", "ruleset", "ruleset_version", "rule_id", "tier", "mode", "feature", "phase",
              "group", "transition", "metric", "value", "threshold", "op", "samples", "window_start", "window_end"):  # fmt: skip
        assert k in d, k
    assert d["ts"] == "2026-11-02T00:03:00Z" and d["window_start"] == "2026-11-02T00:02:00Z"
    assert d["value"] == 1.0 and d["samples"] == 20 and len(d["ruleset_version"]) == 64
    c = commands[0]
    assert set(c) >= {"command_id", "ts", "feature", "phase", "action", "ruleset", "rule_id", "decision_id", "reason"}
    p = pages[0]
    assert p["payload"]["source"] == "rollguard" and p["payload"]["component"] == "f" and p["payload"]["group"] == "p"
    assert p["payload"]["custom_details"]["decision_id"] == d["decision_id"]


def test_commands_are_signed_when_a_key_is_configured():
    import hashlib
    import hmac

    from rules.outputs import canonical

    cfg = EngineConfig(allowed_lateness_ms=0, signing_key=b"s3cret", signing_key_id="k1")
    _, _, commands, _ = run(one_rule("kill"), traffic("..xx.."), cfg)
    c = dict(commands[0])
    sig = c.pop("signature")
    c.pop("hash")  # the chain hash is computed over the signed command, so the signature cannot cover it
    assert c["key_id"] == "k1" and c["seq"] == 1 and c["issued_at"] == T0 + 3 * MIN
    assert hmac.compare_digest(sig, hmac.new(b"s3cret", canonical(c), hashlib.sha256).hexdigest())


def test_t0_is_midnight():
    assert T0 % (24 * 60 * MIN) == 0


# --- the kill breaker's page resolves ------------------------------------------------------------------------------

BREAKER_RULES = """
version: 1
name: t
features: ["*"]
rules:
  - {id: errors, tier: kill, metric: error_rate, op: ">", threshold: 0.5, window: 1m, min_samples: 10}
"""


def breaker_run(extra=(), max_kills=2, batch=None):
    """Four features kill in the first hour with room for two: f3 and f4 are held and the breaker pages."""
    evs = [e for f in ("f1", "f2", "f3", "f4") for e in traffic("..xx..", feature=f)] + list(extra)
    evs.sort(key=lambda e: (e.ts, e.feature))
    return run(rules(BREAKER_RULES), evs, EngineConfig(allowed_lateness_ms=0, max_kills_per_hour=max_kills), batch)


def breaker_pages(pages):
    return [p for p in pages if p["payload"]["class"] == "kill-breaker"]


def test_breaker_page_stays_open_while_no_later_hour_is_seen():
    # quiet traffic later in the same hour: no transition, and nothing says the budget is free
    _, _, _, pages = breaker_run(traffic("_" * 10 + "." * 40, feature="f5"))
    assert [p["event_action"] for p in breaker_pages(pages)] == ["trigger"]


def test_breaker_page_resolves_at_the_first_transition_of_an_hour_with_budget():
    late_kill = traffic("_" * 60 + "..xx..", feature="f5")  # fires at minute 63, in the next hour
    _, decisions, commands, pages = breaker_run(late_kill)
    trigger, resolve = breaker_pages(pages)
    assert (trigger["event_action"], resolve["event_action"]) == ("trigger", "resolve")
    assert resolve["dedup_key"] == trigger["dedup_key"]
    assert resolve["payload"]["timestamp"] == "2026-11-02T01:00:00Z"  # the hour boundary, event time
    assert resolve["payload"]["custom_details"]["cause"] == "budget_free"
    # same labels for a receiver that keys alerts on them (Alertmanager)
    keys = ("component", "group", "class", "severity", "source")
    assert {k: trigger["payload"][k] for k in keys} == {k: resolve["payload"][k] for k in keys}
    assert trigger["payload"]["custom_details"]["held_feature"] == "f3"
    # the resolve comes before the new hour's kill, which gets its rollback
    assert pages.index(resolve) < next(i for i, p in enumerate(pages) if p["payload"]["component"] == "f5")
    assert [c["feature"] for c in commands] == ["f1", "f2", "f5"]
    # held kills stay held: no command for f3/f4, still firing
    assert [d["feature"] for d in decisions if d["transition"] == "held"] == ["f3", "f4"]


def test_breaker_resolve_does_not_depend_on_batching():
    late_kill = traffic("_" * 60 + "..xx..", feature="f5")
    whole = breaker_run(late_kill)[3]
    assert breaker_run(late_kill, batch=7)[3] == whole


def test_with_no_budget_at_all_only_a_resume_resolves_the_breaker_page():
    late_kill = traffic("_" * 60 + "..xx..", feature="f5")
    _, _, commands, pages = breaker_run(late_kill, max_kills=0)
    # every kill is held; each hour pages once, and nothing frees the first hour's page
    assert commands == [] and [p["event_action"] for p in breaker_pages(pages)] == ["trigger", "trigger"]
    assert len({p["dedup_key"] for p in breaker_pages(pages)}) == 2


def test_breaker_page_resolves_when_a_resume_re_arms_a_held_kill():
    # resuming f1 (an issued kill) is not the decision the breaker asked for; resuming held f3 is
    _, _, _, pages = breaker_run([resume(7, feature="f1"), resume(8, feature="f3")])
    trigger, resolve = breaker_pages(pages)
    assert resolve["event_action"] == "resolve" and resolve["dedup_key"] == trigger["dedup_key"]
    assert resolve["payload"]["custom_details"]["cause"] == "operator_resume"
    assert resolve["payload"]["timestamp"] == "2026-11-02T00:08:00Z"


def test_a_resolved_breaker_hour_is_not_resolved_twice_and_survives_persistence():
    from rules.state import BreakerState

    eng, _, _, pages = breaker_run([resume(8, feature="f3"), resume(9, feature="f4")])
    assert [p["event_action"] for p in breaker_pages(pages)] == ["trigger", "resolve"]
    restored = BreakerState.from_state(eng.breaker.to_state())
    assert restored.paged == restored.resolved == {T0 // 3_600_000} and restored.open_hours() == []
    merged = BreakerState()
    merged.merge(restored)
    assert merged.to_state() == eng.breaker.to_state()
