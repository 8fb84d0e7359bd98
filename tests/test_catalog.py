"""The rule catalogue (rules/catalog): it loads, it says what the seed runbooks say, and it stays quiet on clean traffic.

Structure is checked on the loaded rule sets; behaviour by running the real engine (small synthetic streams and a
short generated clean scenario); drift parameters by feeding the real detectors seeded streams shaped like the
scenario generator's clean traffic and like its incidents.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from detectors import make_detector
from engine_kit import T0, MIN, interactions, run, timeline
from rules.events import Event, EventParser, Pseudonymizer
from rules.loader import CATALOG, load_rules
from rules.engine import EngineConfig

DAY_MS = 86_400_000
HOUR_MS = 3_600_000

EMAIL_PHASES = [
    ("email-reply-1-internal.yaml", "email-reply-internal", "internal"),
    ("email-reply-2-closed-beta.yaml", "email-reply-closed-beta", "closed_beta"),
    ("email-reply-3-regional-expansion.yaml", "email-reply-regional-expansion", "regional_expansion"),
    ("email-reply-4-segment-targeting.yaml", "email-reply-segment-targeting", "segment_targeting"),
    ("email-reply-5-eu-launch.yaml", "email-reply-eu-launch", "eu_launch"),
    ("email-reply-6-general-availability.yaml", "email-reply-general-availability", "general_availability"),
]
GLOBAL_PACKS = {
    "safe-llm.yaml": "safe-llm",
    "daily-dashboard.yaml": "daily-dashboard",
    "launch-gates.yaml": "launch-gates",
    "llmops-alerting.yaml": "llmops-alerting",
    "llm-product-health.yaml": "llm-product-health",
}
COMPARISON_PACKS = {  # rules judging a treatment against a control (compare)
    "experiments.yaml": "experiments",
    "email-reply-model-drift.yaml": "email-reply-model-drift",
}
FILTER_PACKS = {"email-reply-exclusions.yaml": "email-reply-exclusions"}  # rules on one cohort each (where)
# rollouts of their own phases, a rule set with a promotion block per phase
ROLLOUT_PACKS = {"prompt-canary.yaml": ("prompt-canary",), "pilot-evaluation.yaml": ("pilot-evaluation",),
                 "safe-llm-rollout.yaml": ("safe-llm-rollout-beta", "safe-llm-rollout-ga-10", "safe-llm-rollout-ga-50")}


@pytest.fixture(scope="module")
def catalog():
    return {rs.name: rs for rs in load_rules([CATALOG])}


def rule(catalog, ruleset: str, rule_id: str):
    [r] = [r for r in catalog[ruleset].rules if r.id == rule_id]
    return r


def only(catalog, ruleset: str, *rule_ids: str):
    """The rule set reduced to some of its rules, so an engine test evaluates nothing else."""
    rs = catalog[ruleset]
    rules = tuple(r for r in rs.rules if r.id in rule_ids)
    promotion = rs.promotion if rs.promotion and set(rs.promotion.gates) <= set(rule_ids) else None
    return (rs.model_copy(update={"rules": rules, "promotion": promotion}),)


# ---------------------------------------------------------------------------------------------------- structure


def test_every_file_loads_with_the_real_loader_as_named_rule_sets(catalog):
    """One rule set a file, except the rollout packs: one a phase of their rollout."""
    files = sorted(p.name for p in CATALOG.glob("*.yaml"))
    expected = sorted([f for f, _, _ in EMAIL_PHASES] + list(GLOBAL_PACKS) + list(COMPARISON_PACKS) + list(FILTER_PACKS)
                      + list(ROLLOUT_PACKS))  # fmt: skip
    assert files == expected
    by_file: dict[str, tuple[str, ...]] = {}
    for rs in catalog.values():
        by_file[Path(rs.source).name] = by_file.get(Path(rs.source).name, ()) + (rs.name,)
    singles = {**{f: n for f, n, _ in EMAIL_PHASES}, **GLOBAL_PACKS, **COMPARISON_PACKS, **FILTER_PACKS}
    assert by_file == {**{f: (n,) for f, n in singles.items()}, **ROLLOUT_PACKS}


def test_the_rollout_packs_promote_their_phases_one_after_the_other(catalog):
    for names in ROLLOUT_PACKS.values():
        sets = [catalog[n] for n in names]
        for rs in sets:
            assert rs.promotion is not None and len(rs.phases) == 1 and rs.promotion.to != rs.phases[0]
        assert [rs.promotion.to for rs in sets[:-1]] == [rs.phases[0] for rs in sets[1:]]


def test_the_comparison_packs_compare_every_rule_and_guard_every_split(catalog):
    for name in COMPARISON_PACKS.values():
        # the model-drift pack also holds the seed's reversibility short of a rollback (rules with an action)
        rules = [r for r in catalog[name].rules if r.action is None]
        assert all(r.compare is not None for r in rules)
        for r in rules:
            if r.compare.split and r.srm_of is None:  # its companion follows it
                assert any(c.srm_of == r.id and c.id == f"{r.id}.srm" for c in rules)
    experiments = catalog["experiments"].rules
    assert {r.compare.by for r in experiments} == {"variant"}
    assert {r.compare.control for r in experiments} == {"control", "ai-off"}  # ai-off: the dual run
    assert all(r.compare.phase == "internal" for r in catalog["email-reply-model-drift"].rules if r.action is None)
    assert {r.action for r in catalog["email-reply-model-drift"].rules if r.action} == {"revert_model", "shadow_only"}


@pytest.mark.parametrize("file, name, phase", EMAIL_PHASES, ids=[p for _, _, p in EMAIL_PHASES])
def test_each_email_reply_phase_pack_has_enforced_kill_pause_and_investigate_rules(catalog, file, name, phase):
    rs = catalog[name]
    assert rs.features == ("email-reply",)
    assert rs.phases == (phase,)
    enforced = {r.tier for r in rs.rules if r.mode == "enforce"}
    assert {"kill", "pause", "investigate"} <= enforced


@pytest.mark.parametrize("file, name, phase", EMAIL_PHASES[1:], ids=[p for _, _, p in EMAIL_PHASES[1:]])
def test_every_phase_after_dogfood_watches_the_mobile_desktop_gap_and_a_segment_gap(catalog, file, name, phase):
    rules = catalog[name].rules
    # "Mobile acceptance <14% while desktop >17%": both halves at once (all:)
    gap = [r for r in rules if r.combine == "all" and [c.metric for c in r.conditions] == ["acceptance_rate"] * 2]
    assert len(gap) == 1 and gap[0].tier == "investigate" and gap[0].mode == "enforce"
    mobile, desktop = gap[0].conditions
    assert (mobile.where[0].values, mobile.op, mobile.threshold) == (("mobile",), "<", 0.14)
    assert (desktop.where[0].values, desktop.op, desktop.threshold) == (("desktop",), ">", 0.17)
    assert any(r.group_by == ("platform",) and r.op == "<" and r.threshold == pytest.approx(0.14) for r in rules)
    segment = [r for r in rules if r.across in ("plan", "region") and r.metric == "acceptance_rate"]
    assert any(r.mode == "enforce" and r.threshold == pytest.approx(0.02) for r in segment)


def test_pii_leak_kills_every_feature_on_a_single_flag(catalog):
    rs = catalog["safe-llm"]
    pii = rule(catalog, "safe-llm", "pii-leak")
    assert rs.features == ("*",) and rs.phases is None
    assert (pii.tier, pii.mode, pii.metric, pii.op, pii.threshold, pii.min_samples) == (
        "kill", "enforce", "flag_count:pii_leak", ">", 0, 0)  # fmt: skip


def test_daily_dashboard_compares_with_the_day_before_and_only_asks_humans_to_look(catalog):
    rules = catalog["daily-dashboard"].rules
    assert {r.tier for r in rules} == {"investigate"}
    assert sum(r.baseline_ms == DAY_MS for r in rules) >= 5
    stopped = rule(catalog, "daily-dashboard", "traffic-stopped")
    assert (stopped.metric, stopped.op, stopped.threshold, stopped.min_samples) == ("requests", "<", 1, 0)


@pytest.mark.parametrize(
    "ruleset, rule_id, metric, op, threshold, window, for_",
    [
        # seeds/001, closed beta: "<10% for 3+ consecutive days" kill, "<12% ... 5+ consecutive days" pause
        ("email-reply-closed-beta", "acceptance-below-10pct-3-days", "acceptance_rate", "<", 0.10, "1d", "2d"),
        ("email-reply-closed-beta", "acceptance-below-12pct-5-days", "acceptance_rate", "<", 0.12, "1d", "4d"),
        ("email-reply-closed-beta", "support-volume-above-8-per-1k", "tickets_per_1k_users", ">", 8, "7d", "0s"),
        ("email-reply-closed-beta", "latency-p95-above-1200-sustained", "latency_p95", ">", 1200, "15m", "1h"),
        # seeds/001, Phase 3+: "<15% ... for 5+ consecutive days", ">5/1K ... in any 7-day window"
        ("email-reply-regional-expansion", "acceptance-below-15pct-5-days", "acceptance_rate", "<", 0.15, "1d", "4d"),
        ("email-reply-regional-expansion", "support-volume-above-5-per-1k", "tickets_per_1k_users", ">", 5, "7d", "0s"),
        ("email-reply-regional-expansion", "acceptance-at-risk-below-16_5pct", "acceptance_rate", "<", 0.165, "1d", "0s"),
        # seeds/001 kill list: "P95 latency >1500ms sustained for >2 hours", ">2% of sampled suggestions"
        ("email-reply-segment-targeting", "latency-p95-above-1500-for-2h", "latency_p95", ">", 1500, "15m", "2h"),
        ("email-reply-eu-launch", "hallucination-above-2pct", "hallucination_rate", ">", 0.02, "6h", "0s"),
        ("email-reply-general-availability", "acceptance-below-16pct-7-days", "acceptance_rate", "<", 0.16, "1d", "6d"),
        ("email-reply-general-availability", "latency-p95-creep-above-900", "latency_p95", ">", 900, "1h", "30m"),
        # seeds/001 internal: "P95 latency >1500ms -> immediate feature halt", target "P95 <=800ms"
        ("email-reply-internal", "latency-p95-above-1500", "latency_p95", ">", 1500, "15m", "10m"),
        ("email-reply-internal", "dogfood-latency-gate", "latency_p95", ">", 800, "15m", "30m"),
        # seeds/000: "Error rate >2%", "Hallucination rate <5%", "Latency p95 <3s", "Cost per query <$0.08"
        ("safe-llm", "error-rate-above-2pct", "error_rate", ">", 0.02, "10m", "5m"),
        ("safe-llm", "hallucination-above-5pct", "hallucination_rate", ">", 0.05, "2h", "0s"),
        ("safe-llm", "latency-p95-guardrail", "latency_p95", ">", 3000, "15m", "10m"),
        ("safe-llm", "cost-per-query-guardrail", "cost_per_request", ">", 0.08, "1h", "30m"),
        # seeds/004 daily dashboard: users -20 %, transactions +-30 %, error > 2 %, p95 > 5 s, cost > $0.15 + 50 %
        ("daily-dashboard", "active-users-drop-vs-yesterday", "active_users", "<", -0.2, "1d", "0s"),
        ("daily-dashboard", "transactions-drop-vs-yesterday", "requests", "<", -0.3, "1d", "0s"),
        ("daily-dashboard", "transactions-spike-vs-yesterday", "requests", ">", 0.3, "1d", "0s"),
        ("daily-dashboard", "error-rate-above-2pct", "error_rate", ">", 0.02, "1d", "0s"),
        ("daily-dashboard", "latency-p95-above-5s", "latency_p95", ">", 5000, "1d", "0s"),
        ("daily-dashboard", "cost-per-transaction-above-0_225", "cost_per_request", ">", 0.225, "1d", "0s"),
        # seeds/004 automatic rollback and alert tiers
        ("llmops-alerting", "rollback-error-rate-above-10pct", "error_rate", ">", 0.10, "5m", "2m"),
        ("llmops-alerting", "tier1-error-rate-above-5pct", "error_rate", ">", 0.05, "5m", "5m"),
        ("llmops-alerting", "tier2-thumbs-down-above-30pct", "thumbs_down_rate", ">", 0.30, "1h", "0s"),
    ],
)  # fmt: skip
def test_thresholds_say_what_the_seed_runbooks_say(catalog, ruleset, rule_id, metric, op, threshold, window, for_):
    from rules.durations import parse_duration

    r = rule(catalog, ruleset, rule_id)
    assert (r.metric, r.op) == (metric, op)
    assert r.threshold == pytest.approx(threshold)
    assert (r.window_ms, r.for_ms) == (parse_duration(window), parse_duration(for_))


def test_every_rule_explains_itself_with_a_summary_and_a_runbook(catalog):
    for rs in catalog.values():
        for r in rs.rules:
            assert r.summary, f"{rs.name}/{r.id}: no summary"
            assert r.runbook and r.runbook.startswith("https://runbooks.example/"), f"{rs.name}/{r.id}: runbook"


def test_every_pack_cites_its_seed_and_says_what_it_cannot_express():
    for path in CATALOG.glob("*.yaml"):
        head = path.read_text().split("\nversion:")[0]
        assert re.search(r"seeds/00[0-4]", head), f"{path.name}: header does not cite a seed document"
        assert "Not expressible" in head, f"{path.name}: header does not list what the pack cannot express"


def test_readme_names_every_pack_and_every_rule():
    readme = (CATALOG / "README.md").read_text()
    for rs in load_rules([CATALOG]):
        assert f"`{rs.name}`" in readme, rs.name
        for r in rs.rules:
            assert f"`{r.id}`" in readme, f"README does not mention {rs.name}/{r.id}"
    assert "## Criteria that cannot be stream rules" in readme


# ---------------------------------------------------------------------------------------------------- behaviour


def suggestions(day: int, n: int, accepted: int, *, phase: str = "closed_beta") -> list[Event]:
    """``n`` suggestion feedback events spread over one day, the first ``accepted`` of them accepted."""
    return [
        Event("feedback", f"s-{day}-{i}", T0 + day * DAY_MS + (i * DAY_MS) // n, "email-reply", phase, {}, f"u{i % 50}",
              None, None, kind="suggestion", label="accepted" if i < accepted else "rejected")  # fmt: skip
        for i in range(n)
    ]


@pytest.mark.parametrize(
    "bad_days, fires",
    [(2, False), (3, True)],
    ids=["two-bad-days-hold", "third-bad-day-kills"],
)
def test_closed_beta_acceptance_kill_needs_three_consecutive_days(catalog, bad_days, fires):
    rs = only(catalog, "email-reply-closed-beta", "acceptance-below-10pct-3-days")
    events = [e for d in range(bad_days) for e in suggestions(d, 600, 30)]  # 5 % acceptance
    events += suggestions(bad_days, 600, 180) + suggestions(bad_days + 1, 10, 3)  # a good day, then a little more
    _, decisions, commands, _ = run(rs, events)
    assert bool(commands) is fires
    if fires:
        assert (3 * DAY_MS // MIN, "firing") in timeline(decisions, "acceptance-below-10pct-3-days")


def test_pii_leak_fires_in_a_quiet_minute_of_any_feature(catalog):
    rs = only(catalog, "safe-llm", "pii-leak")
    kw = {"feature": "search-summary", "phase": "beta"}
    quiet = interactions(3, 2, flags=("pii_leak",), **kw)  # 2 requests, far under the default min_samples of 30
    _, decisions, commands, _ = run(rs, interactions(0, 2, **kw) + quiet + interactions(5, 1, **kw))
    assert [(c["feature"], c["action"], c["rule_id"]) for c in commands] == [("search-summary", "rollback", "pii-leak")]
    assert timeline(decisions, "pii-leak") == [(4, "firing")]


def test_zero_traffic_is_observed_not_insufficient(catalog):
    rs = only(catalog, "daily-dashboard", "traffic-stopped")
    events = [e for m in range(30) for e in interactions(m, 5)]
    events += interactions(60, 5)  # 30 silent minutes, then traffic again (the watermark moves on)
    _, decisions, _, pages = run(rs, events)
    transitions = [t for _, t in timeline(decisions, "traffic-stopped")]
    assert transitions[:2] == ["pending", "firing"]
    assert pages and pages[0]["payload"]["severity"] == "warning"


@pytest.mark.slow
def test_a_short_clean_scenario_trips_no_enforced_rule_anywhere_in_the_catalog():
    from streams.offline.scenario import Scenario, generate

    # The generator's base rates of pii_leak / confidential flags are zeroed here: the seeds make any single one a
    # kill, so a stream that carries one is not clean (see README, "Known tensions").
    flags = (("pii_leak", 0.0), ("confidential", 0.0), ("prompt_injection", 5e-5), ("toxicity", 1e-5),
             ("format_error", 1e-3))  # fmt: skip
    scenario = Scenario(duration_ms=2 * HOUR_MS, start=T0 + 13 * HOUR_MS, seed=11, flag_probs=flags)  # US midday
    parser = EventParser(Pseudonymizer(b"test-key"))
    events = [parser.parse_obj(e) for e in generate(scenario)]
    _, decisions, commands, pages = run(load_rules([CATALOG]), events, EngineConfig())
    assert len(events) > 50_000
    assert commands == []
    assert pages == []
    assert all(d["mode"] == "shadow" for d in decisions if d["transition"] == "firing")


# ------------------------------------------------------------------------------------------- drift calibration
# Streams shaped like the scenario generator: clean, and with the incident the rule is meant to see.


def _lognormal(rng, n, median, sigma, cap=None):
    x = median * np.exp(sigma * rng.standard_normal(n))
    return np.minimum(x, cap) if cap else x


CLEAN = {
    "acceptance": lambda rng, n: (rng.random(n) < 0.30).astype(float),
    "error": lambda rng, n: (rng.random(n) < 0.007).astype(float),
    "thumbs_down": lambda rng, n: (rng.random(n) < 0.115).astype(float),
    "latency_ms": lambda rng, n: _lognormal(rng, n, 300 * np.where(rng.random(n) < 0.4, 1.15, 1.0), 0.45, 3000),
    "cost_usd": lambda rng, n: 0.00095 * np.exp(0.5 * rng.standard_normal(n)) + _lognormal(rng, n, 0.00096, 0.35),
    "confidence": lambda rng, n: rng.beta(8, 3, n),
    "tokens_in": lambda rng, n: np.rint(950 * np.exp(0.5 * rng.standard_normal(n))) + 1,
    # ~1 % errors answer nothing, ~0.5 % refusals a tenth
    "tokens_out": lambda rng, n: np.rint(240 * np.exp(0.35 * rng.standard_normal(n))
                                         * np.select([rng.random(n) < 0.01, rng.random(n) < 0.005], [0.0, 0.1], 1.0)),
}
INCIDENT = {
    "acceptance": lambda rng, n: (rng.random(n) < 0.12).astype(float),  # acceptance_decline 0.6
    "error": lambda rng, n: (rng.random(n) < 0.08).astype(float),  # error_burst 0.08
    "thumbs_down": lambda rng, n: (rng.random(n) < 0.30).astype(float),  # hallucinations draw thumbs-down
    "latency_ms": lambda rng, n: CLEAN["latency_ms"](rng, n) * 1.5,  # drift at full strength
    "cost_usd": lambda rng, n: CLEAN["cost_usd"](rng, n) * 2.8,  # cost_runaway 4.0 (tokens out x5)
    "confidence": lambda rng, n: rng.beta(8, 3, n) * 0.65,  # drift at full strength
    "tokens_in": lambda rng, n: CLEAN["tokens_in"](rng, n) * 1.5,  # different questions: prompts half as long again
    "tokens_out": lambda rng, n: CLEAN["tokens_out"](rng, n) * 1.4,  # different answers: 40 % longer
}
CLEAN_LENGTH = {"thumbs_down": 40_000}  # a day of thumbs; every other signal: ~a day of interactions


def drift_rules():
    return [(rs.name, r) for rs in load_rules([CATALOG]) for r in rs.rules if r.drift is not None]


@pytest.mark.parametrize("ruleset, r", drift_rules(), ids=[f"{n}/{r.id}" for n, r in drift_rules()])
def test_drift_rule_is_quiet_on_a_clean_day_and_flags_its_incident(ruleset, r):
    assert r.tier == "investigate", "the seeds ask for trends to be watched, not rolled back on"
    signal = r.drift.signal
    rng = np.random.default_rng(2026)
    n = CLEAN_LENGTH.get(signal, 200_000)
    detector = make_detector(r.drift.detector, dict(r.drift.params), seed=1)
    clean = CLEAN[signal](rng, n).tolist()
    assert not any(detector.update(x) for x in clean), f"{ruleset}/{r.id} flagged clean traffic"
    shifted = INCIDENT[signal](rng, 5_000).tolist()
    first = next((i for i, x in enumerate(shifted) if detector.update(x)), None)
    assert first is not None, f"{ruleset}/{r.id} missed its incident"


def test_the_seed_requirements_table_names_real_rules_and_counts_right(catalog):
    readme = (CATALOG / "README.md").read_text()
    table = readme.split("## Seed requirements, row by row", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [int(r[0]) for r in rows] == list(range(1, 77))
    ids = {r.id for rs in catalog.values() for r in rs.rules}
    named = {name for r in rows for name in re.findall(r"`([a-z0-9_.-]+)`", r[3])}
    assert named and named <= ids, sorted(named - ids)
    status = Counter(r[2].strip().rstrip("¹²") for r in rows)
    stated = re.search(r"\*\*Counts: (\d+) full, (\d+) partial, (\d+) none\*\*", table)
    assert (status["full"], status["partial"], status["none"]) == tuple(map(int, stated.groups()))


def test_no_store_keeps_a_long_span_in_fine_buckets(catalog):
    """State per feature is buckets × their size: a store keeps ``retention / every`` buckets of every series. Every
    feature's stores keep at most ~1,500 (the minute store over a day); an experiment's arm stores, kept only while
    one runs, ~2,100 (10 minutes over 14 days). A long window or baseline on a rule that steps every few minutes (a
    7-day trailing baseline every 5m: 2,029 five-minute buckets, ~860 KiB a feature) should step coarser instead."""
    from rules.plan import Plan

    plan = Plan(tuple(catalog.values()))
    heavy = {}
    for spec in plan.stores.values():
        buckets = spec.retention_ms // spec.every_ms + 1
        if buckets > (2_100 if spec.arm else 1_500):
            readers = sorted(f"{b.ruleset.name}/{b.rule.id}" for b in plan.rules if b.store is spec)
            heavy[plan.store_names[spec.id]] = (buckets, readers)
    assert not heavy, heavy
