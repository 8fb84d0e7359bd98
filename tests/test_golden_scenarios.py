"""Golden scenarios: generated traffic with a known incident, replayed through the whole rule catalogue.

Each case says which tier must act, by which rule, and when (relative to the incident), and that the clean control
produces no command and no page. 12 hours at 2 interactions/s keep each case to a few seconds.
"""

from __future__ import annotations

import filecmp
from functools import lru_cache

import pytest

from rules.engine import Engine, EngineConfig
from rules.events import EventParser, Pseudonymizer
from rules.loader import CATALOG, load_rules
from streams.offline.replay import OUTPUT_FILES, replay
from streams.offline.scenario import generate, scenario_from_args, write_jsonl

KEY = b"golden-test-key-0123456789"
MIN = 60_000
pytestmark = pytest.mark.slow


@lru_cache(maxsize=None)
def catalog():
    return load_rules([CATALOG])


@lru_cache(maxsize=None)
def outcome(preset: str, hours: int = 12, rate: float = 2.0):
    scenario = scenario_from_args(preset, duration_ms=hours * 3_600_000, mean_rate_per_s=rate, seed=5)
    parser = EventParser(Pseudonymizer(KEY))
    eng = Engine(catalog(), EngineConfig())
    out = eng.step(parser.parse_obj(e) for e in generate(scenario))
    out.extend(eng.finish())
    return scenario, eng, out


def ms(ts: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


def triggers(out, severity=None):
    """Trigger pages about the feature (not the rules' own starvation, which a scenario's traffic may cause)."""
    return [
        p for p in out.pages
        if p["event_action"] == "trigger" and (severity is None or p["payload"]["severity"] == severity)
        and not p["payload"]["class"].endswith(".starved")
    ]  # fmt: skip


def test_clean_control_day_takes_no_action():
    _, eng, out = outcome("clean")
    assert out.commands == []
    # the only pages say that two review-based kill rules cannot decide: at this traffic a 6-hour window holds ~250
    # expert reviews, half of their min_samples (rules.starvation); nothing about the feature itself pages
    starved = [p for p in out.pages if p["payload"]["class"].endswith(".starved")]
    assert [p for p in out.pages if p not in starved] == []
    assert sorted(p["payload"]["class"] for p in starved) == [
        "hallucination-above-2pct.starved", "offensive-above-2pct.starved"]  # fmt: skip
    assert all(p["event_action"] == "trigger" and p["payload"]["severity"] == "warning" for p in starved)
    assert all(d["mode"] == "shadow" for d in out.decisions if d["transition"] == "firing")
    assert eng.stats.late == 0


# preset, action, rule that must issue it, latest acceptable delay after incident start
KILLS = [
    ("latency_spike", "rollback", "latency-p95-above-1200-sustained", 75 * MIN),
    ("pii_leak", "rollback", "pii-leak", 10 * MIN),
    ("error_burst", "rollback", "error-rate-above-2pct", 15 * MIN),
]


@pytest.mark.parametrize("preset, action, rule, max_delay", KILLS, ids=[k[0] for k in KILLS])
def test_incident_is_rolled_back_by_the_right_rule_in_time(preset, action, rule, max_delay):
    scenario, _, out = outcome(preset)
    incident = scenario.incidents[0]
    assert [(c["action"], c["rule_id"]) for c in out.commands] == [(action, rule)]
    t = ms(out.commands[0]["ts"])
    assert incident.start < t <= incident.start + max_delay
    # the kill is also paged, critical, with the command's decision as evidence
    crit = triggers(out, "critical")
    assert [p["payload"]["class"] for p in crit] == [rule]
    assert crit[0]["payload"]["custom_details"]["decision_id"] == out.commands[0]["decision_id"]


def test_latency_spike_warns_before_it_kills():
    scenario, _, out = outcome("latency_spike")
    warnings = [ms(p["payload"]["timestamp"]) for p in triggers(out, "warning")]
    kill = ms(out.commands[0]["ts"])
    assert warnings and min(warnings) < kill
    assert min(warnings) >= scenario.incidents[0].start


# preset, a rule that must page (investigate) during the incident
INVESTIGATE = [
    ("traffic_drop", "traffic-collapse-vs-hour-before"),
    ("acceptance_decline", "acceptance-drift"),
    ("cost_runaway", "cost-runaway-drift"),
    ("drift", "confidence-drift"),
    ("mobile_gap", "acceptance-drift"),
]


@pytest.mark.parametrize("preset, rule", INVESTIGATE, ids=[c[0] for c in INVESTIGATE])
def test_softer_incidents_page_for_investigation_without_rollback(preset, rule):
    scenario, _, out = outcome(preset)
    incident = scenario.incidents[0]
    assert out.commands == []
    pages = [p for p in triggers(out) if p["payload"]["class"] == rule]
    assert pages, f"{rule} did not page"
    first = ms(pages[0]["payload"]["timestamp"])
    assert incident.start <= first <= incident.start + incident.duration_ms
    assert all(p["payload"]["severity"] == "warning" for p in triggers(out))


def test_replay_of_the_same_input_is_byte_identical(tmp_path):
    events = tmp_path / "events.jsonl"
    scenario = scenario_from_args("latency_spike", duration_ms=12 * 3_600_000, mean_rate_per_s=2.0, seed=9)
    write_jsonl(generate(scenario), events)
    with events.open("ab") as f:  # some invalid input, so the dead-letter file is compared too
        f.write(b'{"type": "interaction", "event_id": "bad", "ts": "yesterday", "feature": "email-reply"}\n')
        f.write(b"not json at all\n")
    runs = []
    for name in ("a", "b"):
        res = replay(catalog(), [str(events)], tmp_path / name, config=EngineConfig(), user_key=KEY, progress=False)
        runs.append(res)
    assert sum(runs[0].invalid.values()) == 2
    for f in (*OUTPUT_FILES, "report.md"):
        assert filecmp.cmp(tmp_path / "a" / f, tmp_path / "b" / f, shallow=False), f
    assert (tmp_path / "a" / "commands.jsonl").read_bytes()  # the scenario does act: the comparison is not vacuous


def test_hallucination_surge_is_rolled_back_once_the_delayed_reviews_arrive():
    import dataclasses

    from streams.offline.scenario import Incident

    base = scenario_from_args("clean", duration_ms=24 * 3_600_000, mean_rate_per_s=2.0, seed=5)
    start = base.start + 4 * 3_600_000
    scenario = dataclasses.replace(base, incidents=(Incident("hallucination_increase", start, 12 * 3_600_000, 0.2),))
    parser = EventParser(Pseudonymizer(KEY))
    eng = Engine(catalog(), EngineConfig())
    out = eng.step(parser.parse_obj(e) for e in generate(scenario))
    out.extend(eng.finish())
    assert [(c["action"], c["rule_id"]) for c in out.commands] == [("rollback", "hallucination-above-5pct")]
    t = ms(out.commands[0]["ts"])
    # expert reviews arrive ~2 h after the interaction (review_delay_ms): detection cannot be earlier than that
    assert start + scenario.review_delay_ms // 2 < t <= start + 4 * 3_600_000


# --- a model upgrade on 10 % of traffic (issue "compare against a control", catalogue experiments.yaml) ----------


def upgrade_outcome(accept_delta: float, days: int):
    """A week-long model upgrade on 10 % of 1 interaction/s, its suggestions accepted ``accept_delta`` more than the
    control's, replayed as rows (as `replay` hands them over) through the catalogue's experiment rules."""
    import orjson

    scenario = scenario_from_args("clean", duration_ms=days * 86_400_000, mean_rate_per_s=1.0, seed=5,
                                  treatment_share=0.1, treatment_accept_delta=accept_delta)  # fmt: skip
    parser = EventParser(Pseudonymizer(KEY))
    eng = Engine(load_rules([CATALOG / "experiments.yaml"]), EngineConfig())
    out, chunk = None, []
    for e in generate(scenario):
        chunk.append(orjson.dumps(e))
        if len(chunk) == 5_000:
            o = eng.step(parser.parse_rows(b"[" + b",".join(chunk) + b"]"))
            out = o if out is None else (out.extend(o) or out)
            chunk = []
    out.extend(eng.step(parser.parse_rows(b"[" + b",".join(chunk) + b"]")))
    out.extend(eng.finish())
    return scenario, eng, out


def test_a_model_upgrade_three_points_worse_is_rolled_back_within_its_week():
    scenario, eng, out = upgrade_outcome(-0.03, days=6)
    assert eng.stats.late == 0 and sum(eng.stats.events.values()) > 800_000
    assert [(c["action"], c["rule_id"]) for c in out.commands] == [("rollback", "upgrade-acceptance-regression")]
    [kill] = [d for d in out.decisions if d["transition"] == "firing"]
    evidence = kill["details"]["compare"]
    assert evidence["control"] == "control" and evidence["treatment"] == ["model-upgrade"]
    assert evidence["hi"] < -0.02 and evidence["lo"] < kill["value"] < evidence["hi"]  # established beyond -2 points
    assert 0.08 < evidence["treatment_samples"] / (evidence["treatment_samples"] + evidence["control_samples"]) < 0.12
    assert ms(kill["ts"]) < scenario.start + 6 * 86_400_000  # within the week: measured at day 4.8
    assert "srm" in kill["details"] and not any(d["rule_id"].endswith(".srm") for d in out.decisions)


def test_the_same_upgrade_without_a_regression_runs_a_week_without_a_decision():
    _, eng, out = upgrade_outcome(0.0, days=7)
    assert sum(eng.stats.events.values()) > 1_000_000
    assert out.decisions == [] and out.commands == [] and out.pages == []
