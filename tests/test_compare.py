"""The ``compare`` clause: loading with located errors, the arms' evidence against a direct computation, the verdict,
sample-ratio mismatch, cross-phase comparisons and the ``variant`` event field.

The statistics themselves are checked in test_sequential.py; tests/test_differential.py checks that the engine
evaluates comparisons exactly as the per-event reference does, under any batch split.
"""

from __future__ import annotations

import math
import random

import pytest
from engine_kit import MIN, T0, rule_body, rule_errors, rules, run

from rules.engine import Engine, EngineConfig
from rules.events import Event, EventParser, Pseudonymizer
from rules.sequential import Arm, compare

# --- loading ------------------------------------------------------------------------------------------------------


def test_a_comparison_loads_with_its_defaults_and_an_srm_companion():
    [rs] = rule_body("""  - id: up
    tier: kill
    metric: acceptance_rate
    op: "<"
    threshold: -0.02
    window: 7d
    compare: {by: model_version, control: m-1, split: {m-2: 0.1}}
""")
    up, srm = rs.rules
    c = up.compare
    assert (c.by, c.control, c.treatment, c.phase, c.relative, c.test, c.alpha) == (
        "model_version", "m-1", None, None, False, "sequential", 0.05)  # fmt: skip
    assert dict(c.split) == {"m-2": 0.1} and c.key == "@model_version"
    assert (srm.id, srm.tier, srm.srm_of, srm.threshold, srm.compare) == ("up.srm", "investigate", "up", 0.1, c)
    assert srm.keep_firing_for_ms == 3_600_000 and srm.window_ms == up.window_ms


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("metric: requests\n    op: '<'\n    threshold: 0\n    window: 1h\n    compare: {by: variant, control: a}",
         ["7: compare: requests is not a per-event mean"]),
        ("metric: error_rate\n    op: '>'\n    threshold: 0\n    window: 1h\n    compare: {control: a}",
         ["11: compare: give either by"]),
        ("metric: error_rate\n    op: '>'\n    threshold: 0\n    window: 1h\n    compare: {by: variant}",
         ["11: compare: missing required key 'control'"]),
        ("metric: error_rate\n    op: '>'\n    threshold: 0\n    window: 1h\n    compare: {by: variant, control: 2}",
         ["11: compare.control: expected a string, got integer 2 (quote it"]),
        ("metric: error_rate\n    op: '>'\n    threshold: 0\n    window: 1h\n    compare: {by: variant, control: a, treatment: a}",
         ["11: compare.treatment: must differ from control"]),
        ("metric: error_rate\n    op: '>'\n    threshold: 0\n    window: 1h\n    compare: {phase: internal, control: a}",
         ["11: compare.control: only for a comparison of arms"]),
        ("metric: error_rate\n    op: '>'\n    threshold: 0\n    window: 1h\n    compare: {by: variant, control: a, split: {a: 0.5}}",
         ["11: compare.split: 'a' is the control"]),
        ("metric: error_rate\n    op: '>'\n    threshold: 0\n    window: 1h\n    compare: {by: variant, control: a, split: {b: 0.6, c: 0.5}}",
         ["11: compare.split: the shares sum to 1.1"]),
        ("metric: error_rate\n    op: '>'\n    threshold: 0\n    window: 1h\n    compare: {by: variant, control: a, alpha: 0.7}",
         ["11: compare.alpha: must be in (0, 0.5]"]),
        ("metric: error_rate\n    op: '>'\n    threshold: 0\n    window: 1h\n    compare: {by: variant, control: a, as: ratio}",
         ["11: compare.as: must be one of absolute, relative"]),
        ("metric: error_rate\n    op: '>'\n    threshold: 0\n    window: 1h\n    compare: {by: 'bad key', control: a}",
         ["11: compare.by: 'bad key' must match"]),
        ("metric: error_rate\n    op: '>'\n    threshold: 0\n    window: 1h\n    group_by: [platform]\n"
         "    compare: {by: platform, control: ios}",
         ["12: compare.by: 'platform' is also in group_by"]),
        ("metric: error_rate\n    op: '>'\n    threshold: 0\n    window: 1h\n    baseline: 1h\n"
         "    compare: {by: variant, control: a}",
         ["11: baseline: cannot be combined with compare"]),
        ("metric: latency_p95\n    op: '>'\n    threshold: -1.5\n    window: 1h\n"
         "    compare: {by: variant, control: a, as: relative}",
         ["9: threshold: a relative change (as: relative) is above -1"]),
        ("metric: error_rate\n    op: '>'\n    threshold: 0\n    window: 1h\n    compare: [variant]",
         ["11: compare: expected a mapping"]),
        ("drift: {detector: adwin, signal: error}\n    compare: {by: variant, control: a}",
         ["8: compare: drift rules take no compare"]),
        ("metric: error_rate\n    op: '>'\n    threshold: 0\n    window: 1h\n    compare: {by: variant, control: a, colour: red}",
         ["11: compare: unknown key 'colour'"]),
    ],
)  # fmt: skip
def test_a_wrong_comparison_is_refused_with_located_errors(rule, expected):
    got = rule_errors(f"  - id: r\n    tier: kill\n    {rule}\n")
    for want in expected:
        assert any(g.startswith(want) for g in got), (want, got)


def test_a_rate_comparison_takes_a_negative_threshold():
    [rs] = rule_body("  - {id: r, tier: kill, metric: acceptance_rate, op: '<', threshold: -0.02, window: 1h,\n"
                "     compare: {by: variant, control: a}}\n")  # fmt: skip
    assert rs.rules[0].threshold == -0.02 and rs.rules[0].confidence is None


# --- evaluating ---------------------------------------------------------------------------------------------------


def suggestions(n_minutes: int, per_minute: dict[str, tuple[int, float]], *, phase: str = "p", seed: int = 1,
                field: str = "variant", segment: dict | None = None) -> list[Event]:  # fmt: skip
    """Per minute and arm: ``(count, acceptance probability)`` suggestions, seeded."""
    rnd = random.Random(seed)
    evs = []
    for m in range(n_minutes):
        for arm, (count, p) in per_minute.items():
            for i in range(count):
                ts = T0 + m * MIN + (i * MIN) // count
                label = "accepted" if rnd.random() < p else "rejected"
                kw = {"variant": arm} if field == "variant" else {}
                mv = arm if field == "model_version" else None
                evs.append(Event("feedback", f"{phase}-{arm}-{m}-{i}", ts, "f", phase, dict(segment or {}), None, mv,
                                 None, kind="suggestion", label=label, **kw))  # fmt: skip
    evs.sort(key=lambda e: (e.ts, e.event_id))
    return evs


def observe(rulesets, evs, companions: bool = False):
    """(engine, observations: of the rules themselves, unless ``companions``, then all, outputs)."""
    eng = Engine(rulesets, EngineConfig(allowed_lateness_ms=0))
    seen = []
    eng.observer = seen.append
    out = eng.step(evs)
    out.extend(eng.finish())
    return eng, [o for o in seen if companions or o.bound.rule.srm_of is None], out


def arm_of(evs, arm: str, t: int, window: int) -> Arm:
    xs = [1.0 if e.label in ("accepted", "edited") else 0.0 for e in evs
          if e.variant == arm and t - window <= e.ts < t]  # fmt: skip
    return Arm.of(xs)


def test_the_evidence_is_the_arms_over_the_window_and_the_interval_of_their_difference():
    rs = rule_body("""  - {id: r, tier: kill, metric: acceptance_rate, op: "<", threshold: -0.02, window: 30m, min_samples: 50,
     compare: {by: variant, control: a}}
""")
    evs = suggestions(60, {"a": (20, 0.3), "b": (5, 0.15), "c": (3, 0.15)})
    evs.append(Event("feedback", "none", T0 + 5 * MIN, "f", "p", {}, None, None, None, kind="suggestion",
                     label="accepted"))  # no arm: in neither  # fmt: skip
    _, seen, out = observe(rs, evs)
    o = next(o for o in seen if o.t == T0 + 40 * MIN)
    t, w = o.t, 30 * MIN
    ctl, trt = arm_of(evs, "a", t, w), arm_of(evs, "b", t, w) + arm_of(evs, "c", t, w)  # every other arm pooled
    iv = compare(trt, ctl, alpha=0.05, tau=-0.02)
    d = o.evaluation.details["compare"]
    arms = (d["control"], d["treatment"], d["control_samples"], d["treatment_samples"])
    assert arms == ("a", ["b", "c"], ctl.n, trt.n)
    assert math.isclose(d["control_value"], ctl.mean) and math.isclose(d["treatment_value"], trt.mean)
    assert math.isclose(o.evaluation.value, iv.delta) and math.isclose(d["lo"], iv.lo) and math.isclose(d["hi"], iv.hi)
    assert d["method"] == "sequential" and o.evaluation.samples == min(ctl.n, trt.n)
    assert o.evaluation.verdict == (iv.hi < -0.02)
    [kill] = [x for x in out.decisions if x["transition"] == "firing"]
    assert kill["details"]["compare"]["hi"] < -0.02 and [c["action"] for c in out.commands] == ["rollback"]


def test_a_named_treatment_leaves_other_arms_out_and_min_samples_is_per_arm():
    rs = rule_body("""  - {id: r, tier: kill, metric: acceptance_rate, op: "<", threshold: -0.02, window: 30m, min_samples: 100,
     compare: {by: model_version, control: m1, treatment: m2, test: fixed}}
""")
    evs = suggestions(30, {"m1": (20, 0.3), "m2": (3, 0.1), "m3": (20, 0.0)}, field="model_version")
    _, seen, _ = observe(rs, evs)
    by_t = {o.t: o.evaluation for o in seen}
    # m2 has 3 a minute: 87 in the window at minute 29, fewer than min_samples; m3 never counts
    early = by_t[T0 + 29 * MIN]
    assert early.details["compare"]["treatment"] == ["m2"] and early.details["compare"]["treatment_samples"] == 87
    assert early.verdict is None  # insufficient: one arm is under min_samples


def test_a_mean_comparison_uses_the_stored_sums_of_squares():
    rs = rule_body("""  - {id: r, tier: pause, metric: latency_mean, op: ">", threshold: 0.1, window: 10m, min_samples: 10,
     compare: {by: variant, control: a, as: relative}}
""")
    rnd = random.Random(3)
    evs = []
    for m in range(20):
        for i in range(30):
            arm = "a" if i % 3 else "b"
            lat = round(rnd.lognormvariate(5.5, 0.4) * (1.5 if arm == "b" else 1.0), 3)
            evs.append(Event("interaction", f"{m}-{i}", T0 + m * MIN + i * 2000, "f", "p", {}, None, None, None, "ok",
                             lat, variant=arm))  # fmt: skip
    _, seen, out = observe(rs, evs)
    o = next(o for o in seen if o.t == T0 + 15 * MIN)
    window = [e for e in evs if T0 + 5 * MIN <= e.ts < T0 + 15 * MIN]
    ctl = Arm.of(e.latency_ms for e in window if e.variant == "a")
    trt = Arm.of(e.latency_ms for e in window if e.variant == "b")
    iv = compare(trt, ctl, alpha=0.05, tau=0.1, relative=True)
    d = o.evaluation.details["compare"]
    assert math.isclose(d["lo"], iv.lo, rel_tol=1e-9) and math.isclose(d["hi"], iv.hi, rel_tol=1e-9)
    assert d["relative"] is True and math.isclose(o.evaluation.value, trt.mean / ctl.mean - 1, rel_tol=1e-9)
    assert [x["rule_id"] for x in out.decisions if x["transition"] == "firing"] == ["r"]


def test_a_quantile_comparison_tests_the_share_of_treatment_values_beyond_the_moved_control_quantile():
    rs = rule_body("""  - {id: r, tier: kill, metric: latency_p95, op: ">", threshold: 0.2, window: 10m, min_samples: 50,
     compare: {by: variant, control: a, as: relative, test: fixed}}
""")
    evs = []
    for m in range(12):
        for i in range(60):
            arm = "a" if i % 2 else "b"
            lat = float(100 + (i * 7 + m) % 100) * (2.0 if arm == "b" and i % 4 == 0 else 1.0)
            evs.append(Event("interaction", f"{m}-{i}", T0 + m * MIN + i * 1000, "f", "p", {}, None, None, None, "ok",
                             lat, variant=arm))  # fmt: skip
    _, seen, _ = observe(rs, evs)
    o = next(o for o in seen if o.t == T0 + 11 * MIN)
    q = o.evaluation.details["compare"]["quantile_test"]
    window = [e for e in evs if T0 + 1 * MIN <= e.ts < T0 + 11 * MIN]
    trt = [e.latency_ms for e in window if e.variant == "b"]
    beyond = sum(1 for x in trt if x > q["line"] * 1.01)  # the sketch counts values certainly beyond (0.5 % bins)
    assert q["expected_share"] == pytest.approx(0.05)
    assert beyond / len(trt) <= q["share_beyond"] <= sum(1 for x in trt if x > q["line"]) / len(trt)
    assert o.evaluation.verdict is True  # half of b's calls are doubled: its p95 is far beyond +20 %


def test_a_wrong_split_withholds_the_verdict_and_the_companion_pages():
    rs = rule_body("""  - {id: r, tier: kill, metric: acceptance_rate, op: "<", threshold: -0.02, window: 30m, min_samples: 30,
     compare: {by: variant, control: a, test: fixed, split: {b: 0.5}}}
""")
    evs = suggestions(40, {"a": (20, 0.5), "b": (4, 0.05)})  # b is far worse, but gets 17 % instead of 50 %
    _, seen, out = observe(rs, evs)
    parent = [o for o in seen if o.bound.rule.id == "r" and o.t >= T0 + 10 * MIN]
    assert parent and all(o.evaluation.verdict is None for o in parent)
    assert all(o.evaluation.details["srm"]["treatment_share"] < 0.2 for o in parent)
    assert out.commands == []
    [page] = [p for p in out.pages if p["event_action"] == "trigger"]
    assert page["payload"]["class"] == "r.srm" and "arm split 16.7% vs expected 50.0%" in page["payload"]["summary"]


def test_a_split_is_not_checked_before_the_treatment_starts():
    rs = rule_body("""  - {id: r, tier: kill, metric: acceptance_rate, op: "<", threshold: -0.02, window: 30m, min_samples: 30,
     compare: {by: variant, control: a, split: {b: 0.1}}}
""")
    _, _, decisions, pages = run(rs, suggestions(60, {"a": (20, 0.3)}))
    assert decisions == [] and pages == []


def test_shadow_and_group_by_combine_with_a_comparison():
    rs = rule_body("""  - {id: r, tier: kill, mode: shadow, metric: acceptance_rate, op: "<", threshold: -0.02, window: 30m,
     min_samples: 30, group_by: [platform], compare: {by: variant, control: a, test: fixed}}
""")
    evs = suggestions(40, {"a": (20, 0.5), "b": (20, 0.1)}, segment={"platform": "ios"})
    evs += suggestions(40, {"a": (20, 0.5), "b": (20, 0.5)}, segment={"platform": "web"}, seed=2)
    for i, e in enumerate(evs):
        e.event_id += f"-{i}"
    evs.sort(key=lambda e: (e.ts, e.event_id))
    _, decisions, commands, _ = run(rs, evs)
    firing = [d for d in decisions if d["transition"] == "firing"]
    assert [(d["group"], d["mode"]) for d in firing] == [({"platform": "ios"}, "shadow")] and commands == []


def test_a_cross_phase_comparison_reads_the_control_phase_over_the_same_window():
    rs = rules("""version: 1
name: t
features: ["*"]
phases: [beta]
rules:
  - {id: r, tier: pause, metric: acceptance_rate, op: "<", threshold: -0.05, window: 30m, min_samples: 100,
     compare: {phase: internal, as: relative, test: fixed}}
""")
    evs = suggestions(40, {"x": (20, 0.4)}, phase="internal") + suggestions(40, {"x": (20, 0.2)}, phase="beta", seed=2)
    evs.sort(key=lambda e: (e.ts, e.event_id))
    eng, seen, out = observe(rs, evs)
    assert {o.phase for o in seen} == {"beta"}  # the control phase is not compared with itself
    o = next(o for o in seen if o.t == T0 + 30 * MIN)
    d = o.evaluation.details["compare"]
    assert d["control"] == "internal" and d["control_samples"] == d["treatment_samples"] == 600
    assert [x["transition"] for x in out.decisions] == ["firing"] and out.decisions[0]["phase"] == "beta"
    assert eng.stats.unmatched == 0  # the internal events feed the rule's store: they are not unmatched


# --- the variant field ---------------------------------------------------------------------------------------------


def test_variant_is_read_by_both_decoders_and_kept_in_held_state():
    parser = EventParser(Pseudonymizer(b"k" * 32))
    raw = (b'{"type":"feedback","event_id":"e1","ts":1793577600000,"feature":"f","kind":"thumbs","label":"up",'
           b'"variant":"treatment"}')  # fmt: skip
    [ev] = [x for x in parser.parse_items(raw) if isinstance(x, Event)]
    assert ev.variant == "treatment"
    [row] = parser.parse_rows(raw)
    assert row.variant == "treatment"
    [bad] = parser.parse_items(raw.replace(b'"treatment"', b"7"))
    assert "variant" in str(bad)
    assert Event.from_state(ev.to_state()) == ev
    old = Event("feedback", "e2", 1, "f", "p", {}, None, None, None, kind="thumbs", label="up")
    assert len(old.to_state()) == 21 and Event.from_state(old.to_state()) == old  # states written before variant


# --- downstream: metrics, dashboards -------------------------------------------------------------------------------


def test_the_worker_exposes_each_arm_and_the_interval_of_a_comparison():
    from test_observability import Harness, one

    text = """version: 1
name: t
features: ["*"]
rules:
  - {id: r, tier: kill, metric: acceptance_rate, op: "<", threshold: -0.02, window: 30m, min_samples: 30,
     compare: {by: variant, control: a, test: fixed}}
"""
    evs = suggestions(20, {"a": (20, 0.5), "b": (10, 0.2)})
    h = Harness(text).feed(evs)
    fams = h.scrape()
    lo, hi = one(fams, "rollguard_rule_interval_low", rule="r"), one(fams, "rollguard_rule_interval_high", rule="r")
    ctl = arm_of(evs, "a", T0 + 19 * MIN, 30 * MIN)
    trt = arm_of(evs, "b", T0 + 19 * MIN, 30 * MIN)
    iv = compare(trt, ctl, alpha=0.05, method="fixed")
    assert math.isclose(lo, iv.lo) and math.isclose(hi, iv.hi)
    assert math.isclose(one(fams, "rollguard_rule_compared", rule="r"), iv.delta)
    assert math.isclose(one(fams, "rollguard_rule_arm_value", rule="r", arm="control"), ctl.mean)
    assert one(fams, "rollguard_rule_arm_samples", rule="r", arm="treatment") == trt.n


def test_a_comparison_panel_draws_the_interval_as_a_band():
    from dashboards.rulepack import rule_description, rule_panel

    [rs] = rule_body("""  - {id: r, tier: kill, metric: acceptance_rate, op: "<", threshold: -0.02, window: 7d,
     min_samples: 500,
     compare: {by: model_version, control: m1, split: {m2: 0.1}}}
""")
    rule, srm = rs.rules
    panel = rule_panel(rs, rule).build()
    exprs = {t.ref_id: t.expr for t in panel.targets}
    assert exprs["F"].startswith("min(rollguard_rule_interval_low{")
    assert exprs["G"].startswith("max(rollguard_rule_interval_high{")
    upper = next(o for o in panel.field_config.overrides if o.matcher.options == "G")
    props = {p.to_json()["id"]: p.to_json().get("value") for p in upper.properties}
    assert props["custom.fillBelowTo"] == "interval low"
    assert "always-valid (sequential) 95% interval lies wholly < -0.02" in rule_description(rs, rule)
    assert "500 samples per arm" in rule_description(rs, rule)
    assert "sample-ratio check of r" in rule_description(rs, srm)
    assert "F" not in {t.ref_id for t in rule_panel(rs, srm).build().targets}  # a share has no difference band


def test_replay_reports_and_charts_a_comparison_with_its_interval(tmp_path):
    """A day with an upgrade on 30 % of traffic accepted 15 points less: replay rolls it back, report.md shows the
    difference with its interval and both arms, the chart holds the interval, and --compare lists the changed
    definition of a comparison."""
    from rules.loader import load_rules
    from streams.offline.replay import replay
    from streams.offline.scenario import generate, scenario_from_args, write_jsonl

    pack = """version: 1
name: upgrade
features: ["*"]
rules:
  - {id: acceptance, tier: kill, metric: acceptance_rate, op: "<", threshold: -0.05, window: 1d, every: 5m,
     min_samples: 200, compare: {by: variant, control: control, treatment: model-upgrade, split: {model-upgrade: 0.3}}}
"""
    (tmp_path / "a.yaml").write_text(pack)
    (tmp_path / "b.yaml").write_text(pack.replace("threshold: -0.05", "threshold: -0.10"))
    scenario = scenario_from_args("clean", duration_ms=12 * 3_600_000, mean_rate_per_s=1.0, seed=3,
                                  treatment_share=0.3, treatment_accept_delta=-0.15)  # fmt: skip
    write_jsonl(generate(scenario), tmp_path / "events.jsonl")
    res = replay(load_rules([str(tmp_path / "a.yaml")]), [str(tmp_path / "events.jsonl")], tmp_path / "out",
                 config=EngineConfig(), user_key=b"k" * 32, progress=False, charts="active",
                 compare=load_rules([str(tmp_path / "b.yaml")]))  # fmt: skip
    collector = res.engine.observer  # the charts' SeriesCollector
    commands = [orjson_loads(x) for x in (tmp_path / "out" / "commands.jsonl").read_bytes().splitlines()]
    assert [c["rule_id"] for c in commands] == ["acceptance"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "model-upgrade" in report and " vs control " in report and "[-" in report
    [series] = [rs for k, rs in collector.rules.items() if k.rule_id == "acceptance"]
    g = next(iter(series.groups.values()))
    _, lo = g.low.points()
    _, hi = g.high.points()
    assert series.info.compared == "treatment vs control" and any(a < b for a, b in zip(lo, hi) if a == a)
    assert list((tmp_path / "out" / "charts").rglob("*.png"))


def orjson_loads(b: bytes):
    import orjson

    return orjson.loads(b)


# --- the stable-split check (no split configured) ------------------------------------------------------------------


def _shifted(evs: list[Event], minutes: int, tag: str) -> list[Event]:
    for e in evs:
        e.ts += minutes * MIN
        e.event_id += tag
    return evs


def test_without_a_split_a_stable_split_is_checked_and_a_steady_one_passes():
    [rs] = rule_body("""  - {id: r, tier: kill, metric: acceptance_rate, op: "<", threshold: -0.02, window: 2h, min_samples: 30,
     compare: {by: variant, control: a, test: fixed}}
""")
    r, srm = rs.rules
    assert (srm.id, srm.op, srm.threshold, r.compare.check_split) == ("r.srm", ">=", round(math.log(20), 6), True)
    evs = suggestions(90, {"a": (20, 0.5), "b": (6, 0.1)})  # b is far worse; its share stays 23 %
    _, seen, out = observe([rs], evs, companions=True)
    checks = [o for o in seen if o.bound.rule.id == "r.srm" and o.evaluation.verdict is not None]
    assert checks and all(o.evaluation.verdict is False for o in checks)
    last = [o for o in seen if o.bound.rule.id == "r"][-1].evaluation
    assert last.details["srm"]["test"] == "stable" and last.details["srm"]["log_e"] < 0
    assert [c["rule_id"] for c in out.commands][:1] == ["r"]  # the verdict is not withheld: b is rolled back
    assert not [p for p in out.pages if p["payload"]["class"] == "r.srm"]


def test_without_a_split_a_split_that_changes_withholds_the_verdict_and_pages():
    [rs] = rule_body("""  - {id: r, tier: kill, metric: acceptance_rate, op: "<", threshold: -0.02, window: 2h, min_samples: 30,
     compare: {by: variant, control: a, test: fixed}}
""")
    evs = suggestions(45, {"a": (20, 0.5), "b": (10, 0.45)})  # a third of the samples, b as good as a
    evs += _shifted(suggestions(60, {"a": (20, 0.5), "b": (2, 0.05)}, seed=2), 45, "-late")  # a tenth, b bad
    evs.sort(key=lambda e: (e.ts, e.event_id))
    _, seen, out = observe([rs], evs, companions=True)
    assert out.commands == []  # the regression is not trusted: the split moved when it appeared
    withheld = [o.evaluation for o in seen if o.bound.rule.id == "r" and o.evaluation.details.get("srm", {}).get(
        "rejected", o.evaluation.details.get("srm", {}).get("log_e", 0) >= math.log(20))]  # fmt: skip
    assert withheld and all(ev.verdict is None for ev in withheld)
    [page] = [p for p in out.pages if p["event_action"] == "trigger"]
    summary = page["payload"]["summary"]
    assert page["payload"]["class"] == "r.srm" and summary.startswith("arm split changed: treatment 9.1% of samples")
    assert "since 2026-" in summary and "33.3% before" in summary and "r is withheld" in summary
    from streams.offline.report_format import evidence as _fmt_evidence

    [fired] = [d for d in out.decisions if d["rule_id"] == "r.srm" and d["transition"] == "firing"]
    assert _fmt_evidence(fired).startswith("treatment share 9.1% since 2026-11-02T00:")  # the report's evidence


def test_split_stable_is_the_default_and_unchecked_turns_the_check_off():
    body = """  - {{id: r, tier: kill, metric: acceptance_rate, op: "<", threshold: -0.02, window: 1h, min_samples: 30,
     compare: {{by: variant, control: a{extra}}}}}
"""
    [default], [stable], [off] = (rule_body(body.format(extra=x)) for x in ("", ", split: stable", ", split: unchecked"))
    assert [r.id for r in default.rules] == [r.id for r in stable.rules] == ["r", "r.srm"]
    assert [r.id for r in off.rules] == ["r"] and off.rules[0].compare.check_split is False
    evs = suggestions(45, {"a": (20, 0.5), "b": (10, 0.45)})
    evs += _shifted(suggestions(30, {"a": (20, 0.5), "b": (2, 0.05)}, seed=2), 45, "-late")
    evs.sort(key=lambda e: (e.ts, e.event_id))
    _, seen, out = observe([off], evs)
    assert all("srm" not in o.evaluation.details for o in seen) and out.pages == []
    errors = rule_errors(body.format(extra=", split: sometimes"))
    assert any("compare.split: expected a mapping of arm value to share" in e and "unchecked" in e for e in errors)


def test_a_cross_phase_comparison_has_no_split_check():
    [rs] = rules("""version: 1
name: t
features: ["*"]
rules:
  - {id: r, tier: pause, metric: acceptance_rate, op: "<", threshold: -0.05, window: 30m, compare: {phase: internal}}
""")
    assert [r.id for r in rs.rules] == ["r"]
