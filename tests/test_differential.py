"""Differential tests: the product engine (``rules.engine.Engine``) against the frozen per-event reference
(``tests/reference_engine``, today's engine as of commit 333decf).

Whatever the product does inside (batched columnar ingest, incremental windows), on the same inputs it must give
byte-identical outputs — decisions, commands, pages and dead letters, in order, hash chains and signatures
included — and the same counters (events, late, duplicates, unmatched, outliers). Covered: the golden scenarios of
``test_golden_scenarios.py``, every catalogue ``rules test`` case, and generated streams with random batch splits,
reordering within and beyond the allowed lateness, duplicates, clock outliers, resume controls, idle advances, a
state round trip and a rule reload mid-stream, over several features, with one drift rule per catalogue detector.
"""

from __future__ import annotations

import random
import zlib
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine_kit import MIN, T0, as_rows, rules
from reference_engine import ReferenceEngine
from rules.engine import Engine, EngineConfig
from rules.events import Control, Event
from rules.state import BreakerState, FeatureState

KINDS = ("decisions", "commands", "pages", "dead_letters")
ENGINES = (Engine, ReferenceEngine)
DETECTOR_KEY = b"differential-state-key"


# --- driving both engines ------------------------------------------------------------------------------------------


def dump(outs) -> dict[str, bytes]:
    """Each output kind, concatenated over calls in order, as canonical bytes."""
    return {k: orjson.dumps([x for o in outs for x in getattr(o, k)], option=orjson.OPT_SORT_KEYS) for k in KINDS}


def counters(eng) -> dict:
    s = eng.stats
    return {"events": dict(s.events), "late": s.late, "duplicates": s.duplicates, "unmatched": s.unmatched,
            "outliers": dict(s.outliers)}  # fmt: skip


def round_trip(eng, parts: bool):
    """A fresh engine of the same class resumed from ``eng``'s stored state (JSON ``to_state``, or the live store's
    ``core_state`` + ``bucket_fields`` when ``parts``), as a restarted worker would be."""
    new = type(eng)(eng.plan, eng.config)
    if parts:
        lateness = eng.config.allowed_lateness_ms
        new.features = {}
        for f, fs in eng.features.items():
            core = orjson.loads(orjson.dumps(fs.core_state(DETECTOR_KEY, lateness)))
            fields, _ = fs.bucket_fields(eng.plan, None)
            new.features[f] = FeatureState.from_parts(core, fields, new.plan, DETECTOR_KEY)
    else:
        new.features = {f: FeatureState.from_state(orjson.loads(orjson.dumps(fs.to_state(DETECTOR_KEY))), DETECTOR_KEY)
                        for f, fs in eng.features.items()}  # fmt: skip
    new.breaker = BreakerState.from_state(orjson.loads(orjson.dumps(eng.breaker.to_state())))
    new.stats = eng.stats
    return new


def drive(cls, rulesets, config, script, splits=None, rows=False):
    """Run ``script`` through a new ``cls`` engine, then ``finish``. The script is a list of ops: ``("items", list)``,
    ``("idle", feature, source, ts)``, ``("reload", rulesets)``, ``("roundtrip", parts)``. ``splits`` cuts each
    items op into steps: None one step, an int n steps of n, a list of sizes (cycled, 0 allowed: an empty step).
    ``rows``: the events go in as rows with their origins beside them (``EventParser.parse_rows``), as replay and
    the worker hand them over."""
    eng = cls(rulesets, config)
    outs = []
    for op in script:
        if op[0] == "items":
            items = op[1]
            origins = None
            if rows:
                items, origins = as_rows(items)
            if splits is None:
                outs.append(eng.step(items, origins) if rows else eng.step(items))
                continue
            sizes = [splits] if isinstance(splits, int) else list(splits)
            if not any(sizes):  # only empty steps would never get through
                sizes.append(len(items))
            i = j = 0
            while i < len(items):
                n = sizes[j % len(sizes)]
                outs.append(eng.step(items[i : i + n], origins[i : i + n]) if rows else eng.step(items[i : i + n]))
                i += n
                j += 1
        elif op[0] == "idle":
            outs.append(eng.advance_idle(*op[1:]))
        elif op[0] == "reload":
            outs.append(eng.reload(op[1]))
        elif op[0] == "roundtrip":
            eng = round_trip(eng, op[1])
    outs.append(eng.finish())
    return eng, outs


def assert_same(product, reference) -> None:
    (pe, po), (re_, ro) = product, reference
    got, want = dump(po), dump(ro)
    for k in KINDS:
        assert got[k] == want[k], f"{k} differ from the reference engine"
    assert counters(pe) == counters(re_)


def assert_same_per_call(product, reference) -> None:
    """Same splits: every call's outputs equal, not only the concatenation."""
    assert_same(product, reference)
    po, ro = product[1], reference[1]
    assert len(po) == len(ro)
    for a, b in zip(po, ro):
        assert dump([a]) == dump([b])


# --- golden scenarios ----------------------------------------------------------------------------------------------

GOLDEN = ["clean", "latency_spike", "pii_leak", "error_burst", "traffic_drop", "acceptance_decline", "cost_runaway",
          "drift", "mobile_gap"]  # fmt: skip


def golden_events(preset: str, hours: int = 12, seed: int = 5, scenario=None) -> list:
    from rules.events import EventParser, Pseudonymizer
    from streams.offline.scenario import generate, scenario_from_args
    from test_golden_scenarios import KEY

    if scenario is None:
        scenario = scenario_from_args(preset, duration_ms=hours * 3_600_000, mean_rate_per_s=2.0, seed=seed)
    parser = EventParser(Pseudonymizer(KEY))
    return [parser.parse_obj(e) for e in generate(scenario)]


def golden_check(evs: list, seed: int) -> None:
    from test_golden_scenarios import catalog

    rnd = random.Random(seed)
    splits = [rnd.choice([1, 7, 64, 500, 4096]) for _ in range(50)]
    script = [("items", evs)]
    reference = drive(ReferenceEngine, catalog(), EngineConfig(), script)
    product = drive(Engine, catalog(), EngineConfig(), script, splits, rows=True)  # as replay hands them over
    assert_same(product, reference)
    assert dump(reference[1])["decisions"] != b"[]"  # the comparison is not vacuous


@pytest.mark.slow
@pytest.mark.parametrize("preset", GOLDEN)
def test_golden_scenarios_match_the_reference(preset):
    golden_check(golden_events(preset), seed=len(preset))


@pytest.mark.slow
def test_golden_replay_input_matches_the_reference():
    golden_check(golden_events("latency_spike", seed=9), seed=9)  # the byte-identical replay test's input


@pytest.mark.slow
def test_golden_hallucination_surge_matches_the_reference():
    import dataclasses

    from streams.offline.scenario import Incident, scenario_from_args

    base = scenario_from_args("clean", duration_ms=24 * 3_600_000, mean_rate_per_s=2.0, seed=5)
    start = base.start + 4 * 3_600_000
    scenario = dataclasses.replace(base, incidents=(Incident("hallucination_increase", start, 12 * 3_600_000, 0.2),))
    golden_check(golden_events("", scenario=scenario), seed=24)


# --- catalogue rule tests ------------------------------------------------------------------------------------------

CASE_FILES = sorted((Path(__file__).resolve().parent.parent / "rules" / "catalog" / "tests").glob("*.test.yaml"))


@pytest.mark.parametrize("path", CASE_FILES, ids=[p.name.removesuffix(".test.yaml") for p in CASE_FILES])
def test_catalogue_rule_tests_match_the_reference(path):
    from rules.case_loader import load_cases

    cf = load_cases(path)
    assert cf.cases
    rnd = random.Random(path.name)
    for i, case in enumerate(cf.cases):
        script = [("items", list(case.inputs))]
        reference = drive(ReferenceEngine, cf.rulesets, case.config, script)  # as `rules test` runs it: one step
        if i % 2 == 0:
            assert_same_per_call(drive(Engine, cf.rulesets, case.config, script), reference)
        else:  # the product with other batch boundaries: the concatenated outputs must still be the reference's
            splits = [rnd.choice([1, 3, 16, 100, 1000]) for _ in range(20)]  # and as rows, as replay hands them over
            assert_same(drive(Engine, cf.rulesets, case.config, script, splits, rows=i % 4 == 1), reference)


# --- generated streams ---------------------------------------------------------------------------------------------

LATENESS = 30_000
HOUR, DAY, YEAR = 3_600_000, 86_400_000, 365 * 86_400_000
Y9999 = 253_402_300_799_000

RULES_TEXT = """
version: 1
name: diff
features: ["*"]
defaults: {min_samples: 5, window: 3m}
rules:
  - {id: err, tier: kill, metric: error_rate, op: ">", threshold: 0.3, for: 2m}
  - {id: p95, tier: pause, metric: latency_p95, op: ">", threshold: 400, group_by: [platform]}
  - {id: users, tier: investigate, metric: active_users, op: "<", threshold: 3, min_samples: 0, every: 1m}
  - {id: gap, tier: investigate, metric: error_rate, op: ">", threshold: 0.2, across: platform, keep_firing_for: 2m}
  - {id: acc, tier: investigate, metric: acceptance_rate, op: "<", threshold: 0.2, window: 5m}
  - {id: pii, tier: kill, metric: "flag_count:pii_leak", op: ">", threshold: 0, min_samples: 0, window: 5m}
  - {id: quiet, tier: investigate, metric: requests, op: "<", threshold: 1, min_samples: 0, window: 5m}
  - {id: drop, tier: investigate, metric: requests, op: "<", threshold: -0.5, window: 3m, baseline: 5m, every: 1m}
  - {id: trail, tier: investigate, metric: requests, op: ">", threshold: 0.5, window: 2m, trailing_baseline: 6m,
     every: 1m}
  - {id: trail-mean, tier: pause, metric: latency_mean, op: ">", threshold: 0.3, trailing_baseline: 6m, min_samples: 3}
  - {id: sure, tier: pause, metric: error_rate, op: ">", threshold: 0.2, confidence: 0.8}
  - {id: d-adwin, tier: investigate, drift: {detector: adwin, signal: confidence,
      params: {delta: 0.9, clock: 1, grace_period: 2, min_window_length: 1}},
     keep_firing_for: 2m}
  - {id: d-ddm, tier: investigate, drift: {detector: ddm, signal: thumbs_down, params: {warm_start: 3, warning_threshold: 0.5, drift_threshold: 1.0}}}
  - {id: d-hddm, tier: investigate, drift: {detector: hddm_a, signal: error, params: {drift_confidence: 0.05}}}
  - {id: d-ph, tier: investigate, drift: {detector: page_hinkley, signal: latency_ms,
      params: {min_instances: 10, delta: 10, threshold: 2000, mode: up}}, keep_firing_for: 1m}
  - {id: cmp, tier: kill, metric: acceptance_rate, op: "<", threshold: -0.05, window: 10m, min_samples: 3,
     compare: {by: model_version, control: m1, alpha: 0.5, split: {m2: 0.333}}}
  - {id: cmp-srm, tier: investigate, metric: error_rate, op: ">", threshold: 0, window: 10m, min_samples: 2,
     compare: {by: model_version, control: m1, test: fixed, split: {m2: 0.01}}}
  - {id: cmp-mean, tier: pause, metric: latency_mean, op: ">", threshold: 50, group_by: [platform], min_samples: 2,
     compare: {by: variant, control: a, test: fixed}}
  - {id: cmp-p95, tier: investigate, metric: latency_p95, op: ">", threshold: 0.2, min_samples: 3,
     compare: {by: platform, control: desktop, as: relative}}
  - {id: cmp-phase, tier: investigate, metric: error_rate, op: ">", threshold: 0.05, min_samples: 3,
     compare: {phase: q, test: fixed}}
  - {id: sh-conf, tier: investigate, metric: "share_lt:confidence:0.5", op: ">", threshold: 0.3, min_samples: 3}
  - {id: w-mobile, tier: investigate, metric: error_rate, op: ">", threshold: 0.3, min_samples: 3,
     where: {platform: mobile}}
  - {id: w-not-m2, tier: pause, metric: latency_p95, op: ">", threshold: 300, min_samples: 3,
     where: {model_version: {not: [m2]}, variant: [a, b]}, group_by: [platform]}
  - {id: starve, tier: kill, metric: error_rate, op: ">", threshold: 0.9, min_samples: 12, max_starved: 2m}
  - {id: starve-sh, tier: pause, mode: shadow, metric: acceptance_rate, op: "<", threshold: 0.01, min_samples: 8,
     max_starved: 3m, group_by: [platform]}
  - {id: band-in, tier: investigate, metric: error_rate, op: between, threshold: [0.1, 0.5], min_samples: 3}
  - {id: ret, tier: investigate, metric: "retention:2m", op: "<", threshold: 0.6, window: 2m, every: 1m, min_samples: 2}
  - {id: back, tier: investigate, metric: "returning_share:3m", op: between, threshold: [0.3, 0.8], window: 1m,
     every: 1m, group_by: [platform], min_samples: 2}
  - {id: upu, tier: investigate, metric: uses_per_user, op: ">", threshold: 1.5, min_samples: 2}
  - {id: band-out, tier: pause, metric: latency_p95, op: outside, threshold: [50, 700], min_samples: 3,
     group_by: [platform]}
  - id: both
    tier: investigate
    all:
      - {metric: error_rate, op: ">", threshold: 0.2, where: {platform: mobile}}
      - {metric: latency_p95, op: ">", threshold: 300, min_samples: 2}
    min_samples: 3
    for: 1m
    keep_firing_for: 1m
  - id: either
    tier: pause
    any:
      - {metric: acceptance_rate, op: "<", threshold: 0.15, min_samples: 4}
      - {metric: "share_lt:confidence:0.5", op: between, threshold: [0.4, 0.9]}
    group_by: [platform]
    min_samples: 3
"""
# a promotion block (rules.promotion): gates of their own, exposure, a hold, sign-offs and auto promote_rollout
PROMO_TEXT = """
version: 1
name: promo
features: ["*"]
phases: [p]
rules:
  - {id: g-err, tier: investigate, mode: shadow, metric: error_rate, op: ">", threshold: 0.5, window: 3m, min_samples: 3}
  - {id: g-acc, tier: investigate, mode: shadow, metric: acceptance_rate, op: "<", threshold: 0.1, window: 5m,
     min_samples: 1, group_by: [platform]}
promotion:
  to: q
  gates: [g-err, g-acc]
  hold_for: 1m
  min_exposure: {time: 3m, interactions: 5, users: 2}
  signoffs: [pm, legal]
  auto: true
"""
RULES = rules(RULES_TEXT, "diff") + rules(PROMO_TEXT, "promo")
# a reload: thresholds moved, a rule gone, a rule new, a detector's parameters changed, a second rule set
RELOADED = rules(
    RULES_TEXT.replace("threshold: 0.3, for: 2m", "threshold: 0.25, for: 1m")
    .replace("  - {id: users,", "  - {id: users2,")
    .replace("max_starved: 2m}", "max_starved: off}")
    .replace("params: {delta: 0.9, clock: 1", "params: {delta: 0.5, clock: 2")
    .replace('  - {id: quiet, tier: investigate, metric: requests, op: "<", threshold: 1, min_samples: 0, window: 5m}\n',
             ""),
    "diff",
) + rules(
    """
version: 1
name: extra
features: ["g"]
rules:
  - {id: slow, tier: pause, metric: latency_p95, op: ">", threshold: 300, window: 2m, min_samples: 3}
""",
    "extra",
)
BAD_TIMES = [lambda ts: ts + DAY, lambda ts: ts + YEAR, lambda ts: Y9999, lambda ts: 0, lambda ts: ts - 3 * DAY,
             lambda ts: ts + 5 * HOUR, lambda ts: ts + 11 * MIN]  # fmt: skip


def config(draw) -> EngineConfig:
    return EngineConfig(
        allowed_lateness_ms=LATENESS,
        max_kills_per_hour=draw(st.sampled_from([0, 1, 5])),
        signing_key=draw(st.sampled_from([None, b"differential-signing-key-01234567"])),
        max_clock_skew_ms=draw(st.sampled_from([600_000, 600_000, None])),
        clock_quorum=3,
        clock_skew_page_after=draw(st.sampled_from([0, 2])),
    )


def event(draw, f: str, phase: str, m: int, i: int) -> Event:
    ts = T0 + m * MIN + draw(st.integers(0, MIN - 1))
    plat = draw(st.sampled_from(["mobile", "desktop"]))
    bad = m >= 3 and draw(st.integers(0, 3)) > 0  # a shift from minute 3 on, so the rules and detectors have work
    kind = draw(st.integers(0, 6))
    # arms for the compare rules: a model version (m2 the worse treatment, some events without one) and a variant
    mv = draw(st.sampled_from(["m1", "m1", "m2", None]))
    variant = draw(st.sampled_from(["a", "b", None]))
    worse = bad and mv == "m2"
    if kind <= 2:
        return Event("interaction", f"{f}{phase}i{m}-{i}", ts, f, phase, {"platform": plat}, f"u{draw(st.integers(0, 9))}",
                     mv, None, draw(st.sampled_from(["ok", "error", "timeout"] if bad and phase != "q" else ["ok", "ok", "ok", "error"])),
                     float(draw(st.integers(1, 2000 if bad and variant == "b" else 500))), None, None,
                     draw(st.sampled_from([0.001, 0.002, 0.004])), draw(st.sampled_from([0.05, 0.1] if bad else [0.8, 0.9])),
                     ("pii_leak",) if draw(st.integers(0, 80)) == 0 else (), variant=variant)  # fmt: skip
    if kind <= 4:
        labels = ["rejected", "rejected", "ignored", "accepted"] if worse else ["accepted", "rejected", "ignored", "edited"]
        return Event("feedback", f"{f}{phase}s{m}-{i}", ts, f, phase, {"platform": plat}, None, mv, None,
                     kind="suggestion", label=draw(st.sampled_from(labels)), variant=variant)  # fmt: skip
    return Event("feedback", f"{f}{phase}t{m}-{i}", ts, f, phase, {"platform": plat}, None, mv, None, kind="thumbs",
                 label=draw(st.sampled_from(["down", "down", "up"] if bad else ["up", "up", "up", "up", "down"])),
                 variant=variant)  # fmt: skip


@st.composite
def scripts(draw):
    """(config, script): a stream of one to three features, disturbed as live inputs are, with engine ops between."""
    cfg = config(draw)
    base: list[Event] = []
    features = draw(st.sampled_from([("f",), ("f", "g"), ("f", "g", "h")]))
    for f in features:
        phases = ("p", "q") if f == "g" else ("p",)
        for m in range(draw(st.integers(2, 12))):
            for i in range(draw(st.integers(0, 10))):
                base.append(event(draw, f, draw(st.sampled_from(phases)), m, i))
    base.sort(key=lambda e: (e.ts, e.event_id))
    # arrival order: most events up to half the allowed lateness after their place, a few far beyond it (late)
    rnd = draw(st.randoms(use_true_random=False))
    late_share = draw(st.sampled_from([0.0, 0.02, 0.1]))
    arrived = sorted(base, key=lambda e: e.ts + (rnd.randint(LATENESS, 4 * LATENESS) if rnd.random() < late_share
                                                  else rnd.randint(0, LATENESS // 2)))  # fmt: skip
    items: list = list(arrived)
    # duplicates: the same event id again, later (same content, or different content)
    for j in range(draw(st.integers(0, 4))):
        if not base:
            break
        e = rnd.choice(base)
        at = rnd.randint(0, len(items))
        if rnd.random() < 0.5:
            dup = e
        else:
            inter = e.type == "interaction"  # feedback has no outcome or latency (as the parser gives it)
            dup = Event(e.type, e.event_id, e.ts + rnd.randint(-5_000, 5_000), e.feature, e.phase, {"platform": "x"},
                        None, None, None, "error" if inter else None, 1999.0 if inter else None, kind=e.kind,
                        label=e.label)  # fmt: skip
        items.insert(at, dup)
    # clock outliers: implausible event times, ahead or behind
    for j in range(draw(st.integers(0, 3))):
        if not base:
            break
        e = rnd.choice(base)
        ts = rnd.choice(BAD_TIMES)(e.ts)
        bad = Event("interaction", f"bad{j}", ts, e.feature, e.phase, {"platform": "mobile"}, None, None, None, "error",
                    900.0, None, None, None, None, ("pii_leak",))  # fmt: skip
        bad.origin = {"file": "diff", "line": j}
        items.insert(rnd.randint(0, len(items)), bad)
    # operator resumes (some signed: those are checked for freshness and may be refused as dead letters)
    for j in range(draw(st.integers(0, 3))):
        f = rnd.choice(features)
        ts = T0 + rnd.randint(0, 12) * MIN
        c = Control(f"resume-{j}", ts, "resume", f, rnd.choice(["p", None]), "fixed upstream", "oncall",
                    "op1" if rnd.random() < 0.4 else None)  # fmt: skip
        items.insert(rnd.randint(0, len(items)), c)
    # sign-offs of the promotion: most features get both roles, at random times; a few more of a role it does not ask
    # for, or revoking one; some signed
    signoffs = [(f, role, False) for f in features if rnd.random() < 0.7 for role in ("pm", "legal")]
    signoffs += [(rnd.choice(features), rnd.choice(["qa", "legal", "pm"]), True) for _ in range(draw(st.integers(0, 2)))]
    for j, (f, role, odd) in enumerate(signoffs):
        ts = T0 + rnd.randint(-1, 8) * MIN + rnd.randint(0, MIN - 1)
        c = Control(f"signoff-{j}", ts, "signoff", f, "p", "reviewed", "lead", "op1" if rnd.random() < 0.3 else None,
                    role=role, revoke=odd and role != "qa" and rnd.random() < 0.5)  # fmt: skip
        items.insert(rnd.randint(0, len(items)), c)
    # events right at the late bound of their source (its highest time so far - the allowed lateness), +-1 ms
    for j in range(draw(st.integers(0, 3))):
        at = rnd.randint(0, len(items))
        e = rnd.choice(base) if base else None
        prior = [x.ts for x in items[:at] if isinstance(x, Event) and e is not None and x.feature == e.feature
                 and x.type == e.type and T0 <= x.ts < T0 + DAY]  # fmt: skip
        if prior:
            ts = max(prior) - LATENESS + rnd.choice([-1, 0, 0, 1])
            inter = e.type == "interaction"  # an event the parser could give: feedback has no outcome or latency
            items.insert(at, Event(e.type, f"edge{j}", ts, e.feature, e.phase, dict(e.segment), e.user, None, None,
                                   "error" if inter else None, 1500.0 if inter else None, kind=e.kind, label=e.label))  # fmt: skip
    for i, it in enumerate(items):
        if getattr(it, "origin", None) is None:
            it.origin = {"file": "diff", "line": i}
    # engine ops at random places between items
    ops = []
    for kind in draw(st.lists(st.sampled_from(["idle", "idle", "reload", "roundtrip", "roundtrip-parts"]), max_size=4)):
        at = rnd.randint(0, len(items))
        if kind == "idle":
            f = rnd.choice(features)
            seen = [e.ts for e in items[:at] if isinstance(e, Event) and e.feature == f and T0 <= e.ts < T0 + DAY]
            ts = (max(seen) if seen else T0) + rnd.choice([0, 10_000, 45_000, 3 * MIN, 3 * MIN, 20 * MIN])
            ops.append((at, ("idle", f, rnd.choice(["interaction", "feedback"]), ts)))
        elif kind == "reload":
            ops.append((at, ("reload", RELOADED if rnd.random() < 0.7 else RULES)))
        else:
            ops.append((at, ("roundtrip", kind == "roundtrip-parts")))
    script, last = [], 0
    for at, op in sorted(ops, key=lambda x: x[0]):
        script.append(("items", items[last:at]))
        script.append(op)
        last = at
    script.append(("items", items[last:]))
    return cfg, script


SPLITS = st.one_of(st.none(), st.integers(1, 40), st.lists(st.integers(0, 30), min_size=1, max_size=8))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scripts(), SPLITS)
def test_generated_streams_same_splits_match_the_reference(case, splits):
    cfg, script = case
    reference = drive(ReferenceEngine, RULES, cfg, script, splits)
    product = drive(Engine, RULES, cfg, script, splits)
    assert_same_per_call(product, reference)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scripts(), SPLITS, st.booleans())
def test_generated_streams_any_splits_match_the_reference_one_event_per_step(case, splits, rows):
    """Also with the events handed over as rows (half the examples), as replay and the worker do."""
    cfg, script = case
    reference = drive(ReferenceEngine, RULES, cfg, script, 1)
    product = drive(Engine, RULES, cfg, script, splits, rows)
    assert_same(product, reference)


# the one-line rules of RULES_TEXT that read no arm field: their stores read one segment key (platform), so
# rules.batch groups events by its value alone (Plan.segment_keys) and the events of a bucket with other segment
# keys, or none, are summarised together (and one filtered store, whose filter reads the same key)
FEW = rules(
    "\n".join(line for line in RULES_TEXT.splitlines()
              if not line.startswith(" ") or (line.startswith("  - {") and line.endswith("}")
                                              and not any(w in line for w in ("compare", "variant", "model_version"))))
    .replace("name: diff", "name: few").replace("defaults: {min_samples: 5", "defaults: {min_samples: 3")
    + '\n  - {id: w-mob, tier: investigate, metric: latency_mean, op: ">", threshold: 250, where: {platform: mobile}}\n',
    "few",
)  # fmt: skip


def with_other_keys(script: list) -> list:
    """The script with a second segment key no rule of FEW reads on every event, and without the one it reads on
    a fifth of them (a store reads an absent key as ""); reloads load FEW again."""
    out = []
    for op in script:
        if op[0] == "reload":
            op = ("reload", FEW)
        elif op[0] == "items":
            for it in op[1]:
                if isinstance(it, Event):
                    h = zlib.crc32(it.event_id.encode())
                    seg = {k: v for k, v in it.segment.items() if h % 5}
                    it.segment = {**seg, "region": ("eu", "us", "apac")[h % 3]}
        out.append(op)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scripts(), SPLITS, st.booleans())
def test_rules_reading_few_segment_keys_match_the_reference(case, splits, rows):
    from rules.plan import Plan

    assert Plan(FEW).segment_keys == ("platform",)
    cfg, script = case
    script = with_other_keys(script)
    reference = drive(ReferenceEngine, FEW, cfg, script, 1)
    product = drive(Engine, FEW, cfg, script, splits, rows)
    assert_same(product, reference)


def test_the_generated_rules_cover_every_catalogue_detector():
    from rules.loader import CATALOG, load_rules

    catalogue = {r.drift.detector for rs in load_rules([CATALOG]) for r in rs.rules if r.drift is not None}
    ours = {r.drift.detector for r in RULES[0].rules if r.drift is not None}
    assert catalogue <= ours


def test_the_generated_streams_exercise_what_they_claim():
    """Guard against vacuous properties: over a fixed sample of generated scripts the reference decides, commands,
    pages and dead-letters, and counts late events, duplicates and outliers."""
    seen = {k: 0 for k in (*KINDS, "late", "duplicates", "outliers")}
    drift: set[str] = set()

    @settings(max_examples=100, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(scripts())
    def sample(case):
        cfg, script = case
        eng, outs = drive(ReferenceEngine, RULES, cfg, script)
        for k in KINDS:
            seen[k] += sum(len(getattr(o, k)) for o in outs)
        seen["late"] += eng.stats.late
        seen["duplicates"] += eng.stats.duplicates
        seen["outliers"] += sum(eng.stats.outliers.values())
        drift.update(d["rule_id"] for o in outs for d in o.decisions if d["rule_id"].startswith("d-"))
        compared.update(d["rule_id"] for o in outs for d in o.decisions if d["rule_id"].startswith("cmp"))
        filtered.update(d["rule_id"] for o in outs for d in o.decisions if d["rule_id"].startswith(("w-", "sh-")))
        starved.update(d["transition"] for o in outs for d in o.decisions if d["rule_id"].startswith("starve"))
        banded.update(d["rule_id"] for o in outs for d in o.decisions if d["rule_id"].startswith("band-"))
        compound.update(d["rule_id"] for o in outs for d in o.decisions if d["rule_id"] in ("both", "either"))
        cohort.update(d["rule_id"] for o in outs for d in o.decisions if d["rule_id"] in ("ret", "back", "upu"))
        promoted.update(d["transition"] for o in outs for d in o.decisions if d["rule_id"] == "promotion")
        promoted.update(c["action"] for o in outs for c in o.commands if c["action"] == "promote_rollout")

    compared: set[str] = set()
    filtered: set[str] = set()
    starved: set[str] = set()
    banded: set[str] = set()
    compound: set[str] = set()
    cohort: set[str] = set()
    promoted: set[str] = set()
    sample()
    assert all(seen.values()), seen
    assert drift  # every drift rule firing is checked on a stream made for it, below
    # comparisons decide in these sparse streams too (every one of them fires on the denser stream below)
    assert len(compared) >= 3, compared
    assert {"w-mobile", "w-not-m2", "sh-conf"} <= filtered, filtered
    assert {"starved", "fed"} <= starved, starved  # starvation clocks flag and end in both engines
    assert {"band-in", "band-out"} <= banded, banded
    assert {"both", "either"} <= compound, compound  # all / any (rules.compound) decide in both engines
    assert {"ret", "back", "upu"} <= cohort, cohort  # cohort metrics (rules.cohort) decide in both engines
    # promotion verdicts, sign-offs and their revocation in both engines (ready and its command: the stream below)
    assert {"blocked", "inconclusive", "signed_off", "signoff_revoked"} <= promoted, promoted


def test_every_comparison_fires_and_matches_the_reference():
    """A dense stream where, from minute 3, model m2 is accepted less, variant b is slower, mobile slower still
    and phase p errs more than phase q: every compare rule (and an SRM companion) fires, identically in both
    engines and under any batch split, as events and as rows."""
    rnd = random.Random(7)
    evs = []
    for m in range(14):
        bad = m >= 3
        for i in range(40):
            ts = T0 + m * MIN + i * 1_500 + rnd.randint(0, 999)
            mv, variant = rnd.choice(["m1", "m1", "m2", None]), rnd.choice(["a", "b"])
            plat, phase = rnd.choice(["mobile", "desktop"]), rnd.choice(["p", "q"])
            if i % 2:
                slower = (600 if variant == "b" else 0) + (1000 if plat == "mobile" else 0) if bad else 0
                evs.append(Event("interaction", f"i{m}-{i}", ts, "g", phase, {"platform": plat}, f"u{i % 5}", mv, None,
                                 "error" if rnd.random() < (0.5 if bad and phase == "p" else 0.05) else "ok",
                                 rnd.uniform(50, 500) + slower, None, None, 0.002, 0.8, variant=variant))  # fmt: skip
            else:
                worse = bad and mv == "m2"
                label = rnd.choice(["rejected", "rejected", "ignored", "accepted"] if worse else ["accepted", "edited"])
                evs.append(Event("feedback", f"s{m}-{i}", ts, "g", phase, {"platform": plat}, None, mv, None,
                                 kind="suggestion", label=label, variant=variant))  # fmt: skip
    evs.sort(key=lambda e: (e.ts, e.event_id))
    cfg = EngineConfig(allowed_lateness_ms=LATENESS)
    script = [("items", evs)]
    reference = drive(ReferenceEngine, RULES, cfg, script)
    assert_same_per_call(drive(Engine, RULES, cfg, script), reference)
    assert_same(drive(Engine, RULES, cfg, script, [1, 7, 40, 0, 300], rows=True), reference)
    decided = {d["rule_id"] for o in reference[1] for d in o.decisions if d["transition"] in ("firing", "inhibited")}
    assert {"cmp", "cmp-srm.srm", "cmp-mean", "cmp-p95", "cmp-phase"} <= decided, decided


def test_a_promotion_becomes_ready_blocks_on_a_latch_and_matches_the_reference():
    """A steady stream on which the promotion block's gates pass: ready once both roles signed (an auto
    promote_rollout), blocked by a pause latch from minute 9 (p95 jumps), ready again after a resume; a revoked and
    re-given sign-off in between. Identical in both engines, under any batch split, as events and as rows."""
    rnd = random.Random(11)
    evs: list = []
    for m in range(20):
        for i in range(30):
            ts = T0 + m * MIN + i * 2_000 + rnd.randint(0, 999)
            plat = rnd.choice(["mobile", "desktop"])
            if i % 2:
                slow = 9 <= m < 11
                evs.append(Event("interaction", f"i{m}-{i}", ts, "f", "p", {"platform": plat}, f"u{i % 6}", "m1", None,
                                 "ok", rnd.uniform(50, 200) + (2000 if slow else 0), None, None, 0.002, 0.8,
                                 variant="a"))  # fmt: skip
            else:
                evs.append(Event("feedback", f"s{m}-{i}", ts, "f", "p", {"platform": plat}, None, "m1", None,
                                 kind="suggestion", label=rnd.choice(["accepted", "edited", "rejected"]), variant="a"))
    def ctl(at: int, action: str, **kw) -> Control:
        return Control(f"{action}-{at}-{kw.get('role', '')}", T0 + at, action, "f", "p", "reviewed", "lead",
                       role=kw.get("role"), revoke=kw.get("revoke", False))  # fmt: skip
    controls = [ctl(30_000, "signoff", role="pm"), ctl(4 * MIN, "signoff", role="legal"),
                ctl(6 * MIN + 5_000, "signoff", role="legal", revoke=True), ctl(7 * MIN + 5_000, "signoff", role="legal"),
                ctl(14 * MIN, "resume")]  # fmt: skip
    items = sorted(evs + controls, key=lambda x: (x.ts, x.type != "control"))
    cfg = EngineConfig(allowed_lateness_ms=LATENESS, signing_key=b"differential-signing-key-01234567")
    script = [("items", items)]
    reference = drive(ReferenceEngine, RULES, cfg, script)
    assert_same_per_call(drive(Engine, RULES, cfg, script), reference)
    assert_same(drive(Engine, RULES, cfg, script, [1, 7, 40, 0, 300], rows=True), reference)
    verdicts = [(d["ts"][11:16], d["transition"]) for o in reference[1] for d in o.decisions
                if d["rule_id"] == "promotion"]  # fmt: skip
    seen = [v for _, v in verdicts]
    assert seen.count("ready") >= 2 and "signoff_revoked" in seen and "blocked" in seen, verdicts
    latched = [d for o in reference[1] for d in o.decisions if d["rule_id"] == "promotion"
               and d.get("promotion", {}).get("latch") == "pause"]  # fmt: skip
    assert latched and latched[0]["transition"] == "blocked"
    commands = [c["action"] for o in reference[1] for c in o.commands]
    assert commands.count("promote_rollout") >= 2, commands


def test_every_drift_rule_fires_and_matches_the_reference():
    """A stream that shifts every drift signal at minute 6 (errors, latency, confidence, thumbs down) in two
    features: each detector of the catalogue decides, identically in both engines."""
    rnd = random.Random(11)
    evs = []
    for f in ("f", "g"):
        for m in range(14):
            bad = m >= 6
            for i in range(24):
                ts = T0 + m * MIN + i * 2_500 + rnd.randint(0, 999)
                if i % 3:
                    evs.append(Event("interaction", f"{f}i{m}-{i}", ts, f, "p", {"platform": rnd.choice(["a", "b"])},
                                     f"u{i % 5}", None, None, "error" if rnd.random() < (0.6 if bad else 0.05) else "ok",
                                     rnd.uniform(800, 1500) if bad else rnd.uniform(50, 150), None, None, 0.002,
                                     rnd.choice([0.05, 0.1] if bad else [0.8, 0.9])))  # fmt: skip
                else:
                    evs.append(Event("feedback", f"{f}t{m}-{i}", ts, f, "p", {"platform": "a"}, None, None, None,
                                     kind="thumbs", label="down" if rnd.random() < (0.8 if bad else 0.1) else "up"))  # fmt: skip
    evs.sort(key=lambda e: (e.ts, e.event_id))
    cfg = EngineConfig(allowed_lateness_ms=LATENESS)
    script = [("items", evs)]
    reference = drive(ReferenceEngine, RULES, cfg, script)
    assert_same_per_call(drive(Engine, RULES, cfg, script), reference)
    assert_same(drive(Engine, RULES, cfg, script, [1, 5, 33, 0, 200]), reference)
    fired = {d["rule_id"] for o in reference[1] for d in o.decisions if d["transition"] == "firing"}
    assert {r.id for r in RULES[0].rules if r.drift is not None} <= fired
